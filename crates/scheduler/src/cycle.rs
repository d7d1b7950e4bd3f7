//! The per-request inputs every filter, scorer and picker reads: one scheduling cycle.

use std::time::{Duration, Instant};

use audit::PrefixMode;

use crate::{Endpoint, EndpointMetrics, LoraState, Request};

/// What one scheduling cycle knows, computed once before the profile runs.
///
/// Candidates are passed around as indices into [`Cycle::endpoints`], so the per-endpoint slices here
/// (`prefix`, `lora`) are indexed the same way and no plugin allocates per endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Cycle<'a> {
    pub request: &'a Request,
    pub endpoints: &'a [Endpoint],
    pub now: Instant,
    /// What each endpoint holds of the prompt's leading blocks, by endpoint index.
    pub prefix: &'a [PrefixHit],
    /// State of the requested adapter on each endpoint, by endpoint index.
    pub lora: &'a [LoraState],
}

/// How much of the prompt one endpoint holds, by whichever index knows that endpoint best.
///
/// Precise and approximate blocks differ in size (16 tokens against 64 characters), so scorers compare the
/// fraction held and the tokens saved, never block counts across modes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefixHit {
    pub mode: PrefixMode,
    /// Leading blocks held.
    pub matched: u32,
    /// Blocks of the prompt looked up in this mode.
    pub blocks: u32,
    /// Prompt tokens the held blocks cover: what the hit saves from prefill if the server caches prefixes.
    pub cached_tokens: u64,
}

impl PrefixHit {
    /// The share of the prompt's blocks held, in 0..=1; 0 for a prompt shorter than one block.
    pub fn fraction(&self) -> f64 {
        if self.blocks == 0 {
            0.0
        } else {
            f64::from(self.matched.min(self.blocks)) / f64::from(self.blocks)
        }
    }
}

impl Cycle<'_> {
    pub fn metrics(&self, endpoint_idx: usize) -> &EndpointMetrics {
        &self.endpoints[endpoint_idx].metrics
    }
}

/// Age of a metrics snapshot at `now`; `None` when the pod was never scraped.
pub fn metrics_age(metrics: &EndpointMetrics, now: Instant) -> Option<Duration> {
    metrics.updated_at.map(|at| now.saturating_duration_since(at))
}

/// Whether a snapshot is recent enough to trust; a never-scraped pod is stale.
pub fn is_fresh(metrics: &EndpointMetrics, now: Instant, staleness: Duration) -> bool {
    metrics_age(metrics, now).is_some_and(|age| age <= staleness)
}

/// Where the requested adapter stands on a pod, in the precedence order of the upstream LoRA scorer
/// (active, then a free slot, then waiting).
///
/// The scraped adapter lists are merged with the adapters of the gateway's own unfinished requests on the pod:
/// an adapter it sent there since the last scrape is resident or queued there (so `Active`: a request for it
/// joins that batch instead of evicting for another adapter), and it occupies a slot.
pub fn lora_state(request: &Request, endpoint: &Endpoint) -> LoraState {
    let metrics = &endpoint.metrics;
    let (Some(adapter), Some(max_loras)) = (request.lora_adapter.as_deref(), metrics.max_loras) else {
        return LoraState::NotApplicable;
    };
    let listed = |loras: &[String]| loras.iter().any(|name| name == adapter);
    if listed(&metrics.active_loras) || endpoint.inflight_adapters.iter().any(|name| &**name == adapter) {
        LoraState::Active
    } else if occupied_slots(endpoint) < max_loras as usize {
        LoraState::FreeSlot
    } else if listed(&metrics.waiting_loras) {
        LoraState::Waiting
    } else {
        LoraState::NoSlot
    }
}

/// Distinct adapters running or waiting on a pod, by its last scrape and the gateway's unfinished requests.
fn occupied_slots(endpoint: &Endpoint) -> usize {
    let metrics = &endpoint.metrics;
    let scraped = metrics.active_loras.len() + metrics.waiting_loras.len();
    let scraped_lists = |adapter: &str| {
        let listed = |loras: &[String]| loras.iter().any(|name| name == adapter);
        listed(&metrics.active_loras) || listed(&metrics.waiting_loras)
    };
    let unseen = endpoint.inflight_adapters.iter().filter(|a| !scraped_lists(a)).count();
    scraped + unseen
}
