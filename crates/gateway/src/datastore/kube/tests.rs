//! Tests of the kube provider's index: validation, relists and pod selection, without an API server.

use super::*;
use crate::datastore::tests::{SEED_MODEL, SEED_POOL, pod};

fn pool() -> InferencePool {
    serde_saphyr::from_str(SEED_POOL).unwrap()
}

fn model() -> InferenceModel {
    serde_saphyr::from_str(SEED_MODEL).unwrap()
}

fn seed_pod(name: &str, ip: &str) -> Pod {
    serde_saphyr::from_str(&pod(name, ip).yaml()).unwrap()
}

/// Runs a full listing of each kind through the index, as the three watchers do at start.
fn synced(pools: Vec<InferencePool>, models: Vec<InferenceModel>, pods: Vec<Pod>) -> (KubeIndex, Vec<Event>) {
    let mut index = KubeIndex::default();
    let mut events = Vec::new();
    let mut feed = |update| events.extend(index.handle(update));
    feed(Update::Pool(WatchEvent::Init));
    pools
        .into_iter()
        .for_each(|p| feed(Update::Pool(WatchEvent::InitApply(p))));
    feed(Update::Pool(WatchEvent::InitDone));
    feed(Update::Model(WatchEvent::Init));
    models
        .into_iter()
        .for_each(|m| feed(Update::Model(WatchEvent::InitApply(m))));
    feed(Update::Model(WatchEvent::InitDone));
    feed(Update::Pod(WatchEvent::Init));
    pods.into_iter()
        .for_each(|p| feed(Update::Pod(WatchEvent::InitApply(p))));
    feed(Update::Pod(WatchEvent::InitDone));
    (index, events)
}

fn keys(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Apply(r) => format!("apply {}", r.key()),
            Event::Delete(k) => format!("delete {k}"),
        })
        .collect()
}

#[test]
fn full_sync_emits_pool_model_and_selected_pods_only() {
    let mut other = seed_pod("other", "127.0.0.99");
    other.metadata.labels = Some([("app".to_owned(), "else".to_owned())].into());
    let (index, events) = synced(
        vec![pool()],
        vec![model()],
        vec![seed_pod("qwq-0", "127.0.0.11"), other],
    );
    assert!(index.synced());
    assert_eq!(
        keys(&events),
        [
            "apply InferencePool default/reasoning-pool",
            "apply InferenceModel default/inferencemodel-sample",
            "apply Pod default/qwq-0",
        ]
    );
}

#[test]
fn invalid_update_keeps_the_last_good_version() {
    let (mut index, _) = synced(vec![pool()], vec![model()], vec![]);
    let mut bad = model();
    bad.spec.target_models[0].weight = Some(0);
    assert_eq!(
        keys(&index.handle(Update::Model(WatchEvent::Apply(bad.clone())))),
        Vec::<String>::new()
    );
    // A relist that still holds the invalid version keeps the good one too.
    let mut events = index.handle(Update::Model(WatchEvent::Init));
    events.extend(index.handle(Update::Model(WatchEvent::InitApply(bad))));
    events.extend(index.handle(Update::Model(WatchEvent::InitDone)));
    assert!(events.is_empty(), "{:?}", keys(&events));
    assert_eq!(
        index.models.values().next().unwrap().spec.target_models[0].weight,
        Some(100)
    );
}

#[test]
fn relist_deletes_what_vanished_while_the_watch_was_down() {
    let (mut index, _) = synced(
        vec![pool()],
        vec![model()],
        vec![seed_pod("qwq-0", "127.0.0.11"), seed_pod("qwq-1", "127.0.0.12")],
    );
    let mut events = index.handle(Update::Pod(WatchEvent::Init));
    events.extend(index.handle(Update::Pod(WatchEvent::InitApply(seed_pod("qwq-1", "127.0.0.12")))));
    events.extend(index.handle(Update::Pod(WatchEvent::InitDone)));
    assert_eq!(keys(&events), ["delete Pod default/qwq-0", "apply Pod default/qwq-1"]);

    let mut events = index.handle(Update::Model(WatchEvent::Init));
    events.extend(index.handle(Update::Model(WatchEvent::InitDone)));
    assert_eq!(keys(&events), ["delete InferenceModel default/inferencemodel-sample"]);
}

#[test]
fn changing_the_pool_selector_reselects_pods() {
    let (mut index, _) = synced(vec![pool()], vec![], vec![seed_pod("qwq-0", "127.0.0.11")]);
    let mut moved = pool();
    moved.spec.selector = [("app".to_owned(), "llama".to_owned())].into();
    assert_eq!(
        keys(&index.handle(Update::Pool(WatchEvent::Apply(moved)))),
        ["apply InferencePool default/reasoning-pool", "delete Pod default/qwq-0"]
    );
    assert_eq!(
        keys(&index.handle(Update::Pool(WatchEvent::Apply(pool())))),
        ["apply InferencePool default/reasoning-pool", "apply Pod default/qwq-0"]
    );
    assert_eq!(
        keys(&index.handle(Update::Pool(WatchEvent::Delete(pool())))),
        [
            "delete InferencePool default/reasoning-pool",
            "delete Pod default/qwq-0"
        ]
    );
}

#[test]
fn pods_are_stripped_to_what_routing_reads() {
    let mut full = seed_pod("qwq-0", "127.0.0.11");
    full.metadata.resource_version = Some("42".into());
    full.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
    full.status.as_mut().unwrap().host_ip = Some("10.0.0.1".into());
    let (_, events) = synced(vec![pool()], vec![], vec![full]);
    let Some(Event::Apply(Resource::Pod(pod))) = events.last() else {
        panic!("no pod emitted: {:?}", keys(&events))
    };
    assert_eq!(**pod, seed_pod("qwq-0", "127.0.0.11"));
}
