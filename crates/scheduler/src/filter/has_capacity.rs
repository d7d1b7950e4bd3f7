//! `has-capacity`: keeps the endpoints with a short queue and KV cache to spare.

use rand::RngCore;
use serde::Deserialize;

use super::{Filter, retain};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HasCapacityFilter {
    /// Largest acceptable `waiting_queue` (inclusive).
    pub queue_threshold: u32,
    /// Largest acceptable KV-cache utilisation (inclusive).
    pub kv_cache_threshold: f64,
}

/// `queueThresholdCritical` 5 and `kvCacheThreshold` 0.8 of upstream v0.3, the same numbers the
/// saturation detector uses, so "has capacity" and "not saturated" agree by default.
impl Default for HasCapacityFilter {
    fn default() -> Self {
        Self {
            queue_threshold: 5,
            kv_cache_threshold: 0.8,
        }
    }
}

impl Filter for HasCapacityFilter {
    fn name(&self) -> &'static str {
        "has-capacity"
    }

    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        retain(candidates, |idx| {
            let m = cycle.metrics(idx);
            m.waiting_queue <= self.queue_threshold && m.kv_cache_usage <= self.kv_cache_threshold
        })
    }
}
