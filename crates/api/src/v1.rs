//! `inference.networking.k8s.io/v1` InferencePool, the GA form of the pool (Gateway API Inference Extension v1.0+).
//!
//! Differences from v1alpha1: the selector is a `matchLabels` map, ports are a list (each one a distinct endpoint
//! per pod), the picker is `endpointPickerRef` with a `port` object, and status is reported per parent Gateway.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::v1alpha1::FailureMode;

/// InferencePool is a set of model-server pods selected by labels, reached on one or more ports, behind one
/// endpoint picker.
// clippy reads the repeated `type_ =` of separate printcolumn(...) entries as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    namespaced,
    shortname = "infpool",
    status = "InferencePoolStatus",
    derive = "PartialEq",
    doc = "InferencePool is a set of model-server pods selected by labels, served through one endpoint picker.",
    printcolumn(name = "Ports", type_ = "string", json_path = ".spec.targetPorts[*].number"),
    printcolumn(name = "Picker", type_ = "string", json_path = ".spec.endpointPickerRef.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Which pods belong to the pool; only pods in the pool's namespace are selected.
    pub selector: LabelSelector,
    /// Ports the model servers listen on; every port is a distinct endpoint, addressed as podIP:number.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(p1, self.exists_one(p2, p1.number == p2.number))",
        "message": "port number must be unique",
    }]))]
    pub target_ports: Vec<Port>,
    /// Protocol the model servers speak: http (the default) or kubernetes.io/h2c.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
    /// The endpoint picker that routes requests to this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
}

/// Label selector of a v1 pool: equality on labels only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels a pod must carry, every one of them.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 64))]
    pub match_labels: BTreeMap<String, String>,
}

/// A TCP port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub struct Port {
    /// Port number (1–65535).
    #[schemars(range(min = 1, max = 65535))]
    pub number: i32,
}

/// Application protocol of the model servers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AppProtocol {
    #[default]
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
}

/// Reference to the endpoint picker of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind != 'Service' || has(self.port)",
    "message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')",
}]))]
pub struct EndpointPickerRef {
    /// API group of the referent; the empty string (the default) means the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ""), length(max = 253))]
    pub group: Option<String>,
    /// Kind of the referent; defaults to Service.
    #[serde(default = "service_kind")]
    #[schemars(extend("default" = "Service"), length(min = 1, max = 63))]
    pub kind: String,
    /// Name of the referent, in the pool's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Port of the picker's ext_proc server; required when the referent is a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// What the proxy does when the picker fails: FailClose (the default) or FailOpen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "FailClose"))]
    pub failure_mode: Option<FailureMode>,
}

fn service_kind() -> String {
    "Service".to_owned()
}

/// Observed state of a v1 InferencePool, per parent Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    /// One entry per Gateway the pool is attached to; empty means the pool is not associated with any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<ParentStatus>,
}

/// Status of the pool as seen by one parent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// The parent Gateway.
    pub parent_ref: ParentReference,
    /// Conditions of the pool for this parent: Accepted and ResolvedRefs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The controller that wrote this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_name: Option<String>,
}

/// Reference to a parent (a Gateway by default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent; defaults to gateway.networking.k8s.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "gateway.networking.k8s.io"))]
    pub group: Option<String>,
    /// Kind of the parent; defaults to Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Gateway"))]
    pub kind: Option<String>,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the parent; the pool's namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::*;

    const GA_POOL: &str = r#"apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: vllm-llama3-8b-instruct-pool
  namespace: default
spec:
  targetPorts:
  - number: 8000
  selector:
    matchLabels:
      app: vllm-llama3-8b-instruct-pool
  endpointPickerRef:
    name: epp
    kind: Service
    port:
      number: 9002
"#;

    #[test]
    fn upstream_ga_pool_deserialises() {
        let pool: InferencePool = serde_saphyr::from_str(GA_POOL).unwrap();
        assert_eq!(pool.spec.target_ports, [Port { number: 8000 }]);
        let picker = pool.spec.endpoint_picker_ref.unwrap();
        assert_eq!(
            (picker.kind.as_str(), picker.port),
            ("Service", Some(Port { number: 9002 }))
        );
        assert_eq!(picker.failure_mode, None);
    }

    #[test]
    fn crd_has_the_upstream_cel_rules_and_short_name() {
        let crd = serde_json::to_value(InferencePool::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "inferencepools.inference.networking.k8s.io");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["infpool"]));
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["targetPorts"]["x-kubernetes-validations"][0]["message"],
            "port number must be unique"
        );
        assert_eq!(
            spec["endpointPickerRef"]["x-kubernetes-validations"][0]["rule"],
            "self.kind != 'Service' || has(self.port)"
        );
    }
}
