//! The datastore: an in-memory index of pools, models and pods fed by provider events, published to readers as
//! immutable snapshots of the one pool this gateway serves.
//!
//! Providers (the `dir` provider here, a kube provider later) turn their source into [`Event`]s and hand them to
//! [`Datastore::apply`] in batches. Each batch rebuilds the [`Snapshot`] and publishes it through a
//! `tokio::sync::watch` channel, so the request path reads an `Arc<Snapshot>` and never waits on a writer.

pub mod dir;
pub mod kube;

use std::{
    collections::{BTreeMap, btree_map::Entry},
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use api::{
    Pod,
    v1alpha1::{self, FailureMode, InferenceModel, InferencePool},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scheduler::{Criticality, EndpointId, PodName, TargetWeight};
use tokio::sync::watch;

pub use self::dir::{DirError, DirProvider, run_dir_provider};
pub use self::kube::KubeProvider;

/// Namespace of an object whose metadata names none, as `kubectl apply` would place it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object a provider reports as present (created or changed); boxed because a Pod is kilobytes.
#[derive(Clone, Debug)]
pub enum Resource {
    Pool(Box<InferencePool>),
    Model(Box<InferenceModel>),
    Pod(Box<Pod>),
}

/// The kinds of object the datastore indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Pool,
    Model,
    Pod,
}

/// Identity of an indexed object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        // The CRD structs do not derive PartialEq; their parts do.
        match (self, other) {
            (Resource::Pool(a), Resource::Pool(b)) => a.metadata == b.metadata && a.spec == b.spec,
            (Resource::Model(a), Resource::Model(b)) => a.metadata == b.metadata && a.spec == b.spec,
            (Resource::Pod(a), Resource::Pod(b)) => a == b,
            _ => false,
        }
    }
}

/// One change reported by a provider.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Apply(Resource),
    Delete(ResourceKey),
}

/// Which pool this gateway serves (`--pool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolName {
    /// `None` matches the pool of that name in any namespace.
    pub namespace: Option<String>,
    pub name: String,
}

/// Why the snapshot has no pool to serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no InferencePool found")]
    NoPool,
    #[error("InferencePool {pool} not found")]
    NotFound { pool: PoolName },
    #[error("several InferencePools found ({}); pick one with --pool", .candidates.join(", "))]
    Ambiguous { candidates: Vec<String> },
}

/// The served pool as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    pub namespace: String,
    /// The port every model server of the pool listens on.
    pub target_port: u16,
    /// Unset `extensionRef.failureMode` means FailClose.
    pub failure_mode: FailureMode,
    pub selector: BTreeMap<String, String>,
    /// The raw `inference.networking.x-k8s.io/attach-to` annotation (`name:` and `port:` YAML lines).
    pub attach_to: Option<String>,
}

/// A routable pod of the served pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    /// `podIP:targetPort`.
    pub id: EndpointId,
    /// `namespace/name`.
    pub pod: PodName,
}

/// A model name clients may request from the served pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelView {
    /// `spec.modelName`.
    pub name: String,
    pub namespace: String,
    /// `metadata.name` of the InferenceModel that owns the model name.
    pub object_name: String,
    pub criticality: Criticality,
    /// Never empty: a model without targetModels serves itself.
    pub targets: Vec<TargetWeight>,
    /// Where a share of this model's requests is copied to, resolved when the snapshot was built.
    pub mirror: Option<MirrorRoute>,
}

/// A model's mirror policy resolved against the index: the model the copies are requested as, its split and the
/// ready pods of the pool that serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRoute {
    pub policy: api::validate::MirrorPolicy,
    /// `name` of the pool the copies go to (the served pool when the target is not an InferenceModel).
    pub pool: String,
    /// The mirror target's own targetModels split when it is an InferenceModel, else the target name as is.
    pub targets: Vec<TargetWeight>,
    /// Ready pods of that pool; scraped like the served pool's so saturation can be judged.
    pub endpoints: Arc<[EndpointView]>,
}

/// An immutable view of the served pool at one point in time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pool: Option<PoolView>,
    pool_error: Option<String>,
    endpoints: Vec<EndpointView>,
    models: BTreeMap<String, ModelView>,
}

impl Snapshot {
    pub fn pool(&self) -> Option<&PoolView> {
        self.pool.as_ref()
    }

    /// Set when there is no pool to serve (none, the named one missing, or several without `--pool`).
    pub fn pool_error(&self) -> Option<&str> {
        self.pool_error.as_deref()
    }

    /// Ready pods of the pool, sorted by pod name.
    pub fn endpoints(&self) -> &[EndpointView] {
        &self.endpoints
    }

