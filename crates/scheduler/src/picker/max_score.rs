//! `max-score`: the highest total wins; ties are broken at random.

use rand::RngCore;

use super::{Picker, top_by_key};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaxScorePicker;

impl Picker for MaxScorePicker {
    fn name(&self) -> &'static str {
        "max-score"
    }

    /// Orders by total, then by a random draw, so equal totals come out in random order: without it the
    /// first endpoint of a tie would take every request between two scrapes.
    fn rank(&self, candidates: &[usize], totals: &[f64], limit: usize, rng: &mut dyn RngCore) -> Vec<usize> {
        let keyed = candidates
            .iter()
            .map(|&idx| (totals[idx], rng.next_u64(), idx))
            .collect();
        top_by_key(keyed, limit)
    }
}
