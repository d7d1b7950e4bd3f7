//! End-to-end tests of a replica over real HTTP on 127.0.0.1:0.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vllm_sim::{Profile, ReplicaConfig, ReplicaHandle, spawn_replica};

const DEADLINE: Duration = Duration::from_secs(10);

async fn start(cfg: ReplicaConfig) -> ReplicaHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_replica(cfg, listener).await.unwrap()
}

async fn zero_delay() -> ReplicaHandle {
    let mut cfg = ReplicaConfig::zero_delay();
    cfg.lora_adapters = vec!["sql-lora".into(), "chat-lora".into()];
    cfg.engine.max_loras = 1;
    start(cfg).await
}

/// One HTTP/1.1 connection; dropping `conn` closes the socket.
struct Exchange {
    response: Response<Incoming>,
    conn: JoinHandle<()>,
}

async fn send(handle: &ReplicaHandle, method: &str, path: &str, body: Option<String>) -> Exchange {
    let stream = TcpStream::connect(handle.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", handle.addr().to_string());
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    Exchange { response, conn }
}

async fn text(ex: Exchange) -> (StatusCode, String) {
    let status = ex.response.status();
    let body = tokio::time::timeout(DEADLINE, ex.response.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    ex.conn.abort();
    (status, String::from_utf8(body.to_bytes().to_vec()).unwrap())
}

async fn post_json(handle: &ReplicaHandle, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, body) = text(send(handle, "POST", path, Some(body.to_string())).await).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// `data:` payloads of a complete SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

/// Waits until `cond` holds, re-checking it whenever the engine changes, and fails at the deadline.
async fn eventually(sim: &ReplicaHandle, what: &str, mut cond: impl FnMut() -> bool) {
    let mut changes = sim.engine_changes();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        tokio::time::timeout_at(deadline, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the engine outlives the test");
    }
}

#[tokio::test]
async fn json_completion_reports_usage() {
    let sim = zero_delay().await;
    let prompt = "a".repeat(41); // 11 tokens
    let (status, body) = post_json(
        &sim,
        "/v1/completions",
        json!({"model": "qwq-32b", "prompt": prompt, "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "qwq-32b");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["choices"][0]["text"], " tok tok tok tok tok");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 16);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    // Default max_tokens of /v1/completions is 16, as in vLLM.
    let (_, body) = post_json(
        &sim,
        "/v1/completions",
        json!({"model": "qwq-32b", "prompt": [1, 2, 3]}),
    )
    .await;
    assert_eq!(body["usage"]["completion_tokens"], 16);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(sim.stats().requests_completed, 2);
}

#[tokio::test]
async fn chat_completion_echoes_model_and_counts_messages() {
    let sim = zero_delay().await;
    let (status, body) = post_json(
        &sim,
        "/v1/chat/completions",
        json!({
            "model": "sql-lora",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
            "max_completion_tokens": 3
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "sql-lora");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], " tok tok tok");
    // "system: be brief\nuser: hi there\n" = 32 characters.
    assert_eq!(body["usage"]["prompt_tokens"], 8);
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn sse_stream_delivers_one_chunk_per_token_then_usage_and_done() {
    let sim = zero_delay().await;
    let req = json!({
        "model": "qwq-32b", "prompt": "stream me", "max_tokens": 7, "stream": true,
        "stream_options": {"include_usage": true}
    });
    let ex = send(&sim, "POST", "/v1/completions", Some(req.to_string())).await;
    assert_eq!(ex.response.headers()["content-type"], "text/event-stream");
    let (status, body) = text(ex).await;
    assert_eq!(status, StatusCode::OK);
    let data = sse_data(&body);
    assert_eq!(data.len(), 7 + 2, "{body}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..8].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    for (i, c) in chunks[..7].iter().enumerate() {
        assert_eq!(c["choices"][0]["text"], " tok");
        let want = if i == 6 { json!("length") } else { Value::Null };
        assert_eq!(c["choices"][0]["finish_reason"], want, "chunk {i}");
    }
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 7);
    assert_eq!(chunks[7]["usage"]["prompt_tokens"], 3);

    // Chat: a role chunk first, no usage chunk unless asked for.
    let req = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": true});
    let (_, body) = text(send(&sim, "POST", "/v1/chat/completions", Some(req.to_string())).await).await;
    let data = sse_data(&body);
    assert_eq!(data.len(), 1 + 4 + 1, "{body}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let last: Value = serde_json::from_str(&data[4]).unwrap();
    assert_eq!(last["choices"][0]["delta"]["content"], " tok");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn with_a_model_tokenizer_prompts_are_counted_and_cached_in_its_tokens() {
    let dir = std::env::temp_dir().join(format!("switchyard-sim-tokenizer-{}", std::process::id()));
    let path = tokenizer::synthetic::write_dir(&dir).unwrap();
    let mut cfg = ReplicaConfig::zero_delay();
    cfg.engine.prefix_caching = true;
    cfg.prompts = vllm_sim::tokenize::Prompts::load(&path).unwrap();
    let sim = start(cfg).await;
    // Three-letter words are one token each: 40 words is 40 tokens, where the stand-in would count 40.
    let words = "abc def ghi jkl ".repeat(10);
    let (status, body) = post_json(
        &sim,
        "/v1/completions",
        json!({"model": "qwq-32b", "prompt": words.trim_end(), "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 40);
    // A chat conversation goes through the ChatML template: its special tokens count as one each.
    let chat =
        json!({"model": "qwq-32b", "max_tokens": 2, "messages": [{"role": "user", "content": words.trim_end()}]});
    let (_, first) = post_json(&sim, "/v1/chat/completions", chat.clone()).await;
    let tokenizer = tokenizer::Tokenizer::from_file(&path).unwrap();
    let expected = tokenizer
        .encode_chat(&[tokenizer::ChatMessage {
            role: "user".into(),
            content: words.trim_end().into(),
        }])
        .unwrap()
        .len();
    assert_eq!(first["usage"]["prompt_tokens"], expected);
    // Sent again, its full blocks are cached (all but the last token's block, as vLLM always computes one token).
    let (_, second) = post_json(&sim, "/v1/chat/completions", chat).await;
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached as usize,
        (expected - 1) / vllm_sim::BLOCK_SIZE * vllm_sim::BLOCK_SIZE,
        "{second}"
    );
    // The generated filler text is one token of the model's vocabulary.
    assert_eq!(tokenizer.encode_plain(" tok").unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stream_is_incremental_and_disconnect_frees_the_request() {
    // Real step times (≈ 43 ms per token): 100 tokens take over 4 s, far longer than this test.
    let sim = start(ReplicaConfig::default()).await;
    let req = json!({"model": "qwq-32b", "prompt": "p".repeat(400), "max_tokens": 5000, "stream": true});
    let mut ex = send(&sim, "POST", "/v1/completions", Some(req.to_string())).await;
    assert_eq!(ex.response.status(), StatusCode::OK);
    let mut events = 0;
    while events < 3 {
        let frame = tokio::time::timeout(DEADLINE, ex.response.body_mut().frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(data) = frame.data_ref() {
            events += String::from_utf8_lossy(data).matches("data: ").count();
        }
    }
    let snap = sim.engine_snapshot();
    assert_eq!(snap.running, 1);
    assert!(snap.kv_usage > 0.0);
    assert!(
        snap.metrics.generation_tokens < 100,
        "tokens must arrive as they are generated"
    );

    drop(ex); // closes the connection mid-stream
    eventually(&sim, "the aborted request to leave the engine", || {
        sim.engine_snapshot().running == 0
    })
    .await;
    let snap = sim.engine_snapshot();
    assert_eq!((snap.waiting, snap.kv_usage), (0, 0.0));
    assert_eq!(sim.stats().requests_aborted, 1);
    let (_, metrics) = text(send(&sim, "GET", "/metrics", None).await).await;
    assert!(
        metrics.contains("vllm:num_requests_running{model_name=\"qwq-32b\"} 0.0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn dropped_json_request_is_aborted() {
    let cfg = ReplicaConfig {
        time_scale: 10.0,
        ..ReplicaConfig::default()
    };
    let sim = start(cfg).await;
    let req = json!({"model": "qwq-32b", "prompt": "q".repeat(400), "max_tokens": 5000});
    let ex = tokio::spawn({
        let addr = sim.addr();
        async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            let req = Request::post("/v1/completions")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(req.to_string())))
                .unwrap();
            // The connection is driven inside this task, so aborting the task closes the socket.
            tokio::select! { _ = sender.send_request(req) => {}, _ = connection => {} }
        }
    });
    eventually(&sim, "the request to start running", || {
        sim.engine_snapshot().running == 1
    })
    .await;
    ex.abort(); // drops the connection while the server is still generating
    eventually(&sim, "the aborted request to leave the engine", || {
        sim.engine_snapshot().running == 0
    })
    .await;
    assert_eq!(sim.stats().requests_aborted, 1);
    assert_eq!(sim.engine_snapshot().kv_usage, 0.0);
}

#[tokio::test]
async fn models_health_and_metrics() {
    let sim = zero_delay().await;
    let (status, body) = text(send(&sim, "GET", "/health", None).await).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));

    let (status, body) = text(send(&sim, "GET", "/v1/models", None).await).await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qwq-32b", "sql-lora", "chat-lora"]);
    assert_eq!(models["data"][1]["parent"], "qwq-32b");

    post_json(&sim, "/v1/completions", json!({"prompt": "warm up", "max_tokens": 2})).await;
    let ex = send(&sim, "GET", "/metrics", None).await;
    assert!(
        ex.response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let (_, metrics) = text(ex).await;
    for line in [
        "vllm:num_requests_waiting{model_name=\"qwq-32b\"} 0.0",
        "vllm:num_requests_running{model_name=\"qwq-32b\"} 0.0",
        "vllm:kv_cache_usage_perc{model_name=\"qwq-32b\"} 0.0",
        "vllm:gpu_cache_usage_perc{model_name=\"qwq-32b\"} 0.0",
        "vllm:generation_tokens_total{model_name=\"qwq-32b\"} 2.0",
        "vllm:time_to_first_token_seconds_count{model_name=\"qwq-32b\"} 1.0",
        "vllm:e2e_request_latency_seconds_count{model_name=\"qwq-32b\"} 1.0",
        "# TYPE vllm:num_preemptions_total counter",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.lines().any(|l| {
        l.starts_with("vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters=\"\",")
    }));
    assert!(metrics.contains("vllm:cache_config_info{block_size=\"16\""));
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let sim = zero_delay().await;
    // 8000 prompt tokens + 500 > 8192.
    let (status, body) = post_json(
        &sim,
        "/v1/completions",
        json!({"prompt": "x".repeat(32_000), "max_tokens": 500}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "BadRequestError");
    assert_eq!(body["error"]["code"], 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8192"),
        "{body}"
    );

    let (status, body) = text(send(&sim, "POST", "/v1/completions", Some("{not json".into())).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "BadRequestError");

    let (status, _) = post_json(&sim, "/v1/chat/completions", json!({"model": "qwq-32b"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "messages are required");

    let (status, body) = post_json(&sim, "/v1/completions", json!({"model": "nope", "prompt": "hi"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "The model `nope` does not exist.");
    assert_eq!(sim.stats().requests_rejected, 4);
    assert_eq!(sim.stats().requests_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_all_complete() {
    let sim = zero_delay().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = sim.addr();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            let body = json!({"prompt": format!("request {i}"), "max_tokens": 8}).to_string();
            let req = Request::post("/v1/completions")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 8);
        }));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
    }
    assert_eq!(sim.stats().requests_completed, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn prefix_caching_reports_cached_tokens() {
    let mut cfg = ReplicaConfig::zero_delay();
    cfg.engine.prefix_caching = true;
    cfg.engine.profile = Profile::ZeroDelay;
    let sim = start(cfg).await;
    let shared = "s".repeat(4 * 320); // 320 tokens = 20 full blocks
    let (_, first) = post_json(
        &sim,
        "/v1/completions",
        json!({"prompt": format!("{shared}first tail"), "max_tokens": 2}),
    )
    .await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, second) = post_json(
        &sim,
        "/v1/completions",
        json!({"prompt": format!("{shared}second tail"), "max_tokens": 2}),
    )
    .await;
    assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"], 320);
    let (_, metrics) = text(send(&sim, "GET", "/metrics", None).await).await;
    assert!(
        metrics.contains("vllm:prefix_cache_hits_total{model_name=\"qwq-32b\"} 320.0"),
        "{metrics}"
    );
    assert!(metrics.contains("enable_prefix_caching=\"True\""));
}

#[tokio::test]
async fn injected_errors_are_500s_with_an_openai_body_and_counted() {
    let mut cfg = ReplicaConfig::zero_delay();
    cfg.fault.error_rate = 1.0;
    let sim = start(cfg).await;
    let (status, body) = post_json(&sim, "/v1/completions", json!({"prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["type"], "InternalServerError");
    assert_eq!(body["error"]["code"], 500);
    let (status, _) = post_json(
        &sim,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let stats = sim.stats();
    assert_eq!((stats.requests_failed, stats.requests_received), (2, 0));
    let (_, metrics) = text(send(&sim, "GET", "/metrics", None).await).await;
    assert!(
        metrics.contains("vllm_sim:injected_errors_total{model_name=\"qwq-32b\"} 2.0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_slow_model_waits_before_the_engine_and_its_ttft_shows_it() {
    // Real time (scale 1): a short prompt's solo prefill is ≈ 44 ms, so the adapter's TTFT is ≈ 5 × 44 ms.
    let mut cfg = ReplicaConfig {
        lora_adapters: vec!["v2".into()],
        fault: vllm_sim::Fault {
            slow_model: Some("v2".into()),
            slow_factor: 5.0,
            ..vllm_sim::Fault::default()
        },
        ..ReplicaConfig::default()
    };
    cfg.engine.max_loras = 1;
    let sim = start(cfg).await;
    let ttft = |sim: &ReplicaHandle| {
        let m = sim.engine_snapshot().metrics.ttft;
        (m.count(), m.sum())
    };
    let body = |model: &str| json!({"model": model, "prompt": "hello", "max_tokens": 1});

    let (status, _) = post_json(&sim, "/v1/completions", body("qwq-32b")).await;
    assert_eq!(status, StatusCode::OK);
    let (n, base) = ttft(&sim);
    assert_eq!(n, 1);
    let started = tokio::time::Instant::now();
    let (status, answer) = post_json(&sim, "/v1/completions", body("v2")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Lower bounds only: a busy machine can make either request slower, never the slow one faster.
    assert!(
        started.elapsed() >= Duration::from_millis(4 * 44),
        "{:?}",
        started.elapsed()
    );
    let (n, both) = ttft(&sim);
    assert_eq!(n, 2);
    let slow = both - base;
    assert!(slow >= 5.0 * 0.044 * 0.95, "slow TTFT {slow} s");
    assert!(slow > base, "slow {slow} s, base {base} s");
    assert_eq!(sim.stats().requests_completed, 2);
}
