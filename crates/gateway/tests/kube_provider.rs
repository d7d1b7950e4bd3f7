//! The kube provider against an in-process fake API server on 127.0.0.1 that serves list and watch for
//! InferencePools, InferenceModels and Pods, including a dropped watch connection and a `410 Gone` forcing a relist.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use gateway::datastore::{Datastore, KubeProvider, Snapshot};
use rand::{SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

const POOLS: &str = "/apis/inference.networking.x-k8s.io/v1alpha1/inferencepools";
const MODELS: &str = "/apis/inference.networking.x-k8s.io/v1alpha1/inferencemodels";
const PODS: &str = "/api/v1/pods";

/// Objects and the event history of one collection.
#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// `(resourceVersion, type, object)` of every change, in order.
    history: Vec<(u64, &'static str, Value)>,
    lists: usize,
    watches: usize,
}

#[derive(Default)]
struct ApiState {
    rv: u64,
    collections: HashMap<&'static str, Collection>,
    /// A watch from a resourceVersion below this gets `410 Gone`.
    compacted_below: u64,
}

/// The fake API server: shared state, a tick on every change, and a switch that cuts every open watch.
#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    changed: watch::Sender<u64>,
    cut: watch::Sender<u64>,
}

impl FakeApi {
    fn new() -> Self {
        FakeApi {
            state: Arc::default(),
            changed: watch::channel(0).0,
            cut: watch::channel(0).0,
        }
    }

    async fn serve(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route(POOLS, get(handle))
            .route(MODELS, get(handle))
            .route(PODS, get(handle))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// Creates or replaces an object, recording a watch event.
    fn put(&self, path: &'static str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let collection = state.collections.entry(path).or_default();
        let kind = if collection.objects.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.objects.insert(name, object.clone());
        collection.history.push((rv, kind, object));
        drop(state);
        self.changed.send_replace(rv);
    }

    /// Deletes an object; with `silently`, no watch event is recorded, as if it had been compacted away.
    fn delete(&self, path: &'static str, name: &str, silently: bool) {
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        let collection = state.collections.entry(path).or_default();
        let mut object = collection.objects.remove(name).unwrap();
        if !silently {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            collection.history.push((rv, "DELETED", object));
        }
        drop(state);
        self.changed.send_replace(rv);
    }

    /// Makes every resourceVersion seen so far too old: the next watch gets `410 Gone` and must relist.
    fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted_below = state.rv + 1;
    }

    /// Aborts every open watch connection mid-stream.
    fn cut_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn counts(&self, path: &'static str) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        state.collections.get(path).map_or((0, 0), |c| (c.lists, c.watches))
    }
}

async fn handle(State(api): State<FakeApi>, uri: Uri, Query(query): Query<HashMap<String, String>>) -> Response {
    let path: &'static str = [POOLS, MODELS, PODS].into_iter().find(|p| *p == uri.path()).unwrap();
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let mut state = api.state.lock().unwrap();
        let rv = state.rv;
        let collection = state.collections.entry(path).or_default();
        collection.lists += 1;
        let items: Vec<Value> = collection.objects.values().cloned().collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv.to_string()}, "items": items});
        return (StatusCode::OK, axum::Json(list)).into_response();
    }

    let from: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    let gone = {
        let mut state = api.state.lock().unwrap();
        state.collections.entry(path).or_default().watches += 1;
        from < state.compacted_below
    };
    if gone {
        let status = json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": "Expired", "message": "too old resource version", "code": 410}});
        return Body::from(format!("{status}\n")).into_response();
    }

    // Streams every recorded event after `from`, then waits for more; a cut ends the body with an error, which
    // the client sees as a broken connection.
    let changed = api.changed.subscribe();
    let mut cut = api.cut.subscribe();
    cut.mark_unchanged();
    let stream = futures::stream::unfold(Some((from, changed, cut)), move |state| {
        let api = api.clone();
        async move {
            let (mut sent, mut changed, mut cut) = state?;
            loop {
                let lines: Vec<(u64, String)> = {
                    let state = api.state.lock().unwrap();
                    state.collections.get(path).map_or(Vec::new(), |c| {
                        c.history
                            .iter()
                            .filter(|(rv, _, _)| *rv > sent)
                            .map(|(rv, kind, object)| (*rv, format!("{}\n", json!({"type": kind, "object": object}))))
                            .collect()
                    })
                };
                if let Some(last) = lines.last() {
                    sent = last.0;
                    let chunk: String = lines.into_iter().map(|(_, line)| line).collect();
                    return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), Some((sent, changed, cut))));
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = cut.changed() => return Some((Err(std::io::Error::other("connection cut")), None)),
                }
            }
        }
    });
    Body::from_stream(stream).into_response()
}

