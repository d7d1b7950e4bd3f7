//! `inference.networking.x-k8s.io/v1alpha1` InferencePool and InferenceModel, in the form the seed applies.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of model-server pods selected by labels, all serving on one port.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "InferencePool",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Label selector of the model-server pods; every key must match.
    pub selector: BTreeMap<String, String>,
    /// Port the model servers listen on (1–65535).
    pub target_port_number: i32,
    /// The endpoint picker serving this pool; optional because the seed's pool omits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<ExtensionRef>,
}

/// Reference to the endpoint-picker Service of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port_number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// What the proxy does when the endpoint picker fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    FailOpen,
    #[default]
    FailClose,
}

/// A model name clients use, its criticality, its pool and the weighted split over target models.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "InferenceModel",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelSpec {
    /// The name clients put in the request's `model` field.
    pub model_name: String,
    /// Unset is treated as Standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<Criticality>,
    pub pool_ref: PoolObjectReference,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_models: Vec<TargetModel>,
}

/// How important a model's traffic is when the pool is saturated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Criticality {
    Critical,
    #[default]
    Standard,
    Sheddable,
}

/// Reference from an InferenceModel to its InferencePool (same namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

/// One target model name and its relative weight (0–1 000 000).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_POOL: &str = r#"apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata:
  annotations:
    inference.networking.x-k8s.io/attach-to: |
      name: inference-gateway
      port: 8081
  name: reasoning-pool
spec:
  targetPortNumber: 8000
  selector:
    app: qwq-32b
"#;

    const SEED_MODEL: &str = r#"apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: inferencemodel-sample
spec:
  criticality: Critical
  modelName: qwq
  poolRef:
    group: inference.networking.x-k8s.io
    kind: InferencePool
    name: reasoning-pool
  targetModels:
  - name: qwq-32b
    weight: 100
"#;

    #[test]
    fn seed_pool_deserialises() {
        let pool: InferencePool = serde_saphyr::from_str(SEED_POOL).unwrap();
        assert_eq!(pool.metadata.name.as_deref(), Some("reasoning-pool"));
        assert_eq!(pool.spec.target_port_number, 8000);
        assert_eq!(pool.spec.selector.get("app").map(String::as_str), Some("qwq-32b"));
        assert_eq!(pool.spec.extension_ref, None);
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
}
