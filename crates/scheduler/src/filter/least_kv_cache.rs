//! `least-kv-cache`: keeps the endpoints in the lowest band of KV-cache utilisation.

use rand::RngCore;

use super::{Filter, lowest_band};
use crate::cycle::Cycle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeastKvCacheFilter;

impl Filter for LeastKvCacheFilter {
    fn name(&self) -> &'static str {
        "least-kv-cache"
    }

    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        lowest_band(candidates, |idx| cycle.metrics(idx).kv_cache_usage)
    }
}
