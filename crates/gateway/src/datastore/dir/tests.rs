//! Tests of the `dir` provider: parsing, per-file error handling and change detection.

use std::{path::PathBuf, time::Duration};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::datastore::{
    Snapshot,
    tests::{SEED_MODEL, SEED_POOL, pod},
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("switchyard-dir-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The seed's pool and model, a Deployment to skip, and three simulator pods, in one multi-document file.
fn seed_file() -> String {
    let pods: Vec<String> = (0..3)
        .map(|i| pod(&format!("qwq-{i}"), &format!("127.0.0.{}", 11 + i)).yaml())
        .collect();
    format!(
        "# the seed, as applied\n{SEED_POOL}---\n{SEED_MODEL}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  \
         name: qwq-32b\nspec:\n  replicas: 3\n---\n{}",
        pods.join("---\n")
    )
}

async fn scan_into(provider: &mut DirProvider, datastore: &Datastore) {
    datastore.apply(provider.scan().await);
}

fn weights(snapshot: &Snapshot) -> Vec<(String, Option<u32>)> {
    snapshot
        .model("qwq")
        .map(|m| m.targets.iter().map(|t| (t.name.clone(), t.weight)).collect())
        .unwrap_or_default()
}

fn parse_error(text: &str) -> DocumentError {
    parse_documents(text).expect_err("document should be rejected")
}

// === parsing ===

#[test]
fn multi_document_files_yield_every_known_object() {
    let resources = parse_documents(&seed_file()).unwrap();
    let keys: Vec<String> = resources.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "InferencePool default/reasoning-pool",
            "InferenceModel default/inferencemodel-sample",
            "Pod default/qwq-0",
            "Pod default/qwq-1",
            "Pod default/qwq-2",
        ]
    );
}

#[test]
fn empty_documents_and_directives_are_ignored() {
    let text = format!("%YAML 1.2\n---\n# nothing here\n---\n{SEED_POOL}...\n---\n\n");
    assert_eq!(parse_documents(&text).unwrap().len(), 1);
    assert_eq!(parse_documents("").unwrap(), []);
}

#[test]
fn wrong_type_names_the_field_and_line() {
    let text = format!("{SEED_POOL}---\n{}", SEED_MODEL.replace("weight: 100", "weight: lots"));
    let err = parse_error(&text);
    assert_eq!(err.field.as_deref(), Some("spec.targetModels[0].weight"));
    // Lines 1-16 are the pool, 17 the separator, 18-20 the model's comment, 33 its first weight.
    assert_eq!(err.line, Some(33));
    assert_eq!(text.lines().nth(32), Some("    weight: lots"));
}

#[test]
fn later_sequence_items_are_indexed() {
    let text = SEED_MODEL.replace(
        "    weight: 100\n",
        "    weight: 50\n  - name: qwq-32b-canary\n    weight: nope\n",
    );
    assert_eq!(parse_error(&text).field.as_deref(), Some("spec.targetModels[1].weight"));
}

#[test]
fn missing_required_field_is_named_with_its_parent() {
    let err = parse_error(&SEED_POOL.replace("  selector:\n    app: qwq-32b\n", ""));
    assert_eq!(err.field.as_deref(), Some("spec.selector"));
    assert!(err.message.contains("selector"), "{err}");

    let err = parse_error(&SEED_MODEL.replace("  - name: qwq-32b\n    weight: 100\n", "  - weight: 100\n"));
    assert_eq!(err.field.as_deref(), Some("spec.targetModels[0].name"));
}

#[test]
fn failed_validation_names_the_field() {
    let err = parse_error(&SEED_MODEL.replace("weight: 100", "weight: -5"));
    assert_eq!(err.field.as_deref(), Some("spec.targetModels[0].weight"));
    // The document starts after the example's three comment lines.
    assert_eq!(err.line, Some(4));
    assert!(err.message.contains("between 0 and 1000000"), "{err}");

    let err = parse_error(&SEED_POOL.replace("targetPortNumber: 8000", "targetPortNumber: 0"));
    assert_eq!(err.field.as_deref(), Some("spec.targetPortNumber"));
}

#[test]
fn yaml_syntax_errors_carry_a_line() {
    let text = format!(
        "{SEED_POOL}---\n{}",
        SEED_MODEL.replace("  poolRef:\n", "  poolRef: {name: [\n")
    );
    let err = parse_error(&text);
    assert!(err.line.is_some_and(|line| line > SEED_POOL.lines().count()), "{err}");
}

