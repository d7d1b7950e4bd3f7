//! The `kube` provider: watches InferencePools, InferenceModels and Pods through the API server and turns them into
//! the same datastore events as the `dir` provider, with the same validation.
//!
//! ```text
//!  watcher(InferencePool) ─┐
//!  watcher(InferenceModel) ─┼─► KubeIndex (last good objects, pod selection) ─► Vec<Event> ─► Datastore::apply
//!  watcher(Pod)            ─┘
//! ```
//!
//! kube-runtime's watchers list, then watch from the list's resourceVersion; a dropped connection resumes the watch,
//! and a `410 Gone` makes them list again. A (re)list is buffered from `Init` to `InitDone` and replaces the kind's
//! objects in one batch, so objects deleted while the watch was down disappear and readers never see half a list.
//! Only pods selected by some pool of their namespace are handed to the datastore (stripped to name, labels, IP,
//! Ready condition and deletion mark); the datastore decides readiness exactly as in dir mode. The datastore is
//! marked synced once every kind has been listed in full, so `/readyz` waits for the first complete picture.

use std::collections::{BTreeMap, BTreeSet};

use api::{
    Pod,
    v1alpha1::{InferenceModel, InferencePool},
    validate::{self, FieldError},
};
use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::core::v1::{PodCondition, PodStatus},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event as WatchEvent},
    },
};
use tokio_util::sync::CancellationToken;

use super::{Datastore, Event, Resource, ResourceKey, ResourceKind, namespace_of};

/// Serves the cluster's pools, models and pods into a [`Datastore`].
#[derive(Clone)]
pub struct KubeProvider {
    client: Client,
    /// Watch only this namespace (from `--pool namespace/name`); all namespaces when `None`.
    namespace: Option<String>,
}

/// One watcher event of one of the three kinds.
// Only one update is alive at a time, so the size of the Pod variant costs nothing worth an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Update {
    Pool(WatchEvent<InferencePool>),
    Model(WatchEvent<InferenceModel>),
    Pod(WatchEvent<Pod>),
}

type Key = (String, String);

/// What the provider knows and what it has told the datastore; pure, so it is tested without an API server.
#[derive(Debug, Default)]
pub struct KubeIndex {
    pools: BTreeMap<Key, InferencePool>,
    models: BTreeMap<Key, InferenceModel>,
    /// Every pod of the watched scope, stripped.
    pods: BTreeMap<Key, Pod>,
    /// Pods handed to the datastore: those some pool of their namespace selects.
    emitted_pods: BTreeSet<Key>,
    /// Objects of a (re)list in progress, per kind.
    pool_list: Option<Vec<InferencePool>>,
    model_list: Option<Vec<InferenceModel>>,
    pod_list: Option<Vec<Pod>>,
    /// Kinds listed in full at least once.
    listed: BTreeSet<ResourceKind>,
}

// === impl KubeProvider ===

impl KubeProvider {
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        KubeProvider { client, namespace }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// The three watch streams merged into one; each retries with kube's default backoff after an error.
    pub fn updates(&self) -> BoxStream<'static, Result<Update, watcher::Error>> {
        fn watch<K, F>(api: Api<K>, wrap: F) -> BoxStream<'static, Result<Update, watcher::Error>>
        where
            K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
            F: Fn(WatchEvent<K>) -> Update + Send + 'static,
        {
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |event| event.map(&wrap))
                .boxed()
        }
        futures::stream::select_all([
            watch(self.api::<InferencePool>(), Update::Pool),
            watch(self.api::<InferenceModel>(), Update::Model),
            watch(self.api::<Pod>(), Update::Pod),
        ])
        .boxed()
    }

    /// Watches until `cancel` fires; watch failures are logged and retried, never fatal.
    pub async fn run(self, datastore: Datastore, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            namespace = self.namespace.as_deref().unwrap_or("(all)"),
            "kube provider starting"
        );
        serve(self.updates(), datastore, cancel).await;
        Ok(())
    }
}

/// Feeds `updates` into `datastore` until the stream ends or `cancel` fires. Events seen before the first full
/// sync are held back and applied as one batch, so the first snapshot already has every pod of the pool.
pub async fn serve(
    updates: impl Stream<Item = Result<Update, watcher::Error>>,
    datastore: Datastore,
    cancel: CancellationToken,
) {
    let mut updates = std::pin::pin!(updates);
    let mut index = KubeIndex::default();
    let mut held = Vec::new();
    loop {
        let update = tokio::select! {
            () = cancel.cancelled() => return,
            update = updates.next() => update,
        };
        let Some(update) = update else { return };
        let events = match update {
            Ok(update) => index.handle(update),
            Err(error) => {
                // The watcher relists or resumes by itself after its backoff; the last state stays meanwhile.
                tracing::warn!(%error, "watch failed; retrying");
                continue;
            }
        };
        if datastore.is_synced() {
            if !events.is_empty() {
                datastore.apply(events);
            }
        } else {
            held.extend(events);
            if index.synced() {
                datastore.apply(std::mem::take(&mut held));
                datastore.mark_synced();
            }
        }
    }
}

