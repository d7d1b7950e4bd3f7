//! What this gateway has outstanding on each endpoint: requests, prompt tokens waiting for prefill, LoRA adapters.
//!
//! Scraped metrics lag by a scrape interval; this ledger is exact and current, and feeds the `inflight` and
//! `prefill-backlog` scorers and the LoRA filters. Every routed request holds a [`Claim`] on it, released once
//! (by its [`super::Flight`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus_client::metrics::gauge::Gauge;
use scheduler::{Decision, Endpoint, EndpointId, Request, Scheduler, prefix::precise::BlockKey};
use tokio::sync::watch;

use super::precise::PendingBlocks;
use crate::{datastore::EndpointView, scrape::MetricsStore};

/// This gateway's unfinished work on one endpoint.
#[derive(Clone, Debug, Default)]
struct EndpointLoad {
    /// Requests routed and not finished.
    requests: u32,
    /// Prompt tokens (uncached on the endpoint) of those requests whose first response byte has not come back.
    prefill_tokens: u64,
    /// LoRA adapters of those requests, each with its count of unfinished requests (a handful at most: a
    /// server holds `max_loras` adapters).
    adapters: Vec<(Arc<str>, u32)>,
}

/// One routed request's share of an endpoint's load.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) endpoint: EndpointId,
    /// Prompt tokens counted in the endpoint's prefill backlog until the first response byte (then 0).
    prefill_tokens: u64,
    /// The LoRA adapter this request holds on its endpoint until it finishes.
    adapter: Option<String>,
    /// The prompt's block keys when it was scored precisely: pending on the endpoint until the request finishes.
    keys: Option<Arc<[BlockKey]>>,
}

/// Everything behind the ledger's lock.
#[derive(Debug, Default)]
struct Loads {
    endpoints: HashMap<EndpointId, EndpointLoad>,
    pending: PendingBlocks,
}

/// Per-endpoint load of this gateway, plus the `inflight` gauge of requests routed and not finished.
#[derive(Debug)]
pub(super) struct Ledger {
    loads: Mutex<Loads>,
    inflight: Gauge,
    /// The same count as `inflight`, for readers that await a value instead of polling.
    inflight_watch: watch::Sender<i64>,
}

/// The ledger held across one scheduling decision.
pub(super) struct Locked<'a>(MutexGuard<'a, Loads>);

impl Ledger {
    pub(super) fn new(inflight: Gauge) -> Ledger {
        Ledger {
            loads: Mutex::default(),
            inflight,
            inflight_watch: watch::Sender::new(0),
        }
    }

    /// Held from reading the candidates until the pick is claimed, so two concurrent requests never both see a pod
    /// as idle: the critical section is one scheduling decision, microseconds long.
    pub(super) fn lock(&self) -> Locked<'_> {
        Locked(self.loads.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Requests routed and not yet finished.
    pub(super) fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// Notified whenever the count of requests routed and not finished changes.
    pub(super) fn subscribe(&self) -> watch::Receiver<i64> {
        self.inflight_watch.subscribe()
    }

    /// The first response byte came back: the request's prompt no longer waits for prefill.
    pub(super) fn prefill_done(&self, claim: &mut Claim) {
        let tokens = std::mem::take(&mut claim.prefill_tokens);
        if tokens == 0 {
            return;
        }
        if let Some(load) = self.lock().0.endpoints.get_mut(&claim.endpoint) {
            load.prefill_tokens = load.prefill_tokens.saturating_sub(tokens);
        }
    }

    /// The request finished (or never produced a byte): everything it held is released.
    pub(super) fn release(&self, claim: Claim) {
        self.inflight.dec();
        self.inflight_watch.send_modify(|n| *n -= 1);
        let mut loads = self.lock();
        if let Some(keys) = &claim.keys {
            loads.0.pending.remove(&claim.endpoint, keys);
        }
        let Some(load) = loads.0.endpoints.get_mut(&claim.endpoint) else {
            return;
        };
        load.requests = load.requests.saturating_sub(1);
        load.prefill_tokens = load.prefill_tokens.saturating_sub(claim.prefill_tokens);
        if let Some(adapter) = claim.adapter.as_deref()
            && let Some(at) = load.adapters.iter().position(|(name, _)| &**name == adapter)
        {
            load.adapters[at].1 -= 1;
            if load.adapters[at].1 == 0 {
                load.adapters.swap_remove(at);
            }
        }
        if load.requests == 0 {
            loads.0.endpoints.remove(&claim.endpoint);
        }
    }
}

/// The prompt tokens `endpoint` must prefill for `request`: what the decision did not find in its prefix cache
/// (precise or approximate), all of it where the server does not cache prefixes.
pub(super) fn prefill_tokens(
    scheduler: &Scheduler,
    endpoint: &EndpointId,
    endpoints: &[Endpoint],
    decision: &Decision,
    request: &Request,
) -> u64 {
    let caches = endpoints
        .iter()
        .find(|e| &e.id == endpoint)
        .is_none_or(|e| e.metrics.prefix_caching != Some(false));
    decision
        .candidates
        .iter()
        .find(|c| &c.endpoint == endpoint)
        .map_or(request.prompt_tokens(), |c| {
            scheduler.prefill_tokens(request, c, caches)
        })
}

impl Locked<'_> {
    /// The blocks of this gateway's precisely scored requests still in flight, per endpoint.
    pub(super) fn pending(&self) -> &PendingBlocks {
        &self.0.pending
    }

    /// The scheduler's view of `views`: each with its latest metrics and this gateway's requests in flight to it.
    pub(super) fn candidates<'v>(
        &self,
        metrics: &MetricsStore,
        views: impl Iterator<Item = &'v EndpointView>,
    ) -> Vec<Endpoint> {
        views
            .map(|e| {
                let load = self.0.endpoints.get(&e.id);
                Endpoint {
                    id: e.id.clone(),
                    pod: e.pod.clone(),
                    metrics: metrics.get(&e.id),
                    inflight: load.map_or(0, |l| l.requests),
                    pending_prefill_tokens: load.map_or(0, |l| l.prefill_tokens),
                    inflight_adapters: load
                        .map_or_else(Vec::new, |l| l.adapters.iter().map(|(name, _)| name.clone()).collect()),
                    precise_prefix: None,
                }
            })
            .collect()
    }

    /// Counts a routed request on `endpoint`, with `tokens` of its prompt waiting for prefill there (see
    /// [`prefill_tokens`]) and, when it was scored precisely, its block keys pending there until it finishes.
    pub(super) fn claim(
        mut self,
        ledger: &Ledger,
        endpoint: &EndpointId,
        request: &Request,
        tokens: u64,
        keys: Option<Arc<[BlockKey]>>,
    ) -> Claim {
        if let Some(keys) = &keys {
            self.0.pending.add(endpoint, keys);
        }
        let load = self.0.endpoints.entry(endpoint.clone()).or_default();
        load.requests += 1;
        load.prefill_tokens += tokens;
        if let Some(adapter) = request.lora_adapter.as_deref() {
            match load.adapters.iter_mut().find(|(name, _)| &**name == adapter) {
                Some((_, count)) => *count += 1,
                None => load.adapters.push((adapter.into(), 1)),
            }
        }
        drop(self);
        ledger.inflight.inc();
        ledger.inflight_watch.send_modify(|n| *n += 1);
        Claim {
            endpoint: endpoint.clone(),
            prefill_tokens: tokens,
            adapter: request.lora_adapter.clone(),
            keys,
        }
    }
}
