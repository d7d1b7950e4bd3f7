//! End-to-end tests of the standalone proxy over loopback: fake pods with scripted metrics, a real gateway.

mod common;

use std::net::IpAddr;

use common::*;
use scheduler::EndpointId;

struct Setup {
    gw: gateway::Gateway,
    pods: Vec<FakePod>,
    base: String,
    admin: String,
    dir: std::path::PathBuf,
}

/// A pool of `n` fake pods in 127.0.`block`.0/24 with models `qwq` (Critical, → qwq-32b) and `batch` (Sheddable).
async fn setup(name: &str, block: u8, n: u8, extra: &[&str]) -> Setup {
    let (port, listeners) = bind_pods(block, n).await;
    let mut pods = Vec::new();
    for listener in listeners {
        pods.push(serve_fake_pod(listener).await);
    }
    let dir = temp_dir(name);
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr.ip()).collect();
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    std::fs::write(
        dir.join("models.yaml"),
        format!(
            "{}---\n{}",
            model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
            model_yaml("batch", "batch", "Sheddable", &[("qwq-32b", 100)])
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pods.yaml"), pods_yaml(&ips)).unwrap();
    let gw = start_gateway(&dir, extra).await;
    let ids: Vec<EndpointId> = pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    wait_scraped(&gw, &ids).await;
    let base = format!("http://{}", gw.proxy_addr.unwrap());
    let admin = format!("http://{}", gw.admin_addr);
    Setup {
        gw,
        pods,
        base,
        admin,
        dir,
    }
}

const CHAT: &str = r#"{"model":"qwq","messages":[{"role":"user","content":"Who are you?"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_status_and_message() {
    let s = setup("bad-input", 31, 2, &["--max-body-bytes", "1024"]).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let cases: &[(&str, String, u16, &str)] = &[
        (
            "bad json",
            "{not json".into(),
            400,
            "inference error: BadRequest - error unmarshaling request body",
        ),
        (
            "empty body",
            String::new(),
            400,
            "inference error: BadRequest - request body is empty",
        ),
        (
            "missing model",
            r#"{"messages":[{"role":"user","content":"x"}]}"#.into(),
            400,
            "inference error: BadRequest - model not found in request body",
        ),
        (
            "model not a string",
            r#"{"model":1,"messages":[{"role":"user","content":"x"}]}"#.into(),
            400,
            "inference error: BadRequest - model not found",
        ),
        (
            "no messages",
            r#"{"model":"qwq"}"#.into(),
            400,
            "inference error: BadRequest - invalid chat completions request",
        ),
        (
            "unknown model",
            r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#.into(),
            404,
            "inference error: NotFound - model \"gpt-9\" is not served by this pool",
        ),
        (
            "too large",
            format!(
                r#"{{"model":"qwq","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "x".repeat(2000)
            ),
            413,
            "inference error: PayloadTooLarge - request body is larger than the limit of 1024 bytes",
        ),
    ];
    for (what, body, status, message) in cases {
        let reply = c.post(&url, body.clone()).await;
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
        assert!(reply.body.starts_with(message), "{what}: got {:?}", reply.body);
    }
    let reply = c.post(&format!("{}/v1/nope", s.base), "{}").await;
    assert_eq!(reply.status, 404);
    assert!(
        s.pods.iter().all(|p| p.received() == 0),
        "no bad request may reach a pod"
    );
    // Every rejection is in the audit log with its outcome.
    let decisions: Vec<serde_json::Value> =
        serde_json::from_str(&c.get(&format!("{}/debug/decisions?limit=50", s.admin)).await.body).unwrap();
    let outcomes: Vec<&str> = decisions.iter().filter_map(|d| d["outcome"].as_str()).collect();
    assert!(
        outcomes.contains(&"BadRequest400") && outcomes.contains(&"NotFound404"),
        "{outcomes:?}"
    );
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_the_least_loaded_pod_and_rewrites_the_model() {
    let s = setup("least-loaded", 32, 3, &[]).await;
    s.pods[0].set(4, 0.7);
    s.pods[1].set(0, 0.1);
    s.pods[2].set(3, 0.5);
    let ids: Vec<EndpointId> = s.pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    wait_scraped(&s.gw, &ids).await;
    // Metrics may still show the previous values for one scrape interval, so wait for the scraped value.
    wait_metrics(&s.gw, &ids[0], |m| m.waiting_queue == 4).await;
    let reply = client().post(&format!("{}/v1/chat/completions", s.base), CHAT).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.headers["x-gateway-destination-endpoint-served"],
        s.pods[1].addr.to_string()
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["model"], "qwq-32b", "the pod must be asked for the target model");
    assert_eq!(s.pods[1].state.lock().unwrap().bodies[0]["model"], "qwq-32b");

    let decisions: Vec<serde_json::Value> =
        serde_json::from_str(&client().get(&format!("{}/debug/decisions?limit=1", s.admin)).await.body).unwrap();
    let d = &decisions[0];
    assert_eq!(d["outcome"], "Routed");
    assert_eq!(d["model"], "qwq");
    assert_eq!(d["target_model"], "qwq-32b");
    assert_eq!(d["endpoint"], s.pods[1].addr.to_string());
    assert_eq!(d["candidates"].as_array().unwrap().len(), 3);
    assert!(
        d["candidates"][0]["scores"].as_object().is_some_and(|m| !m.is_empty()),
        "{d}"
    );
    assert_eq!(d["status"], 200);
    assert_eq!(d["prompt_tokens"], 7);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sse_chunk_by_chunk_and_records_usage() {
    let s = setup("sse", 33, 1, &[]).await;
    let body = r#"{"model":"qwq","stream":true,"prompt":"hello there"}"#;
    let reply = client().post(&format!("{}/v1/completions", s.base), body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    assert!(reply.body.ends_with("data: [DONE]\n\n"));
    // The pod spaces its six events 30 ms apart; a buffering proxy would deliver them in one frame at the end.
    assert!(reply.frames.len() >= 4, "frames: {:?}", reply.frames);
    let spread = *reply.frames.last().unwrap() - reply.frames[0];
    assert!(
        spread >= std::time::Duration::from_millis(100),
        "frames arrived together: {:?}",
        reply.frames
    );

    let decisions: Vec<serde_json::Value> =
        serde_json::from_str(&client().get(&format!("{}/debug/decisions?limit=1", s.admin)).await.body).unwrap();
    assert_eq!(decisions[0]["completion_tokens"], 4);
    assert!(decisions[0]["ttft_ms"].as_f64().unwrap() < decisions[0]["duration_ms"].as_f64().unwrap());
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_is_shed_under_saturation_while_critical_is_routed() {
    let s = setup("shed", 34, 2, &[]).await;
    for pod in &s.pods {
        pod.set(50, 0.99);
    }
    let ids: Vec<EndpointId> = s.pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    for id in &ids {
        wait_metrics(&s.gw, id, |m| m.waiting_queue == 50).await;
    }
    let c = client();
    let shed = c
        .post(
            &format!("{}/v1/completions", s.base),
            r#"{"model":"batch","prompt":"x"}"#,
        )
        .await;
    assert_eq!(shed.status, 429);
    assert_eq!(
        shed.body,
        "inference error: ResourceExhausted - system saturated, sheddable request dropped"
    );
    let critical = c
        .post(&format!("{}/v1/completions", s.base), r#"{"model":"qwq","prompt":"x"}"#)
        .await;
    assert_eq!(critical.status, 200, "{}", critical.body);
    assert_eq!(s.pods.iter().map(FakePod::received).sum::<usize>(), 1);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_pod_is_503() {
    let (port, _listeners) = bind_pods(35, 1).await;
    let dir = temp_dir("no-pods");
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    std::fs::write(
        dir.join("model.yaml"),
        model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
    )
    .unwrap();
    let gw = start_gateway(&dir, &[]).await;
    wait_synced(&gw).await;
    let reply = client()
        .post(&format!("http://{}/v1/chat/completions", gw.proxy_addr.unwrap()), CHAT)
        .await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.starts_with("inference error: ServiceUnavailable - "),
        "{}",
        reply.body
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_in_the_directory_take_effect() {
    let s = setup("weights", 36, 1, &[]).await;
    std::fs::write(
        s.dir.join("models.yaml"),
        format!(
            "{}---\n{}",
            model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 0), ("qwq-32b-v2", 100)]),
            model_yaml("batch", "batch", "Sheddable", &[("qwq-32b", 100)])
        ),
    )
    .unwrap();
    let datastore = &s.gw.director.datastore;
    let mut snapshots = datastore.subscribe();
    test_support::until(
        &mut snapshots,
        std::time::Duration::from_secs(5),
        "the new weights",
        || {
            datastore.snapshot().model("qwq").is_some_and(|m| {
                let weights: Vec<_> = m.targets.iter().map(|t| (t.name.as_str(), t.weight)).collect();
                weights == [("qwq-32b", Some(0)), ("qwq-32b-v2", Some(100))]
            })
        },
    )
    .await;
    // Once the snapshot has them, every request follows them.
    for _ in 0..3 {
        let reply = client()
            .post(&format!("{}/v1/completions", s.base), r#"{"model":"qwq","prompt":"x"}"#)
            .await;
        assert_eq!(reply.status, 200);
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["model"], "qwq-32b-v2");
    }
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_the_next_best_pod() {
    // Long staleness so the dead pod keeps its (attractive) last metrics and is picked first.
    let config = temp_dir("retry-config").join("scheduler.yaml");
    std::fs::write(&config, "saturation:\n  metricsStalenessMs: 60000\n").unwrap();
    let s = setup("retry", 37, 2, &["--scheduler-config", config.to_str().unwrap()]).await;
    s.pods[0].set(0, 0.0);
    s.pods[1].set(4, 0.6);
    let ids: Vec<EndpointId> = s.pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    wait_metrics(&s.gw, &ids[1], |m| m.waiting_queue == 4).await;
    s.pods[0].kill();
    let reply = client().post(&format!("{}/v1/chat/completions", s.base), CHAT).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.headers["x-gateway-destination-endpoint-served"],
        s.pods[1].addr.to_string()
    );
    let decisions: Vec<serde_json::Value> =
        serde_json::from_str(&client().get(&format!("{}/debug/decisions?limit=1", s.admin)).await.body).unwrap();
    assert_eq!(decisions[0]["endpoint"], s.pods[1].addr.to_string());
    assert!(
        decisions[0]["reason"].as_str().unwrap().contains("fallback"),
        "{}",
        decisions[0]
    );
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_per_model_and_target() {
    let s = setup("metrics", 38, 1, &[]).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            c.post(&format!("{}/v1/chat/completions", s.base), CHAT).await.status,
            200
        );
    }
    let text = c.get(&format!("{}/metrics", s.admin)).await.body;
    assert!(
        text.contains(r#"switchyard_requests_total{model="qwq",target_model="qwq-32b",outcome="Routed"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_request_ttft_seconds_count{model="qwq",target_model="qwq-32b"} 3"#),
        "{text}"
    );
    let ready = c.get(&format!("{}/readyz", s.admin)).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    s.gw.stop().await;
}

/// Sends `n` concurrent streamed completions with `prompt` and returns how many each pod received.
async fn burst(s: &Setup, n: usize, prompt: &str) -> Vec<usize> {
    let body = format!(r#"{{"model":"qwq","stream":true,"prompt":"{prompt}"}}"#);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (url, body) = (format!("{}/v1/completions", s.base), body.clone());
        tasks.spawn(async move { client().post(&url, body).await.status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(s.gw.director.inflight(), 0, "every request finished");
    s.pods.iter().map(FakePod::received).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_spread_before_any_scrape_can_see_it() {
    // Equal metrics everywhere and nothing to share: scraped numbers cannot tell the pods apart during a burst
    // (each streamed response lasts 150 ms, so all six overlap); the gateway's own in-flight counts can.
    let s = setup("burst", 39, 3, &[]).await;
    assert_eq!(burst(&s, 6, "hi").await, [2, 2, 2]);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_prefix_holds_its_pod_only_a_few_requests_past_the_others() {
    let s = setup("burst-prefix", 41, 3, &[]).await;
    let prompt = "shared system prompt ".repeat(40);
    // A full prefix match (weight 4, plus a sliver of prefill backlog for this short prompt) outweighs up to four
    // extra requests in flight (one point of 8 each).
    let mut first = burst(&s, 3, &prompt).await;
    first.sort_unstable();
    assert_eq!(first, [0, 0, 3], "the warm pod keeps a small burst");
    // A larger burst spills over: once the warm pod carries five more than the others it loses, the prefix
    // spreads, and the load evens out instead of piling onto one pod (which would take all twelve).
    let before: Vec<usize> = s.pods.iter().map(FakePod::received).collect();
    let after = burst(&s, 12, &prompt).await;
    let got: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(got.iter().all(|&n| n >= 1), "every pod took part: {got:?}");
    assert!(got.iter().all(|&n| n <= 8), "no pile-up: {got:?}");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_names_mint_no_series_and_are_kept_bounded() {
    let s = setup("unknown-names", 42, 1, &[]).await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    for i in 0..50 {
        let body = format!(r#"{{"model":"no-such-model-{i}","prompt":"x"}}"#);
        assert_eq!(c.post(&url, body).await.status, 404);
    }
    let long = "m".repeat(100_000);
    let reply = c.post(&url, format!(r#"{{"model":"{long}","prompt":"x"}}"#)).await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.body.len() < 1_000 && reply.body.contains('…'),
        "{}",
        reply.body.len()
    );

    let metrics = s.gw.director.recorder.metrics.encode();
    assert!(
        !metrics.contains("no-such-model"),
        "a client-chosen name became a label"
    );
    assert!(!metrics.contains("mmmm"), "a client-chosen name became a label");
    assert!(
        metrics.contains(r#"switchyard_requests_total{model="unknown",target_model="",outcome="NotFound404"} 51"#),
        "{metrics}"
    );
    let kept = &s.gw.director.recorder.decisions.latest(1)[0];
    assert_eq!(kept.model.len(), audit::MAX_NAME_BYTES + '…'.len_utf8());
    assert!(long.starts_with(kept.model.trim_end_matches('…')));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_in_the_upstream_format_and_is_counted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = setup("stalled-upload", 43, 1, &["--body-idle-timeout", "300ms"]).await;
    let mut stream = tokio::net::TcpStream::connect(s.gw.proxy_addr.unwrap()).await.unwrap();
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = r#"{"model":"qwq","#;
    stream
        .write_all(format!("{head}{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the proxy neither answered nor closed")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.ends_with("inference error: RequestTimeout - request body stalled: nothing received for 300ms"),
        "{response}"
    );
    let metrics = client().get(&format!("{}/metrics", s.admin)).await.body;
    assert!(
        metrics.contains(r#"switchyard_http_requests_rejected_total{listener="proxy",reason="body_idle"} 1"#),
        "{metrics}"
    );
    assert!(s.pods[0].received() == 0, "nothing reached a pod");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decisions_endpoint_can_be_turned_off() {
    let s = setup("no-decisions", 45, 1, &["--debug-decisions=false"]).await;
    let c = client();
    assert_eq!(
        c.post(&format!("{}/v1/chat/completions", s.base), CHAT).await.status,
        200
    );
    assert_eq!(c.get(&format!("{}/debug/decisions", s.admin)).await.status, 404);
    assert_eq!(
        c.get(&format!("{}/metrics", s.admin)).await.status,
        200,
        "the rest stays"
    );
    s.gw.stop().await;
}
