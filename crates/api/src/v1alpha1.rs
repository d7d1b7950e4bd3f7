//! `inference.networking.x-k8s.io/v1alpha1` InferencePool and InferenceModel, in the form the seed applies.
//!
//! Doc comments on the fields become the `description`s of the generated CRDs (what `kubectl explain` prints), and
//! the `schemars` attributes become OpenAPI bounds and CEL rules the API server enforces. The same rules,
//! plus the ones a schema cannot express, are checked client-side by [`crate::validate`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// InferencePool is a set of model-server pods selected by labels, all serving on one port, behind one endpoint
/// picker.
// clippy reads the repeated `type_ =` of separate printcolumn(...) entries as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "InferencePool",
    namespaced,
    status = "InferencePoolStatus",
    derive = "PartialEq",
    doc = "InferencePool is a set of model-server pods selected by labels, served through one endpoint picker.",
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.targetPortNumber"),
    printcolumn(
        name = "Ready Pods",
        type_ = "integer",
        json_path = ".status.readyPods",
        description = "Selected pods that are Ready and not terminating"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Labels that select the model-server pods of this pool; a pod must carry every one of them. Pods are taken
    /// from the pool's namespace only.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 64))]
    pub selector: BTreeMap<String, String>,
    /// Port the model servers listen on; each selected pod is reached at podIP:targetPortNumber.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port_number: i32,
    /// The endpoint-picker extension that routes requests to this pool. Optional: without it the Switchyard
    /// gateway serving the pool picks the endpoints itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<ExtensionRef>,
}

/// Reference to the endpoint-picker Service of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionRef {
    /// API group of the referent; the empty string (the default) means the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ""), length(max = 253))]
    pub group: Option<String>,
    /// Kind of the referent; defaults to Service. ExternalName Services are not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Service"), length(min = 1, max = 63))]
    pub kind: Option<String>,
    /// Name of the referent, in the pool's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Port of the referent's ext_proc server; implementations default it to 9002 for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port_number: Option<i32>,
    /// What the proxy does when the extension cannot be reached or fails: FailClose (the default) rejects the
    /// request, FailOpen forwards it to a pod of the proxy's own choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "FailClose"))]
    pub failure_mode: Option<FailureMode>,
}

/// What the proxy does when the endpoint picker fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    FailOpen,
    #[default]
    FailClose,
}

/// Observed state of an InferencePool, written by the Switchyard controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    /// Selected pods that are Ready and not terminating, as of the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_pods: Option<i32>,
    /// Conditions of the pool: Ready (routable pods and a healthy endpoint picker) and ResolvedRefs (the
    /// extensionRef and the attach-to Gateway listener exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// InferenceModel is a model name clients request, its criticality, its pool and the weighted split over the
/// target models that serve it.
// clippy reads the repeated `type_ =` of separate printcolumn(...) entries as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "InferenceModel",
    namespaced,
    status = "InferenceModelStatus",
    derive = "PartialEq",
    doc = "InferenceModel is a model name clients request, its criticality, its pool and its weighted target models.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelName"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef.name"),
    printcolumn(name = "Criticality", type_ = "string", json_path = ".spec.criticality"),
    printcolumn(name = "Targets", type_ = "string", json_path = ".spec.targetModels[*].name"),
    printcolumn(name = "Weights", type_ = "string", json_path = ".spec.targetModels[*].weight"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Accepted")].status"#
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelSpec {
    /// The name clients put in the request's `model` field. Unique within a pool: when two InferenceModels claim
    /// the same name, the oldest keeps it and the newer ones are not accepted (reason ModelNameInUse).
    #[schemars(length(min = 1, max = 256))]
    pub model_name: String,
    /// How important this model's traffic is when the pool is saturated: Critical, Standard or Sheddable
    /// (shed first, with 429). Unset is treated as Standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<Criticality>,
    /// The InferencePool serving this model, in the same namespace.
    pub pool_ref: PoolObjectReference,
    /// The model names actually served and the share of traffic each receives (a canary release is a change of
    /// weights). Empty means the model name is served as is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(model, has(model.weight)) || self.all(model, !has(model.weight))",
        "message": "Weights should be set for all models, or none",
    }]))]
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
    /// API group of the pool; defaults to inference.networking.x-k8s.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "inference.networking.x-k8s.io"), length(max = 253))]
    pub group: Option<String>,
    /// Kind of the pool; defaults to InferencePool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "InferencePool"), length(min = 1, max = 63))]
    pub kind: Option<String>,
    /// Name of the InferencePool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One target model name and its relative weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    /// The model name sent to the model server (the request's `model` is rewritten to it).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Relative share of traffic (0–1000000); a target gets weight / sum(weights) of the requests. Set for every
    /// target or for none (then traffic is split evenly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub weight: Option<i32>,
}

/// Observed state of an InferenceModel, written by the Switchyard controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelStatus {
    /// Conditions of the model: Accepted (the model name is this object's and its spec is valid) and
    /// ResolvedRefs (the poolRef names an existing InferencePool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests;