#[test]
fn documents_must_say_what_they_are() {
    assert_eq!(
        parse_error("metadata:\n  name: x\n").field.as_deref(),
        Some("apiVersion")
    );
    assert_eq!(
        parse_error("apiVersion: v1\nmetadata:\n  name: x\n").field.as_deref(),
        Some("kind")
    );
}

#[test]
fn unknown_kinds_are_skipped() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: qwq\nspec:\n  ports: [{port: 8000}]\n";
    assert_eq!(parse_documents(text).unwrap(), []);
}

#[test]
fn an_object_twice_in_one_file_is_rejected() {
    let err = parse_error(&format!("{SEED_POOL}---\n{SEED_POOL}"));
    assert!(err.message.contains("defined twice"), "{err}");
}

#[test]
fn error_display_reads_like_a_compiler_message() {
    let err = DocumentError {
        line: Some(7),
        field: Some("spec.selector".into()),
        message: "missing field `selector`".into(),
    };
    assert_eq!(err.to_string(), "line 7: spec.selector: missing field `selector`");
}

// === provider ===

#[tokio::test]
async fn seed_directory_is_served_and_synced() {
    let dir = TempDir::new("seed");
    dir.write("seed.yaml", &seed_file());
    dir.write("notes.txt", "not yaml at all: [");
    let datastore = Datastore::new(None);
    let cancel = CancellationToken::new();
    let provider = tokio::spawn(run_dir_provider(
        dir.0.clone(),
        datastore.clone(),
        cancel.clone(),
        DEFAULT_POLL,
    ));

    let mut rx = datastore.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.pool().is_some()))
        .await
        .unwrap()
        .unwrap();
    let snapshot = datastore.snapshot();
    let ids: Vec<&str> = snapshot.endpoints().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["127.0.0.11:8000", "127.0.0.12:8000", "127.0.0.13:8000"]);
    assert_eq!(weights(&snapshot), [("qwq-32b".to_string(), Some(100))]);
    assert!(datastore.is_synced());

    cancel.cancel();
    provider.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_missing_directory_fails_fast_naming_the_path() {
    let err = DirProvider::open(Path::new("/nope/switchyard"), DEFAULT_POLL).unwrap_err();
    assert!(err.to_string().contains("/nope/switchyard"), "{err}");

    let dir = TempDir::new("not-a-dir");
    let file = dir.write("pool.yaml", SEED_POOL);
    let err = run_dir_provider(
        file.clone(),
        Datastore::new(None),
        CancellationToken::new(),
        DEFAULT_POLL,
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), format!("{} is not a directory", file.display()));
}

#[tokio::test]
async fn a_broken_file_keeps_its_last_good_objects() {
    let dir = TempDir::new("broken");
    dir.write("pool.yaml", SEED_POOL);
    dir.write("model.yaml", SEED_MODEL);
    let datastore = Datastore::new(None);
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    scan_into(&mut provider, &datastore).await;
    assert_eq!(weights(&datastore.snapshot()), [("qwq-32b".to_string(), Some(100))]);

    // A second, valid document in the same file must not get in either: the file is taken whole or not at all.
    let canary = SEED_MODEL
        .replace("inferencemodel-sample", "canary")
        .replace("modelName: qwq", "modelName: qwq-canary");
    dir.write(
        "model.yaml",
        &format!("{}---\n{canary}", SEED_MODEL.replace("weight: 100", "weight: x")),
    );
    assert_eq!(provider.scan().await, []);
    assert_eq!(weights(&datastore.snapshot()), [("qwq-32b".to_string(), Some(100))]);
    assert!(datastore.snapshot().model("qwq-canary").is_none());

    dir.write("model.yaml", &SEED_MODEL.replace("weight: 100", "weight: 7"));
    scan_into(&mut provider, &datastore).await;
    assert_eq!(weights(&datastore.snapshot()), [("qwq-32b".to_string(), Some(7))]);
}

#[tokio::test]
async fn a_file_broken_from_the_start_contributes_nothing() {
    let dir = TempDir::new("broken-start");
    dir.write("pool.yaml", SEED_POOL);
    dir.write("model.yaml", &SEED_MODEL.replace("modelName: qwq", "modelName: \"\""));
    let datastore = Datastore::new(None);
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    scan_into(&mut provider, &datastore).await;
    let snapshot = datastore.snapshot();
    assert!(snapshot.pool().is_some());
    assert_eq!(snapshot.models().count(), 0);
}

