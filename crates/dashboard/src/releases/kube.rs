//! The kube-mode [`ReleaseStore`]: InferenceModels read through the Kubernetes API and changed by server-side apply.
//!
//! An apply sends only `spec.targetModels` plus the spec fields the CRD requires (`modelName`, `poolRef`, copied
//! from the current object), under the field manager `switchyard-dashboard` with `force`, so the weights become the
//! dashboard's and every other field stays with whoever wrote it.
//!
//! CanaryReleases (kube-mode [`GuardedStore`]) are created by server-side apply under the same field manager after
//! a read that finds no object of that name, and steered by applying their spec with `control` changed.

use ::kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use api::{
    NamespacedName,
    canary::{CanaryRelease, Control},
    v1alpha1::{InferenceModel, InferenceModelSpec, PoolObjectReference, TargetModel},
    validate::FieldError,
};
use futures::{FutureExt, future::BoxFuture};
use serde_json::json;

use super::{
    ModelState, ReleaseStore, StoreError, Target,
    guarded::{Guarded, GuardedStore, sort_releases},
};

/// The field manager of every apply, so `managedFields` shows which fields the dashboard set.
pub const FIELD_MANAGER: &str = "switchyard-dashboard";

/// What the UI shows as an InferenceModel's source in kube mode.
const SOURCE: &str = "cluster";

/// InferenceModels of the cluster the client talks to, in every namespace it may list.
#[derive(Clone)]
pub struct KubeReleaseStore {
    client: Client,
}

impl std::fmt::Debug for KubeReleaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReleaseStore").finish_non_exhaustive()
    }
}

impl KubeReleaseStore {
    pub fn new(client: Client) -> KubeReleaseStore {
        KubeReleaseStore { client }
    }

    fn api(&self, namespace: &str) -> Api<InferenceModel> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Reads one InferenceModel.
    pub async fn get(&self, key: &NamespacedName) -> Result<InferenceModel, StoreError> {
        self.api(&key.namespace)
            .get(&key.name)
            .await
            .map_err(|e| api_error(key, e))
    }
}

fn api_error(key: &NamespacedName, error: ::kube::Error) -> StoreError {
    store_error(error, "spec.targetModels", || StoreError::NotFound(key.clone()))
}

/// A failed API call as a store error: 404 as `not_found`, 409 a conflict, and 422 the API server's own
/// validation (CRD schema or CEL rules) refusing the object, blamed on `field`.
fn store_error(error: ::kube::Error, field: &str, not_found: impl FnOnce() -> StoreError) -> StoreError {
    match error {
        ::kube::Error::Api(status) if status.is_not_found() => not_found(),
        ::kube::Error::Api(status) if status.code == 409 => StoreError::Conflict(status.message),
        ::kube::Error::Api(status) if status.code == 422 => StoreError::Invalid(vec![FieldError {
            field: field.into(),
            message: status.message,
        }]),
        error => StoreError::Unavailable(format!("kubernetes api: {error}")),
    }
}

fn target_models(targets: &[Target]) -> Vec<TargetModel> {
    targets
        .iter()
        .map(|t| TargetModel {
            name: t.name.clone(),
            // Out of range on purpose when too large, so validation reports it rather than clamping it.
            weight: t.weight.map(|w| i32::try_from(w).unwrap_or(i32::MAX)),
        })
        .collect()
}

/// The checks of [`api::validate::validate_model`] that depend only on the new targets, so a bad change is refused
/// before the API server is asked anything.
fn validate_targets(key: &NamespacedName, targets: &[TargetModel]) -> Result<(), StoreError> {
    let model = InferenceModel::new(
        &key.name,
        InferenceModelSpec {
            model_name: String::new(),
            criticality: None,
            pool_ref: PoolObjectReference {
                group: None,
                kind: None,
                name: String::new(),
            },
            target_models: targets.to_vec(),
        },
    );
    match api::validate::validate_model(&model) {
        Ok(()) => Ok(()),
        Err(errors) => {
            let errors: Vec<FieldError> = errors
                .into_iter()
                .filter(|e| e.field.starts_with("spec.targetModels") || e.field.starts_with("metadata."))
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Invalid(errors))
            }
        }
    }
}

