//! Tests of the index and the snapshot it publishes.

use super::{dir::parse_documents, *};

pub(crate) use test_support::{SEED_MODEL, SEED_POOL};

/// A minimal Pod document as the demo writes them.
pub(crate) fn pod(name: &str, ip: &str) -> PodDoc {
    PodDoc {
        name: name.into(),
        ip: ip.into(),
        app: "qwq-32b".into(),
        ready: true,
        terminating: false,
    }
}

pub(crate) struct PodDoc {
    name: String,
    ip: String,
    app: String,
    ready: bool,
    terminating: bool,
}

impl PodDoc {
    pub(crate) fn app(mut self, app: &str) -> Self {
        self.app = app.into();
        self
    }

    pub(crate) fn unready(mut self) -> Self {
        self.ready = false;
        self
    }

    pub(crate) fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }

    pub(crate) fn yaml(&self) -> String {
        let deletion = if self.terminating {
            "  deletionTimestamp: \"2025-02-03T10:00:00Z\"\n"
        } else {
            ""
        };
        let status = if self.ready { "True" } else { "False" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n{deletion}  labels:\n    app: {}\nstatus:\n  podIP: {}\n  \
             conditions:\n  - type: Ready\n    status: \"{status}\"\n",
            self.name, self.app, self.ip
        )
    }
}

fn apply_yaml(datastore: &Datastore, docs: &[&str]) {
    let resources = docs.iter().flat_map(|doc| parse_documents(doc).unwrap());
    datastore.apply(resources.map(Event::Apply));
}

