//! The `dir` provider: a directory of Kubernetes YAML (InferencePool, InferenceModel and minimal `v1` Pod
//! documents) polled for changes and turned into datastore events.
//!
//! Every regular file directly in the directory whose name ends in `.yaml` or `.yml` is read; subdirectories are
//! not descended into, and dot-files are skipped so editor swap files and the temporary file of an atomic rewrite
//! (`.models.yaml.tmp`, `.models.yaml`) are never half-read. A file holds any number of `---`-separated documents;
//! documents of other kinds (the seed's Deployments and Services) are skipped.
//!
//! A file is accepted or rejected as a whole: if any document in it fails to parse or validate, the error is logged
//! with the file, line and field, and the file's last good objects stay in force until it is fixed. Polling (not
//! inotify) keeps this portable and lets one tokio interval drive it; a file whose size and mtime are unchanged is
//! not re-read unless it changed recently, because coarse mtimes can hide a same-size rewrite.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use api::{
    GROUP_X_K8S, Pod,
    v1alpha1::{InferenceModel, InferencePool},
    validate::{self, FieldError},
};
use serde::Deserialize;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Datastore, Event, Resource, ResourceKey};

/// How often the directory is polled by default: changes are seen well within a second.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);

/// A file modified this close to its last read is re-read even if its size and mtime look unchanged, since
/// filesystems with coarse timestamps (1–2 s) can hide a same-size rewrite within one tick.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

const API_VERSION_V1ALPHA1: &str = "inference.networking.x-k8s.io/v1alpha1";

/// Why the provider cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read directory {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
}

/// Why a document (and so its whole file) was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// Best-effort path of the offending field, e.g. `spec.targetModels[0].weight`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The provider's state: the last good objects of every file, and what it has told the datastore.
#[derive(Debug)]
pub struct DirProvider {
    dir: PathBuf,
    poll: Duration,
    files: BTreeMap<PathBuf, FileState>,
    emitted: BTreeMap<ResourceKey, Resource>,
    dir_failing: bool,
}

#[derive(Debug)]
struct FileState {
    len: u64,
    mtime: Option<SystemTime>,
    read_at: SystemTime,
    hash: u64,
    /// The last good contents; kept while the file is broken.
    objects: Vec<Resource>,
}

/// Serves `dir` into `datastore` until `cancel` fires; fails at once if the directory cannot be read.
pub async fn run_dir_provider(
    dir: PathBuf,
    datastore: Datastore,
    cancel: CancellationToken,
    poll: Duration,
) -> Result<(), DirError> {
    DirProvider::open(&dir, poll)?.serve(datastore, cancel).await;
    Ok(())
}

// === impl DirProvider ===

impl DirProvider {
    /// Checks that `dir` is a readable directory, so a bad `--dir` fails before anything starts.
    pub fn open(dir: &Path, poll: Duration) -> Result<Self, DirError> {
        let unreadable = |source| DirError::Unreadable {
            path: dir.to_owned(),
            source,
        };
        if !std::fs::metadata(dir).map_err(unreadable)?.is_dir() {
            return Err(DirError::NotADirectory { path: dir.to_owned() });
        }
        std::fs::read_dir(dir).map_err(unreadable)?;
        Ok(DirProvider {
            dir: dir.to_owned(),
            poll,
            files: BTreeMap::new(),
            emitted: BTreeMap::new(),
            dir_failing: false,
        })
    }

    /// [`Self::serve`] in the shape of the gateway's task set; the provider itself cannot fail once open.
    pub async fn run(self, datastore: Datastore, cancel: CancellationToken) -> anyhow::Result<()> {
        self.serve(datastore, cancel).await;
        Ok(())
    }

