//! `prefill-backlog`: favours the endpoint where this request's first token would come soonest, counting the prompt
//! tokens already waiting there for their prefill plus this prompt's own uncached tokens on that endpoint.
//!
//! A model server prefills waiting prompts before it emits their first token, so the tokens ahead of a request are
//! what its TTFT pays for. The gateway knows them exactly for its own traffic (sent, first byte not yet back),
//! unlike the scraped queue length, which counts a 50-token chat and a 6 000-token document alike and lags by a
//! scrape. A prefix hit shrinks the request's own share on the endpoint that holds the prefix, so affinity and load
//! are weighed in one unit: tokens to prefill.

use super::Scorer;
use crate::cycle::Cycle;

/// A backlog this many tokens above the smallest rates 0: about one long document, a few seconds of prefill on the
/// simulated 4×A10 and well under one on an H100 — enough that one short prompt of difference barely counts.
const SPREAD_TOKENS: f64 = 8_192.0;
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefillBacklogScorer;

impl PrefillBacklogScorer {
    /// Tokens to prefill on `idx` before this request's first token: the backlog plus its uncached tokens.
    ///
    /// The backlog is the gateway's own pending tokens or, when the server reports more waiting requests than
    /// those explain (other gateways, traffic from before a restart), its waiting queue counted as prompts as
    /// long as this one: the best guess without their lengths.
    fn backlog(cycle: &Cycle<'_>, idx: usize) -> f64 {
        let prompt_tokens = cycle.request.prompt_tokens();
        let queued = u64::from(cycle.metrics(idx).waiting_queue).saturating_mul(prompt_tokens);
        let pending = cycle.endpoints[idx].pending_prefill_tokens.max(queued);
        let cached_tokens = if cycle.metrics(idx).prefix_caching == Some(false) {
            0
        } else {
            cycle.prefix[idx].cached_tokens
        };
        let own = prompt_tokens.saturating_sub(cached_tokens);
        pending as f64 + own as f64
    }
}

impl Scorer for PrefillBacklogScorer {
    fn name(&self) -> &'static str {
        "prefill-backlog"
    }

    fn score(&self, cycle: &Cycle<'_>, candidates: &[usize], scores: &mut [f64]) -> bool {
        let min = candidates
            .iter()
            .map(|&idx| Self::backlog(cycle, idx))
            .fold(f64::INFINITY, f64::min);
        for (score, &idx) in scores.iter_mut().zip(candidates) {
            let above = Self::backlog(cycle, idx) - min;
            *score = 1.0 - (above / SPREAD_TOKENS).min(1.0);
        }
        true
    }
}
