//! Reading and atomically rewriting Kubernetes YAML in a `--dir` directory, shared by the controller's and the
//! dashboard's dir modes.
//!
//! The gateway's dir poller reads every `*.yaml`/`*.yml` file directly in the directory and skips dot-files and
//! subdirectories. Every write here goes to a dot-file beside its target and is renamed over it, so a poller sees
//! the old file or the new one, never half of one. A rewrite replaces one document's text and keeps the others
//! byte for byte (comments included).
//!
//! Status that the controller observes is never written into a user's file: a CanaryRelease's status lives in a
//! sidecar, `<dir>/.status/canaryrelease.<namespace>.<name>.yaml`, which the poller skips because it is a dot-dir.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::canary::CanaryReleaseStatus;

/// The namespace a document without `metadata.namespace` lives in (as the gateway's dir provider assumes).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The dot-directory holding status sidecars.
pub const STATUS_DIR: &str = ".status";

/// Why a directory operation failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: document {index}: {message}")]
    Parse {
        path: String,
        index: usize,
        message: String,
    },
    /// The document to rewrite is no longer where it was read (the file changed in between).
    #[error("{path}: document {index} is no longer {kind} {namespace}/{name}; read it again")]
    Moved {
        path: String,
        index: usize,
        kind: String,
        namespace: String,
        name: String,
    },
}

impl DirError {
    fn io(path: &Path, error: &std::io::Error) -> DirError {
        DirError::Io {
            path: path.display().to_string(),
            message: error.to_string(),
        }
    }
}

/// One parsed document of a file: where it is and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub path: PathBuf,
    /// Position among the file's `---`-separated documents.
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `metadata.namespace`, or [`DEFAULT_NAMESPACE`] when absent.
    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Decodes the document as a typed object.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DirError> {
        serde_json::from_value(self.value.clone()).map_err(|e| DirError::Parse {
            path: self.path.display().to_string(),
            index: self.index,
            message: e.to_string(),
        })
    }
}

/// What a scan found: the documents of the wanted kind, and the documents that looked like it but did not parse
/// (reported, not fatal, so one broken file does not hide the others).
#[derive(Debug, Default)]
pub struct Scan {
    pub documents: Vec<Document>,
    pub errors: Vec<DirError>,
}

impl Scan {
    /// The documents, or the first parse error.
    pub fn strict(self) -> Result<Vec<Document>, DirError> {
        match self.errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(self.documents),
        }
    }
}

/// The YAML files the gateway's poller reads: regular files directly in `dir` ending in `.yaml`/`.yml`, not
/// starting with a dot, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DirError::io(dir, &e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every document of `kind` in the directory's YAML files. Documents are parsed only when their text mentions the
/// kind, so unrelated documents (Deployments, Services) cost nothing and cannot fail the scan.
pub fn scan(dir: &Path, kind: &str) -> Result<Scan, DirError> {
    let mut scan = Scan::default();
    for path in yaml_files(dir)? {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Removed between listing and reading: it is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DirError::io(&path, &e)),
        };
        for (index, doc) in split_documents(&text).iter().enumerate() {
            if !doc.contains(kind) {
                continue;
            }
            match serde_saphyr::from_str::<Value>(doc) {
                Ok(value) if value.get("kind").and_then(Value::as_str) == Some(kind) => {
                    scan.documents.push(Document {
                        path: path.clone(),
                        index,
                        value,
                    });
                }
                Ok(_) => {}
                Err(e) => scan.errors.push(DirError::Parse {
                    path: path.display().to_string(),
                    index,
                    message: e.to_string(),
                }),
            }
        }
    }
    Ok(scan)
}

/// The document of `kind` named `namespace/name`, if any (the first one, in file order).
pub fn find(dir: &Path, kind: &str, namespace: &str, name: &str) -> Result<Option<Document>, DirError> {
    Ok(scan(dir, kind)?
        .documents
        .into_iter()
        .find(|d| d.namespace() == namespace && d.name() == name))
}

/// Replaces `doc`'s document in its file with `value` rendered as YAML, keeping every other document's text, and
/// writes the file atomically. The file is read again first; if the document at that position is no longer the
/// same object, nothing is written and [`DirError::Moved`] is returned.
pub fn rewrite(doc: &Document, value: &impl Serialize) -> Result<(), DirError> {
    let text = std::fs::read_to_string(&doc.path).map_err(|e| DirError::io(&doc.path, &e))?;
    let mut docs = split_documents(&text);
    let moved = || DirError::Moved {
        path: doc.path.display().to_string(),
        index: doc.index,
        kind: doc.kind().to_string(),
        namespace: doc.namespace().to_string(),
        name: doc.name().to_string(),
    };
    let current = docs.get(doc.index).ok_or_else(moved)?;
    let current = Document {
        path: doc.path.clone(),
        index: doc.index,
        value: serde_saphyr::from_str(current).map_err(|_| moved())?,
    };
    if (current.kind(), current.namespace(), current.name()) != (doc.kind(), doc.namespace(), doc.name()) {
        return Err(moved());
    }
    docs[doc.index] = serde_saphyr::to_string(value).map_err(|e| DirError::Parse {
        path: doc.path.display().to_string(),
        index: doc.index,
        message: e.to_string(),
    })?;
    write_atomically(&doc.path, &join_documents(&docs))
}

