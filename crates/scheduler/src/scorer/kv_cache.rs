//! `kv-cache`: favours endpoints with free KV cache, in absolute terms (`1 − utilisation`).

use super::Scorer;
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvCacheScorer;

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        "kv-cache"
    }

    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            *score = 1.0 - cycle.metrics(idx).kv_cache_usage;
        }
        true
    }
}