// === impl KubeIndex ===

impl KubeIndex {
    /// Whether every kind has been listed in full at least once.
    pub fn synced(&self) -> bool {
        self.listed.len() == 3
    }

    /// Applies one watcher event and returns the datastore events it causes.
    pub fn handle(&mut self, update: Update) -> Vec<Event> {
        let mut events = Vec::new();
        match update {
            Update::Pool(event) => self.pool_event(event, &mut events),
            Update::Model(event) => self.model_event(event, &mut events),
            Update::Pod(event) => self.pod_event(event, &mut events),
        }
        events
    }

    fn pool_event(&mut self, event: WatchEvent<InferencePool>, events: &mut Vec<Event>) {
        let mut namespaces = BTreeSet::new();
        match event {
            WatchEvent::Init => self.pool_list = Some(Vec::new()),
            WatchEvent::InitApply(pool) => self.pool_list.get_or_insert_default().push(pool),
            WatchEvent::InitDone => {
                let listed = self.pool_list.take().unwrap_or_default();
                namespaces.extend(self.pools.keys().map(|(ns, _)| ns.clone()));
                replace(
                    &mut self.pools,
                    listed,
                    check_pool,
                    Resource::Pool,
                    ResourceKind::Pool,
                    events,
                );
                namespaces.extend(self.pools.keys().map(|(ns, _)| ns.clone()));
                self.listed.insert(ResourceKind::Pool);
            }
            WatchEvent::Apply(pool) => {
                if let Some(pool) = check_pool(pool) {
                    let key = key_of(&pool.metadata);
                    namespaces.insert(key.0.clone());
                    events.push(Event::Apply(Resource::Pool(Box::new(pool.clone()))));
                    self.pools.insert(key, pool);
                }
            }
            WatchEvent::Delete(pool) => {
                let key = key_of(&pool.metadata);
                if self.pools.remove(&key).is_some() {
                    namespaces.insert(key.0.clone());
                    events.push(Event::Delete(resource_key(ResourceKind::Pool, key)));
                }
            }
        }
        for namespace in namespaces {
            self.reselect_pods(&namespace, events);
        }
    }

    fn model_event(&mut self, event: WatchEvent<InferenceModel>, events: &mut Vec<Event>) {
        match event {
            WatchEvent::Init => self.model_list = Some(Vec::new()),
            WatchEvent::InitApply(model) => self.model_list.get_or_insert_default().push(model),
            WatchEvent::InitDone => {
                let listed = self.model_list.take().unwrap_or_default();
                replace(
                    &mut self.models,
                    listed,
                    check_model,
                    Resource::Model,
                    ResourceKind::Model,
                    events,
                );
                self.listed.insert(ResourceKind::Model);
            }
            WatchEvent::Apply(model) => {
                if let Some(model) = check_model(model) {
                    events.push(Event::Apply(Resource::Model(Box::new(model.clone()))));
                    self.models.insert(key_of(&model.metadata), model);
                }
            }
            WatchEvent::Delete(model) => {
                let key = key_of(&model.metadata);
                if self.models.remove(&key).is_some() {
                    events.push(Event::Delete(resource_key(ResourceKind::Model, key)));
                }
            }
        }
    }

    fn pod_event(&mut self, event: WatchEvent<Pod>, events: &mut Vec<Event>) {
        match event {
            WatchEvent::Init => self.pod_list = Some(Vec::new()),
            WatchEvent::InitApply(pod) => self.pod_list.get_or_insert_default().push(strip_pod(pod)),
            WatchEvent::InitDone => {
                let listed = self.pod_list.take().unwrap_or_default();
                self.pods = listed.into_iter().map(|pod| (key_of(&pod.metadata), pod)).collect();
                for key in self.emitted_pods.clone() {
                    if !self.pods.contains_key(&key) {
                        self.emitted_pods.remove(&key);
                        events.push(Event::Delete(resource_key(ResourceKind::Pod, key)));
                    }
                }
                let namespaces: BTreeSet<String> = self.pods.keys().map(|(ns, _)| ns.clone()).collect();
                for namespace in namespaces {
                    self.reselect_pods(&namespace, events);
                }
                self.listed.insert(ResourceKind::Pod);
            }
            WatchEvent::Apply(pod) => {
                let pod = strip_pod(pod);
                let key = key_of(&pod.metadata);
                self.pods.insert(key.clone(), pod);
                self.reselect_pod(&key, events);
            }
            WatchEvent::Delete(pod) => {
                let key = key_of(&pod.metadata);
                self.pods.remove(&key);
                if self.emitted_pods.remove(&key) {
                    events.push(Event::Delete(resource_key(ResourceKind::Pod, key)));
                }
            }
        }
    }

