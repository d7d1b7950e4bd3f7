//! Runs the Python ext_proc suite (`tests/python/test_ext_proc.py`, client `envoy-data-plane`) against a real
//! gateway over fake pods, so an independent protobuf implementation judges the wire format too.
//!
//! The interpreter is `$SWITCHYARD_PYTHON`, else the venv `cargo xtask ci` installs at `target/pyenv-extproc`.
//! Without it the test fails with the command that creates it: it never passes by skipping.

mod common;

use std::{net::IpAddr, path::Path, time::Duration};

use common::*;
use scheduler::EndpointId;

/// Runs one scenario of the script; its output is shown when it fails.
async fn run_script(python: &Path, addr: std::net::SocketAddr, pods: &[String], scenario: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_ext_proc.py");
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .args([
            "--addr",
            &addr.to_string(),
            "--pods",
            &pods.join(","),
            "--scenario",
            scenario,
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("python suite hung")
        .expect("python starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python ext_proc suite ({scenario}) failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_envoy_data_plane_client_agrees() {
    let python = test_support::python();
    let (port, listeners) = bind_pods(80, 3).await;
    let mut pods = Vec::new();
    for listener in listeners {
        pods.push(serve_fake_pod(listener).await);
    }
    let dir = temp_dir("xp-python");
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr.ip()).collect();
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    let models = [
        model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
        model_yaml("batch", "batch", "Sheddable", &[("qwq-32b", 100)]),
        model_yaml("canary", "canary", "Critical", &[("canary-v1", 0), ("canary-v2", 100)]),
    ];
    std::fs::write(dir.join("models.yaml"), models.join("---\n")).unwrap();
    std::fs::write(dir.join("pods.yaml"), pods_yaml(&ips)).unwrap();
    let gw = start_gateway(&dir, &[]).await;
    let ids: Vec<EndpointId> = pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    let names: Vec<String> = ids.iter().map(|id| id.to_string()).collect();

    let settle = |loads: [(u32, f64); 3]| {
        for (pod, (queue, kv)) in pods.iter().zip(loads) {
            pod.set(queue, kv);
        }
        let (gw, ids) = (&gw, &ids);
        async move {
            for (id, (queue, kv)) in ids.iter().zip(loads) {
                wait_metrics(gw, id, |m| (m.waiting_queue, m.kv_cache_usage) == (queue, kv)).await;
            }
            wait_scraped(gw, ids).await;
        }
    };

    settle([(3, 0.2), (0, 0.1), (10, 0.2)]).await;
    run_script(&python, gw.extproc_addr, &names, "routing").await;
    // A stream the client cancelled must not leave a request in flight.
    wait_idle(&gw).await;
    let decisions = gw.director.recorder.decisions.latest(1000);
    assert!(
        decisions
            .iter()
            .any(|d| d.prompt_tokens == Some(5) && d.completion_tokens == Some(9)),
        "the SSE usage seen by the picker is in the decision record"
    );

    settle([(50, 0.99), (50, 0.99), (50, 0.99)]).await;
    run_script(&python, gw.extproc_addr, &names, "saturated").await;
    gw.stop().await;
}
