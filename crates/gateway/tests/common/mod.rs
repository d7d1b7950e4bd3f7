//! Test support: fake model-server pods with scripted metrics, a YAML config directory, and an in-process gateway.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clap::Parser;
use scheduler::EndpointId;
use tokio::net::TcpListener;

/// Scripted state of one fake pod.
#[derive(Debug, Default)]
pub struct PodState {
    pub waiting: u32,
    pub running: u32,
    pub kv: f64,
    /// LoRA adapters reported as running; the `vllm:lora_requests_info` series is served only when `max_lora > 0`.
    pub lora_running: Vec<String>,
    pub max_lora: u32,
    /// Request bodies received, in order.
    pub bodies: Vec<serde_json::Value>,
    /// Answer every completion with this status and a plain-text body instead of a completion.
    pub fail_status: Option<u16>,
    /// Never answer completions (the request is still recorded in `bodies`).
    pub hang: bool,
    /// Answer `/metrics` with 503, as a server that is going down.
    pub down: bool,
}

#[derive(Clone)]
pub struct FakePod {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<PodState>>,
    server: tokio::task::AbortHandle,
}

impl FakePod {
    pub fn set(&self, waiting: u32, kv: f64) {
        let mut state = self.state.lock().unwrap();
        state.waiting = waiting;
        state.kv = kv;
    }

    /// Reports `running` LoRA adapters with `max` slots.
    pub fn set_lora(&self, running: &[&str], max: u32) {
        let mut state = self.state.lock().unwrap();
        state.lora_running = running.iter().map(|s| s.to_string()).collect();
        state.max_lora = max;
    }

    /// Stops accepting connections, so new connections to the pod are refused.
    pub fn kill(&self) {
        self.server.abort();
    }

    pub fn received(&self) -> usize {
        self.state.lock().unwrap().bodies.len()
    }
}

pub use test_support::bind_pods;

async fn metrics(State(state): State<Arc<Mutex<PodState>>>) -> Response {
    let s = state.lock().unwrap();
    if s.down {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let lora = if s.max_lora > 0 {
        format!(
            "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"\"}} 1\n",
            s.max_lora,
            s.lora_running.join(",")
        )
    } else {
        String::new()
    };
    (format!(
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {}\n\
         vllm:num_requests_running{{model_name=\"m\"}} {}\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {}\n",
        s.waiting, s.running, s.kv
    ) + &lora)
        .into_response()
}

async fn complete(State(state): State<Arc<Mutex<PodState>>>, body: Bytes) -> Response {
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = value["model"].as_str().unwrap_or_default().to_owned();
    let stream = value["stream"].as_bool().unwrap_or(false);
    let (fail_status, hang) = {
        let mut state = state.lock().unwrap();
        state.bodies.push(value);
        (state.fail_status, state.hang)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    if let Some(status) = fail_status {
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        return (status, "fake pod failure").into_response();
    }
    if !stream {
        let json = serde_json::json!({
            "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": "hello", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
        });
        return ([("content-type", "application/json")], json.to_string()).into_response();
    }
    // Five chunks 30 ms apart, so a test can see them arrive one by one through the proxy.
    let chunks = futures::stream::unfold(0u32, move |i| {
        let model = model.clone();
        async move {
            if i > 5 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(30)).await; // tidy: sleep is the test (SSE pacing)
            }
            let event = match i {
                5 => format!(
                    "data: {{\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":4}}}}\n\ndata: [DONE]\n\n"
                ),
                _ => format!("data: {{\"model\":\"{model}\",\"choices\":[{{\"text\":\"t{i}\"}}],\"usage\":null}}\n\n"),
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), i + 1))
        }
    });
    ([("content-type", "text/event-stream")], Body::from_stream(chunks)).into_response()
}

pub async fn serve_fake_pod(listener: TcpListener) -> FakePod {
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(PodState::default()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(complete))
        .route("/v1/chat/completions", post(complete))
        .with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await }).abort_handle();
    FakePod { addr, state, server }
}

/// A fresh directory under the system temp dir for one test's YAML.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config directory named after `name` serving `models` (joined into one file) on the pool's pods at `ips`.
pub fn pool_dir(name: &str, port: u16, ips: &[IpAddr], models: &[String]) -> PathBuf {
    let dir = temp_dir(name);
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    std::fs::write(dir.join("models.yaml"), models.join("---\n")).unwrap();
    if !ips.is_empty() {
        std::fs::write(dir.join("pods.yaml"), pods_yaml(ips)).unwrap();
    }
    dir
}

pub fn pool_yaml(port: u16) -> String {
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: pool\n\
         spec:\n  targetPortNumber: {port}\n  selector:\n    app: vllm\n"
    )
}

pub fn model_yaml(object: &str, model: &str, criticality: &str, targets: &[(&str, u32)]) -> String {
    let targets: String = targets
        .iter()
        .map(|(name, w)| format!("  - name: {name}\n    weight: {w}\n"))
        .collect();
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: {object}\n\
         spec:\n  modelName: {model}\n  criticality: {criticality}\n  poolRef:\n    name: pool\n  targetModels:\n{targets}"
    )
}

