//! `low-queue`: keeps the endpoints whose waiting queue is below a threshold.

use rand::RngCore;
use serde::Deserialize;

use super::{Filter, retain};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LowQueueFilter {
    /// Strict upper bound on `waiting_queue`.
    pub threshold: u32,
}

/// `queueingThresholdLoRA` of upstream v0.3: below this many waiting requests a pod is still worth a
/// detour for LoRA affinity.
impl Default for LowQueueFilter {
    fn default() -> Self {
        Self { threshold: 128 }
    }
}

impl Filter for LowQueueFilter {
    fn name(&self) -> &'static str {
        "low-queue"
    }

    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        retain(candidates, |idx| cycle.metrics(idx).waiting_queue < self.threshold)
    }
}
