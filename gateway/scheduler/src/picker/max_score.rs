//! `max-score`: the highest total wins; ties are broken at random.

use rand::{RngCore, seq::SliceRandom};

use super::Picker;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaxScorePicker;

impl Picker for MaxScorePicker {
    fn name(&self) -> &'static str {
        "max-score"
    }

    /// Shuffles, then sorts stably by total, so equal totals come out in random order: without it the
    /// first endpoint of a tie would take every request between two scrapes.
    fn rank(&self, candidates: &[usize], totals: &[f64], rng: &mut dyn RngCore) -> Vec<usize> {
        let mut ranked = candidates.to_vec();
        ranked.shuffle(rng);
        ranked.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]));
        ranked
    }
}