impl KubeReleaseStore {
    /// Every object of kind `K` in the namespaces the client may list.
    async fn list_all<K>(&self) -> Result<Vec<K>, StoreError>
    where
        K: ::kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| StoreError::Unavailable(format!("listing {}s: {e}", K::kind(&()))))?;
        Ok(list.items)
    }
}

impl ReleaseStore for KubeReleaseStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelState>, StoreError>> {
        async move {
            let mut models: Vec<ModelState> = self
                .list_all::<InferenceModel>()
                .await?
                .iter()
                .map(|m| ModelState::from_model(m, SOURCE.into()))
                .collect();
            models.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(models)
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        key: &'a NamespacedName,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<ModelState, StoreError>> {
        async move {
            let new_targets = target_models(targets);
            validate_targets(key, &new_targets)?;
            let mut model = self.get(key).await?;
            model.spec.target_models = new_targets;
            // The same whole-object validation as dir mode, now that the rest of the spec is known.
            api::validate::validate_model(&model).map_err(StoreError::Invalid)?;
            let patch = json!({
                "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
                "kind": "InferenceModel",
                "metadata": {"name": key.name, "namespace": key.namespace},
                "spec": {
                    // Required by the CRD schema, so an apply without them would be rejected.
                    "modelName": model.spec.model_name,
                    "poolRef": model.spec.pool_ref,
                    "targetModels": model.spec.target_models,
                },
            });
            let applied = self
                .api(&key.namespace)
                .patch(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(|e| api_error(key, e))?;
            tracing::info!(model = %key, targets = targets.len(), "applied InferenceModel weights");
            Ok(ModelState::from_model(&applied, SOURCE.into()))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("cluster (server-side apply as {FIELD_MANAGER})")
    }
}

fn release_error(key: &NamespacedName, error: ::kube::Error) -> StoreError {
    store_error(error, "spec", || StoreError::ReleaseNotFound(key.to_string()))
}

impl KubeReleaseStore {
    fn releases(&self, namespace: &str) -> Api<CanaryRelease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Applies the whole spec: a field this manager owned and left out would be removed by the API server, so
    /// changing `control` alone must still send the rest as it is.
    async fn apply_release(&self, key: &NamespacedName, release: &CanaryRelease) -> Result<Guarded, StoreError> {
        let patch = json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "CanaryRelease",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "spec": release.spec,
        });
        let applied = self
            .releases(&key.namespace)
            .patch(
                &key.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| release_error(key, e))?;
        Ok(Guarded::from_object(&applied, SOURCE.into()))
    }
}

