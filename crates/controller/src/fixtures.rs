//! Test support: the seed's objects as builders, and contexts whose client talks to the shared ApiServerVerifier
//! (`test_support::kube`), which asserts each request the controller sends and scripts the reply.

use std::sync::Arc;

use api::v1alpha1::{InferenceModel, InferencePool};
use kube::runtime::{
    events::{Recorder, Reporter},
    reflector::{self, store::Writer},
    watcher,
};
use serde_json::{Value, json};
pub(crate) use test_support::kube::{ApiServerVerifier, NS, Reply, client};

use crate::{Context, metrics::Metrics};

/// The seed's InferencePool as the API server returns it (namespace, uid, timestamps filled in).
pub(crate) fn seed_pool() -> InferencePool {
    serde_json::from_value(json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {
            "name": "reasoning-pool", "namespace": NS, "uid": "pool-uid", "generation": 1,
            "creationTimestamp": "2025-03-01T10:00:00Z", "resourceVersion": "10",
            "annotations": {"inference.networking.x-k8s.io/attach-to": "name: inference-gateway\nport: 8081\n"}
        },
        "spec": {"targetPortNumber": 8000, "selector": {"app": "qwq-32b"}}
    }))
    .unwrap()
}

/// An InferenceModel claiming `model_name` for the seed's pool, created at `created`.
pub(crate) fn model(name: &str, model_name: &str, created: &str) -> InferenceModel {
    serde_json::from_value(json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("{name}-uid"), "generation": 1,
            "creationTimestamp": created, "resourceVersion": "20"
        },
        "spec": {
            "criticality": "Critical",
            "modelName": model_name,
            "poolRef": {"group": "inference.networking.x-k8s.io", "kind": "InferencePool", "name": "reasoning-pool"},
            "targetModels": [{"name": "qwq-32b", "weight": 100}]
        }
    }))
    .unwrap()
}

/// The seed's InferenceModel.
pub(crate) fn seed_model() -> InferenceModel {
    model("inferencemodel-sample", "qwq", "2025-03-01T10:05:00Z")
}

pub(crate) fn pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "qwq-32b"}},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

pub(crate) fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items})
}

/// The seed's Gateway with its two listeners.
pub(crate) fn gateway() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "inference-gateway", "namespace": NS},
        "spec": {"gatewayClassName": "inference-gateway", "listeners": [
            {"name": "http", "protocol": "HTTP", "port": 8080},
            {"name": "llm-gw", "protocol": "HTTP", "port": 8081}
        ]}
    })
}

/// A context whose client talks to the verifier, with `models` in the model store.
pub(crate) fn context(models: &[InferenceModel]) -> (Arc<Context>, ApiServerVerifier) {
    let (client, api) = client();
    let (store, mut writer): (_, Writer<InferenceModel>) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for model in models {
        writer.apply_watcher_event(&watcher::Event::InitApply(model.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context {
        client: client.clone(),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: crate::FIELD_MANAGER.into(),
                instance: Some("controller-0".into()),
            },
        ),
        metrics: Arc::new(Metrics::default()),
        models: store,
    };
    (Arc::new(ctx), api)
}

/// `(type, status, reason)` of each condition in a status patch body.
pub(crate) fn conditions(body: &Value) -> Vec<(String, String, String)> {
    body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            assert!(
                c["lastTransitionTime"].is_string(),
                "condition without lastTransitionTime: {c}"
            );
            (s("type"), s("status"), s("reason"))
        })
        .collect()
}

pub(crate) fn triple(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.to_owned(), s.to_owned(), r.to_owned())
}