fn pool() -> Value {
    json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {
            "name": "reasoning-pool",
            "namespace": "default",
            "annotations": {"inference.networking.x-k8s.io/attach-to": "name: inference-gateway\nport: 8081\n"}
        },
        "spec": {"targetPortNumber": 8000, "selector": {"app": "qwq-32b"}}
    })
}

fn model(targets: Value) -> Value {
    json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "inferencemodel-sample", "namespace": "default"},
        "spec": {
            "criticality": "Critical",
            "modelName": "qwq",
            "poolRef": {"group": "inference.networking.x-k8s.io", "kind": "InferencePool", "name": "reasoning-pool"},
            "targetModels": targets
        }
    })
}

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "qwq-32b"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.7.2"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]
        }
    })
}

fn endpoints(snapshot: &Snapshot) -> Vec<String> {
    snapshot.endpoints().iter().map(|e| e.id.as_str().to_owned()).collect()
}

fn targets(snapshot: &Snapshot) -> Vec<(String, Option<u32>)> {
    snapshot
        .model("qwq")
        .map(|m| m.targets.iter().map(|t| (t.name.clone(), t.weight)).collect())
        .unwrap_or_default()
}

/// Waits until `check` holds for the datastore's snapshot, or fails after `within`; returns the time it took.
async fn until(datastore: &Datastore, within: Duration, what: &str, check: impl Fn(&Snapshot) -> bool) -> Duration {
    let start = Instant::now();
    let mut rx = datastore.subscribe();
    loop {
        if datastore.is_synced() && check(&rx.borrow_and_update()) {
            return start.elapsed();
        }
        let left = within.saturating_sub(start.elapsed());
        assert!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "{what}: not seen within {within:?}; last snapshot: {:?}",
            datastore.snapshot()
        );
    }
}

