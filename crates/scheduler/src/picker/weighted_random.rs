//! `weighted-random`: picks in proportion to the total score (A-Res weighted sampling).

use rand::{Rng, RngCore};

use super::{Picker, top_by_key};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightedRandomPicker;

impl Picker for WeightedRandomPicker {
    fn name(&self) -> &'static str {
        "weighted-random"
    }

    /// Efraimidis–Spirakis A-Res: each candidate draws `u^(1/w)` and the highest keys win, which is a
    /// weighted sample without replacement, so the fallbacks are weighted too. The key is computed as
    /// `ln(u)/w` (same order, no underflow for small weights). A zero total never wins against a positive
    /// one; among zeros the order is uniform.
    fn rank(&self, candidates: &[usize], totals: &[f64], limit: usize, rng: &mut dyn RngCore) -> Vec<usize> {
        let keyed = candidates
            .iter()
            .map(|&idx| {
                // 1 − [0, 1) is (0, 1], so ln never sees 0.
                let u = 1.0 - rng.random::<f64>();
                let weight = totals[idx];
                let key = if weight > 0.0 {
                    u.ln() / weight
                } else {
                    f64::NEG_INFINITY
                };
                (key, rng.next_u64(), idx)
            })
            .collect();
        top_by_key(keyed, limit)
    }
}
