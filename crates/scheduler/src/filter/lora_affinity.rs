//! `lora-affinity`: prefers endpoints that already run the requested adapter (upstream v0.3 soft affinity).

use rand::{Rng, RngCore};
use serde::Deserialize;

use super::Filter;
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LoraAffinityFilter {
    /// Probability of keeping only the pods with the adapter active when pods with a free slot exist too.
    pub threshold: f64,
}

/// `loraAffinityThreshold` of upstream v0.3: one request in a thousand still goes to a pod with a free
/// slot, so a hot adapter slowly spreads instead of pinning one pod.
impl Default for LoraAffinityFilter {
    fn default() -> Self {
        Self { threshold: 0.999 }
    }
}

impl Filter for LoraAffinityFilter {
    fn name(&self) -> &'static str {
        "lora-affinity"
    }

    /// Splits the candidates into `affinity` (adapter active) and `available` (fewer active adapters than
    /// slots). With both non-empty it returns `affinity` with probability `threshold`, otherwise whichever
    /// is non-empty. A request without an adapter, or no pod in either group (e.g. none reports LoRA
    /// state), leaves the candidates unchanged: the filter expresses a preference, never a requirement.
    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], rng: &mut dyn RngCore) -> Vec<usize> {
        let Some(adapter) = cycle.request.lora_adapter.as_deref() else {
            return candidates.to_vec();
        };
        let (mut affinity, mut available) = (Vec::new(), Vec::new());
        for &idx in candidates {
            let m = cycle.metrics(idx);
            let Some(max_loras) = m.max_loras else {
                continue;
            };
            if m.active_loras.iter().any(|name| name == adapter) {
                affinity.push(idx);
            } else if m.active_loras.len() < max_loras as usize {
                available.push(idx);
            }
        }
        match (affinity.is_empty(), available.is_empty()) {
            (false, false) => {
                if rng.random::<f64>() < self.threshold {
                    affinity
                } else {
                    available
                }
            }
            (false, true) => affinity,
            (true, false) => available,
            (true, true) => candidates.to_vec(),
        }
    }
}
