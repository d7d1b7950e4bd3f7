//! `cargo xtask bench dashboard`: ingest rate of the dashboard (NDJSON batches over HTTP, as gateways send them) and
//! the latency of filtered audit pages with millions of stored decisions.
//!
//! The large database is generated straight through `dashboard::db` in batched transactions (far faster than
//! HTTP) and kept in `target/bench/dashboard/` so later runs reuse it; `--regenerate` builds it again.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use serde_json::{Value, json};

use crate::procs;

#[derive(clap::Args, Debug)]
pub(crate) struct DashboardArgs {
    /// Decisions stored before the page latencies are measured.
    #[arg(long, default_value_t = 5_000_000)]
    rows: u64,
    /// Decisions posted through `/api/v1/ingest` for the ingest rate.
    #[arg(long, default_value_t = 200_000)]
    ingest: u64,
    /// Decisions per ingest batch (the gateway's shipper sends up to 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent ingest connections.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Timed requests per filtered page.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Build the large database again even if one of the right size exists.
    #[arg(long)]
    regenerate: bool,
}

const PODS: usize = 5;
const LOGIN: &str = "bench-login";
const INGEST: &str = "bench-ingest";
/// The stored decisions span the default retention, one week.
const SPAN_MS: u64 = 7 * 86_400_000;

/// A decision like the demo's: five candidates with their metrics and four scorer values.
fn decision(rng: &mut SmallRng, i: u64, at_ms: u64) -> Value {
    let sheddable = rng.random_bool(0.2);
    let (model, target, criticality) = if sheddable {
        ("llama", "llama-8b", "Sheddable")
    } else if rng.random_bool(0.1) {
        ("qwq", "qwq-32b-canary", "Critical")
    } else {
        ("qwq", "qwq-32b", "Critical")
    };
    let roll: f64 = rng.random();
    let outcome = if roll < 0.97 {
        "Routed"
    } else if roll < 0.985 {
        "Shed429"
    } else if roll < 0.995 {
        "Error"
    } else {
        "NoCapacity503"
    };
    let winner = rng.random_range(0..PODS);
    let candidates: Vec<Value> = (0..PODS)
        .map(|p| {
            let queue = rng.random_range(0..8u32);
            let kv: f64 = rng.random_range(0.0..0.95);
            json!({"pod": format!("default/qwq-32b-{p}"), "endpoint": format!("127.0.0.{}:8000", 11 + p),
                "queue": queue, "running": rng.random_range(0..24u32), "inflight": rng.random_range(0..4u32),
                "kv_usage": kv, "prefix_match_blocks": rng.random_range(0..40u32), "lora_state": "not_applicable",
                "metrics_age_ms": rng.random_range(0..60u32),
                "scores": {"queue": 1.0 - f64::from(queue) / 8.0, "kv-cache": 1.0 - kv,
                           "prefix-cache": rng.random_range(0.0..1.0), "inflight": rng.random_range(0.0..1.0)},
                "total": rng.random_range(0.0..8.0)})
        })
        .collect();
    let routed = outcome == "Routed";
    json!({
        "request_id": format!("bench-{i:08}"), "received_at_ms": at_ms, "model": model, "target_model": target,
        "criticality": criticality, "pool": "reasoning-pool", "outcome": outcome,
        "endpoint": routed.then(|| format!("127.0.0.{}:8000", 11 + winner)),
        "fallbacks": [], "candidates": candidates, "profile": "default",
        "reason": "max score 6.40 (queue 2.00, kv-cache 1.40, prefix-cache 3.00)", "scheduler_micros": 14,
        "status": if routed { 200 } else { 429 }, "ttft_ms": rng.random_range(20.0..900.0),
        "duration_ms": rng.random_range(200.0..9000.0), "prompt_tokens": rng.random_range(20..4000u64),
        "completion_tokens": rng.random_range(10..1500u64), "cached_tokens": null
    })
}