    pub fn model(&self, name: &str) -> Option<&ModelView> {
        self.models.get(name)
    }

    /// Every endpoint whose metrics the gateway needs: the served pool's and those of its models' mirror pools.
    pub fn scrape_targets(&self) -> impl Iterator<Item = &EndpointId> {
        let mirrors = self
            .models
            .values()
            .filter_map(|m| m.mirror.as_ref())
            .flat_map(|m| m.endpoints.iter());
        self.endpoints.iter().chain(mirrors).map(|e| &e.id)
    }

    /// Models of the pool, sorted by model name.
    pub fn models(&self) -> impl Iterator<Item = &ModelView> {
        self.models.values()
    }
}

/// The shared datastore handle; clones share one index.
#[derive(Clone)]
pub struct Datastore {
    inner: Arc<Inner>,
}

struct Inner {
    served: Option<PoolName>,
    /// Only writers take this lock; readers go through `snapshots`.
    index: Mutex<Index>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// Whether the provider's first full listing was applied; a watch so readiness can be awaited.
    synced: watch::Sender<bool>,
}

#[derive(Default)]
struct Index {
    pools: BTreeMap<(String, String), InferencePool>,
    models: BTreeMap<(String, String), InferenceModel>,
    pods: BTreeMap<(String, String), Pod>,
}

// === impl Resource ===

impl Resource {
    pub fn key(&self) -> ResourceKey {
        let (kind, meta) = match self {
            Resource::Pool(pool) => (ResourceKind::Pool, &pool.metadata),
            Resource::Model(model) => (ResourceKind::Model, &model.metadata),
            Resource::Pod(pod) => (ResourceKind::Pod, &pod.metadata),
        };
        ResourceKey {
            kind,
            namespace: namespace_of(meta).to_owned(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Pool => "InferencePool",
            ResourceKind::Model => "InferenceModel",
            ResourceKind::Pod => "Pod",
        })
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

// === impl PoolName ===

impl PoolName {
    /// Parses `--pool`: `name` or `namespace/name`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((namespace, name)) => PoolName {
                namespace: Some(namespace.to_owned()),
                name: name.to_owned(),
            },
            None => PoolName {
                namespace: None,
                name: s.to_owned(),
            },
        }
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.name == name && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

// === impl Datastore ===

impl Datastore {
    /// `served` is `--pool` (`name` or `namespace/name`); `None` serves the only pool present.
    pub fn new(served: Option<String>) -> Self {
        let served = served.as_deref().map(PoolName::parse);
        let snapshot = Index::default().snapshot(served.as_ref());
        let (snapshots, _) = watch::channel(Arc::new(snapshot));
        Datastore {
            inner: Arc::new(Inner {
                served,
                index: Mutex::new(Index::default()),
                snapshots,
                synced: watch::Sender::new(false),
            }),
        }
    }

    /// Applies a batch of events and publishes one snapshot for the whole batch, so readers never see a
    /// half-applied change (a pool without its pods during the first sync, say).
    pub fn apply(&self, events: impl IntoIterator<Item = Event>) {
        let mut index = self.inner.index.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for event in events {
            changed |= index.apply(event);
        }
        if !changed {
            return;
        }
        let next = index.snapshot(self.inner.served.as_ref());
        let current = self.snapshot();
        if *current == next {
            return;
        }
        if current.pool_error != next.pool_error {
            match (&next.pool_error, &next.pool) {
                (Some(error), _) => tracing::error!(%error, "no pool to serve"),
                (None, Some(pool)) => {
                    tracing::info!(pool = %pool.name, namespace = %pool.namespace, "serving pool")
                }
                (None, None) => {}
            }
        }
        // Published while the index lock is held, so concurrent writers cannot publish out of order.
        self.inner.snapshots.send_replace(Arc::new(next));
        drop(index);
    }

    /// The current snapshot; cheap (one `Arc` clone) and never blocked by writers for long.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshots.borrow().clone()
    }

    /// A receiver that is notified whenever the snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.snapshots.subscribe()
    }

    /// Called by the provider once its first full listing has been applied; readiness waits for it.
    pub fn mark_synced(&self) {
        if self
            .inner
            .synced
            .send_if_modified(|synced| !std::mem::replace(synced, true))
        {
            tracing::info!("datastore synced");
        }
    }

    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Resolves once the provider's first full listing was applied.
    pub async fn synced(&self) {
        let mut synced = self.inner.synced.subscribe();
        // The sender lives as long as `self`, so the wait cannot end in an error while we are borrowed.
        let _ = synced.wait_for(|synced| *synced).await;
    }
}

impl fmt::Debug for Datastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datastore")
            .field("served", &self.inner.served)
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

