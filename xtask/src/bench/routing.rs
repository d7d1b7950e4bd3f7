//! `cargo xtask bench routing`: the seed's experiment and friends. Five simulated vLLM pods, the same requests
//! through each router in turn (client-side `random` and `round-robin` like a Kubernetes Service, the gateway with
//! the `decision-tree` and `default` profiles), streaming clients measuring like vLLM's benchmark_serving.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{
    demo,
    load::{self, HttpClient, percentile},
    procs::{self, Proc},
    workload::{self, BenchRequest, Workload},
};

use super::{
    arrivals::{self, Arrival},
    classes,
};

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
}

/// The peer router raced with `--peers`, pinned so reports stay comparable.
const SMG_PACKAGE: &str = "smg==1.13.0";
const VLLM_ROUTER_PACKAGE: &str = "vllm-router==0.1.17";

/// A peer router product: how to install and launch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerProduct {
    Smg,
    VllmRouter,
}

impl PeerProduct {
    fn package(self) -> &'static str {
        match self {
            PeerProduct::Smg => SMG_PACKAGE,
            PeerProduct::VllmRouter => VLLM_ROUTER_PACKAGE,
        }
    }

    /// The launcher in the venv's bin/.
    fn command(self) -> &'static str {
        match self {
            PeerProduct::Smg => "smg",
            PeerProduct::VllmRouter => "vllm-router",
        }
    }

    /// Arguments before the common `--host … --worker-urls …` ones.
    fn subcommand(self) -> &'static [&'static str] {
        match self {
            PeerProduct::Smg => &["launch"],
            PeerProduct::VllmRouter => &[],
        }
    }

    /// The URL path that says the peer is ready, and what its body must contain with `pods` workers.
    fn readiness(self, pods: u8) -> (&'static str, Option<String>) {
        match self {
            PeerProduct::Smg => ("/readiness", Some(format!("\"healthy_workers\":{pods}"))),
            // vllm-router waits for its workers' health before it listens at all.
            PeerProduct::VllmRouter => ("/health", None),
        }
    }

    fn log_level(self) -> &'static str {
        match self {
            PeerProduct::Smg => "warn",
            PeerProduct::VllmRouter => "warning",
        }
    }
}
const PEER_LISTEN: (&str, u16) = ("127.0.0.1", 18381);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RouterKind {
    /// A pod drawn at random per request: kube-proxy in iptables mode with a new connection per request.
    Random,
    /// Pods in turn per request: kube-proxy in IPVS round-robin mode.
    RoundRobin,
    /// Switchyard with the seed-era upstream filter tree.
    DecisionTree,
    /// Switchyard with its default profile.
    Default,
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
    fn name(self) -> &'static str {
        match self {
            RouterKind::Random => "random",
            RouterKind::RoundRobin => "round-robin",
            RouterKind::DecisionTree => "decision-tree",
            RouterKind::Default => "default",
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
            RouterKind::Default => Some("default"),
            RouterKind::Tuned => Some("tuned"),
            _ => None,
        }
    }
}

/// KV-cache use per pod over the run: `(wall seconds, usage 0..=1)` samples.
type KvSeries = BTreeMap<String, Vec<(f64, f64)>>;

/// What one streamed request measured, in wall time.
#[derive(Clone, Debug, Default)]
struct Measured {
    index: usize,
    /// HTTP status of the response; 0 when none arrived.
    status: u16,
    ok: bool,
    ttft: f64,
    latency: f64,
    itls: Vec<f64>,
    output_tokens: u64,
}

/// Figures of one run, in simulated time.
#[derive(Clone, Debug, Default)]
struct RunResult {
    ttft_mean_ms: f64,
    ttft_median_ms: f64,
    ttft_p90_ms: f64,
    ttft_p99_ms: f64,
    ttft_p99_excl_warmup_ms: f64,
    tpot_mean_ms: f64,
    itl_mean_ms: f64,
    itl_p99_ms: f64,
    output_tok_s: f64,
    kv_spread: f64,
    preemptions: f64,
    errors: f64,
    duration_s: f64,
    ttfts_ms: Vec<f64>,
    kv_series: BTreeMap<String, Vec<(f64, f64)>>,
    extras: classes::RunExtras,
}

