//! The kube store against the ApiServerVerifier: the exact reads and server-side applies of each operation.

use http::Method;
use serde_json::Value;
use test_support::kube::{ApiServerVerifier, Reply, client};

use super::*;

const PATH: &str = "/apis/inference.networking.x-k8s.io/v1alpha1";
const RELEASES: &str = "/apis/switchyard.dev/v1alpha1";
const MANAGER: &str = "switchyard-dashboard";

fn store() -> (KubeStore, ApiServerVerifier) {
    let (client, api) = client();
    (KubeStore::new(client, MANAGER), api)
}

fn model(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("{name}-uid"), "resourceVersion": "20"},
        "spec": {
            "criticality": "Critical",
            "modelName": "qwq",
            "poolRef": {"group": "inference.networking.x-k8s.io", "kind": "InferencePool", "name": "reasoning-pool"},
            "targetModels": [{"name": "qwq-32b", "weight": 100}, {"name": "qwq-32b-canary", "weight": 0}]
        }
    })
}

fn typed(value: Value) -> InferenceModel {
    serde_json::from_value(value).unwrap()
}

fn key(name: &str) -> NamespacedName {
    NamespacedName::new("prod", name)
}

fn split(a: i32, b: i32) -> [TargetModel; 2] {
    [
        TargetModel {
            name: "qwq-32b".into(),
            weight: Some(a),
        },
        TargetModel {
            name: "qwq-32b-canary".into(),
            weight: Some(b),
        },
    ]
}

#[tokio::test]
async fn list_reads_every_namespace_sorted() {
    let (store, mut api) = store();
    let list = tokio::spawn(async move { store.list_models().await });
    let items = json!({"apiVersion": "v1", "kind": "InferenceModelList", "metadata": {"resourceVersion": "100"},
        "items": [model("prod", "b"), model("dev", "a")]});
    api.expect(Method::GET, &format!("{PATH}/inferencemodels"), Reply::Json(items))
        .await;
    let models = list.await.unwrap().unwrap();
    let keys: Vec<String> = models
        .iter()
        .map(|m| NamespacedName::of(&m.object.metadata).to_string())
        .collect();
    assert_eq!(keys, ["dev/a", "prod/b"]);
    assert_eq!(models[0].object.spec.model_name, "qwq");
    assert_eq!(models[0].object.spec.pool_ref.name, "reasoning-pool");
    assert_eq!(models[0].source, "cluster");
    assert_eq!(models[0].object.spec.target_models, split(100, 0));
    api.done().await;
}

#[tokio::test]
async fn apply_is_a_forced_server_side_apply_of_the_targets() {
    let (store, mut api) = store();
    let apply = tokio::spawn(async move { store.apply_targets(&typed(model("prod", "m")), &split(90, 10)).await });
    let object = format!("{PATH}/namespaces/prod/inferencemodels/m");
    let seen = api.expect(Method::PATCH, &object, Reply::Echo).await;
    assert_eq!(seen.query, "&force=true&fieldManager=switchyard-dashboard");
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(
        seen.body,
        json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "InferenceModel",
            "metadata": {"name": "m", "namespace": "prod"},
            "spec": {
                "modelName": "qwq",
                "poolRef": {"group": "inference.networking.x-k8s.io", "kind": "InferencePool",
                    "name": "reasoning-pool"},
                "targetModels": [{"name": "qwq-32b", "weight": 90}, {"name": "qwq-32b-canary", "weight": 10}]
            }
        })
    );
    let state = apply.await.unwrap().unwrap();
    assert_eq!(NamespacedName::of(&state.object.metadata), key("m"));
    assert_eq!(state.object.spec.target_models, split(90, 10));
    api.done().await;
}

#[tokio::test]
async fn all_zero_weights_are_refused_before_any_request() {
    let (store, api) = store();
    let result = store.apply_targets(&typed(model("prod", "m")), &split(0, 0)).await;
    let Err(Error::Invalid(errors)) = result else {
        panic!("expected Invalid, got {result:?}");
    };
    assert_eq!(errors[0].field, "spec.targetModels");
    assert!(errors[0].message.contains("greater than 0"), "{errors:?}");
    drop(store);
    api.done().await;
}

#[tokio::test]
async fn a_missing_model_is_none() {
    let (store, mut api) = store();
    let get = tokio::spawn(async move { store.get_model(&key("nope")).await });
    let object = format!("{PATH}/namespaces/prod/inferencemodels/nope");
    let seen = api.expect(Method::GET, &object, Reply::NotFound).await;
    assert_eq!(seen.body, Value::Null);
    assert!(matches!(get.await.unwrap(), Ok(None)));
    api.done().await;
}

