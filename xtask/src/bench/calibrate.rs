//! `cargo xtask bench calibrate`: the seed's exact experiment on the simulator, printed beside the seed's own table
//! with the relative error of every figure, over a sweep of KV sizes (and optionally of time scales).
//!
//! The seed (shared/seed, reproduced in shared/reference/simulator.md §3.5): vLLM 0.7.2 serving QwQ-32B on 5 pods of
//! 4×A10, `benchmark_serving.py --dataset-name random --random-prefix-len 1000 --random-input-len 4000
//! --random-output-len 3000 --random-range-ratio 0.2 --num-prompts 3000 --max-concurrency 60`, once through the
//! gateway's plain route to the Service ("standard gateway") and once through the inference extension.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use crate::{procs, workload::Workload};

use super::routing::{self, Outcome, Plan, RouterKind, RoutingArgs, mean};

#[derive(clap::Args, Debug)]
pub(crate) struct CalibrateArgs {
    /// Requests per run (the seed sent 3 000).
    #[arg(long, default_value_t = 3_000)]
    requests: usize,
    /// `num_gpu_blocks` per pod to sweep (simulator.md §0: 4 400–5 600 is what the A10s' memory allows).
    #[arg(long, value_delimiter = ',', default_values_t = [4_400, 4_700, 5_000, 5_300, 5_600])]
    blocks: Vec<u32>,
    /// Dataset seeds (benchmark_serving's default is 0).
    #[arg(long, value_delimiter = ',', default_values_t = [0])]
    seeds: Vec<u64>,
    /// Routers: baselines (`round-robin`, `kube-proxy`, `random`) are compared with the seed's standard gateway,
    /// Switchyard's profiles with its inference extension. Per-request `round-robin` is the baseline that
    /// reproduces the seed (BENCHMARKS.md); `random` is left out by default because its runs are the longest.
    #[arg(long, value_delimiter = ',', value_enum,
          default_values_t = [RouterKind::RoundRobin, RouterKind::KubeProxy, RouterKind::Default])]
    routers: Vec<RouterKind>,
    /// Simulated seconds per wall second; several values run everything at each and print how far apart they are.
    /// Results do not depend on it (ARCHITECTURE's simulator invariant), so the default is the fastest tested one.
    #[arg(long, value_delimiter = ',', default_values_t = [25.0])]
    time_scales: Vec<f64>,
}

/// One column of the seed's table.
#[derive(Debug, Clone, Copy)]
struct SeedColumn {
    name: &'static str,
    ttft_mean_ms: f64,
    ttft_p99_ms: f64,
    tpot_ms: f64,
    output_tok_s: f64,
}

/// Port 8080 of the seed's gateway: an HTTPRoute straight to the model Service.
const STANDARD: SeedColumn = SeedColumn {
    name: "standard gateway",
    ttft_mean_ms: 2_456.0,
    ttft_p99_ms: 23_509.0,
    tpot_ms: 63.5,
    output_tok_s: 916.0,
};

/// Port 8081: the same route through the inference extension's endpoint picker.
const EXTENSION: SeedColumn = SeedColumn {
    name: "inference extension",
    ttft_mean_ms: 1_797.0,
    ttft_p99_ms: 8_857.0,
    tpot_ms: 63.1,
    output_tok_s: 927.0,
};

/// The figures compared, with the acceptance bound of each (relative error) where the issue sets one.
const FIGURES: [(&str, &str, Option<f64>); 4] = [
    ("ttft_mean_ms", "TTFT mean ms", Some(0.20)),
    ("ttft_p99_ms", "TTFT P99 ms", None),
    ("tpot_mean_ms", "TPOT ms", Some(0.05)),
    ("output_tok_s", "out tok/s", Some(0.05)),
];

impl SeedColumn {
    fn for_router(router: RouterKind) -> SeedColumn {
        match router {
            RouterKind::Random | RouterKind::KubeProxy | RouterKind::RoundRobin => STANDARD,
            _ => EXTENSION,
        }
    }

    fn figure(&self, key: &str) -> f64 {
        match key {
            "ttft_mean_ms" => self.ttft_mean_ms,
            "ttft_p99_ms" => self.ttft_p99_ms,
            "tpot_mean_ms" => self.tpot_ms,
            "output_tok_s" => self.output_tok_s,
            _ => f64::NAN,
        }
    }
}

pub(crate) async fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.time_scales.is_empty(), "--time-scales needs at least one value");
    let plan = Plan {
        requests: args.requests,
        seeds: args.seeds.clone(),
        blocks: args.blocks.clone(),
        routers: args.routers.clone(),
        prefix_caching: Workload::Seed.prefix_caching() || args.routers.contains(&routing::RouterKind::Precise),
    };
    let out = procs::workspace_root().join("target/bench/calibrate");
    let mut by_scale = Vec::new();
    for &time_scale in &args.time_scales {
        let routing_args = RoutingArgs::defaults(Workload::Seed, time_scale);
        println!("calibration at time scale {time_scale}");
        let outcome = routing::race(&routing_args, &plan, &out).await?;
        by_scale.push((time_scale, outcome));
    }
    let report = report(&plan, &by_scale);
    println!("{report}");
    std::fs::write(out.join("report.md"), &report)?;

    let mut summary = BTreeMap::new();
    summary.insert("requests_per_run".into(), Value::from(plan.requests));
    for (time_scale, outcome) in &by_scale {
        for ((blocks, router), runs) in &outcome.results {
            let seed = SeedColumn::for_router(*router);
            for (key, _, _) in FIGURES {
                let value = mean(runs, key);
                let prefix = format!("{}_{blocks}_x{time_scale}_{key}", router.name());
                summary.insert(prefix.clone(), value.into());
                summary.insert(format!("{prefix}_rel_error"), relative(value, seed.figure(key)).into());
            }
        }
    }
    if let Some((_, first)) = by_scale.first()
        && let Some(best) = best_fit(first)
    {
        summary.insert("best_fit_blocks".into(), best.into());
    }
    let path = super::write_summary("calibrate", summary)?;
    println!("wrote {} and {}", path.display(), out.join("report.md").display());
    Ok(())
}