    /// Scans once, marks the datastore synced, then polls until cancelled.
    pub async fn serve(mut self, datastore: Datastore, cancel: CancellationToken) {
        datastore.apply(self.scan().await);
        datastore.mark_synced();
        tracing::info!(dir = %self.dir.display(), n_objects = self.emitted.len(), "dir provider synced");

        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.reset();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let events = self.scan().await;
            if !events.is_empty() {
                datastore.apply(events);
            }
        }
    }

    /// Reads what changed since the last scan and returns the events that bring the datastore up to date.
    pub async fn scan(&mut self) -> Vec<Event> {
        let paths = match self.list().await {
            Ok(paths) => {
                if std::mem::take(&mut self.dir_failing) {
                    tracing::info!(dir = %self.dir.display(), "directory readable again");
                }
                paths
            }
            Err(error) => {
                // Keep serving what we have: a directory that vanishes for a moment must not empty the pool.
                if !std::mem::replace(&mut self.dir_failing, true) {
                    tracing::error!(dir = %self.dir.display(), %error, "cannot list directory; keeping the last good state");
                }
                return Vec::new();
            }
        };

        let mut changed = false;
        let n_before = self.files.len();
        self.files.retain(|path, _| {
            let keep = paths.contains(path);
            if !keep {
                tracing::info!(file = %path.display(), "file removed");
            }
            keep
        });
        changed |= self.files.len() != n_before;
        for path in &paths {
            changed |= self.refresh(path).await;
        }
        if changed { self.diff() } else { Vec::new() }
    }

    async fn list(&self) -> io::Result<BTreeSet<PathBuf>> {
        let mut paths = BTreeSet::new();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, like a ConfigMap volume's `..data` links.
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => {
                    paths.insert(path);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(file = %path.display(), %error, "skipping unreadable entry")
                }
            }
        }
        Ok(paths)
    }

    /// Re-reads one file if it may have changed; returns whether its objects changed.
    async fn refresh(&mut self, path: &Path) -> bool {
        let Ok(meta) = tokio::fs::metadata(path).await else {
            // Removed between listing and now: the next scan drops it.
            return false;
        };
        let (len, mtime) = (meta.len(), meta.modified().ok());
        if let Some(state) = self.files.get(path)
            && state.len == len
            && state.mtime == mtime
            && !state.recently_modified()
        {
            return false;
        }

        let read_at = SystemTime::now();
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read file; keeping its last good state");
                return false;
            }
        };
        let hash = {
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            hasher.finish()
        };

        let state = match self.files.entry(path.to_owned()) {
            Entry::Occupied(entry) => {
                let state = entry.into_mut();
                (state.len, state.mtime, state.read_at) = (len, mtime, read_at);
                if state.hash == hash {
                    return false;
                }
                state.hash = hash;
                state
            }
            Entry::Vacant(entry) => entry.insert(FileState {
                len,
                mtime,
                read_at,
                hash,
                objects: Vec::new(),
            }),
        };

        match parse_documents(&text) {
            Ok(objects) => {
                tracing::debug!(file = %path.display(), n_objects = objects.len(), "file loaded");
                let changed = state.objects != objects;
                state.objects = objects;
                changed
            }
            Err(error) => {
                tracing::error!(
                    file = %path.display(),
                    line = error.line.map(|l| l as u64),
                    field = error.field.as_deref().unwrap_or(""),
                    error = %error.message,
                    "rejected invalid document; the file's last good objects stay in force",
                );
                false
            }
        }
    }

    /// Events that turn what the datastore was told into the union of every file's last good objects.
    fn diff(&mut self) -> Vec<Event> {
        let mut desired: BTreeMap<ResourceKey, (&Path, &Resource)> = BTreeMap::new();
        for (path, state) in &self.files {
            for object in &state.objects {
                match desired.entry(object.key()) {
                    Entry::Vacant(entry) => {
                        entry.insert((path, object));
                    }
                    Entry::Occupied(entry) => tracing::warn!(
                        object = %entry.key(),
                        file = %path.display(),
                        kept_from = %entry.get().0.display(),
                        "object defined in two files; keeping the first by file name",
                    ),
                }
            }
        }

        let mut events = Vec::new();
        for key in self.emitted.keys() {
            if !desired.contains_key(key) {
                events.push(Event::Delete(key.clone()));
            }
        }
        for (key, (_, object)) in &desired {
            if self.emitted.get(key) != Some(*object) {
                events.push(Event::Apply((*object).clone()));
            }
        }
        self.emitted = desired
            .into_iter()
            .map(|(key, (_, object))| (key, object.clone()))
            .collect();
        events
    }
}

impl FileState {
    fn recently_modified(&self) -> bool {
        self.mtime.is_none_or(|mtime| self.read_at < mtime + MTIME_GRANULARITY)
    }
}

// === parsing ===

