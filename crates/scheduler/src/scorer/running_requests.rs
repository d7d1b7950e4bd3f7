//! `running-requests`: favours endpoints with fewer requests in the running batch, relative to the others.

use super::{Scorer, min_max_inverse};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningRequestsScorer;

impl Scorer for RunningRequestsScorer {
    fn name(&self) -> &'static str {
        "running-requests"
    }

    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        min_max_inverse(candidates, scores, |idx| cycle.metrics(idx).running);
        true
    }
}
