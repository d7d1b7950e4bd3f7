//! Filters: each narrows the candidate set and never adds to it.
//!
//! A candidate is an index into [`Cycle::endpoints`]. Filters keep the order they were given, so a run
//! is reproducible for a given RNG.

mod fresh_metrics;
mod has_capacity;
mod least_kv_cache;
mod least_queue;
mod lora_affinity;
mod low_cost_lora;
mod low_queue;

use rand::RngCore;
use serde::Deserialize;

pub use self::{
    fresh_metrics::FreshMetricsFilter, has_capacity::HasCapacityFilter, least_kv_cache::LeastKvCacheFilter,
    least_queue::LeastQueueFilter, lora_affinity::LoraAffinityFilter, low_cost_lora::LowCostLoraFilter,
    low_queue::LowQueueFilter,
};
use crate::cycle::Cycle;

/// One narrowing step of a profile.
pub trait Filter {
    /// Stable name, recorded as `filtered_by` on the candidates it removes.
    fn name(&self) -> &'static str;

    /// The candidates that pass, as a subsequence of `candidates`.
    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], rng: &mut dyn RngCore) -> Vec<usize>;
}

/// The filters a profile can list, as written in the config; each variant is the runtime filter itself.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FilterConfig {
    LeastQueue {},
    LeastKvCache {},
    LowQueue(LowQueueFilter),
    LoraAffinity(LoraAffinityFilter),
    LowCostLora {},
    HasCapacity(HasCapacityFilter),
    FreshMetrics(FreshMetricsFilter),
}

impl FilterConfig {
    pub fn as_filter(&self) -> &dyn Filter {
        match self {
            Self::LeastQueue {} => &LeastQueueFilter,
            Self::LeastKvCache {} => &LeastKvCacheFilter,
            Self::LowQueue(filter) => filter,
            Self::LoraAffinity(filter) => filter,
            Self::LowCostLora {} => &LowCostLoraFilter,
            Self::HasCapacity(filter) => filter,
            Self::FreshMetrics(filter) => filter,
        }
    }
}

/// Keeps the candidates whose value lies in `[min, min + (max − min)/n]`: the lowest 1/n of the range
/// rather than only the minimum, which leaves the next filter a choice (upstream v0.1–v0.3).
fn lowest_band(candidates: &[usize], value: impl Fn(usize) -> f64) -> Vec<usize> {
    let (min, max) = candidates
        .iter()
        .map(|&idx| value(idx))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let ceiling = min + (max - min) / candidates.len() as f64;
    candidates
        .iter()
        .copied()
        .filter(|&idx| value(idx) <= ceiling)
        .collect()
}

/// Keeps the candidates satisfying `keep`.
fn retain(candidates: &[usize], keep: impl Fn(usize) -> bool) -> Vec<usize> {
    candidates.iter().copied().filter(|&idx| keep(idx)).collect()
}

#[cfg(test)]
mod tests;
