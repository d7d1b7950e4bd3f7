//! `prefix-cache`: favours endpoints believed to hold more of the prompt's leading blocks in their KV cache.

use super::Scorer;
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheScorer;

impl Scorer for PrefixCacheScorer {
    fn name(&self) -> &'static str {
        "prefix-cache"
    }

    /// Matched blocks over the prompt's blocks; a prompt shorter than one block scores 0 everywhere.
    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            *score = if cycle.prefix_blocks == 0 || cycle.metrics(idx).prefix_caching == Some(false) {
                0.0
            } else {
                f64::from(cycle.prefix_matches[idx]) / f64::from(cycle.prefix_blocks)
            };
        }
        true
    }
}
