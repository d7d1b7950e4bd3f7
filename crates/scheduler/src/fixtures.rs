//! Test builders for endpoints and requests (`Endpoint::test("a", now).queue(3)`).

use std::time::Instant;

use crate::{
    Criticality, Endpoint, EndpointId, EndpointMetrics, LoraState, PodName, PrefixMode, Request,
    cycle::{Cycle, PrefixHit, lora_state},
};

impl Endpoint {
    /// A pod `ns/<name>` at `<name>:8000`, scraped at `now`, idle.
    pub(crate) fn test(name: &str, now: Instant) -> Self {
        Self {
            id: EndpointId::new(format!("{name}:8000")),
            pod: PodName::new(format!("ns/{name}")),
            metrics: EndpointMetrics {
                updated_at: Some(now),
                ..Default::default()
            },
            inflight: 0,
            pending_prefill_tokens: 0,
            inflight_adapters: Vec::new(),
            precise_prefix: None,
        }
    }

    pub(crate) fn queue(mut self, waiting: u32) -> Self {
        self.metrics.waiting_queue = waiting;
        self
    }

    pub(crate) fn pending_prefill(mut self, tokens: u64) -> Self {
        self.pending_prefill_tokens = tokens;
        self
    }

    pub(crate) fn prefix_caching(mut self, enabled: bool) -> Self {
        self.metrics.prefix_caching = Some(enabled);
        self
    }

    pub(crate) fn inflight(mut self, inflight: u32) -> Self {
        self.inflight = inflight;
        self
    }

    pub(crate) fn running(mut self, running: u32) -> Self {
        self.metrics.running = running;
        self
    }

    pub(crate) fn kv(mut self, usage: f64) -> Self {
        self.metrics.kv_cache_usage = usage;
        self
    }

    pub(crate) fn scraped(mut self, at: Option<Instant>) -> Self {
        self.metrics.updated_at = at;
        self
    }

    pub(crate) fn loras(mut self, active: &[&str], waiting: &[&str], max: u32) -> Self {
        self.metrics.active_loras = active.iter().map(|s| s.to_string()).collect();
        self.metrics.waiting_loras = waiting.iter().map(|s| s.to_string()).collect();
        self.metrics.max_loras = Some(max);
        self
    }

    /// Adapters of the gateway's own unfinished requests on this endpoint.
    pub(crate) fn sent(mut self, adapters: &[&str]) -> Self {
        self.inflight_adapters = adapters.iter().map(|&s| s.into()).collect();
        self
    }
}

impl Request {
    /// A Standard request for model `m` with the given prompt.
    pub(crate) fn test(prompt: &str) -> Self {
        Self {
            request_id: "req-1".into(),
            received_at_ms: 0,
            model: "m".into(),
            target_model: "m".into(),
            criticality: Criticality::Standard,
            pool: "pool".into(),
            prompt: prompt.into(),
            lora_adapter: None,
            tokenized: None,
        }
    }

    pub(crate) fn criticality(mut self, criticality: Criticality) -> Self {
        self.criticality = criticality;
        self
    }

    pub(crate) fn lora(mut self, adapter: &str) -> Self {
        self.target_model = adapter.into();
        self.lora_adapter = Some(adapter.into());
        self
    }
}

pub(crate) fn ids(endpoints: &[Endpoint]) -> Vec<EndpointId> {
    endpoints.iter().map(|e| e.id.clone()).collect()
}

/// Owns what a [`Cycle`] borrows, for plugin tests that run without the prefix index.
pub(crate) struct CycleFixture {
    pub(crate) request: Request,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) now: Instant,
    pub(crate) prefix: Vec<PrefixHit>,
    pub(crate) lora: Vec<LoraState>,
}

impl CycleFixture {
    pub(crate) fn new(request: Request, endpoints: Vec<Endpoint>, now: Instant) -> Self {
        let lora = endpoints.iter().map(|e| lora_state(&request, e)).collect();
        let prefix = vec![PrefixHit::default(); endpoints.len()];
        Self {
            request,
            endpoints,
            now,
            prefix,
            lora,
        }
    }

    /// Approximate hits of 64-character blocks (16 tokens each).
    pub(crate) fn prefix(mut self, blocks: u32, matches: &[u32]) -> Self {
        self.prefix = matches
            .iter()
            .map(|&matched| PrefixHit {
                mode: PrefixMode::Approximate,
                matched,
                blocks,
                cached_tokens: u64::from(matched) * 16,
            })
            .collect();
        self
    }

    pub(crate) fn cycle(&self) -> Cycle<'_> {
        Cycle {
            request: &self.request,
            endpoints: &self.endpoints,
            now: self.now,
            prefix: &self.prefix,
            lora: &self.lora,
        }
    }

    pub(crate) fn all(&self) -> Vec<usize> {
        (0..self.endpoints.len()).collect()
    }
}
