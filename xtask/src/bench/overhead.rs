//! `cargo xtask bench overhead`: what routing costs. Scheduler decision time with prefix scoring at 8/64/256
//! endpoints, the precise prefix index's memory per resident block and its scoring time at 64 pods and 8 K-token
//! prompts, and the proxy's req/s and latency against the simulator called directly, in the same run.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use scheduler::{Criticality, Endpoint, EndpointId, EndpointMetrics, PodName, Request, Scheduler, SchedulerConfig};
use serde_json::Value;

use crate::{
    demo,
    load::{self, RequestSpec, percentile},
    procs::{self, Proc},
};

#[derive(clap::Args, Debug)]
pub(crate) struct OverheadArgs {
    /// Timed decisions per endpoint count.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) decisions: usize,
    /// Seconds of load per side (direct, proxy).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Only time the scheduler (no processes are started).
    #[arg(long)]
    pub(crate) decisions_only: bool,
}

pub(crate) async fn run(args: OverheadArgs) -> anyhow::Result<()> {
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    println!("scheduler decision time (default profile, prefix scoring on, ~13 KB prompts)");
    println!(
        "{:>10} {:>12} {:>12} {:>12}",
        "endpoints", "median µs", "p99 µs", "max µs"
    );
    for n in [8usize, 64, 256] {
        let (median, p99, max) = decision_times(n, args.decisions);
        println!("{n:>10} {median:>12.2} {p99:>12.2} {max:>12.1}");
        summary.insert(format!("decision_median_us_{n}_endpoints"), median.into());
        summary.insert(format!("decision_p99_us_{n}_endpoints"), p99.into());
    }

    let precise = precise_index_cost();
    println!(
        "\nprecise prefix index: {} resident blocks over {PRECISE_PODS} pods, {:.1} bytes per resident block",
        precise.resident, precise.bytes_per_block
    );
    println!(
        "scoring an {PRECISE_PROMPT_TOKENS}-token prompt at {PRECISE_PODS} pods: keys p50 {:.2} µs p99 {:.2} µs, \
         lookup p50 {:.2} µs p99 {:.2} µs (target: decision p99 ≤ 50 µs, tokenization apart)",
        precise.keys_p50_us, precise.keys_p99_us, precise.lookup_p50_us, precise.lookup_p99_us
    );
    println!(
        "whole decision with every pod precise (keys + lookup + schedule): p50 {:.2} µs p99 {:.2} µs; \
         tokenizing the prompt apart: p50 {:.0} µs p99 {:.0} µs",
        precise.decision_p50_us, precise.decision_p99_us, precise.tokenize_p50_us, precise.tokenize_p99_us
    );
    summary.insert("precise_resident_blocks".into(), precise.resident.into());
    summary.insert("precise_bytes_per_block".into(), precise.bytes_per_block.into());
    summary.insert("precise_keys_p99_us".into(), precise.keys_p99_us.into());
    summary.insert("precise_lookup_p99_us".into(), precise.lookup_p99_us.into());
    summary.insert("precise_decision_p50_us".into(), precise.decision_p50_us.into());
    summary.insert("precise_decision_p99_us".into(), precise.decision_p99_us.into());
    summary.insert("tokenize_8k_p50_us".into(), precise.tokenize_p50_us.into());
    summary.insert("tokenize_8k_p99_us".into(), precise.tokenize_p99_us.into());

    if args.decisions_only {
        let path = super::write_summary("overhead", summary)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let rows = proxy_vs_direct(&args).await?;
    println!(
        "\nproxy vs direct to one zero-delay simulator, {} s per row",
        args.seconds
    );
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "path", "clients", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, clients, r) in &rows {
        println!(
            "{name:>8} {clients:>8} {:>10.0} {:>10.3} {:>10.3} {:>8}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        let key = format!("{name}_c{clients}");
        summary.insert(format!("{key}_rps"), r.rps.into());
        summary.insert(format!("{key}_p50_ms"), r.p50_ms.into());
        summary.insert(format!("{key}_p99_ms"), r.p99_ms.into());
        summary.insert(format!("{key}_errors"), r.errors.into());
    }
    let [(_, _, direct), (_, _, proxied), (_, _, direct1), (_, _, proxied1)] = &rows[..] else {
        anyhow::bail!("expected four load rows");
    };
    let ratio = proxied.rps / direct.rps;
    let added_us = (proxied1.p50_ms - direct1.p50_ms) * 1e3;
    println!(
        "proxy/direct throughput ratio at {} clients: {ratio:.2} (target ≥ 0.80)",
        args.concurrency
    );
    println!("latency the proxy adds to one request (p50, 1 client): {added_us:.0} µs");
    summary.insert("added_p50_us_c1".into(), added_us.into());
    summary.insert("proxy_rps_ratio_vs_direct".into(), ratio.into());
    let path = super::write_summary("overhead", summary)?;
    println!("wrote {}", path.display());
    Ok(())
}

const PRECISE_PODS: usize = 64;
const PRECISE_PROMPT_TOKENS: usize = 8192;
const BLOCK: usize = 16;

struct PreciseCost {
    resident: usize,
    bytes_per_block: f64,
    keys_p50_us: f64,
    keys_p99_us: f64,
    lookup_p50_us: f64,
    lookup_p99_us: f64,
    /// Keys, lookup and `Scheduler::schedule` with every pod precise: the whole decision.
    decision_p50_us: f64,
    decision_p99_us: f64,
    /// Tokenizing an 8 K-token prompt with the benchmark's tokenizer, apart from the decision.
    tokenize_p50_us: f64,
    tokenize_p99_us: f64,
}

/// Fills a precise index to about a million resident blocks (64 pods, each holding 16 chains of 1 000 blocks out of
/// 256 shared prompt groups) and times scoring 8 K-token prompts that share a random part of a group's chain.
fn precise_index_cost() -> PreciseCost {
    use scheduler::prefix::precise::{PreciseIndex, block_keys};
    const GROUPS: usize = 256;
    const CHAINS_PER_POD: usize = 16;
    const CHAIN_BLOCKS: usize = 1_000;
    let group_tokens = |group: usize, blocks: usize| -> Vec<u32> {
        (0..blocks * BLOCK).map(|t| (group * 1_000_003 + t) as u32).collect()
    };
    let mut index = PreciseIndex::new();
    for pod in 0..PRECISE_PODS {
        let id = EndpointId::new(format!("10.1.{}.{}:8000", pod / 250, pod % 250));
        for chain in 0..CHAINS_PER_POD {
            let group = (pod * 7 + chain * 31) % GROUPS;
            let tokens = group_tokens(group, CHAIN_BLOCKS);
            // Engine hashes are the pod's own; 100 blocks per event as an engine step would store them.
            let hash = |i: usize| ((pod as u64) << 40) ^ ((group as u64) << 20) ^ i as u64;
            for start in (0..CHAIN_BLOCKS).step_by(100) {
                let hashes: Vec<u64> = (start..start + 100).map(hash).collect();
                let parent = start.checked_sub(1).map(hash);
                let slice = &tokens[start * BLOCK..(start + 100) * BLOCK];
                if let Err(err) = index.stored(&id, &hashes, parent, slice, BLOCK, None) {
                    panic!("a well-formed chain must index: {err}");
                }
            }
        }
    }
    let resident = index.resident_blocks();
    let bytes_per_block = index.heap_bytes() as f64 / resident as f64;
    let mut rng = SmallRng::seed_from_u64(13);
    let prompt_blocks = PRECISE_PROMPT_TOKENS / BLOCK;
    let scheduler = match Scheduler::new(&SchedulerConfig::default()) {
        Ok(s) => s,
        Err(err) => panic!("default scheduler config must build: {err}"),
    };
    let now = Instant::now();
    let mut endpoints = bench_endpoints(PRECISE_PODS, &mut rng, now);
    for (pod, endpoint) in endpoints.iter_mut().enumerate() {
        endpoint.id = EndpointId::new(format!("10.1.{}.{}:8000", pod / 250, pod % 250));
    }
    // The prompt text, which the approximate index would hash were any pod approximate.
    let text = "abc ".repeat(PRECISE_PROMPT_TOKENS);
    let (mut keys_us, mut lookup_us, mut decision_us) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5_000 {
        let group = rng.random_range(0..GROUPS);
        let shared = rng.random_range(0..prompt_blocks);
        let mut tokens = group_tokens(group, prompt_blocks);
        for t in &mut tokens[shared * BLOCK..] {
            *t = t.wrapping_add(7 + i as u32);
        }
        let tokenized = scheduler::Tokenized {
            tokens: PRECISE_PROMPT_TOKENS as u32,
            blocks: prompt_blocks as u32,
            block_size: BLOCK as u32,
        };
        let request = bench_request(i, text.clone(), Some(tokenized));
        let started = Instant::now();
        let keys = block_keys(&tokens, BLOCK, None, prompt_blocks);
        let hashed = Instant::now();
        let ids: Vec<EndpointId> = endpoints.iter().map(|e| e.id.clone()).collect();
        let depths = index.prefix_depths(&keys, &ids);
        let done = Instant::now();
        for (endpoint, depth) in endpoints.iter_mut().zip(depths) {
            endpoint.precise_prefix = Some(depth);
        }
        let decision = scheduler.schedule(&request, &endpoints, now, &mut rng);
        let decided = Instant::now();
        std::hint::black_box(decision);
        if i >= 500 {
            keys_us.push((hashed - started).as_secs_f64() * 1e6);
            lookup_us.push((done - hashed).as_secs_f64() * 1e6);
            decision_us.push((decided - started).as_secs_f64() * 1e6);
        }
    }
    let tokenizer = tokenizer_for_bench();
    let mut tokenize_us = Vec::new();
    for i in 0..600 {
        let prompt: String = (0..PRECISE_PROMPT_TOKENS)
            .map(|t| {
                let w = (t * 7_919 + i * 104_729) % 17_576;
                let letter = |k: usize| char::from(b'a' + (k % 26) as u8);
                format!("{}{}{} ", letter(w / 676), letter(w / 26), letter(w))
            })
            .collect();
        let started = Instant::now();
        let ids = tokenizer.encode(&prompt);
        let took = started.elapsed();
        std::hint::black_box(ids.ok());
        if i >= 100 {
            tokenize_us.push(took.as_secs_f64() * 1e6);
        }
    }
    tokenize_us.sort_by(f64::total_cmp);
    decision_us.sort_by(f64::total_cmp);
    keys_us.sort_by(f64::total_cmp);
    lookup_us.sort_by(f64::total_cmp);
    PreciseCost {
        resident,
        bytes_per_block,
        keys_p50_us: percentile(&keys_us, 50.0),
        keys_p99_us: percentile(&keys_us, 99.0),
        lookup_p50_us: percentile(&lookup_us, 50.0),
        lookup_p99_us: percentile(&lookup_us, 99.0),
        decision_p50_us: percentile(&decision_us, 50.0),
        decision_p99_us: percentile(&decision_us, 99.0),
        tokenize_p50_us: percentile(&tokenize_us, 50.0),
        tokenize_p99_us: percentile(&tokenize_us, 99.0),
    }
}

/// The synthetic tokenizer, loaded from its files as the gateway loads it.
fn tokenizer_for_bench() -> tokenizer::Tokenizer {
    let dir = procs::workspace_root().join("target/bench/tokenizer");
    let path = match tokenizer::synthetic::write_dir(&dir) {
        Ok(path) => path,
        Err(err) => panic!("writing the benchmark tokenizer to {}: {err}", dir.display()),
    };
    match tokenizer::Tokenizer::from_file(&path) {
        Ok(t) => t,
        Err(err) => panic!("loading {}: {err}", path.display()),
    }
}

/// A Critical request for the benchmark's model with `prompt`.
fn bench_request(i: usize, prompt: String, tokenized: Option<scheduler::Tokenized>) -> Request {
    Request {
        request_id: i.to_string(),
        received_at_ms: 0,
        model: "qwq".into(),
        target_model: "qwq-32b".into(),
        criticality: Criticality::Critical,
        pool: "bench".into(),
        prompt,
        lora_adapter: None,
        tokenized,
    }
}

/// `n` scraped endpoints with random load, none precise yet.
fn bench_endpoints(n: usize, rng: &mut SmallRng, now: Instant) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            id: EndpointId::new(format!("10.0.{}.{}:8000", i / 250, i % 250)),
            pod: PodName::new(format!("default/vllm-{i}")),
            inflight: 0,
            pending_prefill_tokens: 0,
            inflight_adapters: Vec::new(),
            precise_prefix: None,
            metrics: EndpointMetrics {
                waiting_queue: rng.random_range(0..6),
                running: rng.random_range(0..20),
                kv_cache_usage: rng.random_range(0.0..0.9),
                updated_at: Some(now),
                ..EndpointMetrics::default()
            },
        })
        .collect()
}

