//! The dir-mode stores: InferenceModels ([`ReleaseStore`]) and CanaryReleases ([`GuardedStore`]) in a directory of
//! Kubernetes YAML (the gateway's `--dir`), read and written through [`api::dir`], which the controller shares.
//!
//! Applying rewrites only the InferenceModel's document; the other documents of the file keep their text. A new
//! CanaryRelease is a file of its own, `canaryrelease-<name>.yaml`. Every write goes to a dot-file beside its target
//! and is renamed over it, so the gateway's poller (which skips dot-files) sees the old or the new file, never half
//! of one. A release's status is never in the user's file: the controller keeps it in a `.status/` sidecar.

use std::path::PathBuf;

use api::{
    NamespacedName,
    canary::{CanaryRelease, Control},
    dir::{self, Document},
    v1alpha1::InferenceModel,
};
use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{
    ModelState, ReleaseStore, StoreError, Target,
    guarded::{Guarded, GuardedStore, sort_releases},
};

const MODEL_KIND: &str = "InferenceModel";
const RELEASE_KIND: &str = "CanaryRelease";

/// InferenceModels and CanaryReleases read from and written to YAML files in one directory.
#[derive(Debug)]
pub struct DirReleaseStore {
    dir: PathBuf,
    /// Writes are serialised so two concurrent edits of one file cannot lose each other's change.
    write: Mutex<()>,
}

impl DirReleaseStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirReleaseStore {
        DirReleaseStore {
            dir: dir.into(),
            write: Mutex::new(()),
        }
    }

    fn models(&self) -> Result<Vec<(Document, ModelState)>, StoreError> {
        dir::scan(&self.dir, MODEL_KIND)?
            .strict()?
            .into_iter()
            .map(|doc| {
                let model: InferenceModel = doc.decode()?;
                let state = ModelState::from_model(&model, doc.path.display().to_string());
                Ok((doc, state))
            })
            .collect()
    }

    /// A release document with its status from the sidecar (never from the user's file).
    fn guarded(&self, doc: &Document) -> Result<Guarded, StoreError> {
        let release: CanaryRelease = doc.decode()?;
        let mut guarded = Guarded::from_object(&release, doc.path.display().to_string());
        guarded.status = dir::read_status(&self.dir, &guarded.key.namespace, &guarded.key.name)?;
        Ok(guarded)
    }

    fn find_release(&self, key: &NamespacedName) -> Result<Document, StoreError> {
        dir::find(&self.dir, RELEASE_KIND, &key.namespace, &key.name)?
            .ok_or_else(|| StoreError::ReleaseNotFound(key.to_string()))
    }
}

