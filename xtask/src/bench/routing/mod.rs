//! `cargo xtask bench routing`: the seed's experiment and friends. Five simulated vLLM pods, the same requests
//! through each router in turn (client-side `random`, `kube-proxy` and `round-robin` like a Kubernetes Service,
//! the gateway with the `decision-tree` and `default` profiles, peers), streaming clients measuring like vLLM's
//! benchmark_serving, each report beside the workload's floor.
//!
//! Code map: `fleet` runs one (router, KV size, seed) over the simulated pods, `clients` are the load loops and the
//! request timing, `stats` turns measurements into figures, `floor` is the physical limit, `report` and `svg` print
//! them, `peers` installs the peer routers. `race` is shared with `bench calibrate`.

mod clients;
mod fleet;
mod floor;
#[cfg(test)]
mod invariance;
mod peers;
mod report;
mod stats;
mod svg;

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::{
    procs,
    workload::{self, Workload},
};

use super::{arrivals::Arrival, classes};

pub(crate) use floor::Floor;
use peers::PeerProduct;
pub(crate) use stats::{RunResult, mean};

/// First simulated pod; the five pods use 127.0.0.51–55 so a running demo (.11–.15) is never disturbed.
const FIRST_POD: u8 = 51;
const PODS: u8 = 5;
const PROXY: &str = "127.0.0.1:18281";
const ADMIN: &str = "127.0.0.1:19281";

#[derive(clap::Args, Debug)]
pub(crate) struct RoutingArgs {
    #[arg(long, value_enum, default_value_t = Workload::Seed)]
    pub(crate) workload: Workload,
    /// A short run (fewer requests, one seed, one KV size) that finishes in a few minutes.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Requests per run (default: the workload's full size, or a tenth of it with --quick).
    #[arg(long)]
    pub(crate) requests: Option<usize>,
    /// Dataset seeds; every router runs every seed (default 0,1,2; 0 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub(crate) seeds: Option<Vec<u64>>,
    /// `num_gpu_blocks` per pod to sweep (default 4400,5000,5600; 5000 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub(crate) blocks: Option<Vec<u32>>,
    /// Routers to race (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(crate) routers: Option<Vec<RouterKind>>,
    /// Simulated seconds per wall second; metric scrape and staleness intervals scale with it.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) time_scale: f64,
    /// Also race the peer routers (installs `smg` and `vllm-router` from PyPI into venvs under target/bench/).
    #[arg(long)]
    pub(crate) peers: bool,
    /// Extra scheduler config for the gateway routers, for tuning: its `profiles` (a profile named `default`
    /// replaces the built-in) and `prefix` keys are used; `profile` and `saturation` are set by the benchmark.
    #[arg(long)]
    pub(crate) scheduler_config: Option<PathBuf>,
    /// How requests are released (default: poisson for criticality-overload, closed for the others).
    #[arg(long, value_enum)]
    pub(crate) arrival: Option<Arrival>,
    /// Open-loop rate in requests per simulated second (default: the saturation estimate of the dataset, see
    /// `workload::saturation_rate`); criticality-overload ramps from 0.5× to 1.5× of it.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Open-loop gamma shape of the inter-arrival gaps: 1 is Poisson, below 1 burstier (as benchmark_serving).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) burstiness: f64,
    /// Open loop: most requests unanswered at once (default 10× the workload's concurrency); arrivals beyond
    /// it are dropped and counted.
    #[arg(long)]
    pub(crate) max_in_flight: Option<usize>,
    /// Adapter slots per pod for the lora workload (vLLM `--max-loras`).
    #[arg(long, default_value_t = 2)]
    pub(crate) max_loras: u32,
    /// Gateway processes per gateway run, active-active: clients spread requests over them round-robin, as a
    /// Service does. Each follows the pods itself (metrics, and KV events for `precise`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub(crate) gateway_replicas: u16,
}

