//! `random`: a uniform pick, blind to scores (the decision tree's last step).

use rand::{RngCore, seq::SliceRandom};

use super::Picker;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RandomPicker;

impl Picker for RandomPicker {
    fn name(&self) -> &'static str {
        "random"
    }

    fn rank(&self, candidates: &[usize], _totals: &[f64], limit: usize, rng: &mut dyn RngCore) -> Vec<usize> {
        let mut ranked = candidates.to_vec();
        let (sample, _) = ranked.partial_shuffle(rng, limit);
        sample.to_vec()
    }
}
