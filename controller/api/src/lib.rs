//! CRD types and shared wire types; this crate holds data only and never touches the network.

pub mod v1alpha1;
pub mod validate;

pub use k8s_openapi::api::core::v1::Pod;

/// The API group of the seed-era CRDs.
pub const GROUP_X_K8S: &str = "inference.networking.x-k8s.io";

/// Annotation on an InferencePool naming the Gateway listener it serves (`name:` and `port:` lines of YAML).
pub const ATTACH_TO_ANNOTATION: &str = "inference.networking.x-k8s.io/attach-to";