/// Just enough of a document to dispatch on.
#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// Parses every document of a file into resources, or the first error; documents of other kinds are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, DocumentError> {
    let mut resources: Vec<Resource> = Vec::new();
    for doc in split_documents(text) {
        let Some(resource) = parse_document(&doc)? else {
            continue;
        };
        let key = resource.key();
        if resources.iter().any(|r| r.key() == key) {
            return Err(DocumentError {
                line: Some(doc.first_line()),
                field: Some("metadata.name".into()),
                message: format!("{key} is defined twice in this file"),
            });
        }
        resources.push(resource);
    }
    Ok(resources)
}

fn parse_document(doc: &Document) -> Result<Option<Resource>, DocumentError> {
    let meta: TypeMeta = decode(doc)?;
    let (Some(api_version), Some(kind)) = (meta.api_version.as_deref(), meta.kind.as_deref()) else {
        let field = if meta.api_version.is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        return Err(DocumentError {
            line: Some(doc.first_line()),
            field: Some(field.into()),
            message: "missing field; every document must be a Kubernetes object".into(),
        });
    };
    let resource = match (api_version, kind) {
        (API_VERSION_V1ALPHA1, "InferencePool") => {
            let pool: InferencePool = decode(doc)?;
            validate::validate_pool(&pool).map_err(|errors| invalid(doc, errors))?;
            Resource::Pool(Box::new(pool))
        }
        (API_VERSION_V1ALPHA1, "InferenceModel") => {
            let model: InferenceModel = decode(doc)?;
            validate::validate_model(&model).map_err(|errors| invalid(doc, errors))?;
            Resource::Model(Box::new(model))
        }
        ("v1", "Pod") => {
            let pod: Pod = decode(doc)?;
            if pod.metadata.name.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    doc,
                    vec![FieldError {
                        field: "metadata.name".into(),
                        message: "must be set".into(),
                    }],
                ));
            }
            Resource::Pod(Box::new(pod))
        }
        (api_version, kind) => {
            if api_version.starts_with(GROUP_X_K8S) && matches!(kind, "InferencePool" | "InferenceModel") {
                tracing::warn!(
                    api_version,
                    kind,
                    line = doc.first_line() as u64,
                    "unsupported version; skipping document"
                );
            } else {
                tracing::debug!(api_version, kind, "skipping document of another kind");
            }
            return Ok(None);
        }
    };
    Ok(Some(resource))
}

fn invalid(doc: &Document, errors: Vec<FieldError>) -> DocumentError {
    let mut errors = errors.into_iter();
    let first = errors.next();
    let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
    let mut message = first
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| "invalid".into());
    if !rest.is_empty() {
        message = format!("{message} (also {})", rest.join("; "));
    }
    DocumentError {
        line: Some(doc.first_line()),
        field: first.map(|e| e.field),
        message,
    }
}

fn decode<T: serde::de::DeserializeOwned>(doc: &Document) -> Result<T, DocumentError> {
    serde_saphyr::from_str(&doc.text).map_err(|error| {
        // The formatter leaves control characters to its caller; keep them out of single-line logs.
        let message: String = DefaultMessageFormatter
            .format_message(error.without_snippet())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let location = error.location().filter(|l| l.line() > 0);
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        let field = location.map(|l| {
            let parent = yaml_path_at(&doc.text, l.line() as usize, l.column() as usize, missing.is_some());
            match (parent.is_empty(), missing) {
                (true, Some(missing)) => missing.to_owned(),
                (false, Some(missing)) => format!("{parent}.{missing}"),
                (_, None) => parent,
            }
        });
        DocumentError {
            line: location.map(|l| doc.line_offset + l.line() as usize),
            field: field.filter(|f| !f.is_empty()).or_else(|| missing.map(str::to_owned)),
            message,
        }
    })
}

/// One `---`-separated document, with its position in the file.
struct Document {
    /// Lines of the file before this document's text.
    line_offset: usize,
    text: String,
}

impl Document {
    /// The 1-based file line of the document's first non-blank, non-comment line.
    fn first_line(&self) -> usize {
        let idx = self.text.lines().position(|l| !is_blank(l)).unwrap_or(0);
        self.line_offset + idx + 1
    }
}

fn is_blank(line: &str) -> bool {
    let line = line.trim_start();
    line.is_empty() || line.starts_with('#')
}

