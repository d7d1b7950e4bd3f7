//! `fresh-metrics`: drops endpoints whose metrics are stale or missing, unless that would drop them all.

use std::time::Duration;

use rand::RngCore;
use serde::Deserialize;

use super::{Filter, retain};
use crate::cycle::{Cycle, is_fresh};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FreshMetricsFilter {
    /// Metrics older than this are not trusted.
    pub staleness_ms: u64,
}

impl Default for FreshMetricsFilter {
    fn default() -> Self {
        Self { staleness_ms: 200 }
    }
}

impl Filter for FreshMetricsFilter {
    fn name(&self) -> &'static str {
        "fresh-metrics"
    }

    /// Fails open: when no endpoint is fresh (a scrape hiccup across the fleet), routing on old numbers
    /// beats refusing every request.
    fn filter(&self, cycle: &Cycle<'_>, candidates: &[usize], _rng: &mut dyn RngCore) -> Vec<usize> {
        let staleness = Duration::from_millis(self.staleness_ms);
        let fresh = retain(candidates, |idx| is_fresh(cycle.metrics(idx), cycle.now, staleness));
        if fresh.is_empty() { candidates.to_vec() } else { fresh }
    }
}
