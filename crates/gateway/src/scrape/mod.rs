//! The metrics scraper: one tokio task per endpoint of the served pool (and of its models' mirror pools) polls the
//! model server's `/metrics` and keeps the latest [`EndpointMetrics`] in a [`MetricsStore`] the request path reads.
//!
//! A pod whose `/metrics` fails keeps its last metrics, which age into staleness (their `updated_at` stops
//! advancing); it is not removed. Only leaving the pool's endpoints removes it from the store.

pub mod extract;
pub mod parse;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use scheduler::{EndpointId, EndpointMetrics};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use crate::datastore::Snapshot;

/// Default time between two scrapes of one pod, as in the upstream EPP.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);
/// Default bound on one scrape, so a hung pod cannot stall its task for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// A vLLM exposition is ~100 KiB even with every histogram; anything far larger is not a model server.
const MAX_BODY_BYTES: usize = 8 << 20;
/// Two idle connections per pod, like the upstream EPP's client, so a slow response never forces a reconnect.
const MAX_IDLE_PER_HOST: usize = 2;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The latest metrics of every scraped endpoint; reads hold the lock only to clone one entry.
#[derive(Debug, Default)]
pub struct MetricsStore {
    entries: RwLock<HashMap<EndpointId, EndpointMetrics>>,
    /// Every name a scrape ever listed as a LoRA adapter, running or waiting. An adapter resident nowhere right
    /// now is still an adapter: the scheduler must steer its next request to a free adapter slot.
    adapters: RwLock<HashSet<String>>,
    scrapes: Counter,
    failures: Counter,
    /// Bumped after every scrape, stored or failed, and every removal: lets a caller wait for the store to change
    /// instead of polling it on a timer.
    changes: watch::Sender<u64>,
}

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("reading body: {0}")]
    Body(String),
    #[error("body is not utf-8")]
    NotUtf8,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Protocol(#[from] extract::MissingMetric),
}

// === impl MetricsStore ===

impl MetricsStore {
    /// The endpoint's latest metrics; the default (with `updated_at: None`) when it was never scraped.
    pub fn get(&self, id: &EndpointId) -> EndpointMetrics {
        self.read().get(id).cloned().unwrap_or_default()
    }

    /// Every endpoint scraped at least once and its latest metrics, e.g. for shipping per-pod samples (a pod that
    /// never answered has no metrics to show, only a failure streak).
    pub fn all(&self) -> Vec<(EndpointId, EndpointMetrics)> {
        self.read()
            .iter()
            .filter(|(_, m)| m.updated_at.is_some())
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// Whether any scrape so far listed `model` as a LoRA adapter.
    pub fn is_adapter(&self, model: &str) -> bool {
        self.adapters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(model)
    }

    /// Registers the scrape counters (`scrapes_total`, `scrape_failures_total`) under the caller's prefix.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "scrapes",
            "Scrapes of model-server /metrics, successful or not",
            self.scrapes.clone(),
        );
        registry.register(
            "scrape_failures",
            "Scrapes of model-server /metrics that failed (the pod keeps its ageing metrics)",
            self.failures.clone(),
        );
    }

    /// A receiver that sees every change of the store from now on (bumped after every scrape and removal).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many scrapes have failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// Notes a failed scrape: the pod keeps its last metrics, and the first failure in a row starts its
    /// `unanswered_since`. Skipped once the endpoint's task was cancelled, like [`Self::put`].
    fn failed(&self, id: &EndpointId, at: std::time::Instant, task: &CancellationToken) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if task.is_cancelled() {
            return;
        }
        let metrics = entries.entry(id.clone()).or_default();
        metrics.unanswered_since.get_or_insert(at);
    }

    /// Stores unless the endpoint's task was cancelled; checked under the lock so a scrape finishing while its
    /// endpoint is removed cannot resurrect the entry.
    fn put(&self, id: &EndpointId, metrics: EndpointMetrics, task: &CancellationToken) -> bool {
        self.learn_adapters(&metrics);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if task.is_cancelled() {
            return false;
        }
        entries.insert(id.clone(), metrics);
        true
    }

    /// Remembers adapter names not seen before; the write lock is taken only for a new name.
    fn learn_adapters(&self, metrics: &EndpointMetrics) {
        let listed = || metrics.active_loras.iter().chain(&metrics.waiting_loras);
        let known = self.adapters.read().unwrap_or_else(PoisonError::into_inner);
        if listed().all(|name| known.contains(name)) {
            return;
        }
        drop(known);
        let mut adapters = self.adapters.write().unwrap_or_else(PoisonError::into_inner);
        adapters.extend(listed().cloned());
    }

    /// Stores metrics as a scrape would, so routing can be tested over pods that do not exist.
    #[cfg(test)]
    pub(crate) fn insert(&self, id: &EndpointId, metrics: EndpointMetrics) {
        self.put(id, metrics, &CancellationToken::new());
    }

    fn remove(&self, id: &EndpointId) {
        self.entries.write().unwrap_or_else(PoisonError::into_inner).remove(id);
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<EndpointId, EndpointMetrics>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }
}

