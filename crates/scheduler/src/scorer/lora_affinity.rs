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
    /// waiting 0.6, otherwise 0; a pod that reports no LoRA state gets a neutral 1.0. A request that
    /// needs no adapter would rate every pod 1.0, a constant that changes no pick, so the scorer abstains
    /// instead and keeps its weight out of the total and the audit.
    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        if cycle.request.lora_adapter.is_none() {
            return false;
        }
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            *score = match cycle.lora[idx] {
                LoraState::NotApplicable | LoraState::Active => 1.0,
                LoraState::FreeSlot => 0.8,
                LoraState::Waiting => 0.6,
                LoraState::NoSlot => 0.0,
            };
        }
        true
    }
}
