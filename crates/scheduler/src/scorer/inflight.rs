//! `inflight`: favours endpoints with fewer requests this gateway has sent and not yet seen finish.
//!
//! Scraped queue and running counts lag by up to a scrape interval; a burst (the seed's 60 requests at t=0)
//! arrives faster than that, sees identical numbers everywhere and would pile onto one pod. The gateway's own
//! count moves with every pick, so it spreads a burst at once.
//!
//! Unlike the min–max scorers, one extra request does not swing the full weight: the score falls by
//! `1 / SPREAD` per request above the least loaded candidate. A warm prefix can therefore hold its pod a few
//! requests past the others (prefill saved is worth some queueing), but never without bound.

use super::Scorer;
use crate::cycle::Cycle;

/// Requests above the least-loaded candidate at which the score reaches zero. With the default weight (8) each
/// request costs one point, and the cap (8) lies above what prefix affinity and the prefill backlog can add up
/// to for a short prompt, so a popular prefix spills over instead of piling onto its pod.
const SPREAD: u32 = 8;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightScorer;

impl Scorer for InflightScorer {
    fn name(&self) -> &'static str {
        "inflight"
    }

    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        let inflight = |idx: usize| cycle.endpoints[idx].inflight;
        let min = candidates.iter().map(|&idx| inflight(idx)).min().unwrap_or(0);
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            let above = (inflight(idx) - min).min(SPREAD);
            *score = 1.0 - f64::from(above) / f64::from(SPREAD);
        }
        true
    }
}
