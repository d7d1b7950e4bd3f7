//! The Markdown report of a routing benchmark.

use std::fmt::Write as _;

use crate::{bench::arrivals::Arrival, bench::classes, workload::Workload};

use super::{
    Outcome, Plan, RouterKind, RoutingArgs,
    peers::{SMG_PACKAGE, VLLM_ROUTER_PACKAGE},
    stats::{FIELDS, mean, spread},
};

pub(super) fn report(workload: Workload, args: &RoutingArgs, plan: &Plan, outcome: &Outcome) -> String {
    let (requests, seeds, results, wall) = (plan.requests, &plan.seeds, &outcome.results, outcome.wall);
    let floor = &outcome.floor;
    let mut md = String::new();
    let command = std::iter::once("cargo xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>();
    let _ = writeln!(md, "# Routing benchmark: workload `{}`\n", workload.name());
    let open = match args.arrival {
        Some(arrival) => arrival == Arrival::Poisson,
        None => workload.open_loop_by_default(),
    };
    let arrivals = if open {
        format!("open loop (gamma arrivals, burstiness {})", args.burstiness)
    } else {
        format!("closed loop of {}", workload.concurrency())
    };
    let _ = writeln!(
        md,
        "Command: `{}` · {requests} requests per run, seeds {seeds:?}, {arrivals}, time scale {} · wall time {:.0} s · {} cores.\n",
        command.join(" "),
        args.time_scale,
        wall.as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "Simulated QwQ-32B on 4×A10 (vllm-sim, V0 scheduler); times in simulated ms; means over seeds, ± half \
         their range; prefix caching {}; {} gateway replica(s) per gateway run.\n",
        if plan.prefix_caching { "on" } else { "off" },
        args.gateway_replicas
    );
    if results.keys().any(|(_, r)| r.peer().is_some()) {
        let _ = writeln!(
            md,
            "Peers: `{SMG_PACKAGE}` (`smg launch --policy cache_aware|round_robin --worker-urls <5 pods>`) and \
             `{VLLM_ROUTER_PACKAGE}` (`vllm-router --policy cache_aware|round_robin --worker-urls <5 pods>`), \
             defaults otherwise. vllm-sim answers vllm-router's per-request `/v1/completions/render` with 404, so \
             its cache-aware policy works on the request text, as it does against a vLLM without that endpoint.\n"
        );
    }
    let mut last_blocks = None;
    for ((blocks, router), runs) in results {
        if last_blocks != Some(*blocks) {
            last_blocks = Some(*blocks);
            let _ = writeln!(md, "\n## num_gpu_blocks = {blocks}\n");
            let _ = write!(md, "| router |");
            for (_, title) in FIELDS {
                let _ = write!(md, " {title} |");
            }
            let _ = write!(
                md,
                " TTFT mean ± spread | P90 ± spread | TTFT mean vs random | mean vs floor | P90 vs floor |\n|---|"
            );
            for _ in 0..FIELDS.len() + 5 {
                let _ = write!(md, "---:|");
            }
            md.push('\n');
        }
        let _ = write!(md, "| {} |", router.name());
        for (key, _) in FIELDS {
            let value = mean(runs, key);
            let _ = if key == "kv_spread" {
                write!(md, " {value:.3} |")
            } else {
                write!(md, " {value:.0} |")
            };
        }
        let ratio = results
            .get(&(*blocks, RouterKind::Random))
            .map(|random| format!("{:.2}×", mean(runs, "ttft_mean_ms") / mean(random, "ttft_mean_ms")))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            " {:.0} ± {:.0} | {:.0} ± {:.0} | {ratio} | {:.2}× | {:.2}× |",
            mean(runs, "ttft_mean_ms"),
            spread(runs, "ttft_mean_ms"),
            mean(runs, "ttft_p90_ms"),
            spread(runs, "ttft_p90_ms"),
            mean(runs, "ttft_mean_ms") / floor.mean_ms,
            mean(runs, "ttft_p90_ms") / floor.p90_ms
        );
    }
    let _ = writeln!(md, "\n{}", floor.describe());
    if classes::worth_reporting(results.values().flatten().map(|r| &r.extras)) {
        md.push_str(&classes::report(results.iter().map(|((blocks, router), runs)| {
            (*blocks, router.name(), runs.iter().map(|r| &r.extras).collect())
        })));
    }
    if workload == Workload::Seed {
        let _ = writeln!(
            md,
            "\nThe seed's own numbers (real vLLM 0.7.2, 5 × 4×A10, 3 000 requests): Kubernetes Service — TTFT mean 2 456 ms, \
             P99 23 509 ms, TPOT 63.5 ms, 916 out tok/s; inference extension — 1 797 ms, 8 857 ms, 63.1 ms, 927 tok/s \
             (−26.8 % mean, −62.3 % P99, +1.1 % throughput)."
        );
    }
    md
}