#[tokio::test]
async fn a_404_from_the_apply_is_not_found() {
    let (store, mut api) = store();
    let apply = tokio::spawn(async move { store.apply_targets(&typed(model("prod", "nope")), &split(90, 10)).await });
    let object = format!("{PATH}/namespaces/prod/inferencemodels/nope");
    api.expect(Method::PATCH, &object, Reply::NotFound).await;
    assert!(matches!(apply.await.unwrap(), Err(Error::NotFound(k)) if k == key("nope")));
    api.done().await;
}

fn canary_release(name: &str, control: &str) -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "CanaryRelease",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("{name}-uid"), "resourceVersion": "7",
            "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"modelRef": "m", "stable": "qwq-32b", "canary": "qwq-32b-canary", "steps": [10, 100],
            "hold": "30s", "limits": {"maxTtftP90Ratio": 1.2}, "control": control},
        "status": {"phase": "Progressing", "step": 0, "canaryPercent": 10}
    })
}

#[tokio::test]
async fn guarded_releases_are_listed_with_their_status() {
    let (store, mut api) = store();
    let list = tokio::spawn(async move { store.list_releases().await });
    let items = json!({"apiVersion": "v1", "kind": "CanaryReleaseList", "metadata": {"resourceVersion": "9"},
        "items": [canary_release("r", "Run")]});
    api.expect(Method::GET, &format!("{RELEASES}/canaryreleases"), Reply::Json(items))
        .await;
    let releases = list.await.unwrap().unwrap();
    assert_eq!(releases.len(), 1);
    let r = &releases[0].object;
    assert_eq!(NamespacedName::of(&r.metadata), key("r"));
    let status = r.status.as_ref().unwrap();
    assert_eq!(
        (status.phase, status.canary_percent),
        (api::canary::Phase::Progressing, 10)
    );
    assert_eq!(r.spec.model_ref, "m");
    assert_eq!(
        r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_millisecond()),
        Some(1_796_119_200_000)
    );
    api.done().await;
}

#[tokio::test]
async fn a_new_guarded_release_is_applied_only_when_the_name_is_free() {
    let (store, mut api) = store();
    let release: CanaryRelease = serde_json::from_value(canary_release("r", "Run")).unwrap();
    let create = {
        let (store, release) = (store.clone(), release.clone());
        tokio::spawn(async move { store.create_release(&release).await })
    };
    let object = format!("{RELEASES}/namespaces/prod/canaryreleases/r");
    api.expect(Method::GET, &object, Reply::NotFound).await;
    let seen = api.expect(Method::PATCH, &object, Reply::Echo).await;
    assert_eq!(seen.query, "&force=true&fieldManager=switchyard-dashboard");
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(seen.body["kind"], "CanaryRelease");
    assert_eq!(seen.body["metadata"], json!({"name": "r", "namespace": "prod"}));
    assert_eq!(seen.body["spec"]["steps"], json!([10, 100]));
    assert_eq!(seen.body["spec"]["control"], "Run");
    assert!(seen.body.get("status").is_none(), "status belongs to the controller");
    let created = create.await.unwrap().unwrap();
    assert_eq!(NamespacedName::of(&created.object.metadata), key("r"));

    // The same name again: refused after the read, nothing applied.
    let create = tokio::spawn(async move { store.create_release(&release).await });
    api.expect(Method::GET, &object, Reply::Json(canary_release("r", "Run")))
        .await;
    assert!(matches!(create.await.unwrap(), Err(Error::Conflict(_))));
    api.done().await;
}

#[tokio::test]
async fn control_is_applied_with_the_rest_of_the_spec() {
    let (store, mut api) = store();
    let set = tokio::spawn(async move { store.set_control(&key("r"), Control::Pause).await });
    let object = format!("{RELEASES}/namespaces/prod/canaryreleases/r");
    api.expect(Method::GET, &object, Reply::Json(canary_release("r", "Run")))
        .await;
    let seen = api
        .expect(Method::PATCH, &object, Reply::Json(canary_release("r", "Pause")))
        .await;
    assert_eq!(seen.query, "&force=true&fieldManager=switchyard-dashboard");
    // Every spec field the dashboard may own is sent, so the apply removes none of them.
    assert_eq!(
        seen.body["spec"],
        json!({"modelRef": "m", "stable": "qwq-32b", "canary": "qwq-32b-canary", "steps": [10, 100],
            "hold": "30s", "limits": {"maxTtftP90Ratio": 1.2}, "control": "Pause"})
    );
    let updated = set.await.unwrap().unwrap();
    assert_eq!(updated.object.spec.control, Control::Pause);
    api.done().await;
}

#[tokio::test]
async fn control_of_a_missing_release_is_not_found() {
    let (store, mut api) = store();
    let set = tokio::spawn(async move { store.set_control(&key("gone"), Control::Abort).await });
    let object = format!("{RELEASES}/namespaces/prod/canaryreleases/gone");
    api.expect(Method::GET, &object, Reply::NotFound).await;
    assert!(matches!(set.await.unwrap(), Err(Error::ReleaseNotFound(k)) if k.to_string() == "prod/gone"));
    api.done().await;
}
