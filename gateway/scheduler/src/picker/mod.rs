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

    /// A permutation of `candidates`, best first. `totals` is indexed by endpoint, like the candidates.
    fn rank(&self, candidates: &[usize], totals: &[f64], rng: &mut dyn RngCore) -> Vec<usize>;
}

/// The pickers a profile can name, as written in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PickerConfig {
    #[default]
    MaxScore {},
    WeightedRandom {},
    Random {},
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

#[cfg(test)]
mod tests;