pub fn pods_yaml(ips: &[IpAddr]) -> String {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vllm-{i}\n  labels:\n    app: vllm\nstatus:\n  podIP: {ip}\n\
                 \x20 conditions:\n  - type: Ready\n    status: \"True\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Starts an in-process gateway with the proxy on 127.0.0.1:0 over `dir`.
pub async fn start_gateway(dir: &std::path::Path, extra: &[&str]) -> gateway::Gateway {
    let mut argv = vec![
        "gateway".to_owned(),
        "--dir".into(),
        dir.display().to_string(),
        "--proxy-listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--extproc-listen".into(),
        "127.0.0.1:0".into(),
        "--health-listen".into(),
        "127.0.0.1:0".into(),
        "--dir-poll".into(),
        "50ms".into(),
        "--scrape-interval".into(),
        "20ms".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    gateway::start(gateway::args::Args::parse_from(argv)).await.unwrap()
}

/// Waits until the gateway serves every endpoint in `ids` and has fresh metrics for each (deadline 10 s).
pub async fn wait_scraped(gw: &gateway::Gateway, ids: &[EndpointId]) {
    let mut scrapes = gw.director.metrics_store.subscribe();
    test_support::until(
        &mut scrapes,
        Duration::from_secs(10),
        &format!("a scrape of {ids:?}"),
        || {
            let snapshot = gw.director.datastore.snapshot();
            let all_known = ids.iter().all(|id| snapshot.endpoints().iter().any(|e| &e.id == id));
            all_known
                && ids.iter().all(|id| {
                    gw.director
                        .metrics_store
                        .get(id)
                        .updated_at
                        .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
                })
        },
    )
    .await;
}

/// Waits until every routed request has finished (so each is recorded), deadline 10 s.
pub async fn wait_idle(gw: &gateway::Gateway) {
    wait_inflight(gw, 0).await;
}

/// Waits until exactly `n` routed requests are unfinished, deadline 10 s.
pub async fn wait_inflight(gw: &gateway::Gateway, n: i64) {
    let mut inflight = gw.director.subscribe_inflight();
    let what = format!("{n} requests in flight (now {})", gw.director.inflight());
    test_support::until(&mut inflight, Duration::from_secs(10), &what, || {
        gw.director.inflight() == n
    })
    .await;
}

/// Waits until the gateway's provider has applied its first full listing, deadline 10 s.
pub async fn wait_synced(gw: &gateway::Gateway) {
    tokio::time::timeout(Duration::from_secs(10), gw.director.datastore.synced())
        .await
        .expect("the datastore never synced");
}

/// Waits until the gateway's scraped metrics of `id` satisfy `ok`, deadline 10 s.
pub async fn wait_metrics(gw: &gateway::Gateway, id: &EndpointId, ok: impl Fn(&scheduler::EndpointMetrics) -> bool) {
    let mut scrapes = gw.director.metrics_store.subscribe();
    test_support::until(
        &mut scrapes,
        Duration::from_secs(10),
        &format!("metrics of {id}"),
        || ok(&gw.director.metrics_store.get(id)),
    )
    .await;
}

pub fn client() -> reqwest_like::Client {
    reqwest_like::Client::default()
}

/// A tiny HTTP client over hyper-util for the tests.
pub mod reqwest_like {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::{
        client::legacy::{Client as HyperClient, connect::HttpConnector},
        rt::TokioExecutor,
    };

    #[derive(Clone)]
    pub struct Client(HyperClient<HttpConnector, Full<Bytes>>);

    impl Default for Client {
        fn default() -> Self {
            Client(HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()))
        }
    }

    pub struct Reply {
        pub status: u16,
        pub headers: http::HeaderMap,
        pub body: String,
        /// Arrival time of each non-empty body frame, from the start of the request.
        pub frames: Vec<Duration>,
    }

    impl Client {
        pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Reply {
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(body.into()))
                .unwrap();
            self.send(request).await
        }

        pub async fn get(&self, url: &str) -> Reply {
            self.send(http::Request::get(url).body(Full::default()).unwrap()).await
        }

        async fn send(&self, request: http::Request<Full<Bytes>>) -> Reply {
            let started = Instant::now();
            let fut = async {
                let response = self.0.request(request).await.unwrap();
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let mut body = response.into_body();
                let (mut bytes, mut frames) = (Vec::new(), Vec::new());
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame.unwrap().data_ref().filter(|d| !d.is_empty()) {
                        frames.push(started.elapsed());
                        bytes.extend_from_slice(data);
                    }
                }
                Reply {
                    status,
                    headers,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                    frames,
                }
            };
            tokio::time::timeout(Duration::from_secs(20), fut)
                .await
                .expect("request hung")
        }
    }
}
