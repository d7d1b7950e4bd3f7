//! The seed-era scheduler: upstream v0.3's hard-coded filter tree with a uniform random pick.

use std::fmt::Write;

use rand::RngCore;
use serde::Deserialize;

use super::{Run, note_filtered};
use crate::{
    Criticality,
    cycle::Cycle,
    filter::{
        Filter, HasCapacityFilter, LeastKvCacheFilter, LeastQueueFilter, LoraAffinityFilter, LowCostLoraFilter,
        LowQueueFilter,
    },
    picker::{Picker, RandomPicker},
};

/// Upstream v0.3's tree. Each node runs a filter: a non-empty result goes on to the success branch, an
/// empty one sends the node's *input* down the failure branch.
///
/// ```text
/// critical?
///  ├─ yes → low-queue (queue < 128)
///  │         ├─ ok   → lora-affinity (either way) → least-queue → least-kv-cache
///  │         └─ fail → least-queue → low-cost-lora → least-kv-cache
///  └─ no  → has-capacity (queue ≤ 5, kv ≤ 0.8)
///            ├─ ok   → least-queue → low-cost-lora → least-kv-cache
///            └─ fail → least-queue → low-cost-lora → least-kv-cache, over all pods
/// ```
///
/// Upstream drops the request (429) when `has-capacity` fails. Here shedding is decided once, by
/// admission, for every profile: a Sheddable request in a saturated pool is shed before the tree runs,
/// and Critical and Standard requests are never shed, so a request whose `has-capacity` fails goes on to
/// `least-queue → low-cost-lora → least-kv-cache` over all pods instead of being dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DecisionTree {
    /// `queueThresholdCritical` 5 and `kvCacheThreshold` 0.8.
    pub has_capacity: HasCapacityFilter,
    /// `queueingThresholdLoRA` 128.
    pub low_queue: LowQueueFilter,
    /// `loraAffinityThreshold` 0.999.
    pub lora_affinity: LoraAffinityFilter,
}

impl DecisionTree {
    pub(crate) fn run(&self, cycle: &Cycle<'_>, limit: usize, rng: &mut dyn RngCore) -> Run {
        let n_endpoints = cycle.endpoints.len();
        let mut walk = Walk {
            cycle,
            rng,
            filtered_by: vec![None; n_endpoints],
            path: String::from("decision tree: "),
        };
        let all: Vec<usize> = (0..n_endpoints).collect();
        let survivors = if cycle.request.criticality == Criticality::Critical {
            walk.path.push_str("critical");
            match walk.apply(&self.low_queue, all) {
                Ok(low) => {
                    let pods = walk.narrow(&self.lora_affinity, low);
                    walk.queue_and_kv_cache(pods)
                }
                Err(all) => walk.queue_lora_and_kv_cache(all),
            }
        } else {
            walk.path.push_str("not critical");
            match walk.apply(&self.has_capacity, all) {
                Ok(with_capacity) => walk.queue_lora_and_kv_cache(with_capacity),
                Err(all) => walk.queue_lora_and_kv_cache(all),
            }
        };
        let Walk {
            rng,
            filtered_by,
            mut path,
            ..
        } = walk;
        let totals = vec![0.0; n_endpoints];
        let ranked = RandomPicker.rank(&survivors, &totals, limit, rng);
        let _ = write!(path, "; random pick among {}", survivors.len());
        note_filtered(&mut path, survivors.len(), n_endpoints);
        Run {
            ranked,
            filtered_by,
            ratings: Vec::new(),
            totals,
            reason: path,
        }
    }
}

/// One descent of the tree: the filters applied so far and who they removed.
struct Walk<'c, 'r> {
    cycle: &'c Cycle<'c>,
    rng: &'r mut dyn RngCore,
    filtered_by: Vec<Option<&'static str>>,
    path: String,
}

impl Walk<'_, '_> {
    /// Runs one node: `Ok(narrowed)` on success, `Err(input)` when the filter left nothing.
    fn apply(&mut self, filter: &dyn Filter, pods: Vec<usize>) -> Result<Vec<usize>, Vec<usize>> {
        let kept = filter.filter(self.cycle, &pods, self.rng);
        let _ = write!(self.path, " → {}", filter.name());
        if kept.is_empty() {
            self.path.push_str(" (failed)");
            return Err(pods);
        }
        // Both lists are in endpoint order, so one merge pass finds the removed pods.
        let mut kept_iter = kept.iter().peekable();
        for idx in pods {
            if kept_iter.peek() == Some(&&idx) {
                kept_iter.next();
            } else {
                self.filtered_by[idx] = Some(filter.name());
            }
        }
        Ok(kept)
    }

    /// A node whose success and failure branches are the same: keep the narrowed set if any.
    fn narrow(&mut self, filter: &dyn Filter, pods: Vec<usize>) -> Vec<usize> {
        self.apply(filter, pods).unwrap_or_else(|pods| pods)
    }

    fn queue_and_kv_cache(&mut self, pods: Vec<usize>) -> Vec<usize> {
        let pods = self.narrow(&LeastQueueFilter, pods);
        self.narrow(&LeastKvCacheFilter, pods)
    }

    fn queue_lora_and_kv_cache(&mut self, pods: Vec<usize>) -> Vec<usize> {
        let pods = self.narrow(&LeastQueueFilter, pods);
        let pods = self.narrow(&LowCostLoraFilter, pods);
        self.narrow(&LeastKvCacheFilter, pods)
    }
}
