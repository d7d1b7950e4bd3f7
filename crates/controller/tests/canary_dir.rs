//! End to end in dir mode: simulated vLLM pods, a real gateway over a YAML directory, client load through its
//! proxy, and the controller's canary driver judging the release from the gateway's /metrics. A healthy canary is
//! promoted to 100 %; a canary that fails half its requests, and one that is slow to start, are rolled back to
//! 0 %, naming the broken limit and the numbers.
//!
//! Every pod serves both targets (the stable base model and the canary as an adapter), as pods of one
//! InferencePool must; the failing and the slow canary are faults scoped to the canary's model name, so the
//! stable target stays healthy on the same pods. (Two fleets in one pool, stable-only pods beside canary pods,
//! would get canary requests routed to pods that do not serve the adapter: the default profile's LoRA scorer is
//! a preference, and a target counts as an adapter only once some pod reports it active.)

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use api::canary::{CanaryReleaseStatus, Phase};
use bytes::Bytes;
use clap::Parser as _;
use controller::canary::dir::DirDriver;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_util::sync::CancellationToken;
use vllm_sim::{Fault, ReplicaConfig, ReplicaHandle, spawn_replica};

const DEADLINE: Duration = Duration::from_secs(40);

/// How often the canary driver evaluates the release, as `--canary-interval` would set it.
const DRIVER_INTERVAL: Duration = Duration::from_millis(200);

use test_support::bind_pods;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-canary-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &Path, port: u16, sims: &[ReplicaHandle]) {
    let pool = format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: pool\n\
         spec:\n  targetPortNumber: {port}\n  selector:\n    app: vllm\n"
    );
    let pods: Vec<String> = sims
        .iter()
        .enumerate()
        .map(|(i, sim)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vllm-{i}\n  labels:\n    app: vllm\nstatus:\n  podIP: {}\n\
                 \x20 conditions:\n  - type: Ready\n    status: \"True\"\n",
                sim.addr().ip()
            )
        })
        .collect();
    // The pool and pods share a file with the model, so the rewrite must keep the other documents intact.
    let model = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: qwq\n\
                 spec:\n  modelName: qwq\n  criticality: Critical\n  poolRef:\n    name: pool\n  targetModels:\n\
                 \x20 - name: qwq-32b\n    weight: 100\n  - name: qwq-32b-v2\n    weight: 0\n";
    std::fs::write(
        dir.join("all.yaml"),
        format!("{pool}---\n{}---\n{model}", pods.join("---\n")),
    )
    .unwrap();
}

const RELEASE: &str = "\
apiVersion: switchyard.dev/v1alpha1
kind: CanaryRelease
metadata:
  name: qwq-v2
spec:
  modelRef: qwq
  stable: qwq-32b
  canary: qwq-32b-v2
  steps: [10, 50, 100]
  hold: 1s
  minRequests: 15
  limits:
    # Generous on latency: both targets run on the same pods, and 2 shared CPU cores make a debug build's TTFT noisy.
    maxTtftP90Ratio: 3.0
    maxErrorRateIncrease: 0.05
";

