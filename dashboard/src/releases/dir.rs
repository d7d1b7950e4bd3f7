//! The dir-mode [`ReleaseStore`]: InferenceModels in a directory of Kubernetes YAML (the gateway's `--dir`).
//!
//! Applying rewrites only the InferenceModel's document; the other documents of the file keep their text. The new
//! file is written to a dot-file beside it and renamed over the original, so the gateway's poller (which skips
//! dot-files) sees either the old or the new file, never a half-written one.

use std::path::{Path, PathBuf};

use api::v1alpha1::InferenceModel;
use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{ModelKey, ModelState, ReleaseStore, StoreError, Target};

/// InferenceModels read from and written to YAML files in one directory.
#[derive(Debug)]
pub struct DirReleaseStore {
    dir: PathBuf,
    /// Applies are serialised so two concurrent edits of one file cannot lose each other's change.
    write: Mutex<()>,
}

/// One InferenceModel found in a file: which document it is.
struct Found {
    path: PathBuf,
    docs: Vec<String>,
    index: usize,
    value: Value,
}

impl DirReleaseStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirReleaseStore {
        DirReleaseStore {
            dir: dir.into(),
            write: Mutex::new(()),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, &e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                p.is_file() && !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every InferenceModel document of the directory, with its file and position.
    fn scan(&self) -> Result<Vec<Found>, StoreError> {
        let mut found = Vec::new();
        for path in self.files()? {
            let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, &e))?;
            let docs = split_documents(&text);
            for (index, doc) in docs.iter().enumerate() {
                if doc.trim().is_empty() || !doc.contains("InferenceModel") {
                    continue;
                }
                let value: Value = serde_saphyr::from_str(doc).map_err(|e| StoreError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                if value.get("kind").and_then(Value::as_str) == Some("InferenceModel") {
                    found.push(Found {
                        path: path.clone(),
                        docs: docs.clone(),
                        index,
                        value,
                    });
                }
            }
        }
        Ok(found)
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn state(found: &Found) -> Result<ModelState, StoreError> {
    let model: InferenceModel = serde_json::from_value(found.value.clone()).map_err(|e| StoreError::Parse {
        path: found.path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(ModelState::from_model(&model, found.path.display().to_string()))
}

impl ReleaseStore for DirReleaseStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ModelState>, StoreError>> {
        async move {
            let mut models = self.scan()?.iter().map(state).collect::<Result<Vec<_>, _>>()?;
            models.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(models)
        }
        .boxed()
    }

    fn apply<'a>(&'a self, key: &'a ModelKey, targets: &'a [Target]) -> BoxFuture<'a, Result<ModelState, StoreError>> {
        async move {
            let _guard = self.write.lock().await;
            let mut found = self
                .scan()?
                .into_iter()
                .find(|f| state(f).is_ok_and(|s| &s.key == key))
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            let spec = found
                .value
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            spec.insert("targetModels".into(), serde_json::to_value(targets).unwrap_or_default());
            let model: InferenceModel = serde_json::from_value(found.value.clone()).map_err(|e| StoreError::Parse {
                path: found.path.display().to_string(),
                message: e.to_string(),
            })?;
            api::validate::validate_model(&model).map_err(StoreError::Invalid)?;
            let yaml = serde_saphyr::to_string(&found.value).map_err(|e| StoreError::Parse {
                path: found.path.display().to_string(),
                message: e.to_string(),
            })?;
            found.docs[found.index] = yaml;
            write_atomically(&found.path, &join_documents(&found.docs))?;
            state(&found)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// Writes `.<name>.tmp` beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> Result<(), StoreError> {
    use std::io::Write as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.yaml");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, &e))?;
    file.write_all(text.as_bytes()).map_err(|e| io_error(&tmp, &e))?;
    file.sync_all().map_err(|e| io_error(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, &e))
}

/// Splits a YAML stream at `---` lines, keeping each document's text verbatim (without the marker line).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
        }
    }
    if docs.len() > 1 && docs[0].trim().is_empty() {
        docs.remove(0);
    }
    docs
}

fn join_documents(docs: &[String]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
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
        let key = ModelKey {
            namespace: "default".into(),
            name: "inferencemodel-sample".into(),
        };
        let zero = [Target {
            name: "qwq-32b".into(),
            weight: Some(0),
        }];
        assert!(matches!(store.apply(&key, &zero).await, Err(StoreError::Invalid(_))));
        assert_eq!(std::fs::read_to_string(dir.join("model.yaml")).unwrap(), MODEL);
        let other = ModelKey {
            namespace: "default".into(),
            name: "nope".into(),
        };
        assert!(matches!(store.apply(&other, &zero).await, Err(StoreError::NotFound(_))));
    }
}
