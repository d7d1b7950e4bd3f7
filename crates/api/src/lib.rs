//! CRD types and shared wire types; this crate holds data only and never touches the network (`dir` reads and
//! writes local YAML files).

pub mod canary;
pub mod conditions;
pub mod dir;
pub mod duration;
mod name;
pub mod v1;
pub mod v1alpha1;
pub mod validate;

pub use k8s_openapi::api::core::v1::Pod;
pub use name::NamespacedName;

/// The API group of the seed-era CRDs.
pub const GROUP_X_K8S: &str = "inference.networking.x-k8s.io";

/// The API group of the GA `v1` InferencePool.
pub const GROUP_K8S: &str = "inference.networking.k8s.io";

/// Annotation on an InferencePool naming the Gateway listener it serves (`name:` and `port:` lines of YAML).
pub const ATTACH_TO_ANNOTATION: &str = "inference.networking.x-k8s.io/attach-to";

/// Annotation on an InferenceModel naming the model a share of its requests is copied to (traffic mirroring).
pub const MIRROR_TARGET_ANNOTATION: &str = "switchyard.dev/mirror-target";

/// Annotation on an InferenceModel: the percentage (0–100, decimals allowed) of its requests that are mirrored.
pub const MIRROR_PERCENT_ANNOTATION: &str = "switchyard.dev/mirror-percent";

/// Every CRD this crate defines, in the order `cargo xtask codegen` writes them to `deploy/crds/`.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        v1alpha1::InferencePool::crd(),
        v1alpha1::InferenceModel::crd(),
        v1::InferencePool::crd(),
        canary::CanaryRelease::crd(),
    ]
}