/// Weights of the InferenceModel as the file says now.
fn weights(dir: &Path) -> Vec<(String, i64)> {
    let doc = api::dir::find(dir, "InferenceModel", "default", "qwq")
        .unwrap()
        .unwrap();
    doc.value["spec"]["targetModels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["weight"].as_i64().unwrap()))
        .collect()
}

/// Runs a release against pods with `fault` and returns its final status (or panics at the deadline).
async fn release_with(block: u8, name: &str, fault: Fault) -> (CanaryReleaseStatus, Vec<(String, i64)>, PathBuf) {
    let (port, listeners) = bind_pods(block, 2).await;
    let mut sims = Vec::new();
    for listener in listeners {
        let mut config = ReplicaConfig {
            lora_adapters: vec!["qwq-32b-v2".into()],
            time_scale: 50.0,
            fault: fault.clone(),
            seed: Some(u64::from(block)),
            ..ReplicaConfig::default()
        };
        config.engine.max_loras = 2;
        sims.push(spawn_replica(config, listener).await.unwrap());
    }
    let dir = temp_dir(name);
    write_config(&dir, port, &sims);
    let gateway = gateway::start(gateway::args::Args::parse_from([
        "gateway",
        "--dir",
        &dir.display().to_string(),
        "--proxy-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--extproc-listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
        "--dir-poll",
        "50ms",
        "--scrape-interval",
        "20ms",
    ]))
    .await
    .unwrap();
    let proxy = format!("http://{}/v1/completions", gateway.proxy_addr.unwrap());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = {
        let (client, proxy) = (client.clone(), proxy.clone());
        move |i: u64| {
            let (client, proxy) = (client.clone(), proxy.clone());
            async move {
                let body = format!(r#"{{"model": "qwq", "prompt": "question {i}", "max_tokens": 6}}"#);
                let request = hyper::Request::post(&proxy)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                match client.request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    Err(_) => 0,
                }
            }
        }
    };
    // The gateway routes once its datastore holds the pods and the model; a Critical request does not wait for
    // metrics, so the first request after that is routed.
    let mut snapshots = gateway.director.datastore.subscribe();
    let loaded = snapshots.wait_for(|s| s.endpoints().len() == sims.len() && s.model("qwq").is_some());
    tokio::time::timeout(Duration::from_secs(10), loaded)
        .await
        .expect("the gateway never loaded the directory")
        .unwrap();
    assert_eq!(send(0).await, 200, "the gateway routes once loaded");

    let stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for client_id in 0..4u64 {
        let (send, stop) = (send.clone(), stop.clone());
        load.spawn(async move {
            // Bounded: a closed loop of at most 100 000 requests per client, ended by the test.
            for i in 0..100_000u64 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = send(client_id * 1_000_000 + i) => {}
                }
            }
        });
    }

    std::fs::write(dir.join("release.yaml"), RELEASE).unwrap();
    let metrics_url = format!("http://{}/metrics", gateway.admin_addr);
    let driver = DirDriver::new(&dir, vec![metrics_url], DRIVER_INTERVAL);

    // The driver's passes are run here, on its interval, so the status is read right after each one (the event
    // that can change it) rather than on a timer of the test's own.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut passes = tokio::time::interval(DRIVER_INTERVAL);
    passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        passes.tick().await;
        driver.tick().await.unwrap();
        let status = api::dir::read_status(&dir, "default", "qwq-v2").unwrap();
        if let Some(status) = status.as_ref().filter(|s| s.phase.is_terminal()) {
            break status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "release still running at the deadline: {status:#?}"
        );
    };
    stop.cancel();
    while let Some(joined) = load.join_next().await {
        joined.unwrap();
    }
    let weights = weights(&dir);
    gateway.stop().await;
    (status, weights, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step() {
    let (status, weights, dir) = release_with(71, "healthy", Fault::default()).await;
    assert_eq!(
        (status.phase, status.canary_percent),
        (Phase::Promoted, 100),
        "{status:#?}"
    );
    assert_eq!(weights, [("qwq-32b".to_owned(), 0), ("qwq-32b-v2".to_owned(), 100)]);
    let steps: Vec<(u32, u32)> = status.history.iter().map(|e| (e.from_percent, e.to_percent)).collect();
    assert!(steps.starts_with(&[(0, 10)]), "{steps:?}");
    assert!(steps.contains(&(10, 50)) && steps.ends_with(&[(50, 100)]), "{steps:?}");
    let promoted = status.history.last().unwrap();
    assert!(
        promoted.reason.starts_with("promoted after 50 %"),
        "{}",
        promoted.reason
    );
    assert_eq!(promoted.actor, "controller");
    assert!(status.canary.unwrap().requests >= 15);
    // The user's file keeps only the spec; the status lives in the sidecar.
    let release = std::fs::read_to_string(dir.join("release.yaml")).unwrap();
    assert_eq!(release, RELEASE);
    let all = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    assert!(
        all.starts_with("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_naming_the_limit() {
    let fault = Fault {
        error_rate: 0.5,
        error_model: Some("qwq-32b-v2".into()),
        ..Fault::default()
    };
    let (status, weights, _dir) = release_with(72, "failing", fault).await;
    assert_eq!(
        (status.phase, status.canary_percent),
        (Phase::RolledBack, 0),
        "{status:#?}"
    );
    assert_eq!(weights, [("qwq-32b".to_owned(), 100), ("qwq-32b-v2".to_owned(), 0)]);
    let rollback = status.history.last().unwrap();
    assert_eq!(
        (rollback.from_percent, rollback.to_percent),
        (10, 0),
        "rolled back in the first step"
    );
    assert!(rollback.reason.contains("maxErrorRateIncrease"), "{}", rollback.reason);
    let canary = status.canary.unwrap();
    assert!(canary.error_rate > 0.2, "{canary:?}");
    assert_eq!(status.stable.unwrap().error_rate, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_its_ttft_p90() {
    // Each canary request waits 149 solo prefills (≈ 6.6 simulated s, 131 ms of wall time at 50×) before the
    // engine, outside the batch its stable neighbours share. A debug gateway on 2 busy cores puts stable's P90
    // (a whole 6-token answer: the proxy's TTFT is its first body byte) near 20 ms, so a factor of 40 only just
    // crossed the 3× limit; 150 stays far beyond it even when the machine doubles stable's latency.
    let fault = Fault {
        slow_model: Some("qwq-32b-v2".into()),
        slow_factor: 150.0,
        ..Fault::default()
    };
    let (status, weights, _dir) = release_with(73, "slow", fault).await;
    assert_eq!(
        (status.phase, status.canary_percent),
        (Phase::RolledBack, 0),
        "{status:#?}"
    );
    assert_eq!(weights, [("qwq-32b".to_owned(), 100), ("qwq-32b-v2".to_owned(), 0)]);
    let rollback = status.history.last().unwrap();
    assert_eq!(
        (rollback.from_percent, rollback.to_percent),
        (10, 0),
        "rolled back in the first step: {rollback:#?}"
    );
    let reason = &rollback.reason;
    assert!(
        reason.starts_with("rolled back from 10 %: canary TTFT P90 ") && reason.contains("maxTtftP90Ratio 3×"),
        "{reason}"
    );
    // The reason carries the two P90s the rollback was decided on: the same window as the status' observations.
    let (canary, stable) = (status.canary.clone().unwrap(), status.stable.clone().unwrap());
    let said_canary = number_after(reason, "canary TTFT P90 ");
    let said_stable = number_after(reason, "stable's ");
    assert!(said_canary > 3.0 * said_stable, "{reason}");
    for (said, observed) in [(said_canary, canary.ttft_p90_ms), (said_stable, stable.ttft_p90_ms)] {
        let observed = observed.unwrap_or_else(|| panic!("no TTFT observed: {status:#?}"));
        assert!((said - observed).abs() <= 0.6, "{reason} vs observed {observed} ms");
    }
    // Slow, not failing: latency alone broke the release.
    assert_eq!((canary.error_rate, stable.error_rate), (0.0, 0.0), "{status:#?}");
}

/// The number that follows `prefix` in `text` (e.g. `12` in "… P90 12 ms …").
fn number_after(text: &str, prefix: &str) -> f64 {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {text:?}"))
        + prefix.len();
    let number: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|e| panic!("{e}: no number after {prefix:?} in {text:?}"))
}