async fn start(db: &Path, dir: &Path) -> anyhow::Result<dashboard::Dashboard> {
    use clap::Parser as _;
    let args = dashboard::args::Args::parse_from([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db.display().to_string(),
        "--dir",
        &dir.display().to_string(),
        "--login-token",
        LOGIN,
        "--ingest-token",
        INGEST,
        "--retain",
        "3650d",
    ]);
    dashboard::start(args).await
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn request(client: &Client, request: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// Posts `n` decisions in batches and returns decisions per second.
async fn ingest_rate(args: &DashboardArgs, work: &Path, config: &Path) -> anyhow::Result<(f64, Duration)> {
    let db = work.join("ingest.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let dash = start(&db, config).await?;
    let url = format!("http://{}/api/v1/ingest", dash.addr);
    let mut rng = SmallRng::seed_from_u64(7);
    let now = crate_now_ms();
    // Bodies are built before the clock starts: the benchmark measures the dashboard, not this generator.
    let bodies: Vec<Bytes> = (0..args.ingest.div_ceil(args.batch as u64))
        .map(|b| {
            let mut body = String::new();
            for j in 0..args.batch as u64 {
                let i = b * args.batch as u64 + j;
                if i >= args.ingest {
                    break;
                }
                body.push_str(&json!({ "decision": decision(&mut rng, i, now + i) }).to_string());
                body.push('\n');
            }
            Bytes::from(body)
        })
        .collect();
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        tasks.spawn(async move {
            loop {
                let Some(body) = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop() else {
                    return anyhow::Ok(());
                };
                let post = http::Request::post(&url)
                    .header("authorization", format!("Bearer {INGEST}"))
                    .header("content-type", "application/x-ndjson")
                    .body(Full::new(body))?;
                let (status, reply) = request(&client, post).await?;
                anyhow::ensure!(
                    status == 200,
                    "ingest answered {status}: {}",
                    String::from_utf8_lossy(&reply)
                );
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = started.elapsed();
    dash.stop().await;
    Ok((args.ingest as f64 / elapsed.as_secs_f64(), elapsed))
}

fn crate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds (or reuses) the database of `rows` decisions spread over the last week; returns the seconds it took.
async fn generate(args: &DashboardArgs, db_path: &Path) -> anyhow::Result<Option<f64>> {
    let marker = db_path.with_extension("rows");
    let have: u64 = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if have == args.rows && db_path.exists() && !args.regenerate {
        println!("reusing {} ({} decisions)", db_path.display(), have);
        return Ok(None);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    let _ = std::fs::remove_file(&marker);
    let db = dashboard::db::Db::open_path(db_path).await?;
    let mut rng = SmallRng::seed_from_u64(42);
    let end = crate_now_ms();
    let start = end - SPAN_MS;
    // A few distinct decisions, reused with new ids, times and outcomes: generating JSON would dominate otherwise.
    let templates: Vec<dashboard::db::NewDecision> = (0..64)
        .map(|i| {
            let d: audit::Record = serde_json::from_value(decision(&mut rng, i, 0)).expect("valid decision");
            dashboard::db::NewDecision::from_decision(&d).expect("encodable decision")
        })
        .collect();
    let started = Instant::now();
    const BATCH: u64 = 20_000;
    let mut batch = Vec::with_capacity(BATCH as usize);
    for i in 0..args.rows {
        let mut row = templates[rng.random_range(0..templates.len())].clone();
        row.request_id = format!("bench-{i:08}");
        row.received_at_ms = (start + i * SPAN_MS / args.rows) as i64;
        // The filter columns are drawn per row, so their combinations are as varied as in real traffic.
        let (model, target, criticality) = match rng.random_range(0..10) {
            0 | 1 => ("llama", "llama-8b", "Sheddable"),
            2 => ("qwq", "qwq-32b-canary", "Critical"),
            _ => ("qwq", "qwq-32b", "Critical"),
        };
        let roll: f64 = rng.random();
        let outcome = match roll {
            r if r < 0.97 => "Routed",
            r if r < 0.985 => "Shed429",
            r if r < 0.995 => "Error",
            _ => "NoCapacity503",
        };
        let pod = rng.random_range(0..PODS);
        (row.model, row.target_model, row.criticality, row.outcome) =
            (model.into(), target.into(), criticality, outcome);
        (row.pod, row.endpoint) = match outcome {
            "Routed" | "Error" => (
                Some(format!("default/qwq-32b-{pod}")),
                Some(format!("127.0.0.{}:8000", 11 + pod)),
            ),
            _ => (None, None),
        };
        batch.push(row);
        if batch.len() as u64 == BATCH || i + 1 == args.rows {
            db.insert_decisions(&batch).await?;
            batch.clear();
            if (i + 1) % 500_000 == 0 {
                let rate = (i + 1) as f64 / started.elapsed().as_secs_f64();
                eprintln!("  {} decisions stored ({rate:.0}/s)", i + 1);
            }
        }
    }
    db.analyze().await?;
    std::fs::write(&marker, args.rows.to_string())?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    let work = procs::workspace_root().join("target/bench/dashboard");
    let config = work.join("config");
    std::fs::create_dir_all(&config).context("creating target/bench/dashboard")?;
    std::fs::write(config.join("model.yaml"), crate::demo::SEED_MODEL)?;

    println!(
        "ingest: {} decisions in batches of {} over {} connections …",
        args.ingest, args.batch, args.concurrency
    );
    let (ingest_rate, ingest_time) = ingest_rate(&args, &work, &config).await?;
    println!(
        "ingest: {ingest_rate:.0} decisions/s ({:.1} s)",
        ingest_time.as_secs_f64()
    );

    let db_path = work.join(format!("{}.db", args.rows));
    println!("query: preparing {} stored decisions …", args.rows);
    let generated = generate(&args, &db_path).await?;
    if let Some(secs) = generated {
        println!(
            "query: generated in {secs:.0} s ({:.0} decisions/s)",
            args.rows as f64 / secs
        );
    }
    let dash = start(&db_path, &config).await?;
    let base = format!("http://{}", dash.addr);
    let client: Client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let end = crate_now_ms();
    let day = 86_400_000;
    // A cursor in the middle of the week: a deep page, not just the newest rows.
    let middle = format!("{}.{}", end - SPAN_MS / 2, i64::MAX);
    let queries = [
        ("newest page, no filter", "/decisions".to_owned()),
        ("model + outcome", "/decisions?model=qwq&outcome=Routed".to_owned()),
        ("pod", "/decisions?pod=default%2Fqwq-32b-3".to_owned()),
        (
            "target + one-day range",
            format!(
                "/decisions?target_model=qwq-32b-canary&from={}&to={}",
                end - 3 * day,
                end - 2 * day
            ),
        ),
        (
            "rare outcome + criticality",
            "/decisions?outcome=NoCapacity503&criticality=Sheddable".to_owned(),
        ),
        (
            "request id prefix",
            format!("/decisions?q=bench-{:05}", args.rows / 2 / 1000),
        ),
        (
            "deep keyset page + model",
            format!("/decisions?model=llama&after={middle}"),
        ),
        (
            "JSON API, pod + outcome",
            "/api/v1/decisions?pod=default%2Fqwq-32b-1&outcome=Error".to_owned(),
        ),
    ];
    println!(
        "\n{:<30} {:>9} {:>9} {:>9} {:>6}",
        "filtered page (50 rows)", "p50 ms", "p95 ms", "max ms", "rows"
    );
    let mut figures = BTreeMap::new();
    let mut worst_p95: f64 = 0.0;
    for (name, path) in &queries {
        let mut times = Vec::with_capacity(args.repeats);
        let mut rows = 0;
        for attempt in 0..=args.repeats {
            let get = http::Request::get(format!("{base}{path}")).body(Full::new(Bytes::new()))?;
            let started = Instant::now();
            let (status, body) = request(&client, get).await?;
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(status == 200, "{path} answered {status}");
            rows = String::from_utf8_lossy(&body).matches("/decisions/bench-").count()
                + String::from_utf8_lossy(&body)
                    .matches("\"request_id\":\"bench-")
                    .count();
            // The first request warms SQLite's page cache and the statement cache; it is not counted.
            if attempt > 0 {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        let (p50, p95, max) = (
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            times[times.len() - 1],
        );
        worst_p95 = worst_p95.max(p95);
        println!("{name:<30} {p50:>9.1} {p95:>9.1} {max:>9.1} {rows:>6}");
        let key = name.replace([' ', ',', '+'], "_").replace("__", "_").replace("__", "_");
        figures.insert(format!("page_{key}_p95_ms"), json!((p95 * 100.0).round() / 100.0));
    }
    dash.stop().await;
    let db_bytes = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
    println!(
        "\ningest rate {ingest_rate:.0} decisions/s (goal ≥ 20000); slowest filtered page p95 {worst_p95:.1} ms at {} \
         decisions (goal ≤ 100 ms); database {:.1} GiB; benchmark took {:.0} s",
        args.rows,
        db_bytes as f64 / (1u64 << 30) as f64,
        total.elapsed().as_secs_f64()
    );
    figures.insert("ingest_decisions_per_s".into(), json!(ingest_rate.round()));
    figures.insert("ingest_decisions".into(), json!(args.ingest));
    figures.insert("stored_decisions".into(), json!(args.rows));
    figures.insert("page_p95_ms_worst".into(), json!((worst_p95 * 100.0).round() / 100.0));
    figures.insert(
        "db_gib".into(),
        json!((db_bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0),
    );
    if let Some(secs) = generated {
        figures.insert("generate_s".into(), json!(secs.round()));
    }
    figures.insert("bench_s".into(), json!(total.elapsed().as_secs_f64().round()));
    let path = super::write_summary("dashboard", figures)?;
    println!("wrote {}", path.display());
    anyhow::ensure!(
        ingest_rate >= 20_000.0,
        "ingest rate {ingest_rate:.0}/s is below 20000/s"
    );
    anyhow::ensure!(
        worst_p95 <= 100.0,
        "a filtered page took {worst_p95:.1} ms at p95 (goal ≤ 100 ms)"
    );
    Ok(())
}
