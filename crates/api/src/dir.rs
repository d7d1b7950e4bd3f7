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
            if !doc.raw.contains(kind) || doc.is_empty() {
                continue;
            }
            match serde_saphyr::from_str::<Value>(&doc.parse_text()) {
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
        value: serde_saphyr::from_str(&current.parse_text()).map_err(|_| moved())?,
    };
    if (current.kind(), current.namespace(), current.name()) != (doc.kind(), doc.namespace(), doc.name()) {
        return Err(moved());
    }
    let yaml = serde_saphyr::to_string(value).map_err(|e| DirError::Parse {
        path: doc.path.display().to_string(),
        index: doc.index,
        message: e.to_string(),
    })?;
    docs[doc.index] = docs[doc.index].replaced(&yaml);
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

/// One document of a YAML stream as it stands in the file: the stream's only splitter, shared by the gateway's
/// `dir` provider (which parses) and the writers here (which rewrite one document and keep the others verbatim), so
/// both count documents the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlDocument {
    /// 0-based line of the file where the document starts (its `---` marker, when it has one).
    pub first_line: usize,
    /// Its lines verbatim, marker first; the documents' `raw` texts concatenated give back the file.
    pub raw: String,
}

fn is_marker(line: &str, marker: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn is_blank(line: &str) -> bool {
    let line = line.trim_start();
    line.is_empty() || line.starts_with('#')
}

impl YamlDocument {
    /// What a YAML parser should read, line for line with `raw` (so parse errors point into the file): the `---`
    /// marker blanked (content after it on that line kept), directives before the content, the `...` end marker and
    /// everything after it blanked.
    pub fn parse_text(&self) -> String {
        let mut out = String::with_capacity(self.raw.len());
        let (mut ended, mut content) = (false, false);
        for (i, line) in self.raw.split_inclusive('\n').enumerate() {
            let bare = line.trim_end_matches(['\n', '\r']);
            if i == 0 && is_marker(bare, "---") {
                out.push_str("   ");
                out.push_str(&bare[3..]);
                content |= !is_blank(&bare[3..]);
            } else if is_marker(bare, "...") {
                ended = true;
            } else if !(ended || (bare.starts_with('%') && !content)) {
                out.push_str(bare);
                content |= !is_blank(bare);
            }
            out.push('\n');
        }
        out
    }

    /// Whether the document holds nothing but blank lines, comments, markers and directives.
    pub fn is_empty(&self) -> bool {
        self.parse_text().lines().all(is_blank)
    }

    /// This document with its content replaced by `yaml`, keeping its `---` marker line and anything from its `...`
    /// end marker on (directives of the next document may stand there).
    pub fn replaced(&self, yaml: &str) -> YamlDocument {
        let mut raw = String::new();
        let mut lines = self.raw.split_inclusive('\n').peekable();
        if let Some(first) = lines.peek()
            && is_marker(first, "---")
        {
            raw.push_str("---\n");
            lines.next();
        }
        raw.push_str(yaml);
        if !yaml.is_empty() && !yaml.ends_with('\n') {
            raw.push('\n');
        }
        let mut tail = lines.skip_while(|l| !is_marker(l, "...")).peekable();
        if tail.peek().is_some() {
            raw.extend(tail);
        }
        YamlDocument {
            first_line: self.first_line,
            raw,
        }
    }
}

/// Splits a YAML stream into its documents: a new one starts at every `---` line (`---`, or `--- ` followed by
/// content); a `...` line ends one. Empty documents are kept (see [`YamlDocument::is_empty`]), so positions are
/// stable between readers and writers.
pub fn split_documents(text: &str) -> Vec<YamlDocument> {
    let mut docs = vec![YamlDocument {
        first_line: 0,
        raw: String::new(),
    }];
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line, "---") {
            docs.push(YamlDocument {
                first_line: idx,
                raw: String::new(),
            });
        }
        if let Some(doc) = docs.last_mut() {
            doc.raw.push_str(line);
        }
    }
    docs
}

/// Concatenates documents back into a stream; the inverse of [`split_documents`].
pub fn join_documents(docs: &[YamlDocument]) -> String {
    let mut out = String::new();
    for doc in docs {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&doc.raw);
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
        let raw: Vec<&str> = docs.iter().map(|d| d.raw.as_str()).collect();
        assert_eq!(raw, ["a: 1 # keep\n", "---\nb: 2\n", "--- \nc: 3\n"]);
        assert_eq!(docs.iter().map(|d| d.first_line).collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(join_documents(&docs), text);
        let leading = split_documents("---\na: 1\n");
        assert!(leading[0].is_empty() && !leading[1].is_empty());
    }

    #[test]
    fn end_markers_directives_and_inline_content_are_read_as_yaml_reads_them() {
        let text = "%YAML 1.2\n--- {a: 1}\n...\n%TAG ! tag:x,2026:\n--- # second\nb: 2\n...\n# trailing\n";
        let docs = split_documents(text);
        assert_eq!(join_documents(&docs), text, "verbatim round trip");
        let parsed: Vec<String> = docs.iter().map(YamlDocument::parse_text).collect();
        assert!(docs[0].is_empty(), "a directive alone is no document: {parsed:?}");
        assert_eq!(
            parsed[1], "    {a: 1}\n\n\n",
            "content after `--- ` stays, the rest is blanked"
        );
        assert_eq!(parsed[2], "    # second\nb: 2\n\n\n", "columns are kept");
        // Rewriting keeps the marker and what follows the end marker.
        let second = docs[2].replaced("b: 3\n");
        assert_eq!(second.raw, "---\nb: 3\n...\n# trailing\n");
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