#[tokio::test]
async fn deleting_a_file_deletes_its_objects() {
    let dir = TempDir::new("delete");
    dir.write("pool.yaml", SEED_POOL);
    let pods = dir.write(
        "pods.yml",
        &format!(
            "{}---\n{}",
            pod("a", "127.0.0.11").yaml(),
            pod("b", "127.0.0.12").yaml()
        ),
    );
    let datastore = Datastore::new(None);
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    scan_into(&mut provider, &datastore).await;
    assert_eq!(datastore.snapshot().endpoints().len(), 2);

    std::fs::remove_file(pods).unwrap();
    let events = provider.scan().await;
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Event::Delete(key) if key.kind == super::super::ResourceKind::Pod))
    );
    datastore.apply(events);
    assert!(datastore.snapshot().endpoints().is_empty());
    assert!(datastore.snapshot().pool().is_some());
}

#[tokio::test]
async fn removing_a_document_deletes_only_that_object() {
    let dir = TempDir::new("remove-doc");
    dir.write("all.yaml", &seed_file());
    let datastore = Datastore::new(None);
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    scan_into(&mut provider, &datastore).await;
    assert_eq!(datastore.snapshot().endpoints().len(), 3);

    dir.write(
        "all.yaml",
        &seed_file().replace("name: qwq-1\n", "name: qwq-1\n  namespace: elsewhere\n"),
    );
    let events = provider.scan().await;
    assert_eq!(events.len(), 2, "{events:?}");
    datastore.apply(events);
    let pods: Vec<String> = datastore
        .snapshot()
        .endpoints()
        .iter()
        .map(|e| e.pod.as_str().to_owned())
        .collect();
    assert_eq!(pods, ["default/qwq-0", "default/qwq-2"]);
}

#[tokio::test]
async fn unchanged_files_produce_no_events() {
    let dir = TempDir::new("unchanged");
    dir.write("all.yaml", &seed_file());
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    assert_eq!(provider.scan().await.len(), 5);
    assert_eq!(provider.scan().await, []);
    // Rewritten with identical content: read again (recent mtime) but nothing to report.
    dir.write("all.yaml", &seed_file());
    assert_eq!(provider.scan().await, []);
}

#[tokio::test]
async fn an_object_in_two_files_survives_the_removal_of_one() {
    let dir = TempDir::new("two-files");
    let first = dir.write("a.yaml", SEED_POOL);
    dir.write(
        "b.yaml",
        &SEED_POOL.replace("targetPortNumber: 8000", "targetPortNumber: 9000"),
    );
    let datastore = Datastore::new(None);
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    scan_into(&mut provider, &datastore).await;
    assert_eq!(datastore.snapshot().pool().unwrap().target_port, 8000);

    std::fs::remove_file(first).unwrap();
    scan_into(&mut provider, &datastore).await;
    assert_eq!(datastore.snapshot().pool().unwrap().target_port, 9000);
}

#[tokio::test]
async fn dot_files_and_other_extensions_are_ignored() {
    let dir = TempDir::new("ignored");
    dir.write(".pool.yaml", SEED_POOL);
    dir.write("pool.yaml.tmp", SEED_POOL);
    std::fs::create_dir(dir.0.join("nested.yaml")).unwrap();
    let mut provider = DirProvider::open(&dir.0, DEFAULT_POLL).unwrap();
    assert_eq!(provider.scan().await, []);
}

#[tokio::test]
async fn a_weight_edit_is_seen_by_the_running_provider() {
    let dir = TempDir::new("edit");
    dir.write("seed.yaml", &seed_file());
    let datastore = Datastore::new(None);
    let cancel = CancellationToken::new();
    let provider = tokio::spawn(run_dir_provider(
        dir.0.clone(),
        datastore.clone(),
        cancel.clone(),
        Duration::from_millis(20),
    ));
    let mut rx = datastore.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.model("qwq").is_some()))
        .await
        .unwrap()
        .unwrap();

    // The canary release: same file, new split.
    let canary = seed_file().replace(
        "    weight: 100\n",
        "    weight: 90\n  - name: qwq-32b-canary\n    weight: 10\n",
    );
    dir.write("seed.yaml", &canary);
    let seen = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| weights(s).len() == 2)).await;
    assert!(seen.is_ok(), "weight change not seen within the deadline");
    assert_eq!(
        weights(&datastore.snapshot()),
        [
            ("qwq-32b".to_string(), Some(90)),
            ("qwq-32b-canary".to_string(), Some(10))
        ]
    );

    cancel.cancel();
    provider.await.unwrap().unwrap();
}