/// The file's documents (`api::dir::split_documents`, the splitter the dashboard's writers use too), as the text a
/// parser reads with line numbers kept so errors point into the file; empty ones are dropped.
fn split_documents(text: &str) -> Vec<Document> {
    api::dir::split_documents(text)
        .into_iter()
        .filter(|doc| !doc.is_empty())
        .map(|doc| Document {
            line_offset: doc.first_line,
            text: doc.parse_text(),
        })
        .collect()
}

/// The shape of one block-style YAML line: its `- ` markers and its `key:`.
struct LineShape<'a> {
    /// Column of the first non-space character.
    first: usize,
    dashes: Vec<usize>,
    /// Column, text and the column just after the colon.
    key: Option<(usize, &'a str, usize)>,
}

fn line_shape(line: &str) -> Option<LineShape<'_>> {
    let bytes = line.as_bytes();
    let mut pos = bytes.iter().take_while(|b| **b == b' ').count();
    if pos == bytes.len() || bytes[pos] == b'#' {
        return None;
    }
    let first = pos;
    let mut dashes = Vec::new();
    while bytes.get(pos) == Some(&b'-') && matches!(bytes.get(pos + 1), None | Some(b' ')) {
        dashes.push(pos);
        pos += 1;
        pos += bytes[pos..].iter().take_while(|b| **b == b' ').count();
    }
    let rest = &line[pos..];
    let key = match rest.as_bytes().first() {
        Some(q @ (b'"' | b'\'')) => rest[1..].find(*q as char).and_then(|end| {
            let after = &rest[end + 2..];
            after.starts_with(':').then(|| (pos, &rest[1..=end], pos + end + 3))
        }),
        Some(b'{' | b'[') | None => None,
        Some(_) => rest
            .char_indices()
            .find(|&(i, c)| c == ':' && matches!(rest.as_bytes().get(i + 1), None | Some(b' ')))
            .filter(|&(i, _)| !rest[..i].contains(" #"))
            .map(|(i, _)| (pos, rest[..i].trim_end(), pos + i + 1)),
    };
    Some(LineShape { first, dashes, key })
}

/// Best-effort dotted path (`spec.targetModels[0].weight`) of the node at a 1-based line and column of a
/// block-style document. With `containing_map`, a position on a key names the mapping that holds the key (serde
/// reports a missing field at the first key of the mapping it is missing from).
fn yaml_path_at(doc: &str, line: usize, column: usize, containing_map: bool) -> String {
    enum Segment<'a> {
        Key(&'a str),
        Index(usize),
    }

    let lines: Vec<&str> = doc.lines().collect();
    let Some(target) = line.checked_sub(1).filter(|t| *t < lines.len()) else {
        return String::new();
    };
    let col = column.saturating_sub(1);
    let mut segments = Vec::new();
    let (mut key_limit, mut dash_limit) = (col, col);

    for idx in (0..=target).rev() {
        let Some(shape) = line_shape(lines[idx]) else {
            continue;
        };
        if let Some((key_col, key, value_col)) = shape.key {
            let is_ancestor = if idx == target {
                col >= value_col || (col == key_col && !containing_map)
            } else {
                key_col < key_limit
            };
            if is_ancestor {
                segments.push(Segment::Key(key));
            }
            if is_ancestor || idx == target {
                (key_limit, dash_limit) = (key_col, key_col);
            }
        }
        for &dash in shape.dashes.iter().rev() {
            if dash < dash_limit {
                segments.push(Segment::Index(count_siblings(&lines[..idx], dash)));
                // A block sequence may sit at the same column as its parent key.
                (key_limit, dash_limit) = (dash + 1, dash);
            }
        }
        if key_limit == 0 && dash_limit == 0 {
            break;
        }
    }

    let mut path = String::new();
    for segment in segments.iter().rev() {
        match segment {
            Segment::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Index(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path
}

/// Items of the block sequence whose dashes sit at `dash`, above the current one.
fn count_siblings(lines: &[&str], dash: usize) -> usize {
    let mut n = 0;
    for shape in lines.iter().rev().filter_map(|l| line_shape(l)) {
        if shape.first < dash || (shape.first == dash && shape.dashes.first() != Some(&dash)) {
            break;
        }
        if shape.first == dash {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests;
