//! The routing decision: what every pick produces and what the audit stores (DESIGN.md §5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Criticality, EndpointId, PodName};

/// How the request ended, as far as routing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Routed,
    Shed429,
    NoCapacity503,
    BadRequest400,
    NotFound404,
    Error,
}

/// LoRA state of the requested adapter on one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraState {
    /// The request needs no adapter, or the pod reports no LoRA state.
    NotApplicable,
    Active,
    Waiting,
    FreeSlot,
    NoSlot,
}

/// One endpoint considered for the request, with the metrics it was judged on and its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub pod: PodName,
    pub endpoint: EndpointId,
    pub queue: u32,
    pub running: u32,
    pub kv_usage: f64,
    pub prefix_match_blocks: u32,
    pub lora_state: LoraState,
    /// Age of the metrics at decision time; `None` when never scraped.
    pub metrics_age_ms: Option<u64>,
    /// Per-scorer value in 0..=1 before weighting, keyed by scorer name.
    pub scores: BTreeMap<String, f64>,
    /// Weighted sum of `scores` (0 for profiles without scorers).
    pub total: f64,
    /// Name of the filter that removed this candidate, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_by: Option<String>,
}

/// Everything known about one routing decision; the response fields are filled in by the adapter later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub request_id: String,
    pub received_at_ms: u64,
    pub model: String,
    pub target_model: String,
    pub criticality: Criticality,
    pub pool: String,
    pub outcome: Outcome,
    pub endpoint: Option<EndpointId>,
    pub fallbacks: Vec<EndpointId>,
    pub candidates: Vec<Candidate>,
    pub profile: String,
    /// Human-readable reason for the outcome, e.g. "max score 6.40 (queue 2.00, kv-cache 1.40, prefix-cache 3.00)".
    pub reason: String,
    pub scheduler_micros: u64,
    pub status: Option<u16>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
}
