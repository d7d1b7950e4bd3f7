//! The kube-mode store: InferenceModels and CanaryReleases read through the Kubernetes API and written by forced
//! server-side apply under the caller's field manager, so `managedFields` shows who set what.
//!
//! A weight change sends only `spec.targetModels` plus the spec fields the CRD requires (`modelName`, `poolRef`,
//! copied from the model as read), so the weights become the caller's and every other field stays with whoever
//! wrote it. A CanaryRelease is created by apply after a read finds no object of that name, steered by applying
//! its whole spec with `control` changed, and its status is applied to the status subresource.

use ::kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams},
};
use api::{
    GROUP_X_K8S, NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Control},
    v1alpha1::{InferenceModel, TargetModel},
    validate::FieldError,
};
use futures::{FutureExt, future::BoxFuture};
use serde_json::json;

use crate::{Error, ModelStore, ReleaseStore, Result, Stored};

/// What a store shows as an object's source in kube mode.
const SOURCE: &str = "cluster";

/// The objects of the cluster a client talks to, in every namespace it may list.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    field_manager: &'static str,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

fn stored<T>(object: T) -> Stored<T> {
    Stored {
        object,
        source: SOURCE.into(),
    }
}

/// A failed API call as a store error: 404 as `not_found`, 409 a conflict, and 422 the API server's own
/// validation (CRD schema or CEL rules) refusing the object, blamed on `field`.
fn store_error(error: ::kube::Error, field: &str, not_found: impl FnOnce() -> Error) -> Error {
    match error {
        ::kube::Error::Api(status) if status.is_not_found() => not_found(),
        ::kube::Error::Api(status) if status.code == 409 => Error::Conflict(status.message),
        ::kube::Error::Api(status) if status.code == 422 => Error::Invalid(vec![FieldError {
            field: field.into(),
            message: status.message,
        }]),
        source => Error::Kube {
            what: "kubernetes api",
            source,
        },
    }
}

fn model_error(key: &NamespacedName, error: ::kube::Error) -> Error {
    store_error(error, "spec.targetModels", || Error::NotFound(key.clone()))
}

fn release_error(key: &NamespacedName, error: ::kube::Error) -> Error {
    store_error(error, "spec", || Error::ReleaseNotFound(key.clone()))
}

impl KubeStore {
    /// A store whose every write is applied as `field_manager`.
    pub fn new(client: Client, field_manager: &'static str) -> KubeStore {
        KubeStore { client, field_manager }
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(self.field_manager).force()
    }

    fn models(&self, namespace: &str) -> Api<InferenceModel> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn releases(&self, namespace: &str) -> Api<CanaryRelease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Every object of kind `K` in the namespaces the client may list.
    async fn list_all<K>(&self, what: &'static str) -> Result<Vec<K>>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Kube { what, source })?;
        Ok(list.items)
    }

    /// Applies the whole spec: a field this manager owned and left out would be removed by the API server, so
    /// changing `control` alone must still send the rest as it is.
    async fn apply_release(&self, key: &NamespacedName, release: &CanaryRelease) -> Result<Stored<CanaryRelease>> {
        let patch = json!({
            "apiVersion": CanaryRelease::api_version(&()),
            "kind": CanaryRelease::kind(&()),
            "metadata": {"name": key.name, "namespace": key.namespace},
            "spec": release.spec,
        });
        let applied = self
            .releases(&key.namespace)
            .patch(&key.name, &self.apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(|e| release_error(key, e))?;
        Ok(stored(applied))
    }
}

impl ModelStore for KubeStore {
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<Stored<InferenceModel>>>> {
        async move {
            let mut models = self.list_all::<InferenceModel>("listing InferenceModels").await?;
            models.sort_by_cached_key(|m| NamespacedName::of(&m.metadata));
            Ok(models.into_iter().map(stored).collect())
        }
        .boxed()
    }

    fn get_model<'a>(&'a self, key: &'a NamespacedName) -> BoxFuture<'a, Result<Option<InferenceModel>>> {
        async move {
            self.models(&key.namespace)
                .get_opt(&key.name)
                .await
                .map_err(|e| model_error(key, e))
        }
        .boxed()
    }

    fn apply_targets<'a>(
        &'a self,
        model: &'a InferenceModel,
        targets: &'a [TargetModel],
    ) -> BoxFuture<'a, Result<Stored<InferenceModel>>> {
        async move {
            let key = NamespacedName::of(&model.metadata);
            let mut updated = model.clone();
            updated.spec.target_models = targets.to_vec();
            // Refused here, before the API server is asked anything, as dir mode refuses it.
            api::validate::validate_model(&updated).map_err(Error::Invalid)?;
            let patch = json!({
                "apiVersion": format!("{GROUP_X_K8S}/v1alpha1"),
                "kind": "InferenceModel",
                "metadata": {"name": key.name, "namespace": key.namespace},
                "spec": {
                    // Required by the CRD schema, so an apply without them would be rejected.
                    "modelName": updated.spec.model_name,
                    "poolRef": updated.spec.pool_ref,
                    "targetModels": targets,
                },
            });
            let applied = self
                .models(&key.namespace)
                .patch(&key.name, &self.apply_params(), &Patch::Apply(&patch))
                .await
                .map_err(|e| model_error(&key, e))?;
            tracing::info!(model = %key, targets = targets.len(), field_manager = self.field_manager, "applied InferenceModel weights");
            Ok(stored(applied))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("cluster (server-side apply as {})", self.field_manager)
    }
}

impl ReleaseStore for KubeStore {
    fn list_releases(&self) -> BoxFuture<'_, Result<Vec<Stored<CanaryRelease>>>> {
        async move {
            let releases = self.list_all::<CanaryRelease>("listing CanaryReleases").await?;
            Ok(releases.into_iter().map(stored).collect())
        }
        .boxed()
    }

    fn create_release<'a>(&'a self, release: &'a CanaryRelease) -> BoxFuture<'a, Result<Stored<CanaryRelease>>> {
        async move {
            let key = NamespacedName::of(&release.metadata);
            // An apply would silently take over an existing release of the same name.
            match self.releases(&key.namespace).get_opt(&key.name).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(Error::Conflict(format!(
                        "a guarded release named {} exists already in {}",
                        key.name, key.namespace
                    )));
                }
                Err(e) => return Err(release_error(&key, e)),
            }
            let created = self.apply_release(&key, release).await?;
            tracing::info!(release = %key, "created guarded release");
            Ok(created)
        }
        .boxed()
    }

    fn set_control<'a>(
        &'a self,
        key: &'a NamespacedName,
        control: Control,
    ) -> BoxFuture<'a, Result<Stored<CanaryRelease>>> {
        async move {
            let mut release = self
                .releases(&key.namespace)
                .get(&key.name)
                .await
                .map_err(|e| release_error(key, e))?;
            release.spec.control = control;
            let applied = self.apply_release(key, &release).await?;
            tracing::info!(release = %key, ?control, "set guarded release control");
            Ok(applied)
        }
        .boxed()
    }

    fn write_status<'a>(
        &'a self,
        key: &'a NamespacedName,
        status: &'a CanaryReleaseStatus,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let body = json!({
                "apiVersion": CanaryRelease::api_version(&()),
                "kind": CanaryRelease::kind(&()),
                "status": status,
            });
            self.releases(&key.namespace)
                .patch_status(&key.name, &self.apply_params(), &Patch::Apply(&body))
                .await
                .map_err(|e| release_error(key, e))?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
