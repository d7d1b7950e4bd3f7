//! `queue`: favours endpoints with fewer requests waiting, relative to the other candidates.

use super::{Scorer, min_max_inverse};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueScorer;

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        min_max_inverse(candidates, scores, |idx| cycle.metrics(idx).waiting_queue);
        true
    }
}
