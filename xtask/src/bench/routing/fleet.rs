//! One benchmark run: five simulated pods, the router under test in front of them, the dataset through it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use indicatif::ProgressBar;
use tokio::sync::Mutex;

use crate::{
    demo, load,
    procs::{self, Proc},
    workload::{self, BenchRequest},
};

use super::{
    ADMIN, FIRST_POD, PODS, PROXY, RouterKind, RoutingArgs,
    clients::{self, KvSeries, Route},
    peers::{PEER_LISTEN, PeerProduct},
    stats::{self, RunResult},
};
use crate::bench::{
    arrivals::{self, Arrival},
    classes,
};

/// One (router, KV size, seed) of a race.
pub(super) struct Run<'a> {
    /// Where the release binaries are.
    pub(super) bin: &'a Path,
    /// The installed peer launchers.
    pub(super) peers: &'a BTreeMap<PeerProduct, PathBuf>,
    /// Where logs and generated configuration go.
    pub(super) out: &'a Path,
    pub(super) args: &'a RoutingArgs,
    pub(super) router: RouterKind,
    pub(super) num_blocks: u32,
    pub(super) seed: u64,
    /// Whether the pods cache prefixes (the plan decides, so every router faces the same fleet).
    pub(super) prefix_caching: bool,
    /// The `tokenizer.json` the pods load whenever `precise` races (every router then faces the same pods, paying
    /// the same tokenizing), and the gateway of `precise` too.
    pub(super) tokenizer: Option<&'a Path>,
}

/// The proxy and admin addresses of gateway replica `i` (the first is [`PROXY`] / [`ADMIN`]).
fn replica_addrs(i: u16) -> (String, String) {
    let port = |addr: &str| -> (String, u16) {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
        (host.to_owned(), port.parse().unwrap_or(0))
    };
    let ((proxy_host, proxy_port), (admin_host, admin_port)) = (port(PROXY), port(ADMIN));
    (
        format!("{proxy_host}:{}", proxy_port + i),
        format!("{admin_host}:{}", admin_port + i),
    )
}

impl Run<'_> {
    /// Starts the pods and the router, sends `dataset` through it, stops everything and returns the figures.
    pub(super) async fn measure(&self, dataset: &[BenchRequest], bar: &ProgressBar) -> anyhow::Result<RunResult> {
        let Run {
            bin,
            peers,
            out,
            args,
            router,
            num_blocks,
            seed,
            prefix_caching,
            tokenizer,
        } = *self;
        let precise = match (router, tokenizer) {
            (RouterKind::Precise, Some(path)) => Some(path),
            (RouterKind::Precise, None) => anyhow::bail!("router `precise` needs the benchmark's tokenizer"),
            _ => None,
        };
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
        if prefix_caching {
            sim_args.push("--prefix-caching".into());
        }
        match (precise, tokenizer) {
            (Some(tokenizer), _) => sim_args.extend(demo::precise_sim_args(&tokenizer.display().to_string())),
            (None, Some(tokenizer)) => sim_args.extend(["--tokenizer".into(), tokenizer.display().to_string()]),
            (None, None) => {}
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
        let mut gateways = Vec::new();
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
                let mut gateway_args: Vec<String> = vec![
                    "--dir".into(),
                    config.display().to_string(),
                    "--scrape-interval".into(),
                    scrape,
                    "--scheduler-config".into(),
                    scheduler.display().to_string(),
                    "--decisions-kept".into(),
                    "100".into(),
                    // Unused here, and replicas must not collide on them.
                    "--extproc-listen".into(),
                    "127.0.0.1:0".into(),
                    "--health-listen".into(),
                    "127.0.0.1:0".into(),
                ];
                if let Some(tokenizer) = precise {
                    gateway_args.extend(demo::precise_gateway_args(&tokenizer.display().to_string()));
                }
                let mut bases = Vec::new();
                for i in 0..args.gateway_replicas {
                    let (proxy, admin) = replica_addrs(i);
                    let mut replica_args = gateway_args.clone();
                    replica_args.extend([
                        "--proxy-listen".into(),
                        proxy.clone(),
                        "--admin-listen".into(),
                        admin.clone(),
                    ]);
                    let log = out.join(if i == 0 {
                        "gateway.log".to_owned()
                    } else {
                        format!("gateway-{i}.log")
                    });
                    let mut proc = Proc::spawn("gateway", &bin.join("gateway"), &replica_args, Some(&log))?;
                    procs::wait_ready(
                        &format!("http://{admin}/readyz"),
                        Duration::from_secs(30),
                        &mut [&mut proc, &mut sim],
                    )
                    .await?;
                    gateways.push(proc);
                    bases.push(format!("http://{proxy}"));
                }
                ("qwq", bases)
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
                    gateways.push(proc);
                    // The peer forwards the model name untouched, so clients ask for the served name.
                    ("qwq-32b", vec![format!("http://{host}:{port}")])
                }
                None => ("qwq-32b", pods.iter().map(|p| format!("http://{p}")).collect()),
            },
        };

        let client = load::http_client();
        let kv: Arc<Mutex<KvSeries>> = Arc::default();
        let run_started = Instant::now();
        let sampler = tokio::spawn(clients::sample_kv(
            client.clone(),
            pods.clone(),
            kv.clone(),
            run_started,
        ));
        let route = Route {
            router,
            model,
            bases: &bases,
            seed,
        };
        let (measured, arrival_figures) = match open_loop_schedule(args, dataset, num_blocks, seed)? {
            None => (
                clients::closed_loop(&client, &route, dataset, args.workload.concurrency(), bar).await,
                None,
            ),
            Some(plan) => clients::open_loop(&client, &route, dataset, &plan, args, bar).await,
        };
        let outcomes: Vec<classes::Outcome> = measured
            .iter()
            .map(|m| classes::Outcome {
                group: dataset[m.index].class.group(),
                status: m.status,
                ok: m.ok,
                ttft_ms: m.ttft * scale * 1e3,
                tpot_ms: (m.output_tokens > 1)
                    .then(|| (m.latency - m.ttft) * scale * 1e3 / (m.output_tokens - 1) as f64),
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
        for proc in gateways {
            proc.stop(Duration::from_secs(5)).await;
        }
        sim.stop(Duration::from_secs(5)).await;
        let kv_series = kv.lock().await.clone();
        let mut result = stats::summarize(
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
