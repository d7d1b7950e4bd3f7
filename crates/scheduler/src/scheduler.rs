//! The scheduler: admission, then the selected profile, then the decision with its reasons.

use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use rand::{Rng, RngCore};

use crate::{
    CHARS_PER_TOKEN, Candidate, ConfigError, Criticality, Decision, Endpoint, EndpointId, LoraState, Outcome,
    PrefixMode, Reason, Request, SchedulerConfig, Scores,
    cycle::{self, Cycle, PrefixHit},
    prefix::{PrefixConfig, PrefixIndex},
    profile::{Profile, Run},
    saturation::SaturationDetector,
};

/// Routes requests over a snapshot of endpoints. Built once from the config; `schedule` takes `&self`
/// and may be called from many threads at once.
///
/// The only state is the prefix index, behind a mutex that is held twice per request and briefly: to
/// look up the prompt's blocks on every endpoint, and to record them on the chosen one.
#[derive(Debug)]
pub struct Scheduler {
    profile: Profile,
    fallbacks: usize,
    saturation: SaturationDetector,
    prefix: PrefixConfig,
    prefix_index: Mutex<PrefixIndex>,
}

impl Scheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            profile: config.selected_profile()?,
            fallbacks: config.fallbacks,
            saturation: config.saturation.clone(),
            prefix: config.prefix,
            prefix_index: Mutex::new(PrefixIndex::new()),
        })
    }

    /// The admission rules (saturation, and when a pool counts as gone).
    pub fn saturation(&self) -> &SaturationDetector {
        &self.saturation
    }

    /// How prompts are cut into prefix blocks.
    pub fn prefix_config(&self) -> &PrefixConfig {
        &self.prefix
    }

    pub fn profile_name(&self) -> &str {
        self.profile.name()
    }

    /// Decides where `request` goes. Never fails: every outcome, including 429 and 503, is a decision
    /// with a reason.
    pub fn schedule<R: Rng + ?Sized>(
        &self,
        request: &Request,
        endpoints: &[Endpoint],
        now: Instant,
        rng: &mut R,
    ) -> Decision {
        let mut rng: &mut R = rng;
        let rng: &mut dyn RngCore = &mut rng;
        let mut decision = self.empty_decision();
        if endpoints.is_empty() {
            return decision;
        }

        // A decision that scores every endpoint on its engine's reported blocks needs no guess: the approximate
        // index is neither read nor taught (hashing a long prompt was most of such a decision's cost). A pod that
        // later falls back finds only what was sent while some pod was approximate, which is what it is: a guess.
        let all_precise = request.tokenized.is_some() && endpoints.iter().all(|e| e.precise_prefix.is_some());
        let mut hashes = Vec::new();
        if !all_precise {
            self.prefix
                .block_hashes(&request.target_model, &request.prompt, &mut hashes);
        }
        let prefix = self.prefix_hits(request, endpoints, &hashes);
        let lora: Vec<LoraState> = endpoints.iter().map(|e| cycle::lora_state(request, e)).collect();
        let cycle = Cycle {
            request,
            endpoints,
            now,
            prefix: &prefix,
            lora: &lora,
        };

        if self
            .saturation
            .none_answering(endpoints.iter().map(|e| &e.metrics), now)
        {
            decision.reason = Reason::NoneAnswering {
                after_ms: self.saturation.unanswered_after_ms,
            };
            decision.candidates = (0..endpoints.len()).map(|idx| candidate(&cycle, idx, None)).collect();
            return decision;
        }
        if request.criticality == Criticality::Sheddable && self.saturation.is_saturated(endpoints, now) {
            decision.outcome = Outcome::Shed429;
            decision.reason = Reason::PoolSaturated {
                rule: self.saturation.describe(),
            };
            decision.candidates = (0..endpoints.len()).map(|idx| candidate(&cycle, idx, None)).collect();
            return decision;
        }

        // One more than needed, in case the pick and a fallback share an endpoint id.
        let run = self.profile.run(&cycle, self.fallbacks.saturating_add(2), rng);
        decision.candidates = (0..endpoints.len())
            .map(|idx| candidate(&cycle, idx, Some(&run)))
            .collect();
        decision.reason = Reason::Profile(run.reason);
        let Some((&winner, rest)) = run.ranked.split_first() else {
            return decision;
        };
        let chosen = &endpoints[winner].id;
        for &idx in rest {
            if decision.fallbacks.len() == self.fallbacks {
                break;
            }
            let id = &endpoints[idx].id;
            if id != chosen && !decision.fallbacks.contains(id) {
                decision.fallbacks.push(id.clone());
            }
        }
        // What we sent where: the next request with this prefix will find it on `chosen`.
        let capacity = self.prefix.capacity_for(endpoints[winner].metrics.kv_cache_tokens);
        self.index().insert(chosen, &hashes, capacity);
        decision.outcome = Outcome::Routed;
        decision.endpoint = Some(chosen.clone());
        decision
    }

    /// What each endpoint holds of the prompt: precise where the gateway looked the tokenized prompt up in the
    /// engine's reported blocks, approximate (this gateway's own index of what it sent) everywhere else.
    fn prefix_hits(&self, request: &Request, endpoints: &[Endpoint], hashes: &[u64]) -> Vec<PrefixHit> {
        let index = self.index();
        let block_chars = self.prefix.block_size_chars.get() as u64;
        endpoints
            .iter()
            .map(|endpoint| match (endpoint.precise_prefix, request.tokenized) {
                (Some(matched), Some(tokenized)) => PrefixHit {
                    mode: PrefixMode::Precise,
                    matched,
                    blocks: tokenized.blocks,
                    cached_tokens: u64::from(matched) * u64::from(tokenized.block_size),
                },
                _ => {
                    let matched = u32::try_from(index.longest_match(&endpoint.id, hashes)).unwrap_or(u32::MAX);
                    PrefixHit {
                        mode: PrefixMode::Approximate,
                        matched,
                        blocks: u32::try_from(hashes.len()).unwrap_or(u32::MAX),
                        cached_tokens: u64::from(matched) * block_chars / CHARS_PER_TOKEN as u64,
                    }
                }
            })
            .collect()
    }

    /// Prompt tokens `candidate`'s endpoint still has to prefill for `request`: the prompt less the prefix the
    /// decision found there (none when the server does not cache prefixes).
    pub fn prefill_tokens(&self, request: &Request, candidate: &Candidate, caches: bool) -> u64 {
        let matched = u64::from(candidate.prefix_match_blocks);
        let cached = match (caches, candidate.prefix_mode, request.tokenized) {
            (false, ..) => 0,
            (true, PrefixMode::Precise, Some(tokenized)) => matched * u64::from(tokenized.block_size),
            (true, ..) => matched * self.prefix.block_size_chars.get() as u64 / CHARS_PER_TOKEN as u64,
        };
        request.prompt_tokens().saturating_sub(cached)
    }

    /// Forgets the prefix state of endpoints that left the pool.
    pub fn retain_endpoints(&self, live: &[EndpointId]) {
        let live: HashSet<&EndpointId> = live.iter().collect();
        self.index().retain(|endpoint| live.contains(endpoint));
    }

    /// Block hashes held by the prefix index, over all endpoints (a gauge for the gateway).
    pub fn prefix_index_len(&self) -> usize {
        self.index().len()
    }

    /// Heap bytes held by the prefix index.
    pub fn prefix_index_bytes(&self) -> usize {
        self.index().heap_bytes()
    }

    /// The index stays consistent even if a holder panicked (every update is a complete touch), so a
    /// poisoned lock is simply taken over.
    fn index(&self) -> MutexGuard<'_, PrefixIndex> {
        self.prefix_index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A 503 "no capacity" decision, to be filled in.
    fn empty_decision(&self) -> Decision {
        Decision {
            outcome: Outcome::NoCapacity503,
            endpoint: None,
            fallbacks: Vec::new(),
            candidates: Vec::new(),
            profile: self.profile.name().to_owned(),
            reason: Reason::NoReadyEndpoints,
        }
    }
}

