//! Scraper tests against a tiny in-process model server on 127.0.0.1.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
};

use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};

use super::*;
use crate::datastore::{Datastore, Event, ResourceKey, ResourceKind, dir::parse_documents};

const VLLM_0_7: &str = include_str!("fixtures/vllm-0.7.txt");
const INTERVAL: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_secs(10);

/// A model server whose `/metrics` status and body the test controls.
struct FakePod {
    addr: SocketAddr,
    state: Arc<PodState>,
    server: JoinHandle<()>,
}

struct PodState {
    status: AtomicU16,
    body: Mutex<String>,
    n_ok: AtomicUsize,
    n_errors: AtomicUsize,
}

impl FakePod {
    async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(PodState {
            status: AtomicU16::new(200),
            body: Mutex::new(body.to_owned()),
            n_ok: AtomicUsize::new(0),
            n_errors: AtomicUsize::new(0),
        });
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                // Connections live in this set, so aborting the server also drops its keep-alive connections.
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |_request| {
                            let state = state.clone();
                            async move {
                                let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
                                let body = state.body.lock().unwrap().clone();
                                let counter = if status.is_success() {
                                    &state.n_ok
                                } else {
                                    &state.n_errors
                                };
                                counter.fetch_add(1, Ordering::SeqCst);
                                let response = http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)));
                                Ok::<_, Infallible>(response.unwrap())
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        FakePod { addr, state, server }
    }

    fn endpoint(&self) -> EndpointId {
        EndpointId::new(self.addr.to_string())
    }

    fn set(&self, status: u16, body: &str) {
        *self.state.body.lock().unwrap() = body.to_owned();
        self.state.status.store(status, Ordering::SeqCst);
    }

    fn n_ok(&self) -> usize {
        self.state.n_ok.load(Ordering::SeqCst)
    }

    fn n_errors(&self) -> usize {
        self.state.n_errors.load(Ordering::SeqCst)
    }
}

/// A datastore whose pool has one ready pod at the fake server's address.
fn datastore_for(pod: &FakePod) -> Datastore {
    let yaml = format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: pool\nspec:\n  \
         targetPortNumber: {port}\n  selector:\n    app: sim\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: sim-0\n  \
         labels:\n    app: sim\nstatus:\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
        port = pod.addr.port(),
        ip = pod.addr.ip(),
    );
    let datastore = Datastore::new(None);
    datastore.apply(parse_documents(&yaml).unwrap().into_iter().map(Event::Apply));
    assert_eq!(datastore.snapshot().endpoints()[0].id, pod.endpoint());
    datastore
}

fn start_scraper(datastore: &Datastore, store: &Arc<MetricsStore>) -> (CancellationToken, JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_scraper(
        datastore.subscribe(),
        store.clone(),
        INTERVAL,
        DEFAULT_TIMEOUT,
        cancel.clone(),
    ));
    (cancel, task)
}

/// Waits until `condition` holds, checking it again after every change of `store` (each scrape lands one), and
/// fails the test at the deadline.
async fn eventually(store: &MetricsStore, what: &str, mut condition: impl FnMut() -> bool) {
    let mut changes = store.subscribe();
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        tokio::time::timeout_at(deadline, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
            .expect("the store outlives the test");
    }
}

