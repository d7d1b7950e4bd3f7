//! `low-cost-lora`: keeps the endpoints that can serve the requested adapter without evicting another.

use rand::RngCore;

use super::{Filter, retain};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowCostLoraFilter;

impl Filter for LowCostLoraFilter {
    fn name(&self) -> &'static str {
        "low-cost-lora"
    }

    /// Upstream v0.3 `lowLoRACostPredicate`: the adapter is active, or fewer adapters are active than
    /// slots. Requests without an adapter pass everywhere (upstream would also drop pods whose slots are
    /// full, which says nothing about a base-model request); pods that report no LoRA state fail.
    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        let Some(adapter) = cycle.request.lora_adapter.as_deref() else {
            return candidates.to_vec();
        };
        retain(candidates, |idx| {
            let m = cycle.metrics(idx);
            m.max_loras.is_some_and(|max_loras| {
                m.active_loras.iter().any(|name| name == adapter) || m.active_loras.len() < max_loras as usize
            })
        })
    }
}
