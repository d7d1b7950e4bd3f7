//! CanaryRelease reconciles against the ApiServerVerifier: the exact server-side apply of weights and status.

use http::Method;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, Reply};

const MODEL: &str = "/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencemodels/qwq";
const STATUS: &str = "/apis/switchyard.dev/v1alpha1/namespaces/default/canaryreleases/qwq-v2/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn release(spec: Value, status: Value) -> CanaryRelease {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "CanaryRelease",
        "metadata": {"name": "qwq-v2", "namespace": "default", "uid": "r-uid", "generation": 1,
            "annotations": {"switchyard.dev/control-actor": "alice"}},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

/// What the API server answers a status patch with (the tests assert the request, not the reply).
fn stored() -> Reply {
    Reply::Json(serde_json::to_value(release(spec("Run"), json!({}))).unwrap())
}

fn spec(control: &str) -> Value {
    json!({"modelRef": "qwq", "stable": "qwq-32b", "canary": "qwq-32b-v2", "steps": [10, 50, 100], "hold": "30s",
        "control": control})
}

fn model(stable: i32, canary: i32) -> Value {
    json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferenceModel",
        "metadata": {"name": "qwq", "namespace": "default", "resourceVersion": "5"},
        "spec": {"modelName": "qwq", "criticality": "Critical", "poolRef": {"name": "reasoning-pool"},
            "targetModels": [{"name": "qwq-32b", "weight": stable}, {"name": "qwq-32b-v2", "weight": canary}]}
    })
}

fn context() -> (Arc<CanaryContext>, fixtures::ApiServerVerifier) {
    let (client, api) = fixtures::client();
    let ctx = CanaryContext {
        store: KubeStore::new(client.clone(), super::super::FIELD_MANAGER),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: super::super::FIELD_MANAGER.into(),
                instance: Some("controller-0".into()),
            },
        ),
        metrics: Arc::new(Metrics::default()),
        // No gateway: the first step needs no measurement, and nothing else may advance.
        releases: Releases::new(Vec::new()),
        interval: Duration::from_secs(5),
    };
    (Arc::new(ctx), api)
}

#[tokio::test]
async fn a_new_release_applies_its_first_step_and_reports_it() {
    let (ctx, mut api) = context();
    let obj = Arc::new(release(spec("Run"), json!({})));
    let reconciled = tokio::spawn(reconcile(obj, ctx.clone()));
    api.expect(Method::GET, MODEL, Reply::Json(model(100, 0))).await;
    let weights = api.expect(Method::PATCH, MODEL, Reply::Json(model(90, 10))).await;
    assert!(
        weights.query.contains("fieldManager=switchyard-canary"),
        "{}",
        weights.query
    );
    assert!(weights.query.contains("force=true"), "{}", weights.query);
    assert_eq!(
        weights.body,
        json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferenceModel",
            "metadata": {"name": "qwq", "namespace": "default"},
            "spec": {"modelName": "qwq", "poolRef": {"name": "reasoning-pool"},
                "targetModels": [{"name": "qwq-32b", "weight": 90}, {"name": "qwq-32b-v2", "weight": 10}]}
        })
    );
    let status = api.expect(Method::PATCH, STATUS, stored()).await;
    assert!(
        status.query.contains("fieldManager=switchyard-canary"),
        "{}",
        status.query
    );
    assert_eq!(status.body["kind"], "CanaryRelease");
    assert_eq!(status.body["apiVersion"], "switchyard.dev/v1alpha1");
    let s = &status.body["status"];
    assert_eq!(
        (s["phase"].as_str(), s["step"].as_u64(), s["canaryPercent"].as_u64()),
        (Some("Progressing"), Some(0), Some(10))
    );
    assert_eq!(s["history"][0]["reason"], "first step: canary gets 10 %");
    assert_eq!(s["history"][0]["actor"], "controller");
    let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Normal"), Some("Progressing"))
    );
    assert_eq!(event.body["regarding"]["kind"], "CanaryRelease");
    assert_eq!(
        reconciled.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn a_held_step_without_metrics_writes_only_its_message() {
    let (ctx, mut api) = context();
    let held = json!({"phase": "Progressing", "step": 0, "canaryPercent": 10, "stepStartedAt": "2025-03-01T10:00:00Z"});
    let obj = Arc::new(release(spec("Run"), held));
    let reconciled = tokio::spawn(reconcile(obj, ctx.clone()));
    api.expect(Method::GET, MODEL, Reply::Json(model(90, 10))).await;
    // Weights already match the step: no apply; the status gains the "no metrics" message and conditions.
    let status = api.expect(Method::PATCH, STATUS, stored()).await;
    let s = &status.body["status"];
    assert_eq!(
        (s["phase"].as_str(), s["canaryPercent"].as_u64()),
        (Some("Progressing"), Some(10))
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("no metrics (no --gateway-metrics-url configured)"),
        "{s}"
    );
    assert!(s.get("history").is_none());
    reconciled.await.unwrap().unwrap();
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn abort_rolls_the_weights_back_in_the_operators_name() {
    let (ctx, mut api) = context();
    let held = json!({"phase": "Progressing", "step": 1, "canaryPercent": 50, "stepStartedAt": "2025-03-01T10:00:00Z"});
    let obj = Arc::new(release(spec("Abort"), held));
    let reconciled = tokio::spawn(reconcile(obj, ctx.clone()));
    api.expect(Method::GET, MODEL, Reply::Json(model(50, 50))).await;
    let weights = api.expect(Method::PATCH, MODEL, Reply::Json(model(100, 0))).await;
    assert_eq!(
        weights.body["spec"]["targetModels"],
        json!([{"name": "qwq-32b", "weight": 100}, {"name": "qwq-32b-v2", "weight": 0}])
    );
    let status = api.expect(Method::PATCH, STATUS, stored()).await;
    let s = &status.body["status"];
    assert_eq!(
        (s["phase"].as_str(), s["canaryPercent"].as_u64()),
        (Some("Aborted"), Some(0))
    );
    assert_eq!(s["history"][0]["actor"], "alice");
    assert_eq!(s["history"][0]["reason"], "aborted by alice at 50 %");
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(reconciled.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn terminal_releases_touch_nothing() {
    let (ctx, api) = context();
    let obj = Arc::new(release(spec("Run"), json!({"phase": "Promoted", "canaryPercent": 100})));
    assert_eq!(reconcile(obj, ctx.clone()).await.unwrap(), Action::await_change());
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn a_missing_model_makes_the_release_invalid() {
    let (ctx, mut api) = context();
    let obj = Arc::new(release(spec("Run"), json!({})));
    let reconciled = tokio::spawn(reconcile(obj, ctx.clone()));
    api.expect(Method::GET, MODEL, Reply::NotFound).await;
    let status = api.expect(Method::PATCH, STATUS, stored()).await;
    assert_eq!(status.body["status"]["phase"], "Invalid");
    assert_eq!(status.body["status"]["message"], "InferenceModel default/qwq not found");
    let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event.body["type"], "Warning");
    reconciled.await.unwrap().unwrap();
}

#[test]
fn a_model_change_maps_to_its_releases() {
    let r = Arc::new(release(spec("Run"), json!({})));
    let m: InferenceModel = serde_json::from_value(model(100, 0)).unwrap();
    assert_eq!(releases_of(std::slice::from_ref(&r), &m).len(), 1);
    let mut other = m.clone();
    other.metadata.name = Some("llama".into());
    assert!(releases_of(&[r], &other).is_empty());
}
