//! `cargo xtask demo`: five simulated vLLM pods behind the gateway's proxy, a short mixed load, a per-pod table.
//! With `--canary`, the pods also serve `qwq-32b-v2` and the controller (dir mode) runs a guarded release of it
//! under continuous load, printing each step as it happens.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Mutex;

use crate::{
    load::{self, Sample},
    procs::{self, Proc},
};

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Stop by itself after this many seconds (counted once the binaries are built); serve until Ctrl-C when
    /// omitted.
    #[arg(long)]
    pub(crate) duration: Option<u64>,
    /// Simulated vLLM replicas (pods 127.0.0.11, .12, …).
    #[arg(long, default_value_t = 5)]
    pub(crate) replicas: u8,
    /// Simulator speed-up over real QwQ-32B on 4×A10 timing.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) time_scale: f64,
    /// Requests in the warm-up load.
    #[arg(long, default_value_t = 300)]
    pub(crate) requests: usize,
    /// Concurrent clients of the warm-up load.
    #[arg(long, default_value_t = 24)]
    pub(crate) concurrency: usize,
    /// Address of the gateway's OpenAI-compatible proxy.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) proxy_listen: String,
    /// Address of the gateway's admin listener (/metrics, /debug/decisions).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub(crate) admin_listen: String,
    /// Address of the dashboard (routing audit, releases, pod history); its database is target/demo/switchyard.db.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub(crate) dashboard_listen: String,
    /// After the warm-up, run a guarded canary release of qwq-32b-v2 (see CANARY_RELEASE) under continuous load
    /// until it is promoted or rolled back (or --duration ends).
    #[arg(long)]
    pub(crate) canary: bool,
    /// With --canary: share of the canary's requests the simulator fails (0 = a healthy canary that is promoted;
    /// e.g. 0.3 to watch a rollback).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) canary_error_rate: f64,
}

/// The canary target of `--canary`: every pod serves it as an adapter beside the stable base model.
pub(crate) const CANARY_TARGET: &str = "qwq-32b-v2";

/// The InferenceModel of `--canary`: both targets, all traffic on the stable one.
/// vLLM's usual KV-event ports, on every simulated pod's own address.
const KV_EVENTS_PORT: u16 = 5557;
const KV_REPLAY_PORT: u16 = 5558;

/// `vllm-sim` flags for precise routing: publish KV events on the usual ports and tokenize with `tokenizer`.
pub(crate) fn precise_sim_args(tokenizer: &str) -> [String; 4] {
    [
        "--kv-events-config".into(),
        format!(
            r#"{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{KV_EVENTS_PORT}", "replay_endpoint": "tcp://*:{KV_REPLAY_PORT}", "topic": "kv"}}"#
        ),
        "--tokenizer".into(),
        tokenizer.into(),
    ]
}

/// `gateway` flags for precise routing over pods started with [`precise_sim_args`].
pub(crate) fn precise_gateway_args(tokenizer: &str) -> [String; 8] {
    [
        "--kv-events-port".into(),
        KV_EVENTS_PORT.to_string(),
        "--kv-events-replay-port".into(),
        KV_REPLAY_PORT.to_string(),
        "--kv-events-topic".into(),
        "kv".into(),
        "--tokenizer".into(),
        tokenizer.into(),
    ]
}

const CANARY_MODEL: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: inferencemodel-sample
spec:
  criticality: Critical
  modelName: qwq
  poolRef:
    group: inference.networking.x-k8s.io
    kind: InferencePool
    name: reasoning-pool
  targetModels:
  - name: qwq-32b
    weight: 100
  - name: qwq-32b-v2
    weight: 0
";

/// The guarded release `--canary` starts (written as config/canaryrelease-qwq-v2.yaml, as the dashboard would).
pub(crate) const CANARY_RELEASE: &str = "\
apiVersion: switchyard.dev/v1alpha1
kind: CanaryRelease
metadata:
  name: qwq-v2
  namespace: default
spec:
  modelRef: inferencemodel-sample
  stable: qwq-32b
  canary: qwq-32b-v2
  steps: [1, 5, 25, 50, 100]
  hold: 10s
  minRequests: 10
  limits:
    maxTtftP90Ratio: 1.5
    maxErrorRateIncrease: 0.02
    maxShedRateIncrease: 0.05
";