impl ReleaseStore for DirReleaseStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelState>, StoreError>> {
        async move {
            let mut models: Vec<ModelState> = self.models()?.into_iter().map(|(_, state)| state).collect();
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
            let _guard = self.write.lock().await;
            let (doc, _) = self
                .models()?
                .into_iter()
                .find(|(_, state)| &state.key == key)
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            let mut value = doc.value.clone();
            let spec = value
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            spec.insert("targetModels".into(), serde_json::to_value(targets).unwrap_or_default());
            let changed = Document { value, ..doc.clone() };
            let model: InferenceModel = changed.decode()?;
            api::validate::validate_model(&model).map_err(StoreError::Invalid)?;
            dir::rewrite(&doc, &changed.value)?;
            Ok(ModelState::from_model(&model, doc.path.display().to_string()))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

impl GuardedStore for DirReleaseStore {
    fn list_guarded(&self) -> BoxFuture<'_, Result<Vec<Guarded>, StoreError>> {
        async move {
            let mut releases = dir::scan(&self.dir, RELEASE_KIND)?
                .strict()?
                .iter()
                .map(|doc| self.guarded(doc))
                .collect::<Result<Vec<_>, _>>()?;
            sort_releases(&mut releases);
            Ok(releases)
        }
        .boxed()
    }

    fn create_guarded<'a>(&'a self, release: &'a CanaryRelease) -> BoxFuture<'a, Result<Guarded, StoreError>> {
        async move {
            let _guard = self.write.lock().await;
            let name = release.metadata.name.clone().unwrap_or_default();
            let namespace = release
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| dir::DEFAULT_NAMESPACE.to_owned());
            if dir::find(&self.dir, RELEASE_KIND, &namespace, &name)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "a guarded release named {name} exists already in {namespace}"
                )));
            }
            let path = self.dir.join(format!("canaryrelease-{name}.yaml"));
            if path.exists() {
                return Err(StoreError::Conflict(format!(
                    "{} exists already; choose another name",
                    path.display()
                )));
            }
            let mut release = release.clone();
            release.metadata.namespace = Some(namespace);
            // What the API server would set; orders past releases on the page.
            release.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            release.status = None;
            let yaml = serde_saphyr::to_string(&release).map_err(|e| StoreError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            dir::write_atomically(&path, &yaml)?;
            tracing::info!(release = %name, path = %path.display(), "created guarded release");
            Ok(Guarded::from_object(&release, path.display().to_string()))
        }
        .boxed()
    }

    fn set_control<'a>(
        &'a self,
        key: &'a NamespacedName,
        control: Control,
    ) -> BoxFuture<'a, Result<Guarded, StoreError>> {
        async move {
            let _guard = self.write.lock().await;
            let doc = self.find_release(key)?;
            let mut value = doc.value.clone();
            let spec = value
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| StoreError::Parse {
                    path: doc.path.display().to_string(),
                    message: format!("CanaryRelease {key} has no spec"),
                })?;
            spec.insert("control".into(), serde_json::to_value(control).unwrap_or_default());
            dir::rewrite(&doc, &value)?;
            self.guarded(&Document { value, ..doc })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: inferencemodel-sample
spec:
  criticality: Critical
  modelName: qwq
  poolRef:
    name: reasoning-pool
  targetModels:
  - name: qwq-32b
    weight: 100
  - name: qwq-32b-canary
    weight: 0
";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-dash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn apply_rewrites_only_the_model_document() {
        let dir = temp_dir("apply");
        let pods = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p  # keep me\n";
        std::fs::write(dir.join("all.yaml"), format!("{pods}---\n{MODEL}")).unwrap();
        std::fs::write(dir.join(".ignored.yaml"), MODEL.replace("qwq", "other")).unwrap();
        let store = DirReleaseStore::new(&dir);
        let models = store.list().await.unwrap();
        assert_eq!(models.len(), 1);
        let key = models[0].key.clone();
        assert_eq!(key.to_string(), "default/inferencemodel-sample");
        assert_eq!(models[0].model_name, "qwq");
        assert_eq!(models[0].shares(), [100.0, 0.0]);

        let targets = [
            Target {
                name: "qwq-32b".into(),
                weight: Some(90),
            },
            Target {
                name: "qwq-32b-canary".into(),
                weight: Some(10),
            },
        ];
        let after = store.apply(&key, &targets).await.unwrap();
        assert_eq!(after.targets, targets);
        let text = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
        assert!(text.starts_with(pods), "other documents keep their text: {text}");
        assert_eq!(store.list().await.unwrap()[0].targets, targets);
        assert!(!dir.join(".all.yaml.tmp").exists());
    }

    #[tokio::test]
    async fn invalid_or_unknown_models_are_refused() {
        let dir = temp_dir("invalid");
        std::fs::write(dir.join("model.yaml"), MODEL).unwrap();
        let store = DirReleaseStore::new(&dir);
        let key = NamespacedName {
            namespace: "default".into(),
            name: "inferencemodel-sample".into(),
        };
        let zero = [Target {
            name: "qwq-32b".into(),
            weight: Some(0),
        }];
        assert!(matches!(store.apply(&key, &zero).await, Err(StoreError::Invalid(_))));
        assert_eq!(std::fs::read_to_string(dir.join("model.yaml")).unwrap(), MODEL);
        let other = NamespacedName {
            namespace: "default".into(),
            name: "nope".into(),
        };
        assert!(matches!(store.apply(&other, &zero).await, Err(StoreError::NotFound(_))));
    }
}
