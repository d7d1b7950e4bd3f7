//! InferenceModel reconciles against the ApiServerVerifier: acceptance, name conflicts and the poolRef.

use http::Method;
use serde_json::json;

use super::*;
use crate::fixtures::{self, Reply, conditions, model, seed_model, triple};

const POOL: &str = "/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencepools/reasoning-pool";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn status_path(name: &str) -> String {
    format!("/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencemodels/{name}/status")
}

fn pool_json() -> Reply {
    Reply::Json(serde_json::to_value(fixtures::seed_pool()).unwrap())
}

#[tokio::test]
async fn seed_model_is_accepted_and_resolves_its_pool() {
    let (ctx, mut api) = fixtures::context(&[seed_model()]);
    let reconciled = tokio::spawn(reconcile(Arc::new(seed_model()), ctx.clone()));
    api.expect(Method::GET, POOL, pool_json()).await;
    let patch = api
        .expect(
            Method::PATCH,
            &status_path("inferencemodel-sample"),
            Reply::Json(serde_json::to_value(seed_model()).unwrap()),
        )
        .await;
    assert!(
        patch.query.contains("fieldManager=switchyard-controller"),
        "{}",
        patch.query
    );
    assert_eq!(patch.body["kind"], "InferenceModel");
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Accepted", "True", "Accepted"),
            triple("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(patch.body["status"]["conditions"][0]["observedGeneration"], 1);
    for reason in ["Accepted", "ResolvedRefs"] {
        let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
        assert_eq!(event.body["reason"], reason);
        assert_eq!(event.body["regarding"]["kind"], "InferenceModel");
    }
    reconciled.await.unwrap().unwrap();
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn newer_duplicate_model_name_is_not_accepted() {
    let older = model("qwq-a", "qwq", "2025-03-01T10:00:00Z");
    let newer = model("qwq-b", "qwq", "2025-03-01T11:00:00Z");
    let (ctx, mut api) = fixtures::context(&[older.clone(), newer.clone()]);

    let reconciled = tokio::spawn(reconcile(Arc::new(newer), ctx.clone()));
    api.expect(Method::GET, POOL, pool_json()).await;
    let patch = api
        .expect(
            Method::PATCH,
            &status_path("qwq-b"),
            Reply::Json(serde_json::to_value(seed_model()).unwrap()),
        )
        .await;
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Accepted", "False", "ModelNameInUse"),
            triple("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(
        patch.body["status"]["conditions"][0]["message"],
        "model name qwq is already claimed by the older InferenceModel default/qwq-a"
    );
    let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("ModelNameInUse"))
    );
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    reconciled.await.unwrap().unwrap();

    // The older one keeps the name.
    let reconciled = tokio::spawn(reconcile(Arc::new(older), ctx.clone()));
    api.expect(Method::GET, POOL, pool_json()).await;
    let patch = api
        .expect(
            Method::PATCH,
            &status_path("qwq-a"),
            Reply::Json(serde_json::to_value(seed_model()).unwrap()),
        )
        .await;
    assert_eq!(conditions(&patch.body)[0], triple("Accepted", "True", "Accepted"));
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    reconciled.await.unwrap().unwrap();
}

#[tokio::test]
async fn pool_ref_to_a_missing_pool_does_not_resolve() {
    let (ctx, mut api) = fixtures::context(&[seed_model()]);
    let reconciled = tokio::spawn(reconcile(Arc::new(seed_model()), ctx.clone()));
    api.expect(Method::GET, POOL, Reply::NotFound).await;
    let patch = api
        .expect(
            Method::PATCH,
            &status_path("inferencemodel-sample"),
            Reply::Json(serde_json::to_value(seed_model()).unwrap()),
        )
        .await;
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Accepted", "True", "Accepted"),
            triple("ResolvedRefs", "False", "PoolNotFound")
        ]
    );
    assert_eq!(
        patch.body["status"]["conditions"][1]["message"],
        "InferencePool default/reasoning-pool not found"
    );
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("PoolNotFound"))
    );
    reconciled.await.unwrap().unwrap();
}

#[tokio::test]
async fn weights_that_are_all_zero_are_not_accepted() {
    let mut zero = seed_model();
    zero.spec.target_models =
        serde_json::from_value(json!([{"name": "a", "weight": 0}, {"name": "b", "weight": 0}])).unwrap();
    let (ctx, mut api) = fixtures::context(&[zero.clone()]);
    let reconciled = tokio::spawn(reconcile(Arc::new(zero), ctx.clone()));
    api.expect(Method::GET, POOL, pool_json()).await;
    let patch = api
        .expect(
            Method::PATCH,
            &status_path("inferencemodel-sample"),
            Reply::Json(serde_json::to_value(seed_model()).unwrap()),
        )
        .await;
    assert_eq!(conditions(&patch.body)[0], triple("Accepted", "False", "InvalidSpec"));
    assert_eq!(
        patch.body["status"]["conditions"][0]["message"],
        "spec.targetModels: at least one weight must be greater than 0"
    );
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    reconciled.await.unwrap().unwrap();
}

#[test]
fn a_change_maps_to_the_other_claims_and_a_pool_to_its_models() {
    let a = Arc::new(model("qwq-a", "qwq", "2025-03-01T10:00:00Z"));
    let b = Arc::new(model("qwq-b", "qwq", "2025-03-01T11:00:00Z"));
    let c = Arc::new(model("llama", "llama", "2025-03-01T09:00:00Z"));
    let all = [a.clone(), b.clone(), c.clone()];
    assert_eq!(same_name(&all, &a), std::slice::from_ref(&b));
    assert_eq!(claimant(&all, &b), Some(a.clone()));
    assert_eq!(referencing(&all, &fixtures::seed_pool()).len(), 3);
}