/// The seed's InferencePool and InferenceModel, as `deploy/examples` ships them.
pub(crate) const SEED_POOL: &str = include_str!("../../deploy/examples/03-inferencepool.yaml");
pub(crate) const SEED_MODEL: &str = include_str!("../../deploy/examples/04-inferencemodel.yaml");

/// The pod address of simulated replica `i` (0-based), like pod IPs in a cluster.
pub(crate) fn pod_ip(i: u8) -> String {
    format!("127.0.0.{}", 11 + u16::from(i))
}

/// Minimal Pod documents for the dir provider: name, the pool's label, podIP and a Ready condition.
pub(crate) fn pod_documents(replicas: u8) -> String {
    (0..replicas)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: qwq-32b-{i}\n  namespace: default\n  labels:\n    app: qwq-32b\n\
                 status:\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
                ip = pod_ip(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

pub(crate) fn write_config(dir: &Path, replicas: u8) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("pool.yaml"), SEED_POOL)?;
    std::fs::write(dir.join("model.yaml"), SEED_MODEL)?;
    std::fs::write(dir.join("pods.yaml"), pod_documents(replicas))?;
    Ok(())
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let root = procs::workspace_root();
    let work = root.join("target/demo");
    let config = work.join("config");
    eprintln!("building gateway, dashboard, vllm-sim and controller …");
    let bin = procs::build_bins(false, &["gateway", "vllm-sim", "dashboard", "controller"])?;
    // `--duration` counts from here: on a fresh clone the build alone can take longer than the demo should run.
    let started = Instant::now();
    write_config(&config, args.replicas)?;
    let release_file = config.join("canaryrelease-qwq-v2.yaml");
    // A release left from an earlier run would otherwise resume (or stay finished).
    let _ = std::fs::remove_file(&release_file);
    let _ = std::fs::remove_dir_all(config.join(api::dir::STATUS_DIR));
    if args.canary {
        std::fs::write(config.join("model.yaml"), CANARY_MODEL)?;
    }
    // Fresh tokens per run: the login token is printed for the person at the keyboard, the ingest token only
    // travels from the dashboard's to the gateway's command line.
    let token = || {
        use rand::Rng as _;
        let bytes: [u8; 12] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (login_token, ingest_token) = (token(), token());
    let mut dashboard = Proc::spawn(
        "dashboard",
        &bin.join("dashboard"),
        &[
            "--db".into(),
            work.join("switchyard.db").display().to_string(),
            "--listen".into(),
            args.dashboard_listen.clone(),
            "--dir".into(),
            config.display().to_string(),
            "--login-token".into(),
            login_token.clone(),
            "--ingest-token".into(),
            ingest_token.clone(),
        ],
        Some(&work.join("dashboard.log")),
    )?;
    let dashboard_url = format!("http://{}", args.dashboard_listen);
    procs::wait_ready(
        &format!("{dashboard_url}/readyz"),
        Duration::from_secs(30),
        &mut [&mut dashboard],
    )
    .await
    .context("waiting for the dashboard (see target/demo/dashboard.log)")?;

    // Precise prefix routing: the pods publish their KV events and both sides tokenize with the same tokenizer.
    let tokenizer = tokenizer::synthetic::write_dir(&work.join("tokenizer"))
        .context("writing the demo's tokenizer")?
        .display()
        .to_string();
    let mut sim_args = vec![
        "--addr".into(),
        format!("{}:8000", pod_ip(0)),
        "--replicas".into(),
        args.replicas.to_string(),
        "--time-scale".into(),
        args.time_scale.to_string(),
        "--prefix-caching".into(),
    ];
    sim_args.extend(precise_sim_args(&tokenizer));
    if args.canary {
        // Pods of one pool serve every target of its models: the canary runs as an adapter on each of them.
        sim_args.extend([
            "--lora-adapters".into(),
            CANARY_TARGET.into(),
            "--max-loras".into(),
            "2".into(),
        ]);
        if args.canary_error_rate > 0.0 {
            sim_args.extend([
                "--error-rate".into(),
                args.canary_error_rate.to_string(),
                "--error-model".into(),
                CANARY_TARGET.into(),
            ]);
        }
    }
    let mut sim = Proc::spawn(
        "vllm-sim",
        &bin.join("vllm-sim"),
        &sim_args,
        Some(&work.join("vllm-sim.log")),
    )?;
    let mut gateway_args = vec![
        "--dir".into(),
        config.display().to_string(),
        "--proxy-listen".into(),
        args.proxy_listen.clone(),
        "--admin-listen".into(),
        args.admin_listen.clone(),
        "--dashboard-url".into(),
        dashboard_url.clone(),
        "--dashboard-token".into(),
        ingest_token,
    ];
    gateway_args.extend(precise_gateway_args(&tokenizer));
    let mut gateway = Proc::spawn(
        "gateway",
        &bin.join("gateway"),
        &gateway_args,
        Some(&work.join("gateway.log")),
    )?;
    let deadline = Duration::from_secs(30);
    for i in 0..args.replicas {
        let url = format!("http://{}:8000/health", pod_ip(i));
        procs::wait_ready(&url, deadline, &mut [&mut sim])
            .await
            .context("waiting for the simulator (see target/demo/vllm-sim.log)")?;
    }
    let admin = format!("http://{}", args.admin_listen);
    procs::wait_ready(&format!("{admin}/readyz"), deadline, &mut [&mut gateway, &mut sim])
        .await
        .context("waiting for the gateway (see target/demo/gateway.log)")?;
    eprintln!(
        "{} simulated vLLM pods at {}…{}:8000, gateway proxy on {}",
        args.replicas,
        pod_ip(0),
        pod_ip(args.replicas - 1),
        args.proxy_listen
    );

    let client = load::http_client();
    let kv_peaks = Arc::new(Mutex::new(BTreeMap::<String, f64>::new()));
    let sampler = tokio::spawn(sample_kv(client.clone(), args.replicas, kv_peaks.clone()));
    let bar = ProgressBar::new(args.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} load [{bar:40}] {pos}/{len} requests {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let requests = load::mixed_requests("qwq", args.requests, 42);
    let base = format!("http://{}", args.proxy_listen);
    let samples = load::closed_loop(
        &client,
        &base,
        requests,
        args.concurrency,
        Duration::from_secs(120),
        Some(bar.clone()),
    )
    .await;
    bar.finish_and_clear();
    sampler.abort();

    print_table(&samples, &kv_peaks.lock().await.clone(), args.replicas);
    println!();
    println!("Try it (the gateway routes model \"qwq\" to target \"qwq-32b\"):");
    println!(
        "  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"qwq\", \"max_tokens\": 16, \"messages\": [{{\"role\": \"user\", \"content\": \"Who are you?\"}}]}}'"
    );
    println!(
        "  curl -sN {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"qwq\", \"max_tokens\": 16, \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"Who are you?\"}}]}}'"
    );
    println!("Why each request went where it went:  curl -s {admin}/debug/decisions?limit=5");
    println!("Gateway metrics:                      curl -s {admin}/metrics");
    println!("Dashboard (audit, releases, pods):    {dashboard_url}   log in with token {login_token}");
    println!(
        "Config (edit weights live):           {}",
        config.join("model.yaml").display()
    );

    let mut controller = None;
    if args.canary {
        let mut proc = Proc::spawn(
            "controller",
            &bin.join("controller"),
            &[
                "--dir".into(),
                config.display().to_string(),
                "--gateway-metrics-url".into(),
                format!("{admin}/metrics"),
                "--canary-interval".into(),
                "1s".into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
            ],
            Some(&work.join("controller.log")),
        )?;
        let mut watched = [&mut proc, &mut gateway, &mut sim];
        let release = canary_release(&client, &base, &config, &release_file, &mut watched);
        let outcome = match args.duration {
            Some(secs) => {
                let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
                tokio::time::timeout(left, release).await.unwrap_or(Ok(()))
            }
            None => release.await,
        };
        println!(
            "Release page (history, pause/resume/promote/abort): {dashboard_url}/releases/default/inferencemodel-sample"
        );
        if let Err(error) = outcome {
            eprintln!("canary release: {error:#}");
        }
        controller = Some(proc);
    }

    let wait = async {
        match args.duration {
            Some(secs) => {
                let left = Duration::from_secs(secs).saturating_sub(started.elapsed());
                println!("serving for {}s more (Ctrl-C to stop earlier)", left.as_secs());
                tokio::time::sleep(left).await;
            }
            None => {
                println!("serving until Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    let outcome: anyhow::Result<()> = async {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = watch.tick() => {
                    gateway.check_alive()?;
                    sim.check_alive()?;
                    dashboard.check_alive()?;
                    if let Some(controller) = controller.as_mut() {
                        controller.check_alive()?;
                    }
                }
            }
        }
    }
    .await;
    eprintln!("stopping …");
    if let Some(controller) = controller {
        controller.stop(Duration::from_secs(5)).await;
    }
    gateway.stop(Duration::from_secs(5)).await;
    sim.stop(Duration::from_secs(5)).await;
    dashboard.stop(Duration::from_secs(5)).await;
    outcome
}

/// Starts the guarded release under continuous load and prints every phase or percent change until it ends.
async fn canary_release(
    client: &load::HttpClient,
    base: &str,
    config: &Path,
    release_file: &Path,
    procs: &mut [&mut Proc],
) -> anyhow::Result<()> {
    use api::canary::Phase;
    // Two dozen clients keep the traffic flowing, so even the 1 % step collects its canary responses.
    let load = tokio::spawn({
        let (client, base) = (client.clone(), base.to_owned());
        async move {
            // Bounded: 20 000 requests or an hour, whichever ends first (the release usually ends long before).
            let requests = load::mixed_requests("qwq", 20_000, 7);
            load::closed_loop(&client, &base, requests, 24, Duration::from_secs(3600), None).await;
        }
    });
    std::fs::write(release_file, CANARY_RELEASE)?;
    println!();
    println!("guarded release started ({}):", release_file.display());
    for line in CANARY_RELEASE.lines() {
        println!("    {line}");
    }
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tick.tick().await;
        for proc in procs.iter_mut() {
            if let Err(error) = proc.check_alive() {
                load.abort();
                return Err(error);
            }
        }
        let status = match api::dir::read_status(config, "default", "qwq-v2") {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(error) => break Err(anyhow::anyhow!(error)),
        };
        let now = (status.phase, status.canary_percent);
        if last != Some(now) {
            let why = status.history.last().map(|e| e.reason.as_str()).unwrap_or("");
            println!(
                "  {:<12} canary {:>3} %  {why}",
                format!("{:?}", status.phase),
                status.canary_percent
            );
            last = Some(now);
        }
        if matches!(
            status.phase,
            Phase::Promoted | Phase::RolledBack | Phase::Aborted | Phase::Invalid
        ) {
            println!("  {}", status.message);
            break Ok(());
        }
    };
    load.abort();
    result
}

/// Keeps the highest KV-cache usage each pod reported while the load ran.
async fn sample_kv(client: load::HttpClient, replicas: u8, peaks: Arc<Mutex<BTreeMap<String, f64>>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        for i in 0..replicas {
            let endpoint = format!("{}:8000", pod_ip(i));
            if let Some(kv) = scrape_gauge(&client, &endpoint, "vllm:kv_cache_usage_perc").await {
                let mut peaks = peaks.lock().await;
                let peak = peaks.entry(endpoint).or_insert(0.0);
                *peak = peak.max(kv);
            }
        }
    }
}