struct Harness {
    api: FakeApi,
    datastore: Datastore,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The seed's pool and model plus three ready pods, served to a provider that watches all namespaces.
async fn start() -> Harness {
    let api = FakeApi::new();
    api.put(POOLS, pool());
    api.put(MODELS, model(json!([{"name": "qwq-32b", "weight": 100}])));
    for (i, name) in ["qwq-0", "qwq-1", "qwq-2"].iter().enumerate() {
        api.put(PODS, pod(name, &format!("127.0.0.{}", 11 + i), true));
    }
    let url = api.serve().await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let datastore = Datastore::new(None);
    let cancel = CancellationToken::new();
    tokio::spawn(KubeProvider::new(client, None).run(datastore.clone(), cancel.clone()));
    Harness { api, datastore, cancel }
}

const ALL_PODS: [&str; 3] = ["127.0.0.11:8000", "127.0.0.12:8000", "127.0.0.13:8000"];

#[tokio::test]
async fn seed_manifests_are_served_after_the_first_full_sync() {
    let h = start().await;
    until(&h.datastore, Duration::from_secs(10), "first sync", |s| {
        s.pool().is_some()
    })
    .await;
    // The first published snapshot after sync is already complete: no pod arrives after the pool.
    let snapshot = h.datastore.snapshot();
    assert_eq!(endpoints(&snapshot), ALL_PODS);
    assert_eq!(snapshot.pool().unwrap().target_port, 8000);
    assert_eq!(
        snapshot.pool().unwrap().attach_to.as_deref(),
        Some("name: inference-gateway\nport: 8081\n")
    );
    assert_eq!(targets(&snapshot), [("qwq-32b".to_owned(), Some(100))]);
    assert_eq!(h.api.counts(PODS).0, 1, "one list of pods");
}

#[tokio::test]
async fn unready_pod_leaves_routing_within_a_second_and_weights_changes_apply() {
    let h = start().await;
    until(&h.datastore, Duration::from_secs(10), "first sync", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;

    h.api.put(PODS, pod("qwq-1", "127.0.0.12", false));
    let took = until(&h.datastore, Duration::from_secs(1), "unready pod removed", |s| {
        endpoints(s) == ["127.0.0.11:8000", "127.0.0.13:8000"]
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");

    h.api.put(
        MODELS,
        model(json!([{"name": "qwq-32b", "weight": 90}, {"name": "qwq-32b-v2", "weight": 10}])),
    );
    until(&h.datastore, Duration::from_secs(1), "new weights", |s| {
        targets(s) == [("qwq-32b".to_owned(), Some(90)), ("qwq-32b-v2".to_owned(), Some(10))]
    })
    .await;
    // The split the gateway draws from now follows the new weights.
    let snapshot = h.datastore.snapshot();
    let split = &snapshot.model("qwq").unwrap().targets;
    let mut rng = SmallRng::seed_from_u64(7);
    let canary = (0..10_000)
        .filter(|_| scheduler::pick_target(split, &mut rng) == Some("qwq-32b-v2"))
        .count();
    assert!((800..1200).contains(&canary), "{canary} of 10000 went to the canary");

    // An invalid change (every weight 0) is rejected; the last good weights stay.
    h.api.put(
        MODELS,
        model(json!([{"name": "qwq-32b", "weight": 0}, {"name": "qwq-32b-v2", "weight": 0}])),
    );
    h.api.put(PODS, pod("qwq-1", "127.0.0.12", true));
    until(&h.datastore, Duration::from_secs(1), "pod back", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;
    assert_eq!(
        targets(&h.datastore.snapshot()),
        [("qwq-32b".to_owned(), Some(90)), ("qwq-32b-v2".to_owned(), Some(10))]
    );
}

#[tokio::test]
async fn dropped_watch_resumes_without_a_relist() {
    let h = start().await;
    until(&h.datastore, Duration::from_secs(10), "first sync", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;
    let (lists_before, watches_before) = h.api.counts(PODS);

    h.api.cut_watches();
    h.api.put(PODS, pod("qwq-2", "127.0.0.13", false));
    until(&h.datastore, Duration::from_secs(10), "change after a cut", |s| {
        endpoints(s) == ["127.0.0.11:8000", "127.0.0.12:8000"]
    })
    .await;
    let (lists, watches) = h.api.counts(PODS);
    assert!(watches > watches_before, "the watch was re-established");
    assert_eq!(lists, lists_before, "resumed from its resourceVersion, no relist");
}

#[tokio::test]
async fn gone_watch_relists_and_drops_what_was_deleted_meanwhile() {
    let h = start().await;
    until(&h.datastore, Duration::from_secs(10), "first sync", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;

    // qwq-0 disappears while its DELETED event is compacted away; only a relist can notice.
    h.api.delete(PODS, "qwq-0", true);
    h.api.compact();
    h.api.cut_watches();
    until(&h.datastore, Duration::from_secs(10), "relist after 410", |s| {
        endpoints(s) == ["127.0.0.12:8000", "127.0.0.13:8000"]
    })
    .await;
    assert!(h.api.counts(PODS).0 >= 2, "pods were listed again");
    // The pool and model survive their own relists unchanged.
    let snapshot = h.datastore.snapshot();
    assert!(snapshot.pool().is_some());
    assert_eq!(targets(&snapshot), [("qwq-32b".to_owned(), Some(100))]);

    // Watching resumes after the relist.
    h.api.put(PODS, pod("qwq-0", "127.0.0.11", true));
    until(&h.datastore, Duration::from_secs(10), "pod after relist", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;
}

#[tokio::test]
async fn deleted_objects_leave_the_snapshot() {
    let h = start().await;
    until(&h.datastore, Duration::from_secs(10), "first sync", |s| {
        endpoints(s) == ALL_PODS
    })
    .await;
    h.api.delete(PODS, "qwq-0", false);
    until(&h.datastore, Duration::from_secs(1), "pod deleted", |s| {
        endpoints(s).len() == 2
    })
    .await;
    h.api.delete(MODELS, "inferencemodel-sample", false);
    until(&h.datastore, Duration::from_secs(1), "model deleted", |s| {
        s.model("qwq").is_none()
    })
    .await;
    h.api.delete(POOLS, "reasoning-pool", false);
    until(&h.datastore, Duration::from_secs(1), "pool deleted", |s| {
        s.pool().is_none()
    })
    .await;
}