// === scraper ===

/// Keeps one scrape task per endpoint of the latest snapshot until `cancel` fires.
pub async fn run_scraper(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    store: Arc<MetricsStore>,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(connector);

    let mut tasks: HashMap<EndpointId, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let wanted: HashSet<&EndpointId> = snapshot.scrape_targets().collect();
        tasks.retain(|id, (token, handle)| {
            if wanted.contains(id) {
                return true;
            }
            token.cancel();
            handle.abort();
            store.remove(id);
            tracing::debug!(endpoint = %id, "stopped scraping");
            false
        });
        for id in wanted {
            if tasks.contains_key(id) {
                continue;
            }
            let token = cancel.child_token();
            let task = ScrapeTask {
                id: id.clone(),
                client: client.clone(),
                store: store.clone(),
                interval,
                timeout,
                token: token.clone(),
            };
            tracing::debug!(endpoint = %id, "started scraping");
            tasks.insert(id.clone(), (token, tokio::spawn(task.run())));
        }

        tokio::select! {
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The datastore is gone: keep scraping what we have until told to stop.
                    cancel.cancelled().await;
                    break;
                }
            }
        }
    }
    for (token, handle) in tasks.into_values() {
        token.cancel();
        handle.abort();
    }
}

struct ScrapeTask {
    id: EndpointId,
    client: HttpClient,
    store: Arc<MetricsStore>,
    interval: Duration,
    timeout: Duration,
    token: CancellationToken,
}

impl ScrapeTask {
    async fn run(self) {
        let uri: Uri = match format!("http://{}/metrics", self.id).parse() {
            Ok(uri) => uri,
            Err(error) => {
                tracing::warn!(endpoint = %self.id, %error, "endpoint is not a valid address; not scraping it");
                return;
            }
        };
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Logged on transitions only: a dead pod scraped every 50 ms must not flood the log.
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = tokio::select! {
                () = self.token.cancelled() => return,
                result = tokio::time::timeout(self.timeout, scrape(&self.client, &uri)) => {
                    result.unwrap_or(Err(ScrapeError::Timeout(self.timeout)))
                }
            };
            self.store.scrapes.inc();
            match result {
                Ok(mut metrics) => {
                    metrics.updated_at = Some(Instant::now().into_std());
                    if !self.store.put(&self.id, metrics, &self.token) {
                        return;
                    }
                    if std::mem::take(&mut failing) {
                        tracing::info!(endpoint = %self.id, "metrics scrape recovered");
                    }
                }
                Err(error) => {
                    self.store.failures.inc();
                    self.store.failed(&self.id, Instant::now().into_std(), &self.token);
                    if std::mem::replace(&mut failing, true) {
                        tracing::debug!(endpoint = %self.id, %error, "metrics scrape failed");
                    } else {
                        tracing::warn!(endpoint = %self.id, %error, "metrics scrape failing; its last metrics will go stale");
                    }
                }
            }
            self.store.changed();
        }
    }
}

async fn scrape(client: &HttpClient, uri: &Uri) -> Result<EndpointMetrics, ScrapeError> {
    let request = http::Request::get(uri.clone())
        .header(header::ACCEPT, "text/plain;version=0.0.4")
        .body(Empty::new())
        .map_err(|error| ScrapeError::Body(error.to_string()))?;
    let response = client.request(request).await?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|error| ScrapeError::Body(error.to_string()))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::NotUtf8)?;
    let parsed = parse::parse(text);
    if parsed.n_invalid_lines > 0 {
        tracing::trace!(uri = %uri, n_invalid_lines = parsed.n_invalid_lines, "skipped unparsable metric lines");
    }
    Ok(extract::extract(&parsed.samples)?)
}

#[cfg(test)]
mod tests;
