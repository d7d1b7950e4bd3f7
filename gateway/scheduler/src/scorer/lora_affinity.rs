//! `lora-affinity`: favours endpoints where the requested adapter is loaded or can be loaded cheaply.

use super::Scorer;
use crate::{LoraState, cycle::Cycle};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoraAffinityScorer;

impl Scorer for LoraAffinityScorer {
    fn name(&self) -> &'static str {
        "lora-affinity"
    }

    /// Upstream's ladder: active 1.0, a free slot 0.8 (loading beats queueing behind other adapters),
    /// waiting 0.6, otherwise 0. When the request needs no adapter or the pod reports no LoRA state, every
    /// pod gets 1.0 so the scorer shifts no decision.
    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) {
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            *score = match cycle.lora[idx] {
                LoraState::NotApplicable | LoraState::Active => 1.0,
                LoraState::FreeSlot => 0.8,
                LoraState::Waiting => 0.6,
                LoraState::NoSlot => 0.0,
            };
        }
    }
}
