//! The dir-mode store: InferenceModels and CanaryReleases in a directory of Kubernetes YAML (the gateway's `--dir`),
//! read and written through [`api::dir`].
//!
//! A write replaces only its object's document; the other documents of the file keep their text, comments included.
//! A new CanaryRelease is a file of its own, `canaryrelease-<name>.yaml`. Every write goes to a dot-file beside its
//! target and is renamed over it, so the gateway's poller (which skips dot-files) sees the old or the new file, never
//! half of one; a document that moved since it was read is a [`Error::Conflict`]. A release's status is never in
//! the user's file: it lives in a `.status/` sidecar.

use std::path::{Path, PathBuf};

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Control},
    dir::{self, Document},
    v1alpha1::{InferenceModel, TargetModel},
};
use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{Error, ModelStore, ReleaseStore, Result, Stored};

const MODEL_KIND: &str = "InferenceModel";
const RELEASE_KIND: &str = "CanaryRelease";

/// InferenceModels and CanaryReleases read from and written to YAML files in one directory.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// Writes are serialised so two concurrent edits of one file cannot lose each other's change.
    write: Mutex<()>,
}

fn source(doc: &Document) -> String {
    doc.path.display().to_string()
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore {
            dir: dir.into(),
            write: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A release document with its status from the sidecar (never from the user's file).
    fn release(&self, doc: &Document) -> Result<Stored<CanaryRelease>> {
        let mut release: CanaryRelease = doc.decode()?;
        let key = NamespacedName::new(doc.namespace(), doc.name());
        release.status = dir::read_status(&self.dir, &key.namespace, &key.name)?;
        Ok(Stored {
            object: release,
            source: source(doc),
        })
    }
}

impl ModelStore for DirStore {
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<Stored<InferenceModel>>>> {
        async move {
            let mut models = dir::scan(&self.dir, MODEL_KIND)?
                .strict()?
                .iter()
                .map(|doc| {
                    Ok(Stored {
                        object: doc.decode::<InferenceModel>()?,
                        source: source(doc),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            models.sort_by_cached_key(|m| NamespacedName::of(&m.object.metadata));
            Ok(models)
        }
        .boxed()
    }

    fn get_model<'a>(&'a self, key: &'a NamespacedName) -> BoxFuture<'a, Result<Option<InferenceModel>>> {
        async move {
            let doc = dir::find(&self.dir, MODEL_KIND, &key.namespace, &key.name)?;
            Ok(doc.as_ref().map(Document::decode).transpose()?)
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
            let _guard = self.write.lock().await;
            // The document as it is now: only targetModels changes, the rest is re-rendered from what is read.
            let doc = dir::find(&self.dir, MODEL_KIND, &key.namespace, &key.name)?
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            let mut value = doc.value.clone();
            let spec = value
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            spec.insert("targetModels".into(), serde_json::to_value(targets).unwrap_or_default());
            let changed = Document { value, ..doc.clone() };
            let updated: InferenceModel = changed.decode()?;
            api::validate::validate_model(&updated).map_err(Error::Invalid)?;
            dir::rewrite(&doc, &changed.value)?;
            Ok(Stored {
                object: updated,
                source: source(&doc),
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

impl ReleaseStore for DirStore {
    fn list_releases(&self) -> BoxFuture<'_, Result<Vec<Stored<CanaryRelease>>>> {
        async move {
            dir::scan(&self.dir, RELEASE_KIND)?
                .strict()?
                .iter()
                .map(|doc| self.release(doc))
                .collect()
        }
        .boxed()
    }

    fn create_release<'a>(&'a self, release: &'a CanaryRelease) -> BoxFuture<'a, Result<Stored<CanaryRelease>>> {
        async move {
            let _guard = self.write.lock().await;
            let key = NamespacedName::of(&release.metadata);
            let (namespace, name) = (&key.namespace, &key.name);
            if dir::find(&self.dir, RELEASE_KIND, namespace, name)?.is_some() {
                return Err(Error::Conflict(format!(
                    "a guarded release named {name} exists already in {namespace}"
                )));
            }
            let path = self.dir.join(format!("canaryrelease-{name}.yaml"));
            if path.exists() {
                return Err(Error::Conflict(format!(
                    "{} exists already; choose another name",
                    path.display()
                )));
            }
            let mut release = release.clone();
            release.metadata.namespace = Some(namespace.clone());
            // What the API server would set; orders past releases on the page.
            release.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            release.status = None;
            let yaml = serde_saphyr::to_string(&release).map_err(|e| Error::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            dir::write_atomically(&path, &yaml)?;
            tracing::info!(release = %name, path = %path.display(), "created guarded release");
            Ok(Stored {
                object: release,
                source: path.display().to_string(),
            })
        }
        .boxed()
    }

    fn set_control<'a>(
        &'a self,
        key: &'a NamespacedName,
        control: Control,
    ) -> BoxFuture<'a, Result<Stored<CanaryRelease>>> {
        async move {
            let _guard = self.write.lock().await;
            let doc = dir::find(&self.dir, RELEASE_KIND, &key.namespace, &key.name)?
                .ok_or_else(|| Error::ReleaseNotFound(key.clone()))?;
            let mut value = doc.value.clone();
            let spec = value
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| Error::Parse {
                    path: source(&doc),
                    message: format!("CanaryRelease {key} has no spec"),
                })?;
            spec.insert("control".into(), serde_json::to_value(control).unwrap_or_default());
            dir::rewrite(&doc, &value)?;
            self.release(&Document { value, ..doc })
        }
        .boxed()
    }

    fn write_status<'a>(
        &'a self,
        key: &'a NamespacedName,
        status: &'a CanaryReleaseStatus,
    ) -> BoxFuture<'a, Result<()>> {
        async move { Ok(dir::write_status(&self.dir, &key.namespace, &key.name, status)?) }.boxed()
    }
}

#[cfg(test)]
mod tests;
