//! Endpoints (model-server pods) and the metrics snapshot the scheduler scores them on.

use std::{fmt, time::Instant};

use serde::{Deserialize, Serialize};

/// `ip:port` of a model server; the identity the proxy or Envoy connects to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(pub String);

/// `namespace/name` of the pod behind an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodName(pub String);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
    pub updated_at: Option<Instant>,
}

/// One routable model-server pod as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub pod: PodName,
    pub metrics: EndpointMetrics,
}