impl RoutingArgs {
    /// A run of `workload` at `time_scale` with every other option at its command-line default (read from the
    /// clap definition above, so the two cannot drift).
    pub(crate) fn defaults(workload: Workload, time_scale: f64) -> RoutingArgs {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: RoutingArgs,
        }
        let mut args = <Defaults as clap::Parser>::parse_from(["routing"]).args;
        args.workload = workload;
        args.time_scale = time_scale;
        args
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RouterKind {
    /// A pod drawn at random per request: kube-proxy in iptables mode with a new connection per request.
    Random,
    /// A pod drawn at random per client connection and kept for its lifetime: kube-proxy in iptables mode under
    /// clients that keep their connections alive (each of a closed loop's workers is one connection; in an open
    /// loop every request opens its own, which makes this `random`).
    KubeProxy,
    /// Pods in turn per request: kube-proxy in IPVS round-robin mode.
    RoundRobin,
    /// Switchyard with the seed-era upstream filter tree.
    DecisionTree,
    /// Switchyard with its default profile.
    Default,
    /// Switchyard's default profile on the engines' KV events: the pods publish them (`--kv-events-config`), the
    /// gateway follows every pod and tokenizes prompts with the pods' tokenizer.
    Precise,
    /// Switchyard with the profile `tuned` of `--scheduler-config`: a candidate raced beside `default`.
    Tuned,
    /// Shepherd Model Gateway (`smg`), `--policy cache_aware`.
    SmgCacheAware,
    /// Shepherd Model Gateway (`smg`), `--policy round_robin`.
    SmgRoundRobin,
    /// vLLM Router (`vllm-router`), `--policy cache_aware`.
    VllmRouterCacheAware,
    /// vLLM Router (`vllm-router`), `--policy round_robin`.
    VllmRouterRoundRobin,
}

impl RouterKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RouterKind::Random => "random",
            RouterKind::KubeProxy => "kube-proxy",
            RouterKind::RoundRobin => "round-robin",
            RouterKind::DecisionTree => "decision-tree",
            RouterKind::Default => "default",
            RouterKind::Precise => "precise",
            RouterKind::Tuned => "tuned",
            RouterKind::SmgCacheAware => "smg-cache-aware",
            RouterKind::SmgRoundRobin => "smg-round-robin",
            RouterKind::VllmRouterCacheAware => "vllm-router-cache-aware",
            RouterKind::VllmRouterRoundRobin => "vllm-router-round-robin",
        }
    }

    /// The peer product and its `--policy`, for peer routers.
    fn peer(self) -> Option<(PeerProduct, &'static str)> {
        match self {
            RouterKind::SmgCacheAware => Some((PeerProduct::Smg, "cache_aware")),
            RouterKind::SmgRoundRobin => Some((PeerProduct::Smg, "round_robin")),
            RouterKind::VllmRouterCacheAware => Some((PeerProduct::VllmRouter, "cache_aware")),
            RouterKind::VllmRouterRoundRobin => Some((PeerProduct::VllmRouter, "round_robin")),
            _ => None,
        }
    }

    fn profile(self) -> Option<&'static str> {
        match self {
            RouterKind::DecisionTree => Some("decision-tree"),
            RouterKind::Default | RouterKind::Precise => Some("default"),
            RouterKind::Tuned => Some("tuned"),
            _ => None,
        }
    }
}

/// What a race runs: every router on every seed at every KV size.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) requests: usize,
    pub(crate) seeds: Vec<u64>,
    pub(crate) blocks: Vec<u32>,
    pub(crate) routers: Vec<RouterKind>,
    /// Whether the pods cache prefixes: when the workload asks for it, and for every router when `precise` races
    /// (KV events need the prefix cache, and every router must face the same fleet).
    pub(crate) prefix_caching: bool,
}

/// What a race measured: each (KV size, router)'s runs, one per seed, and the workload's floor.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) results: BTreeMap<(u32, RouterKind), Vec<RunResult>>,
    pub(crate) floor: Floor,
    pub(crate) wall: std::time::Duration,
}

pub(crate) async fn run(args: RoutingArgs) -> anyhow::Result<()> {
    let workload = args.workload;
    let plan = plan(&args);
    let out = procs::workspace_root()
        .join("target/bench/routing")
        .join(workload.name());
    let outcome = race(&args, &plan, &out).await?;
    let results = &outcome.results;

    let report = report::report(workload, &args, &plan, &outcome);
    println!("{report}");
    std::fs::write(out.join("report.md"), &report)?;
    if let Some(first) = plan.blocks.first() {
        svg::write_charts(&out, *first, results)?;
    }
    let mut summary = BTreeMap::new();
    summary.insert("workload".into(), Value::from(workload.name()));
    summary.insert("requests_per_run".into(), plan.requests.into());
    summary.insert("time_scale".into(), args.time_scale.into());
    summary.insert("gateway_replicas".into(), args.gateway_replicas.into());
    summary.insert("prefix_caching".into(), plan.prefix_caching.into());
    summary.insert("wall_duration_s".into(), outcome.wall.as_secs_f64().into());
    summary.insert("floor_ttft_mean_ms".into(), outcome.floor.mean_ms.into());
    summary.insert("floor_ttft_p90_ms".into(), outcome.floor.p90_ms.into());
    if let Some(path) = &args.scheduler_config {
        summary.insert("scheduler_config".into(), Value::from(path.display().to_string()));
    }
    for ((num_blocks, router), runs) in results {
        for (key, _) in stats::FIELDS {
            summary.insert(format!("{}_{num_blocks}_{key}", router.name()), mean(runs, key).into());
        }
        for (key, floor) in [
            ("ttft_mean_ms", outcome.floor.mean_ms),
            ("ttft_p90_ms", outcome.floor.p90_ms),
        ] {
            summary.insert(
                format!("{}_{num_blocks}_{key}_ratio_vs_floor", router.name()),
                (mean(runs, key) / floor).into(),
            );
        }
        if let Some(random) = results.get(&(*num_blocks, RouterKind::Random)) {
            for key in ["ttft_mean_ms", "ttft_p99_ms", "output_tok_s"] {
                let ratio = mean(runs, key) / mean(random, key);
                summary.insert(
                    format!("{}_{num_blocks}_{key}_ratio_vs_random", router.name()),
                    ratio.into(),
                );
            }
        }
    }
    summary.extend(classes::summary(results.iter().map(|((blocks, router), runs)| {
        (*blocks, router.name(), runs.iter().map(|r| &r.extras).collect())
    })));
    let path = super::write_summary(&format!("routing/{}", workload.name()), summary)?;
    println!("wrote {} and {}", path.display(), out.join("report.md").display());
    Ok(())
}