const FIELDS: [(&str, &str); 13] = [
    ("ttft_mean_ms", "TTFT mean ms"),
    ("ttft_median_ms", "TTFT median ms"),
    ("ttft_p90_ms", "TTFT P90 ms"),
    ("ttft_p99_ms", "TTFT P99 ms"),
    ("ttft_p99_excl_warmup_ms", "P99 excl. warm-up"),
    ("tpot_mean_ms", "TPOT ms"),
    ("itl_mean_ms", "ITL mean ms"),
    ("itl_p99_ms", "ITL P99 ms"),
    ("output_tok_s", "out tok/s"),
    ("kv_spread", "KV spread"),
    ("preemptions", "preemptions"),
    ("errors", "errors"),
    ("duration_s", "duration s"),
];

impl RunResult {
    fn field(&self, key: &str) -> f64 {
        match key {
            "ttft_mean_ms" => self.ttft_mean_ms,
            "ttft_median_ms" => self.ttft_median_ms,
            "ttft_p90_ms" => self.ttft_p90_ms,
            "ttft_p99_ms" => self.ttft_p99_ms,
            "ttft_p99_excl_warmup_ms" => self.ttft_p99_excl_warmup_ms,
            "tpot_mean_ms" => self.tpot_mean_ms,
            "itl_mean_ms" => self.itl_mean_ms,
            "itl_p99_ms" => self.itl_p99_ms,
            "output_tok_s" => self.output_tok_s,
            "kv_spread" => self.kv_spread,
            "preemptions" => self.preemptions,
            "errors" => self.errors,
            "duration_s" => self.duration_s,
            _ => f64::NAN,
        }
    }
}

