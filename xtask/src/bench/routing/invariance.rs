//! Time-scale invariance of the simulator as the benchmark measures it: the same seeded run at time scales 5, 10
//! and 25 (in-process pods, real HTTP on loopback, the benchmark's own clients and statistics) gives the same
//! simulated TPOT, throughput and TTFT mean within 3 %. `bench calibrate --time-scales 5,10,25` is the full-size,
//! closed-loop version.
//!
//! TPOT and throughput are the clients' figures. TTFT is the engines' own (from the request's arrival to its first
//! token on the engine clock, as vLLM's histogram): a client's TTFT also holds the harness's fixed wall time per
//! request (a debug build's HTTP client and server, ~3 ms here, measured), which each time scale multiplies
//! differently — 15 simulated ms at 5×, 75 at 25× — and which says nothing about the simulator. The release-build
//! benchmark compares the clients' TTFT across scales (BENCHMARKS.md).
//!
//! The run is open-loop so that it is the same run in simulated time at every scale: in a closed loop each
//! request's start depends on when the previous one ended, so a microsecond of jitter changes which prefills V0
//! batches together and the trajectories part (by about as much at one scale between repeats as across scales);
//! a short run cannot average that out.

use std::time::Instant;

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng, rngs::StdRng};
use vllm_sim::{ReplicaConfig, ReplicaHandle, spawn_replica};

use crate::{
    bench::{arrivals, calibrate::spread},
    load,
    workload::{BenchRequest, Class, Workload},
};

use super::{
    RouterKind, RoutingArgs,
    clients::{Route, open_loop},
    stats::{RunResult, summarize},
};

const PODS: usize = 2;
/// Requests per simulated second: about 60 % of what two pods can prefill.
const RATE: f64 = 1.2;

/// 48 requests with the seed's prompt lengths (1 000–4 000 tokens) and short outputs (20–100 tokens): about a
/// simulated minute on two pods, TTFTs of a second or more as in the seed, so that the wall time a request spends
/// outside the engine (HTTP, a debug build's JSON), which each time scale multiplies differently, stays small.
fn dataset() -> Vec<BenchRequest> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..48)
        .map(|i| {
            let tokens = rng.random_range(1_000..=4_000);
            BenchRequest {
                prompt: (0..tokens).map(|t| format!("{:03} ", (t * 7 + i) % 1000)).collect(),
                output_tokens: rng.random_range(20..=100),
                class: Class::Critical,
            }
        })
        .collect()
}

/// The clients' figures of one run, and the engines' mean TTFT in simulated ms.
async fn run_at(time_scale: f64, dataset: &[BenchRequest]) -> (RunResult, f64) {
    let mut pods: Vec<ReplicaHandle> = Vec::new();
    for _ in 0..PODS {
        let cfg = ReplicaConfig {
            time_scale,
            seed: Some(3),
            ..ReplicaConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        pods.push(spawn_replica(cfg, listener).await.expect("start a replica"));
    }
    let bases: Vec<String> = pods.iter().map(ReplicaHandle::base_url).collect();
    let route = Route {
        router: RouterKind::RoundRobin,
        model: "qwq-32b",
        bases: &bases,
        seed: 0,
    };
    let client = load::http_client();
    let plan = arrivals::schedule(dataset.len(), RATE, RATE, 1.0, 5);
    let mut args = RoutingArgs::defaults(Workload::Seed, time_scale);
    args.max_in_flight = Some(dataset.len());
    let started = Instant::now();
    let (measured, _) = open_loop(&client, &route, dataset, &plan, &args, &ProgressBar::hidden()).await;
    let wall = started.elapsed().as_secs_f64();
    let (mut ttft_sum, mut ttft_count) = (0.0, 0);
    for pod in &pods {
        let ttft = pod.engine_snapshot().metrics.ttft;
        ttft_sum += ttft.sum();
        ttft_count += ttft.count();
    }
    for pod in pods {
        pod.shutdown().await;
    }
    assert!(
        measured.iter().all(|m| m.ok),
        "every request completes at time scale {time_scale}"
    );
    let engine_ttft_ms = ttft_sum / ttft_count.max(1) as f64 * 1e3;
    (
        summarize(measured, wall, time_scale, 0, 0.0, Default::default()),
        engine_ttft_ms,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_figures_do_not_depend_on_the_time_scale() {
    let dataset = dataset();
    let mut runs = Vec::new();
    for scale in [5.0, 10.0, 25.0] {
        runs.push((scale, run_at(scale, &dataset).await));
    }
    let figures = [
        (
            "TPOT",
            runs.iter().map(|(_, (r, _))| r.tpot_mean_ms).collect::<Vec<_>>(),
        ),
        ("throughput", runs.iter().map(|(_, (r, _))| r.output_tok_s).collect()),
        ("TTFT mean", runs.iter().map(|(_, (_, ttft))| *ttft).collect()),
    ];
    for (what, values) in figures {
        assert!(values.iter().all(|v| v.is_finite() && *v > 0.0), "{what}: {values:?}");
        assert!(
            spread(&values) <= 0.03,
            "{what} at time scales 5/10/25: {values:?} (spread {:.1} %)",
            spread(&values) * 100.0
        );
    }
    // The engines saw every request once, and the clients' TTFT is theirs plus the harness's overhead.
    for (scale, (run, engine_ttft)) in &runs {
        assert!(
            run.ttft_mean_ms >= *engine_ttft && run.ttft_mean_ms < engine_ttft * 1.1,
            "at {scale}×: clients {} ms, engines {engine_ttft} ms",
            run.ttft_mean_ms
        );
    }
}