/// The audit record of one endpoint; `run` is `None` when the request was shed before any profile ran.
///
/// This runs for every endpoint of every decision, so it allocates once (the score vector) and shares
/// the identities (`Arc<str>`) and scorer names (`&'static str`).
fn candidate(cycle: &Cycle<'_>, idx: usize, run: Option<&Run>) -> Candidate {
    let endpoint = &cycle.endpoints[idx];
    let metrics = &endpoint.metrics;
    let filtered_by = run.and_then(|run| run.filtered_by[idx]);
    let (scores, total) = match run {
        Some(run) if filtered_by.is_none() => {
            let mut scores = Scores::with_capacity(run.ratings.len());
            for rating in &run.ratings {
                scores.push(rating.scorer, rating.values[idx]);
            }
            (scores, run.totals[idx])
        }
        _ => (Scores::default(), 0.0),
    };
    Candidate {
        pod: endpoint.pod.clone(),
        endpoint: endpoint.id.clone(),
        queue: metrics.waiting_queue,
        running: metrics.running,
        inflight: endpoint.inflight,
        pending_prefill_tokens: endpoint.pending_prefill_tokens,
        kv_usage: metrics.kv_cache_usage,
        prefix_match_blocks: cycle.prefix[idx].matched,
        prefix_mode: cycle.prefix[idx].mode,
        lora_state: cycle.lora[idx],
        metrics_age_ms: cycle::metrics_age(metrics, cycle.now)
            .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        scores,
        total,
        filtered_by: filtered_by.map(Cow::Borrowed),
    }
}

#[cfg(test)]
mod tests;