/// Median, p99 and max microseconds of `Scheduler::schedule` over a pool of `n` endpoints.
fn decision_times(n: usize, decisions: usize) -> (f64, f64, f64) {
    let mut rng = SmallRng::seed_from_u64(n as u64);
    let scheduler = match Scheduler::new(&SchedulerConfig::default()) {
        Ok(s) => s,
        Err(err) => panic!("default scheduler config must build: {err}"),
    };
    let now = std::time::Instant::now();
    let endpoints = bench_endpoints(n, &mut rng, now);
    // 40 system prompts of ~12 KB shared by many requests, each followed by a unique question.
    let prefixes: Vec<String> = (0..40)
        .map(|p| format!("system prompt {p}: ").repeat(12_000 / 17))
        .collect();
    let request = |i: usize, rng: &mut SmallRng| {
        let prefix = &prefixes[rng.random_range(0..prefixes.len())];
        bench_request(i, format!("{prefix}question {i} {}", "x".repeat(900)), None)
    };
    for i in 0..2_000 {
        let req = request(i, &mut rng);
        std::hint::black_box(scheduler.schedule(&req, &endpoints, now, &mut rng));
    }
    let mut times = Vec::with_capacity(decisions);
    for i in 0..decisions {
        let req = request(i, &mut rng);
        let started = Instant::now();
        let decision = scheduler.schedule(&req, &endpoints, now, &mut rng);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(decision);
    }
    times.sort_by(f64::total_cmp);
    (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN),
    )
}