/// Reads one unlabelled-or-labelled gauge from a simulator's /metrics.
pub(crate) async fn scrape_gauge(client: &load::HttpClient, endpoint: &str, name: &str) -> Option<f64> {
    use http_body_util::BodyExt;
    let request = http::Request::get(format!("http://{endpoint}/metrics"))
        .body(http_body_util::Full::default())
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(1), client.request(request))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = std::str::from_utf8(&body).ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn print_table(samples: &[Sample], kv_peaks: &BTreeMap<String, f64>, replicas: u8) {
    let ok = samples.iter().filter(|s| s.status == 200).count();
    println!("\n{} requests, {} ok, {} failed", samples.len(), ok, samples.len() - ok);
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.status != 200) {
        *failures
            .entry(s.error.clone().unwrap_or_else(|| format!("HTTP {}", s.status)))
            .or_default() += 1;
    }
    for (why, n) in failures {
        println!("  {n} × {why}");
    }
    println!(
        "\n{:<18} {:>9} {:>15} {:>13}",
        "pod", "requests", "mean TTFT ms", "peak KV use"
    );
    for i in 0..replicas {
        let endpoint = format!("{}:8000", pod_ip(i));
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.served_by.as_deref() == Some(&endpoint))
            .collect();
        let mean_ttft = if mine.is_empty() {
            f64::NAN
        } else {
            mine.iter().map(|s| s.ttft.as_secs_f64() * 1e3).sum::<f64>() / mine.len() as f64
        };
        let kv = kv_peaks
            .get(&endpoint)
            .map(|k| format!("{:.1} %", k * 100.0))
            .unwrap_or_else(|| "-".into());
        println!("{endpoint:<18} {:>9} {:>15.1} {:>13}", mine.len(), mean_ttft, kv);
    }
}
