//! Tests of the v1alpha1 types: the seed's manifests round-trip, and the generated CRDs carry the API server's rules.

use kube::CustomResourceExt;
use serde_json::{Value, json};
use test_support::{SEED_MODEL, SEED_POOL};

use super::*;

#[test]
fn seed_pool_deserialises() {
    let pool: InferencePool = serde_saphyr::from_str(SEED_POOL).unwrap();
    assert_eq!(pool.metadata.name.as_deref(), Some("reasoning-pool"));
    assert_eq!(pool.spec.target_port_number, 8000);
    assert_eq!(pool.spec.selector.get("app").map(String::as_str), Some("qwq-32b"));
    assert_eq!(pool.spec.extension_ref, None);
    assert_eq!(pool.status, None);
    let attach = pool.metadata.annotations.unwrap();
    assert_eq!(
        attach[crate::ATTACH_TO_ANNOTATION],
        "name: inference-gateway\nport: 8081\n"
    );
}

#[test]
fn seed_model_deserialises() {
    let model: InferenceModel = serde_saphyr::from_str(SEED_MODEL).unwrap();
    assert_eq!(model.spec.model_name, "qwq");
    assert_eq!(model.spec.criticality, Some(Criticality::Critical));
    assert_eq!(model.spec.pool_ref.name, "reasoning-pool");
    assert_eq!(
        model.spec.target_models,
        vec![TargetModel {
            name: "qwq-32b".into(),
            weight: Some(100)
        }]
    );
}

/// Serialising what was read gives back exactly the seed's document: no field is lost or invented.
#[test]
fn seed_manifests_round_trip_unchanged() {
    let pool: InferencePool = serde_saphyr::from_str(SEED_POOL).unwrap();
    let raw: Value = serde_saphyr::from_str(SEED_POOL).unwrap();
    assert_eq!(serde_json::to_value(&pool).unwrap(), raw);

    let model: InferenceModel = serde_saphyr::from_str(SEED_MODEL).unwrap();
    let raw: Value = serde_saphyr::from_str(SEED_MODEL).unwrap();
    assert_eq!(serde_json::to_value(&model).unwrap(), raw);
}

fn spec_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
}

#[test]
fn model_crd_has_the_weights_rule_bounds_and_columns() {
    let crd = serde_json::to_value(InferenceModel::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "inferencemodels.inference.networking.x-k8s.io");
    let spec = spec_schema(&crd);
    let targets = &spec["properties"]["targetModels"];
    assert_eq!(
        targets["x-kubernetes-validations"],
        json!([{
            "rule": "self.all(model, has(model.weight)) || self.all(model, !has(model.weight))",
            "message": "Weights should be set for all models, or none"
        }])
    );
    assert_eq!(targets["maxItems"], 10);
    let weight = &targets["items"]["properties"]["weight"];
    assert_eq!(
        (weight["minimum"].as_f64(), weight["maximum"].as_f64()),
        (Some(0.0), Some(1e6))
    );
    assert_eq!(spec["properties"]["modelName"]["maxLength"], 256);
    assert_eq!(
        spec["properties"]["criticality"]["enum"],
        // kube marks an optional enum nullable and lists null among its values.
        json!(["Critical", "Standard", "Sheddable", null])
    );
    assert!(
        spec["properties"]["modelName"]["description"]
            .as_str()
            .unwrap()
            .contains("oldest keeps it")
    );
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Model", "Pool", "Criticality", "Targets", "Weights", "Accepted", "Age"]
    );
    assert_eq!(crd["spec"]["versions"][0]["subresources"], json!({"status": {}}));
}

#[test]
fn pool_crd_bounds_the_port_and_defaults_the_failure_mode() {
    let crd = serde_json::to_value(InferencePool::crd()).unwrap();
    let spec = spec_schema(&crd);
    let port = &spec["properties"]["targetPortNumber"];
    assert_eq!(
        (port["minimum"].as_f64(), port["maximum"].as_f64()),
        (Some(1.0), Some(65535.0))
    );
    assert_eq!(spec["required"], json!(["selector", "targetPortNumber"]));
    let ext = &spec["properties"]["extensionRef"]["properties"];
    assert_eq!(ext["failureMode"]["default"], "FailClose");
    assert_eq!(ext["kind"]["default"], "Service");
    let conditions =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}