// === impl Index ===

impl Index {
    /// Returns whether the index changed.
    fn apply(&mut self, event: Event) -> bool {
        fn upsert<T>(
            map: &mut BTreeMap<(String, String), T>,
            key: (String, String),
            value: T,
            same: impl Fn(&T, &T) -> bool,
        ) -> bool {
            match map.entry(key) {
                Entry::Occupied(entry) if same(entry.get(), &value) => false,
                Entry::Occupied(mut entry) => {
                    entry.insert(value);
                    true
                }
                Entry::Vacant(entry) => {
                    entry.insert(value);
                    true
                }
            }
        }

        match event {
            Event::Apply(resource) => {
                let key = resource.key();
                let key = (key.namespace, key.name);
                match resource {
                    Resource::Pool(pool) => upsert(&mut self.pools, key, *pool, |a, b| {
                        a.metadata == b.metadata && a.spec == b.spec
                    }),
                    Resource::Model(model) => upsert(&mut self.models, key, *model, |a, b| {
                        a.metadata == b.metadata && a.spec == b.spec
                    }),
                    Resource::Pod(pod) => upsert(&mut self.pods, key, *pod, |a, b| a == b),
                }
            }
            Event::Delete(ResourceKey { kind, namespace, name }) => {
                let key = (namespace, name);
                match kind {
                    ResourceKind::Pool => self.pools.remove(&key).is_some(),
                    ResourceKind::Model => self.models.remove(&key).is_some(),
                    ResourceKind::Pod => self.pods.remove(&key).is_some(),
                }
            }
        }
    }

    fn snapshot(&self, served: Option<&PoolName>) -> Snapshot {
        let pool = match self.served_pool(served) {
            Ok(pool) => pool,
            Err(error) => {
                return Snapshot {
                    pool_error: Some(error.to_string()),
                    ..Snapshot::default()
                };
            }
        };
        let view = pool_view(pool);
        let endpoints = self.endpoints(&view);
        let mut models = self.models(&view);
        let served: Arc<[EndpointView]> = endpoints.clone().into();
        for model in models.values_mut() {
            model.mirror = self.mirror_route(model, &view, &served);
        }
        Snapshot {
            pool: Some(view),
            pool_error: None,
            endpoints,
            models,
        }
    }

    fn served_pool(&self, served: Option<&PoolName>) -> Result<&InferencePool, PoolError> {
        let mut candidates = self
            .pools
            .iter()
            .filter(|((namespace, name), _)| served.is_none_or(|s| s.matches(namespace, name)));
        match (candidates.next(), candidates.next(), served) {
            (Some((_, pool)), None, _) => Ok(pool),
            (None, _, None) => Err(PoolError::NoPool),
            (None, _, Some(served)) => Err(PoolError::NotFound { pool: served.clone() }),
            (Some(first), Some(second), _) => Err(PoolError::Ambiguous {
                candidates: [first, second]
                    .into_iter()
                    .chain(candidates)
                    .map(|((namespace, name), _)| format!("{namespace}/{name}"))
                    .collect(),
            }),
        }
    }

    fn endpoints(&self, pool: &PoolView) -> Vec<EndpointView> {
        // BTreeMap order is (namespace, name), which within one namespace is pod-name order.
        self.pods
            .range((pool.namespace.clone(), String::new())..)
            .take_while(|((namespace, _), _)| *namespace == pool.namespace)
            .filter(|(_, pod)| selects(&pool.selector, pod) && is_ready(pod))
            .filter_map(|((namespace, name), pod)| {
                let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
                Some(EndpointView {
                    id: endpoint_id(ip, pool.target_port),
                    pod: PodName::new(format!("{namespace}/{name}")),
                })
            })
            .collect()
    }

    fn models(&self, pool: &PoolView) -> BTreeMap<String, ModelView> {
        // The oldest InferenceModel keeps a contested model name, so creating a newer duplicate cannot hijack
        // live traffic; objects without a timestamp (dir mode) rank after timestamped ones, then by name.
        let mut claims: Vec<_> = self
            .models
            .iter()
            .filter(|((namespace, _), model)| *namespace == pool.namespace && model.spec.pool_ref.name == pool.name)
            .collect();
        claims.sort_by(|(key_a, a), (key_b, b)| claim_rank(key_a, a).cmp(&claim_rank(key_b, b)));

        let mut models: BTreeMap<String, ModelView> = BTreeMap::new();
        for ((namespace, object_name), model) in claims {
            let spec = &model.spec;
            if let Some(owner) = models.get(&spec.model_name) {
                tracing::debug!(
                    model = %spec.model_name,
                    object = %format!("{namespace}/{object_name}"),
                    owner = %format!("{}/{}", owner.namespace, owner.object_name),
                    "model name already claimed by an older InferenceModel",
                );
                continue;
            }
            models.insert(
                spec.model_name.clone(),
                ModelView {
                    name: spec.model_name.clone(),
                    namespace: namespace.clone(),
                    object_name: object_name.clone(),
                    criticality: criticality(spec.criticality),
                    targets: targets(&spec.model_name, &spec.target_models),
                    mirror: None,
                },
            );
        }
        models
    }

