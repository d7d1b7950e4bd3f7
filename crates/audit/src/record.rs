//! The decision record: what the audit logs, ships and stores for every request (DESIGN.md §5).

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::MapAccess, ser::SerializeMap};

use crate::{EndpointId, PodName};

/// Longest name (a model or request id as the client sent it) a record keeps: a client controls it, so it is cut at a character
/// boundary and marked with `…` rather than kept whole in the log, the shipper and the dashboard.
pub const MAX_NAME_BYTES: usize = 256;

/// `name`, cut to [`MAX_NAME_BYTES`] (plus the `…` marker) when longer.
pub fn bounded_name(name: &str) -> String {
    if name.len() <= MAX_NAME_BYTES {
        return name.to_owned();
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// How important a request is when the pool is saturated (InferenceModel `criticality`; unset = Standard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Criticality {
    Critical,
    #[default]
    Standard,
    Sheddable,
}

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

/// How a candidate's prefix match was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// From what this gateway sent where (character blocks, bounded by the pod's KV size): a guess.
    #[default]
    Approximate,
    /// From the blocks the engine reported resident in its KV events, over the tokenized prompt.
    Precise,
}

/// One endpoint considered for the request, with the metrics it was judged on and its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub pod: PodName,
    pub endpoint: EndpointId,
    pub queue: u32,
    pub running: u32,
    /// Requests this gateway had in flight to the endpoint at decision time.
    #[serde(default)]
    pub inflight: u32,
    /// Prompt tokens this gateway had waiting for their first byte on the endpoint at decision time.
    #[serde(default)]
    pub pending_prefill_tokens: u64,
    pub kv_usage: f64,
    /// Leading prompt blocks the endpoint holds (character blocks when approximate, token blocks when precise).
    pub prefix_match_blocks: u32,
    /// Which index `prefix_match_blocks` came from; records from before precise routing read as approximate.
    #[serde(default)]
    pub prefix_mode: PrefixMode,
    pub lora_state: LoraState,
    /// Age of the metrics at decision time; `None` when never scraped.
    pub metrics_age_ms: Option<u64>,
    /// Per-scorer value in 0..=1 before weighting, keyed by scorer name, in profile order.
    pub scores: Scores,
    /// Weighted sum of `scores` (0 for profiles without scorers).
    pub total: f64,
    /// Name of the filter that removed this candidate, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_by: Option<Cow<'static, str>>,
}

/// The audit record of one request: what was asked, what the scheduler decided and why, and how the response went.
/// Logged on the gateway's `/debug/decisions`, shipped to the dashboard and stored there (DESIGN.md §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique per decision, given by the gateway that made it (128 random bits, hex): what makes ingest idempotent.
    /// Request ids come from clients and may repeat. Empty in records from before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub record_id: String,
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
    /// Set on the decision of a mirrored copy: the request id of the client request it copies. A mirrored
    /// response is recorded and discarded; the client never sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_of: Option<String>,
}

/// Scorer name → value, serialised as a JSON object. A small vector rather than a map: it is built for
/// every candidate of every decision, and borrowed names plus one allocation keep that cheap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores(Vec<(Cow<'static, str>, f64)>);

impl Scores {
    pub fn with_capacity(n: usize) -> Scores {
        Scores(Vec::with_capacity(n))
    }

    pub fn push(&mut self, scorer: impl Into<Cow<'static, str>>, value: f64) {
        self.0.push((scorer.into(), value));
    }

    pub fn get(&self, scorer: &str) -> Option<&f64> {
        self.0.iter().find(|(name, _)| name == scorer).map(|(_, value)| value)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(name, value)| (name.as_ref(), *value))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Scores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scores, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Scores;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of scorer name to score")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Scores, A::Error> {
                let mut scores = Scores::with_capacity(access.size_hint().unwrap_or(4));
                while let Some((name, value)) = access.next_entry::<String, f64>()? {
                    scores.push(name, value);
                }
                Ok(scores)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip_as_a_json_object_in_order() {
        let mut scores = Scores::with_capacity(2);
        scores.push("queue", 1.0);
        scores.push("kv-cache", 0.5);
        let json = serde_json::to_string(&scores).unwrap();
        assert_eq!(json, r#"{"queue":1.0,"kv-cache":0.5}"#);
        let back: Scores = serde_json::from_str(&json).unwrap();
        assert_eq!(back, scores);
        assert_eq!(back.get("kv-cache"), Some(&0.5));
        assert_eq!(back.keys().collect::<Vec<_>>(), ["queue", "kv-cache"]);
    }
}
