//! The benchmark's clients: closed and open loops of streaming requests timed like benchmark_serving, and the
//! KV-use sampler.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{
    bench::{arrivals, classes},
    demo,
    load::HttpClient,
    workload::BenchRequest,
};

use super::{RouterKind, RoutingArgs};

/// KV-cache use per pod over the run: `(wall seconds, usage 0..=1)` samples.
pub(super) type KvSeries = BTreeMap<String, Vec<(f64, f64)>>;

/// What one streamed request measured, in wall time.
#[derive(Clone, Debug, Default)]
pub(super) struct Measured {
    pub(super) index: usize,
    /// HTTP status of the response; 0 when none arrived.
    pub(super) status: u16,
    pub(super) ok: bool,
    pub(super) ttft: f64,
    pub(super) latency: f64,
    pub(super) itls: Vec<f64>,
    pub(super) output_tokens: u64,
}

/// Where a run's requests go: the router's base URLs and how a client-side router picks among them.
pub(super) struct Route<'a> {
    pub(super) router: RouterKind,
    /// The model name this router knows the base model by.
    pub(super) model: &'a str,
    /// The gateway or peer (one URL), or the pods themselves for client-side routers.
    pub(super) bases: &'a [String],
    pub(super) seed: u64,
}

impl Route<'_> {
    /// The draws of client-side `random` and `kube-proxy`, the same for every router raced on this seed.
    fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ 0x5EED)
    }

    /// The base for request `index` when each request opens its own connection.
    fn per_request(&self, index: usize, rng: &mut StdRng) -> usize {
        per_request(self.router, index, self.bases.len(), rng)
    }
}

/// Which of `bases` request `index` goes to when it opens its own connection: client-side `random` and
/// `kube-proxy` draw one, everything else takes them in turn (the gateways and peers are a single base).
fn per_request(router: RouterKind, index: usize, bases: usize, rng: &mut StdRng) -> usize {
    match router {
        RouterKind::Random | RouterKind::KubeProxy => rng.random_range(0..bases),
        _ => index % bases,
    }
}

/// Sends the dataset on the schedule's arrival times, each request on its own task and connection, picking pods
/// like `closed_loop` does (so `kube-proxy` is `random` here).
pub(super) async fn open_loop(
    client: &HttpClient,
    route: &Route<'_>,
    dataset: &[BenchRequest],
    plan: &arrivals::Schedule,
    args: &RoutingArgs,
    bar: &ProgressBar,
) -> (Vec<Measured>, Option<classes::ArrivalFigures>) {
    let mut rng = route.rng();
    let dataset: Arc<Vec<BenchRequest>> = Arc::new(dataset.to_vec());
    let max_in_flight = args.max_in_flight.unwrap_or(10 * args.workload.concurrency()).max(1);
    let run = arrivals::open_loop(&plan.offsets, args.time_scale, max_in_flight, |index| {
        let base = route.bases[route.per_request(index, &mut rng)].clone();
        let (client, dataset, bar) = (client.clone(), dataset.clone(), bar.clone());
        let model = dataset[index].class.model(route.model);
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

/// `concurrency` clients, each sending the next unsent request as soon as its previous one finished. Each client is
/// one keep-alive connection: `kube-proxy` pins it to the pod drawn when it connects.
pub(super) async fn closed_loop(
    client: &HttpClient,
    route: &Route<'_>,
    dataset: &[BenchRequest],
    concurrency: usize,
    bar: &ProgressBar,
) -> Vec<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let rng = Arc::new(std::sync::Mutex::new(route.rng()));
    let dataset: Arc<Vec<BenchRequest>> = Arc::new(dataset.to_vec());
    let bases: Arc<Vec<String>> = Arc::new(route.bases.to_vec());
    let mut workers = tokio::task::JoinSet::new();
    // All clients start at once, like benchmark_serving with --max-concurrency: the seed's t=0 burst.
    for _ in 0..concurrency {
        let pinned = {
            let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (route.router == RouterKind::KubeProxy).then(|| rng.random_range(0..bases.len()))
        };
        let (client, next, rng, dataset, bases, bar) = (
            client.clone(),
            next.clone(),
            rng.clone(),
            dataset.clone(),
            bases.clone(),
            bar.clone(),
        );
        let (router, model) = (route.router, route.model.to_owned());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = dataset.get(index) else { break };
                let pick = match pinned {
                    Some(pod) => pod,
                    None => {
                        let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        per_request(router, index, bases.len(), &mut rng)
                    }
                };
                let model = request.class.model(&model);
                out.push(stream_one(&client, &bases[pick], &model, request, index).await);
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
pub(super) async fn stream_one(
    client: &HttpClient,
    base: &str,
    model: &str,
    request: &BenchRequest,
    index: usize,
) -> Measured {
    // The payload is ready before the clock starts, as benchmark_serving builds it before `st`: encoding a long
    // prompt is client work, not serving latency, and every time scale would multiply it.
    let body = serde_json::json!({
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.output_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "ignore_eos": true,
    })
    .to_string();
    let mut measured = Measured {
        index,
        ..Measured::default()
    };
    let Ok(http_request) = http::Request::post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
    else {
        return measured;
    };
    let started = Instant::now();
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

pub(super) async fn sample_kv(client: HttpClient, pods: Vec<String>, series: Arc<Mutex<KvSeries>>, started: Instant) {
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