#[tokio::test]
async fn metrics_of_a_vllm_pod_reach_the_store() {
    let pod = FakePod::start(VLLM_0_7).await;
    let datastore = datastore_for(&pod);
    let store = Arc::new(MetricsStore::default());
    assert_eq!(store.get(&pod.endpoint()), EndpointMetrics::default());
    let (cancel, task) = start_scraper(&datastore, &store);

    eventually(&store, "the first scrape lands", || {
        store.get(&pod.endpoint()).updated_at.is_some()
    })
    .await;
    let metrics = store.get(&pod.endpoint());
    assert_eq!(
        (metrics.waiting_queue, metrics.running, metrics.kv_cache_usage),
        (3, 7, 0.4212)
    );
    assert_eq!(metrics.active_loras, ["sql-lora"]);
    assert_eq!(metrics.max_loras, Some(4));

    // Scraping continues: the timestamp keeps advancing while the pod answers.
    let first = metrics.updated_at;
    eventually(&store, "a later scrape lands", || {
        store.get(&pod.endpoint()).updated_at > first
    })
    .await;

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_failing_pod_keeps_its_ageing_metrics_and_recovers() {
    let pod = FakePod::start(VLLM_0_7).await;
    let datastore = datastore_for(&pod);
    let store = Arc::new(MetricsStore::default());
    let (cancel, task) = start_scraper(&datastore, &store);
    eventually(&store, "the first scrape lands", || {
        store.get(&pod.endpoint()).updated_at.is_some()
    })
    .await;

    pod.set(500, "boom");
    // Scrapes of one pod are sequential, so once a 500 was served no 200 is still in flight.
    eventually(&store, "the pod has failed a scrape", || pod.n_errors() >= 1).await;
    let frozen = store.get(&pod.endpoint());
    eventually(&store, "the pod has failed three more scrapes", || pod.n_errors() >= 4).await;
    assert_eq!(store.get(&pod.endpoint()), frozen);
    assert_eq!(frozen.waiting_queue, 3);
    assert!(store.failures() >= 3);

    pod.set(
        200,
        &VLLM_0_7.replace(
            "vllm:num_requests_waiting{model_name=\"qwq-32b\"} 3.0",
            "vllm:num_requests_waiting 9",
        ),
    );
    eventually(&store, "fresh metrics arrive again", || {
        store.get(&pod.endpoint()).waiting_queue == 9
    })
    .await;
    assert!(store.get(&pod.endpoint()).updated_at > frozen.updated_at);

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_stopped_pod_stays_in_the_store_with_stale_metrics() {
    let mut pod = FakePod::start(VLLM_0_7).await;
    let datastore = datastore_for(&pod);
    let store = Arc::new(MetricsStore::default());
    let (cancel, task) = start_scraper(&datastore, &store);
    eventually(&store, "the first scrape lands", || {
        store.get(&pod.endpoint()).updated_at.is_some()
    })
    .await;

    pod.server.abort();
    assert!(
        (&mut pod.server).await.unwrap_err().is_cancelled(),
        "the server is down"
    );
    let failures = store.failures();
    let frozen = store.get(&pod.endpoint());
    eventually(&store, "scrapes of the stopped pod fail", || {
        store.failures() >= failures + 3
    })
    .await;
    // At most one scrape was in flight when the server stopped; after that nothing updates the entry.
    let after = store.get(&pod.endpoint());
    eventually(&store, "more scrapes fail", || store.failures() >= failures + 6).await;
    assert_eq!(store.get(&pod.endpoint()), after);
    assert!(after.updated_at >= frozen.updated_at);
    assert_eq!(after.running, 7);

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_pod_that_does_not_speak_the_protocol_never_gets_metrics() {
    let pod = FakePod::start("# HELP up whatever\nup 1\n").await;
    let datastore = datastore_for(&pod);
    let store = Arc::new(MetricsStore::default());
    let (cancel, task) = start_scraper(&datastore, &store);

    eventually(&store, "several scrapes were answered", || pod.n_ok() >= 3).await;
    assert!(store.failures() >= 2);
    assert_eq!(store.get(&pod.endpoint()).updated_at, None);
    assert!(store.all().is_empty());

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn an_endpoint_leaving_the_pool_leaves_the_store() {
    let pod = FakePod::start(VLLM_0_7).await;
    let datastore = datastore_for(&pod);
    let store = Arc::new(MetricsStore::default());
    let (cancel, task) = start_scraper(&datastore, &store);
    eventually(&store, "the first scrape lands", || {
        store.get(&pod.endpoint()).updated_at.is_some()
    })
    .await;

    datastore.apply([Event::Delete(ResourceKey {
        kind: ResourceKind::Pod,
        namespace: "default".into(),
        name: "sim-0".into(),
    })]);
    eventually(&store, "the entry is dropped", || store.all().is_empty()).await;
    assert_eq!(store.get(&pod.endpoint()), EndpointMetrics::default());

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn scrape_counters_are_exported() {
    let store = MetricsStore::default();
    let mut registry = Registry::with_prefix("switchyard");
    store.register_metrics(&mut registry);
    store.scrapes.inc();
    store.failures.inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("switchyard_scrapes_total 1"), "{text}");
    assert!(text.contains("switchyard_scrape_failures_total 1"), "{text}");
}