/// The runs `args` ask for, with the defaults of a full or `--quick` run filled in.
fn plan(args: &RoutingArgs) -> Plan {
    let workload = args.workload;
    let requests = args.requests.unwrap_or(if args.quick {
        workload.default_requests() / 10
    } else {
        workload.default_requests()
    });
    let seeds = args
        .seeds
        .clone()
        .unwrap_or(if args.quick { vec![0] } else { vec![0, 1, 2] });
    let blocks = args.blocks.clone().unwrap_or(if args.quick {
        vec![5_000]
    } else {
        vec![4_400, 5_000, 5_600]
    });
    let mut routers = args.routers.clone().unwrap_or(vec![
        RouterKind::Random,
        RouterKind::RoundRobin,
        RouterKind::DecisionTree,
        RouterKind::Default,
    ]);
    if args.peers {
        for peer in [
            RouterKind::SmgCacheAware,
            RouterKind::SmgRoundRobin,
            RouterKind::VllmRouterCacheAware,
            RouterKind::VllmRouterRoundRobin,
        ] {
            if !routers.contains(&peer) {
                routers.push(peer);
            }
        }
    }
    let prefix_caching = workload.prefix_caching() || routers.contains(&RouterKind::Precise);
    Plan {
        requests,
        seeds,
        blocks,
        routers,
        prefix_caching,
    }
}

/// Runs the plan (release builds of the gateway and the simulator, peers installed as needed), with a progress
/// bar, writing logs under `out`.
pub(crate) async fn race(args: &RoutingArgs, plan: &Plan, out: &std::path::Path) -> anyhow::Result<Outcome> {
    let workload = args.workload;
    anyhow::ensure!(args.time_scale > 0.0, "--time-scale must be positive");
    anyhow::ensure!(plan.requests > 0, "--requests must be positive");
    anyhow::ensure!(
        !plan.seeds.is_empty() && !plan.blocks.is_empty() && !plan.routers.is_empty(),
        "at least one seed, KV size and router are needed"
    );
    let mut peers = BTreeMap::new();
    for (product, _) in plan.routers.iter().filter_map(|r| r.peer()) {
        if let std::collections::btree_map::Entry::Vacant(slot) = peers.entry(product) {
            slot.insert(peers::install_peer(product)?);
        }
    }
    if plan.routers.contains(&RouterKind::Tuned) {
        let path = args
            .scheduler_config
            .as_ref()
            .context("router `tuned` needs --scheduler-config with a profile named `tuned`")?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        scheduler::SchedulerConfig::from_yaml(&format!("profile: tuned\n{text}"))
            .with_context(|| format!("{} does not define a usable profile `tuned`", path.display()))?;
    }

    let bin = procs::build_bins(true, &["gateway", "vllm-sim"])?;
    std::fs::create_dir_all(out)?;
    // The pods and the gateway of `precise` load the same tokenizer from files, as they would a model's.
    let tokenizer = match plan.routers.contains(&RouterKind::Precise) {
        true => {
            Some(tokenizer::synthetic::write_dir(&out.join("tokenizer")).context("writing the benchmark's tokenizer")?)
        }
        false => None,
    };
    let runs = plan.blocks.len() * plan.seeds.len() * plan.routers.len();
    println!(
        "routing benchmark: workload {}, {} requests × {runs} runs (routers {:?}, seeds {:?}, blocks {:?}), time scale {}",
        workload.name(),
        plan.requests,
        plan.routers.iter().map(|r| r.name()).collect::<Vec<_>>(),
        plan.seeds,
        plan.blocks,
        args.time_scale
    );
    let bar = ProgressBar::new((plan.requests * runs) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} requests, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let mut outcome = Outcome::default();
    let mut floors = Vec::new();
    for &seed in &plan.seeds {
        let dataset = workload::generate(workload, plan.requests, seed);
        floors.push(Floor::of(&dataset, plan.prefix_caching));
        for &num_blocks in &plan.blocks {
            for &router in &plan.routers {
                bar.set_message(format!("{} blocks={num_blocks} seed={seed}", router.name()));
                let run = fleet::Run {
                    bin: &bin,
                    peers: &peers,
                    out,
                    args,
                    router,
                    num_blocks,
                    seed,
                    prefix_caching: plan.prefix_caching,
                    tokenizer: tokenizer.as_deref(),
                };
                let result = run
                    .measure(&dataset, &bar)
                    .await
                    .with_context(|| format!("{} run, blocks {num_blocks}, seed {seed}", router.name()))?;
                outcome.results.entry((num_blocks, router)).or_default().push(result);
            }
        }
    }
    bar.finish_and_clear();
    outcome.floor = Floor::mean_of(&floors);
    outcome.wall = started.elapsed();
    Ok(outcome)
}
