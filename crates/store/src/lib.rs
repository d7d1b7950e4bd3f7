//! One store per object: where InferenceModels and CanaryReleases are read and written, shared by the controller's
//! canary driver and the dashboard. [`dir::DirStore`] edits a directory of Kubernetes YAML (the gateway's `--dir`)
//! through [`api::dir`]; [`kube::KubeStore`] talks to the API server and writes by server-side apply under the
//! field manager its caller names (`switchyard-canary`, `switchyard-dashboard`).
//!
//! Both validate a model with [`api::validate::validate_model`] before writing it, and both report the same
//! [`Error`]s, which the dashboard maps to HTTP statuses.

pub mod dir;
pub mod kube;

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Control},
    v1alpha1::{InferenceModel, TargetModel},
    validate::FieldError,
};
use futures::future::BoxFuture;

/// Why reading or changing an object failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("InferenceModel {0} not found")]
    NotFound(NamespacedName),
    #[error("the new InferenceModel is invalid: {}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("CanaryRelease {0} not found")]
    ReleaseNotFound(NamespacedName),
    /// The object exists already, or changed since it was read.
    #[error("{0}")]
    Conflict(String),
    /// The API server could not be asked, or failed otherwise; `what` names the call.
    #[error("{what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: ::kube::Error,
    },
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl From<api::dir::DirError> for Error {
    fn from(error: api::dir::DirError) -> Error {
        match error {
            api::dir::DirError::Io { path, message } => Error::Io { path, message },
            api::dir::DirError::Parse { path, index, message } => Error::Parse {
                path,
                message: format!("document {index}: {message}"),
            },
            moved @ api::dir::DirError::Moved { .. } => Error::Conflict(moved.to_string()),
        }
    }
}

/// An object as a store holds it, with where it lives (a file path, or `cluster`).
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<T> {
    pub object: T,
    pub source: String,
}

/// Where InferenceModels live. Only `spec.targetModels` is ever written; every other field stays with its author.
pub trait ModelStore: Send + Sync {
    /// Every InferenceModel, sorted by namespace and name.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<Stored<InferenceModel>>>>;

    /// One InferenceModel, `None` when there is none of that name.
    fn get_model<'a>(&'a self, key: &'a NamespacedName) -> BoxFuture<'a, Result<Option<InferenceModel>>>;

    /// Replaces `spec.targetModels` of `model` (as last read) with `targets` and returns the stored object:
    /// [`Error::Invalid`] when the result breaks a rule, [`Error::NotFound`] when the object is gone.
    fn apply_targets<'a>(
        &'a self,
        model: &'a InferenceModel,
        targets: &'a [TargetModel],
    ) -> BoxFuture<'a, Result<Stored<InferenceModel>>>;

    /// A short description for people, e.g. `directory target/demo/config`.
    fn describe(&self) -> String;
}

/// Where CanaryReleases live. The dashboard creates them and sets `spec.control`; the controller writes `status`.
pub trait ReleaseStore: Send + Sync {
    /// Every CanaryRelease with its status.
    fn list_releases(&self) -> BoxFuture<'_, Result<Vec<Stored<CanaryRelease>>>>;

    /// Creates a new release; [`Error::Conflict`] when one of that name exists already.
    fn create_release<'a>(&'a self, release: &'a CanaryRelease) -> BoxFuture<'a, Result<Stored<CanaryRelease>>>;

    /// Sets `spec.control`, leaving the rest of the object as it is.
    fn set_control<'a>(
        &'a self,
        key: &'a NamespacedName,
        control: Control,
    ) -> BoxFuture<'a, Result<Stored<CanaryRelease>>>;

    /// Replaces the release's status.
    fn write_status<'a>(
        &'a self,
        key: &'a NamespacedName,
        status: &'a CanaryReleaseStatus,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Both objects of one place: every store keeps the CanaryReleases beside the InferenceModels they move.
pub trait Store: ModelStore + ReleaseStore {}

impl<T: ModelStore + ReleaseStore> Store for T {}