    fn reselect_pods(&mut self, namespace: &str, events: &mut Vec<Event>) {
        let keys: Vec<Key> = self
            .pods
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.reselect_pod(&key, events);
        }
    }

    /// Emits the pod if a pool of its namespace selects it, or its deletion if it was emitted and no longer is.
    fn reselect_pod(&mut self, key: &Key, events: &mut Vec<Event>) {
        let Some(pod) = self.pods.get(key) else { return };
        let selected = self
            .pools
            .range((key.0.clone(), String::new())..)
            .take_while(|((ns, _), _)| *ns == key.0)
            .any(|(_, pool)| super::selects(&pool.spec.selector, pod));
        if selected {
            // Unchanged pods are dropped by the datastore's own comparison.
            self.emitted_pods.insert(key.clone());
            events.push(Event::Apply(Resource::Pod(Box::new(pod.clone()))));
        } else if self.emitted_pods.remove(key) {
            events.push(Event::Delete(resource_key(ResourceKind::Pod, key.clone())));
        }
    }
}

/// Replaces `current` with a full listing: invalid listed objects keep their last good version, objects missing
/// from the listing are deleted.
fn replace<K>(
    current: &mut BTreeMap<Key, K>,
    listed: Vec<K>,
    check: impl Fn(K) -> Option<K>,
    wrap: impl Fn(Box<K>) -> Resource,
    kind: ResourceKind,
    events: &mut Vec<Event>,
) where
    K: kube::Resource + Clone + PartialEq,
{
    let mut next = BTreeMap::new();
    for object in listed {
        let key = key_of(object.meta());
        match check(object) {
            Some(object) => {
                next.insert(key, object);
            }
            None => {
                if let Some(good) = current.get(&key) {
                    next.insert(key, good.clone());
                }
            }
        }
    }
    for key in current.keys() {
        if !next.contains_key(key) {
            events.push(Event::Delete(resource_key(kind, key.clone())));
        }
    }
    for (key, object) in &next {
        if current.get(key) != Some(object) {
            events.push(Event::Apply(wrap(Box::new(object.clone()))));
        }
    }
    *current = next;
}

fn key_of(meta: &ObjectMeta) -> Key {
    (namespace_of(meta).to_owned(), meta.name.clone().unwrap_or_default())
}

fn resource_key(kind: ResourceKind, (namespace, name): Key) -> ResourceKey {
    ResourceKey { kind, namespace, name }
}

/// Validates like the dir provider; an invalid object is logged with its name and fields and yields `None`.
fn check_pool(mut pool: InferencePool) -> Option<InferencePool> {
    strip_meta(&mut pool.metadata);
    // Status is the controller's output, not routing input; dropping it keeps status writes from churning.
    pool.status = None;
    match validate::validate_pool(&pool) {
        Ok(()) => Some(pool),
        Err(errors) => {
            reject(ResourceKind::Pool, &pool.metadata, &errors);
            None
        }
    }
}

fn check_model(mut model: InferenceModel) -> Option<InferenceModel> {
    strip_meta(&mut model.metadata);
    model.status = None;
    match validate::validate_model(&model) {
        Ok(()) => Some(model),
        Err(errors) => {
            reject(ResourceKind::Model, &model.metadata, &errors);
            None
        }
    }
}

fn reject(kind: ResourceKind, meta: &ObjectMeta, errors: &[FieldError]) {
    let (namespace, name) = key_of(meta);
    let object = format!("{kind} {namespace}/{name}");
    let fields: Vec<String> = errors.iter().map(ToString::to_string).collect();
    tracing::error!(
        %object,
        field = errors.first().map(|e| e.field.as_str()).unwrap_or(""),
        errors = %fields.join("; "),
        "rejected invalid object; its last good version stays in force",
    );
}

/// Drops bookkeeping that changes on every write but means nothing to routing.
fn strip_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.generation = None;
    meta.uid = None;
}

/// Keeps what the datastore reads of a pod: name, namespace, labels, deletion mark, IP and Ready condition.
fn strip_pod(pod: Pod) -> Pod {
    let meta = pod.metadata;
    let status = pod.status.map(|status| PodStatus {
        pod_ip: status.pod_ip,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            labels: meta.labels,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: None,
        status,
    }
}

#[cfg(test)]
mod tests;
