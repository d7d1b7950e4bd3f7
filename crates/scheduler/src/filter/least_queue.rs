//! `least-queue`: keeps the endpoints in the lowest band of waiting-queue lengths.

use rand::RngCore;

use super::{Filter, lowest_band};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeastQueueFilter;

impl Filter for LeastQueueFilter {
    fn name(&self) -> &'static str {
        "least-queue"
    }

    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        lowest_band(candidates, |idx| f64::from(cycle.metrics(idx).waiting_queue))
    }
}