pub(crate) async fn run(args: RoutingArgs) -> anyhow::Result<()> {
    let workload = args.workload;
    let requests_per_run = args.requests.unwrap_or(if args.quick {
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
    let mut peers = BTreeMap::new();
    for (product, _) in routers.iter().filter_map(|r| r.peer()) {
        if let std::collections::btree_map::Entry::Vacant(slot) = peers.entry(product) {
            slot.insert(install_peer(product)?);
        }
    }
    anyhow::ensure!(args.time_scale > 0.0, "--time-scale must be positive");
    if routers.contains(&RouterKind::Tuned) {
        let path = args
            .scheduler_config
            .as_ref()
            .context("router `tuned` needs --scheduler-config with a profile named `tuned`")?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        scheduler::SchedulerConfig::from_yaml(&format!("profile: tuned\n{text}"))
            .with_context(|| format!("{} does not define a usable profile `tuned`", path.display()))?;
    }
    anyhow::ensure!(requests_per_run > 0, "--requests must be positive");

    let bin = procs::build_bins(true, &["gateway", "vllm-sim"])?;
    let out = procs::workspace_root()
        .join("target/bench/routing")
        .join(workload.name());
    std::fs::create_dir_all(&out)?;
    let runs = blocks.len() * seeds.len() * routers.len();
    println!(
        "routing benchmark: workload {}, {requests_per_run} requests × {runs} runs (routers {:?}, seeds {seeds:?}, blocks {blocks:?}), time scale {}",
        workload.name(),
        routers.iter().map(|r| r.name()).collect::<Vec<_>>(),
        args.time_scale
    );
    let bar = ProgressBar::new((requests_per_run * runs) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} requests, eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let mut results: BTreeMap<(u32, RouterKind), Vec<RunResult>> = BTreeMap::new();
    for &num_blocks in &blocks {
        for &seed in &seeds {
            let dataset = workload::generate(workload, requests_per_run, seed);
            for &router in &routers {
                bar.set_message(format!("{} blocks={num_blocks} seed={seed}", router.name()));
                let result = one_run(&bin, &peers, &out, &args, router, num_blocks, seed, &dataset, &bar)
                    .await
                    .with_context(|| format!("{} run, blocks {num_blocks}, seed {seed}", router.name()))?;
                results.entry((num_blocks, router)).or_default().push(result);
            }
        }
    }
    bar.finish_and_clear();
    let wall = started.elapsed();

    let report = report(workload, &args, requests_per_run, &seeds, &results, wall);
    println!("{report}");
    std::fs::write(out.join("report.md"), &report)?;
    if let Some(first) = blocks.first() {
        write_charts(&out, *first, &results)?;
    }
    let mut summary = BTreeMap::new();
    summary.insert("workload".into(), Value::from(workload.name()));
    summary.insert("requests_per_run".into(), requests_per_run.into());
    summary.insert("time_scale".into(), args.time_scale.into());
    summary.insert("wall_duration_s".into(), wall.as_secs_f64().into());
    if let Some(path) = &args.scheduler_config {
        summary.insert("scheduler_config".into(), Value::from(path.display().to_string()));
    }
    for ((num_blocks, router), runs) in &results {
        for (key, _) in FIELDS {
            summary.insert(format!("{}_{num_blocks}_{key}", router.name()), mean(runs, key).into());
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

fn mean(runs: &[RunResult], key: &str) -> f64 {
    runs.iter().map(|r| r.field(key)).sum::<f64>() / runs.len().max(1) as f64
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    bin: &Path,
    peers: &BTreeMap<PeerProduct, PathBuf>,
    out: &Path,
    args: &RoutingArgs,
    router: RouterKind,
    num_blocks: u32,
    seed: u64,
    dataset: &[BenchRequest],
    bar: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let scale = args.time_scale;
    let pods: Vec<String> = (0..PODS).map(|i| format!("127.0.0.{}:8000", FIRST_POD + i)).collect();
    let mut sim_args = vec![
        "--addr".to_owned(),
        pods[0].clone(),
        "--replicas".into(),
        PODS.to_string(),
        "--time-scale".into(),
        scale.to_string(),
        "--num-gpu-blocks".into(),
        num_blocks.to_string(),
        "--seed".into(),
        seed.to_string(),
    ];
    if args.workload.prefix_caching() {
        sim_args.push("--prefix-caching".into());
    }
    sim_args.extend(args.workload.sim_args(args.max_loras));
    let mut sim = Proc::spawn(
        "vllm-sim",
        &bin.join("vllm-sim"),
        &sim_args,
        Some(&out.join("vllm-sim.log")),
    )?;
    for pod in &pods {
        procs::wait_ready(
            &format!("http://{pod}/health"),
            Duration::from_secs(30),
            &mut [&mut sim],
        )
        .await?;
    }
    let mut gateway = None;
    let (model, bases) = match router.profile() {
        Some(profile) => {
            let config = out.join("config");
            std::fs::create_dir_all(&config)?;
            std::fs::write(config.join("pool.yaml"), demo::SEED_POOL)?;
            std::fs::write(config.join("model.yaml"), demo::SEED_MODEL)?;
            if let Some(models) = args.workload.extra_models() {
                std::fs::write(config.join("models-extra.yaml"), models)?;
            }
            let pod_ips: String = demo::pod_documents(PODS);
            let pod_ips = (0..PODS).fold(pod_ips, |text, i| {
                text.replace(
                    &format!("podIP: 127.0.0.{}\n", 11 + i),
                    &format!("podIP: 127.0.0.{}\n", FIRST_POD + i),
                )
            });
            std::fs::write(config.join("pods.yaml"), pod_ips)?;
            // The gateway must see metrics as fresh as on real hardware, so its intervals shrink with time.
            let staleness_ms = (200.0 / scale).ceil().max(1.0);
            let scheduler = out.join("scheduler.yaml");
            let extra = match &args.scheduler_config {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading --scheduler-config {}", path.display()))?,
                None => String::new(),
            };
            std::fs::write(
                &scheduler,
                format!("profile: {profile}\nsaturation:\n  metricsStalenessMs: {staleness_ms}\n{extra}"),
            )?;
            let scrape = format!("{}ms", (50.0 / scale).max(1.0));
            let mut proc = Proc::spawn(
                "gateway",
                &bin.join("gateway"),
                &[
                    "--dir".into(),
                    config.display().to_string(),
                    "--proxy-listen".into(),
                    PROXY.into(),
                    "--admin-listen".into(),
                    ADMIN.into(),
                    "--scrape-interval".into(),
                    scrape,
                    "--scheduler-config".into(),
                    scheduler.display().to_string(),
                    "--decisions-kept".into(),
                    "100".into(),
                ],
                Some(&out.join("gateway.log")),
            )?;
            procs::wait_ready(
                &format!("http://{ADMIN}/readyz"),
                Duration::from_secs(30),
                &mut [&mut proc, &mut sim],
            )
            .await?;
            gateway = Some(proc);
            ("qwq", vec![format!("http://{PROXY}")])
        }
        None => match router
            .peer()
            .and_then(|(product, policy)| Some((product, policy, peers.get(&product)?)))
        {
            Some((product, policy, launcher)) => {
                let (host, port) = PEER_LISTEN;
                let mut peer_args: Vec<String> = product.subcommand().iter().map(|a| (*a).to_owned()).collect();
                peer_args.extend(["--host".into(), host.into()]);
                peer_args.extend(["--port".into(), port.to_string(), "--policy".into(), policy.into()]);
                peer_args.extend([
                    "--log-level".into(),
                    product.log_level().into(),
                    "--prometheus-host".into(),
                    host.into(),
                ]);
                peer_args.extend([
                    "--prometheus-port".into(),
                    (port + 1000).to_string(),
                    "--worker-urls".into(),
                ]);
                peer_args.extend(pods.iter().map(|p| format!("http://{p}")));
                let name = product.command();
                let mut proc = Proc::spawn(name, launcher, &peer_args, Some(&out.join(format!("{name}.log"))))?;
                // Ready means every pod registered: smg answers /health before its workers are probed, and
                // requests in between fail with "no worker serves model".
                let (path, needle) = product.readiness(PODS);
                let url = format!("http://{host}:{port}{path}");
                procs::wait_ready_with(
                    &url,
                    needle.as_deref(),
                    Duration::from_secs(60),
                    &mut [&mut proc, &mut sim],
                )
                .await?;
                gateway = Some(proc);
                // The peer forwards the model name untouched, so clients ask for the served name.
                ("qwq-32b", vec![format!("http://{host}:{port}")])
            }
            None => ("qwq-32b", pods.iter().map(|p| format!("http://{p}")).collect()),
        },
    };

    let client = load::http_client();
    let kv: Arc<Mutex<KvSeries>> = Arc::default();
    let run_started = Instant::now();
    let sampler = tokio::spawn(sample_kv(client.clone(), pods.clone(), kv.clone(), run_started));
    let (measured, arrival_figures) = match open_loop_schedule(args, dataset, num_blocks, seed)? {
        None => (
            closed_loop(
                &client,
                router,
                model,
                &bases,
                dataset,
                args.workload.concurrency(),
                seed,
                bar,
            )
            .await,
            None,
        ),
        Some(plan) => open_loop(&client, router, model, &bases, dataset, &plan, args, seed, bar).await,
    };
    let outcomes: Vec<classes::Outcome> = measured
        .iter()
        .map(|m| classes::Outcome {
            group: dataset[m.index].class.group(),
            status: m.status,
            ok: m.ok,
            ttft_ms: m.ttft * scale * 1e3,
            tpot_ms: (m.output_tokens > 1).then(|| (m.latency - m.ttft) * scale * 1e3 / (m.output_tokens - 1) as f64),
        })
        .collect();
    let wall = run_started.elapsed().as_secs_f64();
    sampler.abort();
    let mut preemptions = 0.0;
    for pod in &pods {
        preemptions += demo::scrape_gauge(&client, pod, "vllm:num_preemptions_total")
            .await
            .unwrap_or(0.0);
    }
    if let Some(proc) = gateway {
        proc.stop(Duration::from_secs(5)).await;
    }
    sim.stop(Duration::from_secs(5)).await;
    let kv_series = kv.lock().await.clone();
    let mut result = summarize(
        measured,
        wall,
        scale,
        args.workload.concurrency(),
        preemptions,
        kv_series,
    );
    result.extras = classes::RunExtras {
        classes: classes::figures(&outcomes, wall * scale),
        arrivals: arrival_figures,
    };
    Ok(result)
}

/// The open-loop arrival schedule of this run, or `None` for a closed loop.
fn open_loop_schedule(
    args: &RoutingArgs,
    dataset: &[BenchRequest],
    num_blocks: u32,
    seed: u64,
) -> anyhow::Result<Option<arrivals::Schedule>> {
    let open = match args.arrival {
        Some(arrival) => arrival == Arrival::Poisson,
        None => args.workload.open_loop_by_default(),
    };
    if !open {
        return Ok(None);
    }
    let rate = args
        .rate
        .unwrap_or_else(|| workload::saturation_rate(dataset, usize::from(PODS), num_blocks));
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        args.burstiness.is_finite() && args.burstiness > 0.0,
        "--burstiness must be positive"
    );
    let (from, to) = args.workload.rate_ramp();
    Ok(Some(arrivals::schedule(
        dataset.len(),
        rate * from,
        rate * to,
        args.burstiness,
        seed,
    )))
}

/// Sends the dataset on the schedule's arrival times, each request on its own task, picking pods like
/// `closed_loop` does.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    client: &HttpClient,
    router: RouterKind,
    model: &str,
    bases: &[String],
    dataset: &[BenchRequest],
    plan: &arrivals::Schedule,
    args: &RoutingArgs,
    seed: u64,
    bar: &ProgressBar,
) -> (Vec<Measured>, Option<classes::ArrivalFigures>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let dataset: Arc<Vec<BenchRequest>> = Arc::new(dataset.to_vec());
    let max_in_flight = args.max_in_flight.unwrap_or(10 * args.workload.concurrency()).max(1);
    let run = arrivals::open_loop(&plan.offsets, args.time_scale, max_in_flight, |index| {
        let base = match router {
            RouterKind::Random => bases[rng.random_range(0..bases.len())].clone(),
            _ => bases[index % bases.len()].clone(),
        };
        let (client, dataset, bar) = (client.clone(), dataset.clone(), bar.clone());
        let model = dataset[index].class.model(model);
        async move {
            let measured = stream_one(&client, &base, &model, &dataset[index], index).await;
            bar.inc(1);
            measured
        }
    })
    .await;
    bar.inc(run.dropped as u64);
    let figures = classes::ArrivalFigures {
        offered_rate: plan.offered_rate,
        ramp: plan.ramp,
        burstiness: plan.burstiness,
        achieved_rate: run.achieved_rate,
        dropped: run.dropped as f64,
    };
    (run.results, Some(figures))
}

#[allow(clippy::too_many_arguments)]
async fn closed_loop(
    client: &HttpClient,
    router: RouterKind,
    model: &str,
    bases: &[String],
    dataset: &[BenchRequest],
    concurrency: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Vec<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let rng = Arc::new(std::sync::Mutex::new(StdRng::seed_from_u64(seed ^ 0x5EED)));
    let dataset: Arc<Vec<BenchRequest>> = Arc::new(dataset.to_vec());
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let mut workers = tokio::task::JoinSet::new();
    // All clients start at once, like benchmark_serving with --max-concurrency: the seed's t=0 burst.
    for _ in 0..concurrency {
        let (client, next, rng, dataset, bases, bar) = (
            client.clone(),
            next.clone(),
            rng.clone(),
            dataset.clone(),
            bases.clone(),
            bar.clone(),
        );
        let model = model.to_owned();
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = dataset.get(index) else { break };
                let base = match router {
                    RouterKind::Random => {
                        let pick = rng.lock().map(|mut r| r.random_range(0..bases.len())).unwrap_or(0);
                        &bases[pick]
                    }
                    _ => &bases[index % bases.len()],
                };
                let model = request.class.model(&model);
                out.push(stream_one(&client, base, &model, request, index).await);
                bar.inc(1);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.unwrap_or_default());
    }
    all.sort_by_key(|m| m.index);
    all
}

/// One streaming completion, timed like benchmark_serving: TTFT at the first chunk with choices, ITL between chunks.
async fn stream_one(client: &HttpClient, base: &str, model: &str, request: &BenchRequest, index: usize) -> Measured {
    let body = serde_json::json!({
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.output_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "ignore_eos": true,
    });
    let mut measured = Measured {
        index,
        ..Measured::default()
    };
    let started = Instant::now();
    let Ok(http_request) = http::Request::post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
    else {
        return measured;
    };
    let attempt = async {
        let response = client.request(http_request).await.ok()?;
        measured.status = response.status().as_u16();
        if !response.status().is_success() {
            return None;
        }
        let mut body = response.into_body();
        let (mut buffer, mut last) = (Vec::<u8>::new(), None::<f64>);
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            let Some(data) = frame.data_ref() else { continue };
            buffer.extend_from_slice(data);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buffer.drain(..end + 2).collect();
                let now = started.elapsed().as_secs_f64();
                let text = String::from_utf8_lossy(&event);
                if text.contains("\"choices\":[{") {
                    match last {
                        None => measured.ttft = now,
                        Some(previous) => measured.itls.push(now - previous),
                    }
                    last = Some(now);
                }
                if text.contains("\"usage\":{") {
                    let json = text.trim().strip_prefix("data:").map(str::trim).unwrap_or_default();
                    if let Ok(value) = serde_json::from_str::<Value>(json) {
                        measured.output_tokens = value["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    }
                }
            }
        }
        measured.latency = last?;
        Some(())
    };
    // Bounded: no request may hang a benchmark, even if a component wedges.
    measured.ok = matches!(
        tokio::time::timeout(Duration::from_secs(900), attempt).await,
        Ok(Some(()))
    );
    measured
}

async fn sample_kv(client: HttpClient, pods: Vec<String>, series: Arc<Mutex<KvSeries>>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64();
        for pod in &pods {
            if let Some(kv) = demo::scrape_gauge(&client, pod, "vllm:kv_cache_usage_perc").await {
                series.lock().await.entry(pod.clone()).or_default().push((at, kv));
            }
        }
    }
}

fn summarize(
    measured: Vec<Measured>,
    wall: f64,
    scale: f64,
    warmup: usize,
    preemptions: f64,
    kv_series: BTreeMap<String, Vec<(f64, f64)>>,
) -> RunResult {
    let ms = |wall_s: f64| wall_s * scale * 1e3;
    let ok: Vec<&Measured> = measured.iter().filter(|m| m.ok).collect();
    let mut ttfts: Vec<f64> = ok.iter().map(|m| ms(m.ttft)).collect();
    let mut late: Vec<f64> = ok.iter().filter(|m| m.index >= warmup).map(|m| ms(m.ttft)).collect();
    let mut itls: Vec<f64> = ok.iter().flat_map(|m| m.itls.iter().map(|&g| ms(g))).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|m| m.output_tokens > 1)
        .map(|m| ms(m.latency - m.ttft) / (m.output_tokens - 1) as f64)
        .collect();
    let output_tokens: u64 = ok.iter().map(|m| m.output_tokens).sum();
    for v in [&mut ttfts, &mut late, &mut itls] {
        v.sort_by(f64::total_cmp);
    }
    let avg = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    // Spread: at each sampling instant, the most loaded pod's KV use minus the least loaded one's, averaged.
    let samples = kv_series.values().map(Vec::len).min().unwrap_or(0);
    let spread = avg(&(0..samples)
        .map(|i| {
            let at: Vec<f64> = kv_series.values().map(|s| s[i].1).collect();
            at.iter().cloned().fold(f64::MIN, f64::max) - at.iter().cloned().fold(f64::MAX, f64::min)
        })
        .collect::<Vec<_>>());
    RunResult {
        ttft_mean_ms: avg(&ttfts),
        ttft_median_ms: percentile(&ttfts, 50.0),
        ttft_p90_ms: percentile(&ttfts, 90.0),
        ttft_p99_ms: percentile(&ttfts, 99.0),
        ttft_p99_excl_warmup_ms: percentile(&late, 99.0),
        tpot_mean_ms: avg(&tpots),
        itl_mean_ms: avg(&itls),
        itl_p99_ms: percentile(&itls, 99.0),
        output_tok_s: output_tokens as f64 / (wall * scale),
        kv_spread: spread,
        preemptions,
        errors: (measured.len() - ok.len()) as f64,
        duration_s: wall * scale,
        ttfts_ms: ttfts,
        kv_series,
        extras: classes::RunExtras::default(),
    }
}

