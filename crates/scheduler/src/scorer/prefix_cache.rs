//! `prefix-cache`: favours endpoints believed to hold more of the prompt's leading blocks in their KV cache.

use super::Scorer;
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheScorer;

impl Scorer for PrefixCacheScorer {
    fn name(&self) -> &'static str {
        "prefix-cache"
    }

    /// Matched blocks over the prompt's blocks, in whichever mode knows the endpoint (precise from its KV events,
    /// else approximate); a prompt shorter than one block scores 0 everywhere.
    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            *score = if cycle.metrics(idx).prefix_caching == Some(false) {
                0.0
            } else {
                cycle.prefix[idx].fraction()
            };
        }
        true
    }
}