struct LoadResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn proxy_vs_direct(args: &OverheadArgs) -> anyhow::Result<Vec<(&'static str, usize, LoadResult)>> {
    let bin = procs::build_bins(true, &["gateway", "vllm-sim"])?;
    let work = procs::workspace_root().join("target/bench/overhead");
    let config = work.join("config");
    std::fs::create_dir_all(&config)?;
    // One pod at 127.0.0.41 so the bench never collides with a running demo (127.0.0.11–15).
    let pod = "127.0.0.41";
    std::fs::write(config.join("pool.yaml"), demo::SEED_POOL)?;
    std::fs::write(config.join("model.yaml"), demo::SEED_MODEL)?;
    std::fs::write(
        config.join("pods.yaml"),
        demo::pod_documents(1).replace("127.0.0.11", pod),
    )?;
    let mut sim = Proc::spawn(
        "vllm-sim",
        &bin.join("vllm-sim"),
        &[
            "--addr".into(),
            format!("{pod}:8000"),
            "--profile".into(),
            "zero-delay".into(),
        ],
        Some(&work.join("vllm-sim.log")),
    )?;
    let mut gateway = Proc::spawn(
        "gateway",
        &bin.join("gateway"),
        &[
            "--dir".into(),
            config.display().to_string(),
            "--proxy-listen".into(),
            "127.0.0.1:18081".into(),
            "--admin-listen".into(),
            "127.0.0.1:19090".into(),
        ],
        Some(&work.join("gateway.log")),
    )?;
    let deadline = Duration::from_secs(30);
    procs::wait_ready(&format!("http://{pod}:8000/health"), deadline, &mut [&mut sim]).await?;
    procs::wait_ready("http://127.0.0.1:19090/readyz", deadline, &mut [&mut gateway, &mut sim]).await?;

    let client = load::http_client();
    let make = |model: &str| -> Vec<RequestSpec> {
        (0..1_000_000)
            .map(|i| RequestSpec {
                path: "/v1/completions",
                body: format!(r#"{{"model":"{model}","prompt":"request {i} says hello","max_tokens":1}}"#).into(),
            })
            .collect()
    };
    let window = Duration::from_secs(args.seconds);
    // Warm both paths (connections, allocator) before measuring.
    load::closed_loop(
        &client,
        &format!("http://{pod}:8000"),
        make("qwq-32b").into_iter().take(500).collect(),
        args.concurrency,
        window,
        None,
    )
    .await;
    load::closed_loop(
        &client,
        "http://127.0.0.1:18081",
        make("qwq").into_iter().take(500).collect(),
        args.concurrency,
        window,
        None,
    )
    .await;

    let measure = |base: String, model: &'static str, clients: usize| {
        let client = client.clone();
        let requests = make(model);
        async move {
            let started = Instant::now();
            let samples = load::closed_loop(&client, &base, requests, clients, window, None).await;
            summarize(&samples, started.elapsed())
        }
    };
    let direct_base = format!("http://{pod}:8000");
    let proxy_base = "http://127.0.0.1:18081".to_owned();
    let mut rows = Vec::new();
    // Saturated throughput first, then the latency a single request pays, each side by side.
    for clients in [args.concurrency, 1] {
        rows.push((
            "direct",
            clients,
            measure(direct_base.clone(), "qwq-32b", clients).await,
        ));
        rows.push(("proxy", clients, measure(proxy_base.clone(), "qwq", clients).await));
    }
    gateway.stop(Duration::from_secs(5)).await;
    sim.stop(Duration::from_secs(5)).await;
    Ok(rows)
}

fn summarize(samples: &[load::Sample], elapsed: Duration) -> LoadResult {
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .collect();
    latencies.sort_by(f64::total_cmp);
    LoadResult {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        errors: samples.len() - latencies.len(),
    }
}