fn relative(value: f64, reference: f64) -> f64 {
    (value - reference) / reference
}

/// The KV size whose runs are closest to the seed: least summed squared relative error of the bounded figures
/// (TTFT mean, TPOT, throughput) over every router.
fn best_fit(outcome: &Outcome) -> Option<u32> {
    let mut error: BTreeMap<u32, f64> = BTreeMap::new();
    for ((blocks, router), runs) in &outcome.results {
        let seed = SeedColumn::for_router(*router);
        for (key, _, bound) in FIGURES {
            if bound.is_some() {
                *error.entry(*blocks).or_default() += relative(mean(runs, key), seed.figure(key)).powi(2);
            }
        }
    }
    error
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(blocks, _)| blocks)
}

fn report(plan: &Plan, by_scale: &[(f64, Outcome)]) -> String {
    let mut md = String::new();
    let command = std::iter::once("cargo xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>();
    let _ = writeln!(md, "# Calibration against the seed's table\n");
    let _ = writeln!(
        md,
        "Command: `{}` · {} requests per run, seeds {:?}, closed loop of 60, 5 pods · {} cores.\n",
        command.join(" "),
        plan.requests,
        plan.seeds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "Each cell: simulated value / the seed's value (relative error). Baselines are compared with the seed's \
         {} ({:.0} ms, {:.0} ms, {} ms, {:.0} tok/s), Switchyard's profiles with its {} ({:.0} ms, {:.0} ms, {} ms, \
         {:.0} tok/s). Bounds: TPOT and throughput ±5 %, TTFT mean ±20 %; P99 has none (simulator.md §3.5: it is \
         dominated by the t=0 burst).\n",
        STANDARD.name,
        STANDARD.ttft_mean_ms,
        STANDARD.ttft_p99_ms,
        STANDARD.tpot_ms,
        STANDARD.output_tok_s,
        EXTENSION.name,
        EXTENSION.ttft_mean_ms,
        EXTENSION.ttft_p99_ms,
        EXTENSION.tpot_ms,
        EXTENSION.output_tok_s,
    );
    for (time_scale, outcome) in by_scale {
        let _ = writeln!(md, "## Time scale {time_scale}\n");
        let _ = write!(md, "| blocks | router | vs |");
        for (_, title, _) in FIGURES {
            let _ = write!(md, " {title} |");
        }
        let _ = writeln!(md, " P99 excl. warm-up | within bounds |");
        let _ = writeln!(md, "|---:|---|---|{}---:|---|", "---:|".repeat(FIGURES.len()));
        for ((blocks, router), runs) in &outcome.results {
            let seed = SeedColumn::for_router(*router);
            let _ = write!(md, "| {blocks} | {} | {} |", router.name(), seed.name);
            let mut within = true;
            for (key, _, bound) in FIGURES {
                let value = mean(runs, key);
                let error = relative(value, seed.figure(key));
                within &= bound.is_none_or(|b| error.abs() <= b);
                let _ = write!(md, " {value:.1} / {} ({:+.1} %) |", seed.figure(key), error * 100.0);
            }
            let _ = writeln!(
                md,
                " {:.0} | {} |",
                mean(runs, "ttft_p99_excl_warmup_ms"),
                if within { "yes" } else { "no" }
            );
        }
        if let Some(best) = best_fit(outcome) {
            let _ = writeln!(
                md,
                "\nBest fit: **{best} blocks** per pod (least summed squared relative error of TTFT mean, TPOT and \
                 throughput over {:?}).\n",
                plan.routers.iter().map(|r| r.name()).collect::<Vec<_>>()
            );
        }
    }
    if by_scale.len() > 1 {
        md.push_str(&invariance(by_scale));
    }
    md
}

/// How far each figure moves across time scales: (max − min) / mean, per (blocks, router).
fn invariance(by_scale: &[(f64, Outcome)]) -> String {
    let mut md = String::from("## Time-scale invariance\n\n| blocks | router |");
    for (_, title, _) in FIGURES {
        let _ = write!(md, " {title} spread |");
    }
    let _ = writeln!(md, "\n|---:|---|{}", "---:|".repeat(FIGURES.len()));
    let Some((_, first)) = by_scale.first() else {
        return md;
    };
    for (blocks, router) in first.results.keys() {
        let _ = write!(md, "| {blocks} | {} |", router.name());
        for (key, _, _) in FIGURES {
            let values: Vec<f64> = by_scale
                .iter()
                .filter_map(|(_, o)| o.results.get(&(*blocks, *router)).map(|runs| mean(runs, key)))
                .collect();
            let _ = write!(md, " {:.1} % |", spread(&values) * 100.0);
        }
        md.push('\n');
    }
    md
}

/// (max − min) / mean of `values`: 0 when they agree.
pub(crate) fn spread(values: &[f64]) -> f64 {
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let avg = values.iter().sum::<f64>() / values.len().max(1) as f64;
    if values.is_empty() || avg == 0.0 {
        0.0
    } else {
        (hi - lo) / avg
    }
}
