//! Admission: whether the pool is saturated, with the semantics of the upstream v1.0 saturation detector.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Endpoint, EndpointMetrics, cycle};

/// The pool is saturated iff no endpoint has fresh metrics with a short queue and free KV cache.
///
/// Only Sheddable requests are ever turned away because of it; the scheduler decides that, not the detector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SaturationDetector {
    /// An endpoint with more requests waiting than this has no headroom.
    pub queue_depth_threshold: u32,
    /// An endpoint whose KV cache is fuller than this (0..=1) has no headroom.
    pub kv_cache_threshold: f64,
    /// Metrics older than this cannot vouch for headroom; the gateway scrapes every 50 ms, so 200 ms is
    /// four missed scrapes.
    pub metrics_staleness_ms: u64,
    /// A pod whose scrapes have all failed for this long is taken as gone; when every pod of the pool is, requests
    /// get 503 at once (and the gateway reports not ready) instead of each trying every dead pod.
    pub unanswered_after_ms: u64,
}

impl Default for SaturationDetector {
    fn default() -> Self {
        Self {
            queue_depth_threshold: 5,
            kv_cache_threshold: 0.8,
            metrics_staleness_ms: 200,
            unanswered_after_ms: 1_000,
        }
    }
}

impl SaturationDetector {
    pub fn staleness(&self) -> Duration {
        Duration::from_millis(self.metrics_staleness_ms)
    }

    /// Whether this endpoint can vouch that the pool has room.
    pub fn has_headroom(&self, endpoint: &Endpoint, now: Instant) -> bool {
        let m = &endpoint.metrics;
        cycle::is_fresh(m, now, self.staleness())
            && m.waiting_queue <= self.queue_depth_threshold
            && m.kv_cache_usage <= self.kv_cache_threshold
    }

    /// Saturated when no endpoint has headroom, which includes an empty pool.
    pub fn is_saturated(&self, endpoints: &[Endpoint], now: Instant) -> bool {
        !endpoints.iter().any(|endpoint| self.has_headroom(endpoint, now))
    }

    /// Whether a pod has failed every scrape for at least `unanswered_after_ms` (a pod not scraped yet answers).
    pub fn is_unanswered(&self, metrics: &EndpointMetrics, now: Instant) -> bool {
        metrics.unanswered_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= Duration::from_millis(self.unanswered_after_ms)
        })
    }

    /// Whether the pool has pods and none of them answers: nothing to route to.
    pub fn none_answering<'a>(&self, mut metrics: impl Iterator<Item = &'a EndpointMetrics>, now: Instant) -> bool {
        let Some(first) = metrics.next() else {
            return false;
        };
        self.is_unanswered(first, now) && metrics.all(|m| self.is_unanswered(m, now))
    }

    /// The rule in words, for the reason of a shed decision.
    pub fn describe(&self) -> String {
        format!(
            "no endpoint has fresh metrics (≤{} ms) with queue ≤{} and kv-cache ≤{:.2}",
            self.metrics_staleness_ms, self.queue_depth_threshold, self.kv_cache_threshold
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_pool_is_saturated() {
        assert!(SaturationDetector::default().is_saturated(&[], Instant::now()));
    }

    #[test]
    fn one_fresh_endpoint_with_headroom_is_enough() {
        let now = Instant::now();
        let pool = [
            Endpoint::test("a", now).queue(9).kv(0.9),
            Endpoint::test("b", now).queue(5).kv(0.8),
        ];
        assert!(!SaturationDetector::default().is_saturated(&pool, now));
    }

    #[test]
    fn exceeding_either_threshold_removes_headroom() {
        let now = Instant::now();
        let detector = SaturationDetector::default();
        assert!(detector.is_saturated(&[Endpoint::test("a", now).queue(6)], now));
        assert!(detector.is_saturated(&[Endpoint::test("a", now).kv(0.81)], now));
    }

    #[test]
    fn stale_or_never_scraped_metrics_count_as_saturated() {
        let scraped = Instant::now();
        let detector = SaturationDetector::default();
        let pool = [Endpoint::test("a", scraped), Endpoint::test("b", scraped).scraped(None)];
        assert!(!detector.is_saturated(&pool, scraped + Duration::from_millis(200)));
        assert!(detector.is_saturated(&pool, scraped + Duration::from_millis(201)));
        assert!(detector.is_saturated(&pool[1..], scraped));
    }

    #[test]
    fn thresholds_come_from_the_detector() {
        let now = Instant::now();
        let pool = [Endpoint::test("a", now).queue(7).kv(0.9)];
        let loose = SaturationDetector {
            queue_depth_threshold: 10,
            kv_cache_threshold: 0.95,
            ..SaturationDetector::default()
        };
        assert!(SaturationDetector::default().is_saturated(&pool, now));
        assert!(!loose.is_saturated(&pool, now));
    }
}
