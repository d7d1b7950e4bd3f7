//! Pickers: order the surviving candidates; the first is the pick and the next ones are the fallbacks.

mod max_score;
mod random;
mod weighted_random;

use rand::RngCore;
use serde::Deserialize;

pub use self::{max_score::MaxScorePicker, random::RandomPicker, weighted_random::WeightedRandomPicker};

/// The last step of a profile.
pub trait Picker {
    fn name(&self) -> &'static str;

    /// The best `limit` of `candidates` (all of them if fewer), best first: the pick, then the fallbacks.
    /// `totals` is indexed by endpoint, like the candidates.
    fn rank(&self, candidates: &[usize], totals: &[f64], limit: usize, rng: &mut dyn RngCore) -> Vec<usize>;
}

/// The pickers a profile can name, as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PickerConfig {
    MaxScore {},
    WeightedRandom {},
    Random {},
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self::MaxScore {}
    }
}

impl PickerConfig {
    pub fn as_picker(&self) -> &dyn Picker {
        match self {
            Self::MaxScore {} => &MaxScorePicker,
            Self::WeightedRandom {} => &WeightedRandomPicker,
            Self::Random {} => &RandomPicker,
        }
    }
}

/// The `limit` highest keys, highest first. Keys are distinct with overwhelming probability (each carries
/// 64 random bits), so an unstable selection is as fair as a stable sort and costs O(n) instead of
/// O(n log n).
fn top_by_key(mut keyed: Vec<(f64, u64, usize)>, limit: usize) -> Vec<usize> {
    let order = |a: &(f64, u64, usize), b: &(f64, u64, usize)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1));
    if limit == 0 {
        return Vec::new();
    }
    if limit < keyed.len() {
        keyed.select_nth_unstable_by(limit - 1, order);
        keyed.truncate(limit);
    }
    keyed.sort_unstable_by(order);
    keyed.into_iter().map(|(_, _, idx)| idx).collect()
}

#[cfg(test)]
mod tests;