/// Writes `.<name>.tmp` beside `path`, syncs it and renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), DirError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file.yaml");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| DirError::io(&tmp, &e))?;
    file.write_all(text.as_bytes()).map_err(|e| DirError::io(&tmp, &e))?;
    file.sync_all().map_err(|e| DirError::io(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| DirError::io(path, &e))
}

/// Splits a YAML stream at `---` lines, keeping each document's text verbatim (without the marker line).
pub fn split_documents(text: &str) -> Vec<String> {
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

/// Joins documents with `---` lines; the inverse of [`split_documents`].
pub fn join_documents(docs: &[String]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(doc);
        if !doc.is_empty() && !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Where the status of CanaryRelease `namespace/name` is kept in dir mode.
pub fn status_path(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(STATUS_DIR)
        .join(format!("canaryrelease.{namespace}.{name}.yaml"))
}

/// The status sidecar of CanaryRelease `namespace/name`, or `None` when the controller has not written one yet.
pub fn read_status(dir: &Path, namespace: &str, name: &str) -> Result<Option<CanaryReleaseStatus>, DirError> {
    let path = status_path(dir, namespace, name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DirError::io(&path, &e)),
    };
    serde_saphyr::from_str(&text).map(Some).map_err(|e| DirError::Parse {
        path: path.display().to_string(),
        index: 0,
        message: e.to_string(),
    })
}

/// Writes the status sidecar of CanaryRelease `namespace/name` atomically, creating `.status/` when needed.
pub fn write_status(dir: &Path, namespace: &str, name: &str, status: &CanaryReleaseStatus) -> Result<(), DirError> {
    let path = status_path(dir, namespace, name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DirError::io(parent, &e))?;
    }
    let text = serde_saphyr::to_string(status).map_err(|e| DirError::Parse {
        path: path.display().to_string(),
        index: 0,
        message: e.to_string(),
    })?;
    write_atomically(&path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::Phase;

    const MODEL: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: qwq
spec:
  modelName: qwq
  poolRef:
    name: pool
  targetModels:
  - name: qwq-32b
    weight: 100
";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-api-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn documents_split_and_join_back_verbatim() {
        let text = "a: 1 # keep\n---\nb: 2\n--- \nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs, ["a: 1 # keep\n", "b: 2\n", "c: 3\n"]);
        assert_eq!(join_documents(&docs), "a: 1 # keep\n---\nb: 2\n---\nc: 3\n");
        assert_eq!(split_documents("---\na: 1\n"), ["a: 1\n"]);
    }

    #[test]
    fn scan_skips_dot_files_other_kinds_and_reports_broken_documents() {
        let dir = temp_dir("scan");
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n";
        std::fs::write(dir.join("all.yaml"), format!("{pod}---\n{MODEL}")).unwrap();
        std::fs::write(dir.join(".hidden.yaml"), MODEL.replace("qwq", "hidden")).unwrap();
        std::fs::write(dir.join("notes.txt"), MODEL).unwrap();
        std::fs::write(dir.join("broken.yml"), "kind: InferenceModel\nmetadata: [\n").unwrap();
        let scan = scan(&dir, "InferenceModel").unwrap();
        assert_eq!(scan.documents.len(), 1);
        let doc = &scan.documents[0];
        assert_eq!(
            (doc.kind(), doc.namespace(), doc.name(), doc.index),
            ("InferenceModel", "default", "qwq", 1)
        );
        assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
        assert!(scan.errors[0].to_string().contains("broken.yml"));
        assert!(find(&dir, "InferenceModel", "default", "qwq").unwrap().is_some());
        assert!(find(&dir, "InferenceModel", "other", "qwq").unwrap().is_none());
    }

    #[test]
    fn rewrite_keeps_other_documents_and_refuses_a_moved_document() {
        let dir = temp_dir("rewrite");
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p  # keep me\n";
        let path = dir.join("all.yaml");
        std::fs::write(&path, format!("{pod}---\n{MODEL}")).unwrap();
        let doc = find(&dir, "InferenceModel", "default", "qwq").unwrap().unwrap();
        let mut value = doc.value.clone();
        value["spec"]["targetModels"][0]["weight"] = 7.into();
        rewrite(&doc, &value).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(pod), "{text}");
        let again = find(&dir, "InferenceModel", "default", "qwq").unwrap().unwrap();
        assert_eq!(again.value["spec"]["targetModels"][0]["weight"], 7);
        assert!(!dir.join(".all.yaml.tmp").exists());

        std::fs::write(&path, MODEL).unwrap();
        assert!(matches!(rewrite(&doc, &value), Err(DirError::Moved { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), MODEL);
    }

    #[test]
    fn status_sidecars_round_trip_in_a_dot_dir() {
        let dir = temp_dir("status");
        assert_eq!(read_status(&dir, "default", "r").unwrap(), None);
        let status = CanaryReleaseStatus {
            phase: Phase::Progressing,
            step: Some(1),
            canary_percent: 5,
            message: "holding".into(),
            ..CanaryReleaseStatus::default()
        };
        write_status(&dir, "default", "r", &status).unwrap();
        assert_eq!(
            status_path(&dir, "default", "r"),
            dir.join(".status/canaryrelease.default.r.yaml")
        );
        assert_eq!(read_status(&dir, "default", "r").unwrap(), Some(status));
        assert!(
            yaml_files(&dir).unwrap().is_empty(),
            "the sidecar is invisible to the poller"
        );
    }
}
