//! Endpoints (model-server pods) and the metrics snapshot the scheduler scores them on.

use std::{sync::Arc, time::Instant};

use audit::{EndpointId, PodName};

/// What the last scrape of a pod's `/metrics` said. `updated_at == None` means never scraped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointMetrics {
    pub waiting_queue: u32,
    pub running: u32,
    /// KV-cache utilisation in 0..=1.
    pub kv_cache_usage: f64,
    pub active_loras: Vec<String>,
    pub waiting_loras: Vec<String>,
    /// `max_lora` of `vllm:lora_requests_info`; `None` when the server does not report LoRA state.
    pub max_loras: Option<u32>,
    /// Whether the server caches prompt prefixes (`enable_prefix_caching` of `vllm:cache_config_info`); `None`
    /// when it does not say. A prefix hit on a server without the cache saves nothing.
    pub prefix_caching: Option<bool>,
    /// Tokens the server's KV cache holds (`num_gpu_blocks × block_size`); bounds what the prefix index may
    /// believe is cached there.
    pub kv_cache_tokens: Option<u64>,
    pub updated_at: Option<Instant>,
    /// Since when every scrape of the pod has failed (set at the first failure after a success or before any,
    /// cleared by the next success); `None` while it answers or before its first scrape.
    pub unanswered_since: Option<Instant>,
}

/// One routable model-server pod as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub pod: PodName,
    pub metrics: EndpointMetrics,
    /// Requests this gateway routed here that have not finished: exact and current, unlike scraped metrics.
    pub inflight: u32,
    /// Prompt tokens this gateway sent here whose first response byte has not come back yet: prefill work queued
    /// or running on the server, exact and current like `inflight`.
    pub pending_prefill_tokens: u64,
    /// LoRA adapters of this gateway's unfinished requests here. Each is loaded or queued on the server now,
    /// even if the last scrape predates it: the scrape lags, the gateway's own bookkeeping does not. Shared
    /// names, because the gateway copies them for every candidate of every decision.
    pub inflight_adapters: Vec<Arc<str>>,
    /// Leading blocks of the tokenized prompt this pod's engine reports resident in its KV events. `None` when the
    /// pod's events are not followed or not trusted right now, or the prompt was not tokenized: the scheduler
    /// then uses its approximate index for this pod.
    pub precise_prefix: Option<u32>,
}
