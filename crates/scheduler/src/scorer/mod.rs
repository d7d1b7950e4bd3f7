//! Scorers: each rates every surviving candidate in `0..=1`; the profile weights and sums the ratings.

mod inflight;
mod kv_cache;
mod lora_affinity;
mod prefill_backlog;
mod prefix_cache;
mod queue;
mod running_requests;

use serde::Deserialize;

pub use self::{
    inflight::InflightScorer, kv_cache::KvCacheScorer, lora_affinity::LoraAffinityScorer,
    prefill_backlog::PrefillBacklogScorer, prefix_cache::PrefixCacheScorer, queue::QueueScorer,
    running_requests::RunningRequestsScorer,
};
use crate::cycle::Cycle;

/// One rating of a profile.
pub trait Scorer {
    /// Stable name; the key of the candidate's `scores` map.
    fn name(&self) -> &'static str;

    /// Writes one rating per candidate into `scores` (same length and order as `candidates`); values
    /// outside `0..=1` are clamped by the caller. Returns `false` to abstain: the scorer has no opinion
    /// on this request, and neither its ratings nor its weight count.
    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool;
}

/// The scorers a profile can list with their weights, as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScorerConfig {
    Queue {
        #[serde(default)]
        weight: Weight,
    },
    KvCache {
        #[serde(default)]
        weight: Weight,
    },
    PrefixCache {
        #[serde(default)]
        weight: Weight,
    },
    LoraAffinity {
        #[serde(default)]
        weight: Weight,
    },
    RunningRequests {
        #[serde(default)]
        weight: Weight,
    },
    Inflight {
        #[serde(default)]
        weight: Weight,
    },
    PrefillBacklog {
        #[serde(default)]
        weight: Weight,
    },
}

impl ScorerConfig {
    pub fn as_scorer(&self) -> &dyn Scorer {
        match self {
            Self::Queue { .. } => &QueueScorer,
            Self::KvCache { .. } => &KvCacheScorer,
            Self::PrefixCache { .. } => &PrefixCacheScorer,
            Self::LoraAffinity { .. } => &LoraAffinityScorer,
            Self::RunningRequests { .. } => &RunningRequestsScorer,
            Self::Inflight { .. } => &InflightScorer,
            Self::PrefillBacklog { .. } => &PrefillBacklogScorer,
        }
    }

    pub fn weight(&self) -> f64 {
        match self {
            Self::Queue { weight }
            | Self::KvCache { weight }
            | Self::PrefixCache { weight }
            | Self::LoraAffinity { weight }
            | Self::RunningRequests { weight }
            | Self::Inflight { weight }
            | Self::PrefillBacklog { weight } => weight.0,
        }
    }
}

/// A scorer weight: finite and non-negative. Unweighted scorers count 1, as upstream.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Deserialize)]
#[serde(try_from = "f64")]
pub struct Weight(f64);

impl Weight {
    pub fn new(weight: f64) -> Result<Self, WeightError> {
        if weight.is_finite() && weight >= 0.0 {
            Ok(Self(weight))
        } else {
            Err(WeightError(weight))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self(1.0)
    }
}

impl TryFrom<f64> for Weight {
    type Error = WeightError;

    fn try_from(weight: f64) -> Result<Self, Self::Error> {
        Self::new(weight)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("scorer weight must be a finite number ≥ 0, got {0}")]
pub struct WeightError(f64);

/// `(max − v)/(max − min)` over the candidates, 1.0 for all when they are equal: the least loaded gets
/// 1, the most loaded 0, whatever the absolute numbers.
fn min_max_inverse(candidates: &[usize], scores: &mut [f64], value: impl Fn(usize) -> u32) {
    let (min, max) = candidates
        .iter()
        .map(|&idx| value(idx))
        .fold((u32::MAX, u32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    for (score, &idx) in scores.iter_mut().zip(candidates) {
        *score = if max == min {
            1.0
        } else {
            f64::from(max - value(idx)) / f64::from(max - min)
        };
    }
}

#[cfg(test)]
mod tests;
