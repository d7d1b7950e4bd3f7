//! vLLM KV events from a running replica, judged by an independent decoder: `tests/python/kv_events_decode.py`
//! (pyzmq + msgspec structs written from vLLM's definitions) subscribes over real ZeroMQ on loopback, checks every
//! event and the replay socket, while this harness keeps sending requests that fill and evict the prefix cache.
//!
//! The interpreter is `$SWITCHYARD_PYTHON`, else the venv `cargo xtask ci` installs at `target/pyenv-extproc`.
//! Without it the test fails with the command that creates it: it never passes by skipping.

use std::{path::Path, process::Stdio, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use vllm_sim::{ReplicaConfig, ReplicaHandle, kv_events::KvEventsConfig, spawn_replica};

/// One completion over a fresh HTTP/1.1 connection; returns the status.
async fn complete(replica: &ReplicaHandle, prompt: &str) -> u16 {
    let stream = TcpStream::connect(replica.addr()).await.expect("replica accepts");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    let conn = tokio::spawn(connection);
    let body = serde_json::json!({"model": "qwq-32b", "prompt": prompt, "max_tokens": 2}).to_string();
    let request = hyper::Request::post("/v1/completions")
        .header("host", replica.addr().to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = sender.send_request(request).await.expect("a response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    conn.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllms_own_structs_decode_the_events_and_the_replay() {
    let python = test_support::python();
    let mut cfg = ReplicaConfig::zero_delay();
    // Small, so a few distinct prompts evict what earlier ones stored.
    cfg.engine.num_gpu_blocks = 48;
    cfg.engine.prefix_caching = true;
    cfg.kv_events = Some(
        KvEventsConfig::parse(
            r#"{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:0",
                "replay_endpoint": "tcp://*:0", "topic": "kv@sim", "buffer_steps": 10000}"#,
        )
        .expect("a valid config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let replica = spawn_replica(cfg, listener).await.expect("the replica starts");
    let endpoint = replica.kv_events_endpoint().expect("the PUB socket binds").to_owned();
    let replay = replica
        .kv_replay_endpoint()
        .expect("the ROUTER socket binds")
        .to_owned();
    assert!(
        endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with(":0"),
        "{endpoint}"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kv_events_decode.py");
    let mut child = tokio::process::Command::new(&python)
        .env("PYTHONPATH", test_support::python_modules())
        .arg(&script)
        .args(["--endpoint", &endpoint, "--replay", &replay, "--topic", "kv@sim"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");

    // Requests until the decoder has what it needs (it exits), a wave at a time, each wave then waiting up to 50 ms
    // for the decoder to finish: the zero-delay replica would otherwise run every wave before the interpreter has
    // even subscribed. Bounded at 600 waves (~30 s). Each wave stores ~10 blocks and repeats one prompt, so the small
    // cache both hits and evicts.
    let mut waves = 0;
    loop {
        if tokio::time::timeout(Duration::from_millis(50), child.wait())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            waves < 600,
            "the decoder never finished after {waves} waves of requests"
        );
        let distinct = format!("wave {waves}: {}", "lorem ipsum dolor sit amet ".repeat(24));
        assert_eq!(complete(&replica, &distinct).await, 200);
        assert_eq!(complete(&replica, &"shared system prompt ".repeat(30)).await, 200);
        waves += 1;
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the decoder's output")
        .expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "decoder failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert!(summary["stored"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["removed"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["replayed"], summary["batches"], "{summary}");
    replica.shutdown().await;
}