impl GuardedStore for KubeReleaseStore {
    fn list_guarded(&self) -> BoxFuture<'_, Result<Vec<Guarded>, StoreError>> {
        async move {
            let mut releases: Vec<Guarded> = self
                .list_all::<CanaryRelease>()
                .await?
                .iter()
                .map(|r| Guarded::from_object(r, SOURCE.into()))
                .collect();
            sort_releases(&mut releases);
            Ok(releases)
        }
        .boxed()
    }

    fn create_guarded<'a>(&'a self, release: &'a CanaryRelease) -> BoxFuture<'a, Result<Guarded, StoreError>> {
        async move {
            let key = NamespacedName {
                namespace: release.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                name: release.metadata.name.clone().unwrap_or_default(),
            };
            // An apply would silently take over an existing release of the same name.
            match self.releases(&key.namespace).get_opt(&key.name).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(StoreError::Conflict(format!(
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
    ) -> BoxFuture<'a, Result<Guarded, StoreError>> {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ::kube::client::Body;
    use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
    use serde_json::Value;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const PATH: &str = "/apis/inference.networking.x-k8s.io/v1alpha1";

    fn store() -> (KubeReleaseStore, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (KubeReleaseStore::new(Client::new(service, "default")), handle)
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

    fn key(name: &str) -> NamespacedName {
        NamespacedName {
            namespace: "prod".into(),
            name: name.into(),
        }
    }

    fn split(a: u32, b: u32) -> [Target; 2] {
        [
            Target {
                name: "qwq-32b".into(),
                weight: Some(a),
            },
            Target {
                name: "qwq-32b-canary".into(),
                weight: Some(b),
            },
        ]
    }

    /// One request as the fake API server saw it.
    struct Seen {
        query: String,
        content_type: String,
        body: Value,
    }

    /// Waits for the next request, asserts its method and path, answers `status` with `reply` (or the request body
    /// when `reply` is null, as apply does) and returns what was sent.
    async fn expect(handle: &mut Handle, method: Method, path: &str, status: StatusCode, reply: Value) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "{}",
            request.uri()
        );
        let query = request.uri().query().unwrap_or("").to_owned();
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let reply = if reply.is_null() { body.clone() } else { reply };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        Seen {
            query,
            content_type,
            body,
        }
    }

    fn not_found() -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "NotFound",
            "message": "inferencemodels \"nope\" not found", "code": 404})
    }

    /// Asserts that nothing more was sent.
    async fn done(mut handle: Handle) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
            panic!("unexpected extra request {} {}", request.method(), request.uri());
        }
    }

    #[tokio::test]
    async fn list_reads_every_namespace_sorted() {
        let (store, mut handle) = store();
        let list = tokio::spawn(async move { store.list().await });
        let items = json!({"apiVersion": "v1", "kind": "InferenceModelList", "metadata": {"resourceVersion": "100"},
            "items": [model("prod", "b"), model("dev", "a")]});
        expect(
            &mut handle,
            Method::GET,
            &format!("{PATH}/inferencemodels"),
            StatusCode::OK,
            items,
        )
        .await;
        let models = list.await.unwrap().unwrap();
        let keys: Vec<String> = models.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(keys, ["dev/a", "prod/b"]);
        assert_eq!(models[0].model_name, "qwq");
        assert_eq!(models[0].pool, "reasoning-pool");
        assert_eq!(models[0].criticality, "Critical");
        assert_eq!(models[0].source, "cluster");
        assert_eq!(models[0].targets, split(100, 0));
        done(handle).await;
    }

    #[tokio::test]
    async fn apply_is_a_forced_server_side_apply_of_the_targets() {
        let (store, mut handle) = store();
        let apply = tokio::spawn(async move { store.apply(&key("m"), &split(90, 10)).await });
        let object = format!("{PATH}/namespaces/prod/inferencemodels/m");
        let get = expect(&mut handle, Method::GET, &object, StatusCode::OK, model("prod", "m")).await;
        assert_eq!(get.body, Value::Null);
        let seen = expect(&mut handle, Method::PATCH, &object, StatusCode::OK, Value::Null).await;
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
        assert_eq!(state.key, key("m"));
        assert_eq!(state.targets, split(90, 10));
        assert_eq!(state.shares(), [90.0, 10.0]);
        done(handle).await;
    }

    #[tokio::test]
    async fn all_zero_weights_are_refused_before_any_request() {
        let (store, handle) = store();
        let result = store.apply(&key("m"), &split(0, 0)).await;
        let Err(StoreError::Invalid(errors)) = result else {
            panic!("expected Invalid, got {result:?}");
        };
        assert_eq!(errors[0].field, "spec.targetModels");
        assert!(errors[0].message.contains("greater than 0"), "{errors:?}");
        drop(store);
        done(handle).await;
    }

    #[tokio::test]
    async fn a_missing_model_is_not_found() {
        let (store, mut handle) = store();
        let apply = tokio::spawn(async move { store.apply(&key("nope"), &split(90, 10)).await });
        let object = format!("{PATH}/namespaces/prod/inferencemodels/nope");
        expect(&mut handle, Method::GET, &object, StatusCode::NOT_FOUND, not_found()).await;
        assert!(matches!(apply.await.unwrap(), Err(StoreError::NotFound(k)) if k == key("nope")));
        done(handle).await;
    }

    #[tokio::test]
    async fn a_404_from_the_apply_is_not_found() {
        let (store, mut handle) = store();
        let apply = tokio::spawn(async move { store.apply(&key("nope"), &split(90, 10)).await });
        let object = format!("{PATH}/namespaces/prod/inferencemodels/nope");
        expect(&mut handle, Method::GET, &object, StatusCode::OK, model("prod", "nope")).await;
        expect(&mut handle, Method::PATCH, &object, StatusCode::NOT_FOUND, not_found()).await;
        assert!(matches!(apply.await.unwrap(), Err(StoreError::NotFound(_))));
        done(handle).await;
    }

    const RELEASES: &str = "/apis/switchyard.dev/v1alpha1";

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

    fn release_key(name: &str) -> NamespacedName {
        NamespacedName {
            namespace: "prod".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn guarded_releases_are_listed_with_their_status() {
        let (store, mut handle) = store();
        let list = tokio::spawn(async move { store.list_guarded().await });
        let items = json!({"apiVersion": "v1", "kind": "CanaryReleaseList", "metadata": {"resourceVersion": "9"},
            "items": [canary_release("r", "Run")]});
        expect(
            &mut handle,
            Method::GET,
            &format!("{RELEASES}/canaryreleases"),
            StatusCode::OK,
            items,
        )
        .await;
        let releases = list.await.unwrap().unwrap();
        assert_eq!(releases.len(), 1);
        let r = &releases[0];
        assert_eq!(r.key, release_key("r"));
        assert_eq!((r.phase(), r.percent()), (api::canary::Phase::Progressing, 10));
        assert!(r.is_active() && r.targets_model(&key("m")));
        assert_eq!(r.created_ms, Some(1_796_119_200_000));
        done(handle).await;
    }

    #[tokio::test]
    async fn a_new_guarded_release_is_applied_only_when_the_name_is_free() {
        let (store, mut handle) = store();
        let release: CanaryRelease = serde_json::from_value(canary_release("r", "Run")).unwrap();
        let create = {
            let (store, release) = (store.clone(), release.clone());
            tokio::spawn(async move { store.create_guarded(&release).await })
        };
        let object = format!("{RELEASES}/namespaces/prod/canaryreleases/r");
        let not_found = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "message": "canaryreleases \"r\" not found", "code": 404});
        expect(&mut handle, Method::GET, &object, StatusCode::NOT_FOUND, not_found).await;
        let seen = expect(&mut handle, Method::PATCH, &object, StatusCode::OK, Value::Null).await;
        assert_eq!(seen.query, "&force=true&fieldManager=switchyard-dashboard");
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(seen.body["kind"], "CanaryRelease");
        assert_eq!(seen.body["metadata"], json!({"name": "r", "namespace": "prod"}));
        assert_eq!(seen.body["spec"]["steps"], json!([10, 100]));
        assert_eq!(seen.body["spec"]["control"], "Run");
        assert!(seen.body.get("status").is_none(), "status belongs to the controller");
        assert_eq!(create.await.unwrap().unwrap().key, release_key("r"));

        // The same name again: refused after the read, nothing applied.
        let create = tokio::spawn(async move { store.create_guarded(&release).await });
        expect(
            &mut handle,
            Method::GET,
            &object,
            StatusCode::OK,
            canary_release("r", "Run"),
        )
        .await;
        assert!(matches!(create.await.unwrap(), Err(StoreError::Conflict(_))));
        done(handle).await;
    }

    #[tokio::test]
    async fn control_is_applied_with_the_rest_of_the_spec() {
        let (store, mut handle) = store();
        let set = tokio::spawn(async move { store.set_control(&release_key("r"), Control::Pause).await });
        let object = format!("{RELEASES}/namespaces/prod/canaryreleases/r");
        expect(
            &mut handle,
            Method::GET,
            &object,
            StatusCode::OK,
            canary_release("r", "Run"),
        )
        .await;
        let seen = expect(
            &mut handle,
            Method::PATCH,
            &object,
            StatusCode::OK,
            canary_release("r", "Pause"),
        )
        .await;
        assert_eq!(seen.query, "&force=true&fieldManager=switchyard-dashboard");
        // Every spec field the dashboard may own is sent, so the apply removes none of them.
        assert_eq!(
            seen.body["spec"],
            json!({"modelRef": "m", "stable": "qwq-32b", "canary": "qwq-32b-canary", "steps": [10, 100],
                "hold": "30s", "limits": {"maxTtftP90Ratio": 1.2}, "control": "Pause"})
        );
        let updated = set.await.unwrap().unwrap();
        assert_eq!(updated.spec.control, Control::Pause);
        done(handle).await;
    }

    #[tokio::test]
    async fn control_of_a_missing_release_is_not_found() {
        let (store, mut handle) = store();
        let set = tokio::spawn(async move { store.set_control(&release_key("gone"), Control::Abort).await });
        let object = format!("{RELEASES}/namespaces/prod/canaryreleases/gone");
        expect(&mut handle, Method::GET, &object, StatusCode::NOT_FOUND, not_found()).await;
        assert!(matches!(set.await.unwrap(), Err(StoreError::ReleaseNotFound(k)) if k == "prod/gone"));
        done(handle).await;
    }
}