fn report(
    workload: Workload,
    args: &RoutingArgs,
    requests: usize,
    seeds: &[u64],
    results: &BTreeMap<(u32, RouterKind), Vec<RunResult>>,
    wall: Duration,
) -> String {
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
        "Simulated QwQ-32B on 4×A10 (vllm-sim, V0 scheduler); times in simulated ms; means over seeds.\n"
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
            let _ = write!(md, " TTFT mean vs random |\n|---|");
            for _ in 0..=FIELDS.len() {
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
        let _ = writeln!(md, " {ratio} |");
    }
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

/// SVG charts beside the report: TTFT CDF per router, and KV use per pod over time for each router.
fn write_charts(out: &Path, blocks: u32, results: &BTreeMap<(u32, RouterKind), Vec<RunResult>>) -> anyhow::Result<()> {
    let colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd"];
    let mut cdf = Vec::new();
    for ((b, router), runs) in results {
        if *b == blocks
            && let Some(first) = runs.first()
        {
            let n = first.ttfts_ms.len().max(1) as f64;
            let points = first
                .ttfts_ms
                .iter()
                .enumerate()
                .map(|(i, &t)| (t / 1e3, (i + 1) as f64 / n))
                .collect();
            cdf.push((router.name().to_owned(), points));
        }
    }
    std::fs::write(
        out.join("ttft_cdf.svg"),
        svg_lines("TTFT CDF (first seed)", "TTFT s", "fraction", &cdf, &colors, true),
    )?;
    for ((b, router), runs) in results {
        if *b == blocks
            && let Some(first) = runs.first()
        {
            let series: Vec<(String, Vec<(f64, f64)>)> = first
                .kv_series
                .iter()
                .map(|(pod, s)| (pod.clone(), s.clone()))
                .collect();
            let title = format!("KV-cache use per pod, {} (first seed)", router.name());
            let path: PathBuf = out.join(format!("kv_{}.svg", router.name()));
            std::fs::write(path, svg_lines(&title, "wall s", "KV use", &series, &colors, false))?;
        }
    }
    Ok(())
}

fn svg_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    colors: &[&str],
    log_x: bool,
) -> String {
    let (w, h, pad) = (720.0, 420.0, 50.0);
    let fx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| fx(x)));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let span = (x_max - x_min).max(1e-9);
    let px = |x: f64| pad + (fx(x) - x_min) / span * (w - 2.0 * pad);
    let py = |y: f64| h - pad - y / y_max * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}</text>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\">{x_label}{}</text><text x=\"5\" y=\"{}\">{y_label}</text>",
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 15.0,
        if log_x { " (log)" } else { "" },
        pad - 14.0
    );
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\">{:.2}</text><text x=\"{}\" y=\"{}\">{:.2}</text><text x=\"10\" y=\"{}\">{y_max:.2}</text>",
        pad,
        h - pad + 15.0,
        if log_x { 10f64.powf(x_min) } else { x_min },
        w - pad - 30.0,
        h - pad + 15.0,
        if log_x { 10f64.powf(x_max) } else { x_max },
        pad + 4.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: String = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1} ", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{path}\"/>"
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            w - pad - 140.0,
            pad + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Installs a pinned peer router into its own venv under target/bench (once) and returns its launcher; each
/// gets its own venv because their packages ship overlapping commands.
fn install_peer(product: PeerProduct) -> anyhow::Result<PathBuf> {
    let venv = procs::workspace_root().join(format!("target/bench/peers-venv-{}", product.command()));
    let launcher = venv.join("bin").join(product.command());
    if !launcher.exists() {
        let venv_str = venv.display().to_string();
        procs::run("python3", &["-m", "venv", &venv_str])?;
        let pip = venv.join("bin/pip").display().to_string();
        procs::run(
            &pip,
            &["install", "--quiet", "--disable-pip-version-check", product.package()],
        )
        .with_context(|| format!("installing the peer router {} from PyPI", product.package()))?;
    }
    Ok(launcher)
}