fn model_yaml(object: &str, model_name: &str, created: Option<&str>, targets: &str) -> String {
    let created = created
        .map(|t| format!("  creationTimestamp: \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: {object}\n\
         {created}spec:\n  modelName: {model_name}\n  poolRef:\n    name: reasoning-pool\n{targets}"
    )
}

fn endpoint_ids(snapshot: &Snapshot) -> Vec<(String, String)> {
    snapshot
        .endpoints()
        .iter()
        .map(|e| (e.id.as_str().to_owned(), e.pod.as_str().to_owned()))
        .collect()
}

#[test]
fn seed_pool_model_and_pods_make_a_snapshot() {
    let datastore = Datastore::new(None);
    let pods: Vec<String> = [
        pod("qwq-1", "127.0.0.12"),
        pod("qwq-0", "127.0.0.11"),
        pod("qwq-2", "127.0.0.13"),
    ]
    .iter()
    .map(PodDoc::yaml)
    .collect();
    let mut docs = vec![SEED_POOL, SEED_MODEL];
    docs.extend(pods.iter().map(String::as_str));
    apply_yaml(&datastore, &docs);

    let snapshot = datastore.snapshot();
    assert_eq!(snapshot.pool_error(), None);
    assert_eq!(
        snapshot.pool(),
        Some(&PoolView {
            name: "reasoning-pool".into(),
            namespace: "default".into(),
            target_port: 8000,
            failure_mode: FailureMode::FailClose,
            selector: BTreeMap::from([("app".into(), "qwq-32b".into())]),
            attach_to: Some("name: inference-gateway\nport: 8081\n".into()),
        })
    );
    assert_eq!(
        endpoint_ids(&snapshot),
        [
            ("127.0.0.11:8000".to_string(), "default/qwq-0".to_string()),
            ("127.0.0.12:8000".to_string(), "default/qwq-1".to_string()),
            ("127.0.0.13:8000".to_string(), "default/qwq-2".to_string()),
        ]
    );
    assert_eq!(
        snapshot.model("qwq"),
        Some(&ModelView {
            name: "qwq".into(),
            namespace: "default".into(),
            object_name: "inferencemodel-sample".into(),
            criticality: Criticality::Critical,
            targets: vec![TargetWeight {
                name: "qwq-32b".into(),
                weight: Some(100)
            }],
            mirror: None,
        })
    );
    assert_eq!(snapshot.models().count(), 1);
    assert_eq!(snapshot.model("qwq-32b"), None);
}

#[test]
fn only_ready_matching_live_pods_with_an_ip_are_endpoints() {
    let datastore = Datastore::new(None);
    let no_ip = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pending\n  labels:\n    app: qwq-32b\n";
    let other_ns = pod("elsewhere", "127.0.0.20")
        .yaml()
        .replace("  name: elsewhere\n", "  name: elsewhere\n  namespace: other\n");
    let docs = [
        pod("ready", "127.0.0.11").yaml(),
        pod("unready", "127.0.0.12").unready().yaml(),
        pod("other-app", "127.0.0.13").app("llama").yaml(),
        pod("terminating", "127.0.0.14").terminating().yaml(),
        no_ip.to_owned(),
        other_ns,
        SEED_POOL.to_owned(),
    ];
    apply_yaml(&datastore, &docs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        endpoint_ids(&datastore.snapshot()),
        [("127.0.0.11:8000".to_string(), "default/ready".to_string())]
    );
}

#[test]
fn pods_follow_readiness_changes_and_deletes() {
    let datastore = Datastore::new(None);
    apply_yaml(
        &datastore,
        &[
            SEED_POOL,
            &pod("a", "127.0.0.11").yaml(),
            &pod("b", "127.0.0.12").yaml(),
        ],
    );
    assert_eq!(datastore.snapshot().endpoints().len(), 2);

    apply_yaml(&datastore, &[&pod("a", "127.0.0.11").unready().yaml()]);
    assert_eq!(
        endpoint_ids(&datastore.snapshot()),
        [("127.0.0.12:8000".to_string(), "default/b".to_string())]
    );

    datastore.apply([Event::Delete(ResourceKey {
        kind: ResourceKind::Pod,
        namespace: "default".into(),
        name: "b".into(),
    })]);
    assert!(datastore.snapshot().endpoints().is_empty());
}

#[test]
fn ipv6_pod_ips_are_bracketed() {
    let datastore = Datastore::new(None);
    apply_yaml(&datastore, &[SEED_POOL, &pod("v6", "\"fd00::11\"").yaml()]);
    assert_eq!(datastore.snapshot().endpoints()[0].id.as_str(), "[fd00::11]:8000");
}

#[test]
fn the_oldest_inference_model_owns_a_model_name() {
    let datastore = Datastore::new(None);
    let target = |name: &str| format!("  targetModels:\n  - name: {name}\n");
    let docs = [
        SEED_POOL.to_owned(),
        model_yaml("newer", "qwq", Some("2025-02-02T00:00:00Z"), &target("from-newer")),
        model_yaml("undated", "qwq", None, &target("from-undated")),
        model_yaml("older", "qwq", Some("2025-02-01T00:00:00Z"), &target("from-older")),
    ];
    apply_yaml(&datastore, &docs.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot = datastore.snapshot();
    let model = snapshot.model("qwq").unwrap();
    assert_eq!(model.object_name, "older");
    assert_eq!(model.targets[0].name, "from-older");

    // Deleting the owner hands the name to the next oldest; timestamps beat undated objects.
    datastore.apply([Event::Delete(ResourceKey {
        kind: ResourceKind::Model,
        namespace: "default".into(),
        name: "older".into(),
    })]);
    assert_eq!(datastore.snapshot().model("qwq").unwrap().object_name, "newer");
}

#[test]
fn undated_duplicates_fall_back_to_name_order() {
    let datastore = Datastore::new(None);
    let docs = [
        SEED_POOL.to_owned(),
        model_yaml("b-model", "qwq", None, ""),
        model_yaml("a-model", "qwq", None, ""),
    ];
    apply_yaml(&datastore, &docs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(datastore.snapshot().model("qwq").unwrap().object_name, "a-model");
}

#[test]
fn model_without_targets_serves_itself_with_standard_criticality() {
    let datastore = Datastore::new(None);
    apply_yaml(&datastore, &[SEED_POOL, &model_yaml("plain", "qwq-32b", None, "")]);
    let snapshot = datastore.snapshot();
    let model = snapshot.model("qwq-32b").unwrap();
    assert_eq!(model.criticality, Criticality::Standard);
    assert_eq!(
        model.targets,
        [TargetWeight {
            name: "qwq-32b".into(),
            weight: None
        }]
    );
}

#[test]
fn models_of_other_pools_are_not_served() {
    let datastore = Datastore::new(None);
    let other = model_yaml("other", "llama", None, "").replace("name: reasoning-pool", "name: other-pool");
    apply_yaml(&datastore, &[SEED_POOL, SEED_MODEL, &other]);
    let names: Vec<String> = datastore.snapshot().models().map(|m| m.name.clone()).collect();
    assert_eq!(names, ["qwq"]);
}

#[test]
fn two_pools_without_a_name_is_an_error_state() {
    let second = SEED_POOL.replace("name: reasoning-pool", "name: chat-pool");
    let datastore = Datastore::new(None);
    apply_yaml(
        &datastore,
        &[SEED_POOL, &second, SEED_MODEL, &pod("a", "127.0.0.11").yaml()],
    );
    let snapshot = datastore.snapshot();
    assert_eq!(snapshot.pool(), None);
    assert!(snapshot.endpoints().is_empty());
    assert_eq!(snapshot.models().count(), 0);
    assert_eq!(
        snapshot.pool_error(),
        Some("several InferencePools found (default/chat-pool, default/reasoning-pool); pick one with --pool")
    );

    let named = Datastore::new(Some("reasoning-pool".into()));
    apply_yaml(
        &named,
        &[SEED_POOL, &second, SEED_MODEL, &pod("a", "127.0.0.11").yaml()],
    );
    let snapshot = named.snapshot();
    assert_eq!(snapshot.pool().map(|p| p.name.as_str()), Some("reasoning-pool"));
    assert_eq!(snapshot.endpoints().len(), 1);
    assert!(snapshot.model("qwq").is_some());
}

#[test]
fn missing_pools_are_reported() {
    let datastore = Datastore::new(None);
    assert_eq!(datastore.snapshot().pool_error(), Some("no InferencePool found"));
    let named = Datastore::new(Some("prod/reasoning-pool".into()));
    apply_yaml(&named, &[SEED_POOL]);
    assert_eq!(
        named.snapshot().pool_error(),
        Some("InferencePool prod/reasoning-pool not found")
    );
}

#[test]
fn failure_mode_comes_from_the_extension_ref() {
    let open = SEED_POOL.replace(
        "spec:\n",
        "spec:\n  extensionRef:\n    name: picker\n    failureMode: FailOpen\n",
    );
    let datastore = Datastore::new(None);
    apply_yaml(&datastore, &[&open]);
    assert_eq!(datastore.snapshot().pool().unwrap().failure_mode, FailureMode::FailOpen);
}

#[test]
fn subscribers_wake_only_on_real_changes() {
    let datastore = Datastore::new(None);
    let mut rx = datastore.subscribe();
    rx.borrow_and_update();
    apply_yaml(&datastore, &[SEED_POOL, &pod("a", "127.0.0.11").yaml()]);
    assert!(rx.has_changed().unwrap());
    let before = rx.borrow_and_update().clone();

    // Same objects again, and a pod outside the pool: the served view is unchanged.
    apply_yaml(
        &datastore,
        &[
            SEED_POOL,
            &pod("a", "127.0.0.11").yaml(),
            &pod("x", "127.0.0.99").app("other").yaml(),
        ],
    );
    assert!(!rx.has_changed().unwrap());
    assert!(Arc::ptr_eq(&before, &datastore.snapshot()));
}

#[test]
fn readiness_waits_for_the_first_sync() {
    let datastore = Datastore::new(None);
    assert!(!datastore.is_synced());
    datastore.mark_synced();
    assert!(datastore.clone().is_synced());
}

#[test]
fn a_reader_never_waits_for_a_writer() {
    let datastore = Datastore::new(None);
    apply_yaml(&datastore, &[SEED_POOL, &pod("a", "127.0.0.11").yaml()]);
    // A provider in the middle of an update holds the index lock; the request path must not need it.
    let writer = datastore.inner.index.lock().unwrap();
    let reader = datastore.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let endpoints = reader.snapshot().endpoints().len();
        let _ = done.send(endpoints);
    });
    let endpoints = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a snapshot was taken while a writer held the index");
    assert_eq!(endpoints, 1);
    drop(writer);
}