    /// Resolves the model's mirror annotations: to the InferenceModel of its namespace whose modelName is the
    /// target (that model's pool and split; the oldest claim wins, as for routing), else to the served pool with
    /// the target name sent as is.
    fn mirror_route(
        &self,
        model: &ModelView,
        served: &PoolView,
        served_endpoints: &Arc<[EndpointView]>,
    ) -> Option<MirrorRoute> {
        let object = self.models.get(&(model.namespace.clone(), model.object_name.clone()))?;
        // Validation ran before the object reached the index, so an error here cannot happen; treat it as unset.
        let policy = api::validate::mirror_policy(object).ok()??;
        let owner = self
            .models
            .iter()
            .filter(|((namespace, _), m)| *namespace == model.namespace && m.spec.model_name == policy.target)
            .min_by(|(key_a, a), (key_b, b)| claim_rank(key_a, a).cmp(&claim_rank(key_b, b)))
            .map(|(_, m)| m);
        let Some(owner) = owner else {
            return Some(MirrorRoute {
                targets: targets(&policy.target, &[]),
                pool: served.name.clone(),
                endpoints: served_endpoints.clone(),
                policy,
            });
        };
        let pool_name = &owner.spec.pool_ref.name;
        let endpoints: Arc<[EndpointView]> = if *pool_name == served.name {
            served_endpoints.clone()
        } else {
            match self.pools.get(&(model.namespace.clone(), pool_name.clone())) {
                Some(pool) => self.endpoints(&pool_view(pool)).into(),
                // A pool that does not exist (yet) has no pods: every copy is skipped as `no_endpoint`.
                None => Arc::from(Vec::new()),
            }
        };
        Some(MirrorRoute {
            targets: targets(&owner.spec.model_name, &owner.spec.target_models),
            pool: pool_name.clone(),
            endpoints,
            policy,
        })
    }
}

/// Order of claims on one model name: the oldest InferenceModel first, then objects without a timestamp (dir
/// mode), then by namespace and name.
fn claim_rank<'a>(
    key: &'a (String, String),
    model: &'a InferenceModel,
) -> (
    bool,
    Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    &'a (String, String),
) {
    let created = model.metadata.creation_timestamp.as_ref();
    (created.is_none(), created, key)
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

fn pool_view(pool: &InferencePool) -> PoolView {
    PoolView {
        name: pool.metadata.name.clone().unwrap_or_default(),
        namespace: namespace_of(&pool.metadata).to_owned(),
        // Validation keeps the port in 1..=65535 before a pool reaches the index.
        target_port: u16::try_from(pool.spec.target_port_number).unwrap_or_default(),
        failure_mode: pool
            .spec
            .extension_ref
            .as_ref()
            .and_then(|e| e.failure_mode)
            .unwrap_or_default(),
        selector: pool.spec.selector.clone(),
        attach_to: pool
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(api::ATTACH_TO_ANNOTATION))
            .cloned(),
    }
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
}

/// Ready condition True and not terminating: the same membership rule as the upstream EPP.
fn is_ready(pod: &Pod) -> bool {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !terminating
}

fn endpoint_id(ip: &str, port: u16) -> EndpointId {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => EndpointId::new(format!("[{ip}]:{port}")),
        _ => EndpointId::new(format!("{ip}:{port}")),
    }
}

fn criticality(c: Option<v1alpha1::Criticality>) -> Criticality {
    match c {
        Some(v1alpha1::Criticality::Critical) => Criticality::Critical,
        Some(v1alpha1::Criticality::Standard) | None => Criticality::Standard,
        Some(v1alpha1::Criticality::Sheddable) => Criticality::Sheddable,
    }
}

fn targets(model_name: &str, targets: &[v1alpha1::TargetModel]) -> Vec<TargetWeight> {
    if targets.is_empty() {
        return vec![TargetWeight {
            name: model_name.to_owned(),
            weight: None,
        }];
    }
    targets
        .iter()
        .map(|t| TargetWeight {
            name: t.name.clone(),
            // Validation bounds weights to 0..=1_000_000, so the conversion only drops nonsense.
            weight: t.weight.and_then(|w| u32::try_from(w).ok()),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
