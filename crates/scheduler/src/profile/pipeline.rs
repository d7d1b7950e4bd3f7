//! The scored pipeline: filters narrow, weighted scorers rate, a picker orders (upstream v1 profiles).

use std::fmt::Write;

use rand::RngCore;
use serde::Deserialize;

use super::{Ratings, Run, note_filtered};
use crate::{
    cycle::Cycle,
    filter::{FilterConfig, FreshMetricsFilter},
    picker::PickerConfig,
    scorer::{ScorerConfig, Weight},
};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pipeline {
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    #[serde(default)]
    pub scorers: Vec<ScorerConfig>,
    #[serde(default)]
    pub picker: PickerConfig,
}

/// The built-in `default` profile.
///
/// Weights started from upstream v1.4's built-in default (queue 2, kv-cache 2, prefix-cache 3) and were tuned
/// with `cargo xtask bench routing` on W0, W3a and W7 (BENCHMARKS.md). `inflight` 8 adds the gateway's own
/// count of unfinished requests per pod (one point per request above the least loaded, up to 8): scraped
/// numbers lag a scrape interval behind, and without it a burst (the seed's 60 requests at t=0) lands on
/// whichever pod won the first pick. `prefill-backlog` 4 counts the prompt tokens waiting for a first byte,
/// the work ahead of this request's first token. A full prefix match (4) holds its pod until it carries four
/// more requests than the least loaded one. `lora-affinity` 8 only counts for adapter requests (it abstains
/// otherwise): a pod with no free adapter slot makes the request wait until a whole adapter's batch drains, a
/// cost like eight queued requests, so it weighs as much as `inflight`; an active adapter still spills over to
/// a free slot two requests past the least loaded pod (its lead over a free slot is 0.2 × 8). Stale pods are
/// filtered out first, failing open, so a pod whose scrapes stopped stops attracting traffic on its last good
/// numbers.
impl Default for Pipeline {
    fn default() -> Self {
        let weight = |w| Weight::new(w).unwrap_or_default();
        Self {
            filters: vec![FilterConfig::FreshMetrics(FreshMetricsFilter::default())],
            scorers: vec![
                ScorerConfig::Queue { weight: weight(2.0) },
                ScorerConfig::KvCache { weight: weight(2.0) },
                ScorerConfig::PrefixCache { weight: weight(4.0) },
                ScorerConfig::Inflight { weight: weight(8.0) },
                ScorerConfig::PrefillBacklog { weight: weight(4.0) },
                ScorerConfig::LoraAffinity { weight: weight(8.0) },
            ],
            picker: PickerConfig::MaxScore {},
        }
    }
}

impl Pipeline {
    pub(crate) fn run(&self, cycle: &Cycle<'_>, limit: usize, rng: &mut dyn RngCore) -> Run {
        let n_endpoints = cycle.endpoints.len();
        let mut filtered_by = vec![None; n_endpoints];
        let mut survivors: Vec<usize> = (0..n_endpoints).collect();
        let mut kept_mask = vec![false; n_endpoints];
        for config in &self.filters {
            let filter = config.as_filter();
            let kept = filter.filter(cycle, &survivors, rng);
            for &idx in &kept {
                kept_mask[idx] = true;
            }
            for &idx in &survivors {
                if !kept_mask[idx] {
                    filtered_by[idx] = Some(filter.name());
                }
            }
            for &idx in &kept {
                kept_mask[idx] = false;
            }
            survivors = kept;
            if survivors.is_empty() {
                return Run {
                    ranked: Vec::new(),
                    filtered_by,
                    ratings: Vec::new(),
                    totals: vec![0.0; n_endpoints],
                    reason: format!("filter {} removed every endpoint", filter.name()),
                };
            }
        }

        let mut totals = vec![0.0; n_endpoints];
        let mut buffer = vec![0.0; survivors.len()];
        let mut ratings = Vec::with_capacity(self.scorers.len());
        for config in &self.scorers {
            let scorer = config.as_scorer();
            let weight = config.weight();
            if !scorer.score(cycle, &survivors, &mut buffer) {
                continue;
            }
            let mut values = vec![0.0; n_endpoints];
            for (&idx, &raw) in survivors.iter().zip(&buffer) {
                // A NaN (e.g. from a garbled scrape) must not poison the ordering.
                let value = if raw.is_nan() { 0.0 } else { raw.clamp(0.0, 1.0) };
                values[idx] = value;
                totals[idx] += weight * value;
            }
            ratings.push(Ratings {
                scorer: scorer.name(),
                weight,
                values,
            });
        }

        let picker = self.picker.as_picker();
        let ranked = picker.rank(&survivors, &totals, limit, rng);
        let mut reason = self.explain(&survivors, &ranked, &ratings, &totals);
        note_filtered(&mut reason, survivors.len(), n_endpoints);
        Run {
            ranked,
            filtered_by,
            ratings,
            totals,
            reason,
        }
    }

    /// "max score 6.40 of 8.00: queue 2.00, kv-cache 1.40, prefix-cache 3.00; 2 tied, random tie-break".
    fn explain(&self, survivors: &[usize], ranked: &[usize], ratings: &[Ratings], totals: &[f64]) -> String {
        let Some(&winner) = ranked.first() else {
            return String::new();
        };
        let mut reason = String::new();
        let max_total: f64 = ratings.iter().map(|r| r.weight).sum();
        match self.picker {
            PickerConfig::Random {} => {
                let _ = write!(reason, "random pick among {}", survivors.len());
                return reason;
            }
            PickerConfig::MaxScore {} => {
                let _ = write!(reason, "max score {:.2} of {max_total:.2}", totals[winner]);
            }
            PickerConfig::WeightedRandom {} => {
                let best = survivors
                    .iter()
                    .map(|&idx| totals[idx])
                    .fold(f64::NEG_INFINITY, f64::max);
                let _ = write!(
                    reason,
                    "weighted-random pick, score {:.2} of {max_total:.2} (best {best:.2})",
                    totals[winner]
                );
            }
        }
        for (i, rating) in ratings.iter().enumerate() {
            let separator = if i == 0 { ": " } else { ", " };
            let _ = write!(
                reason,
                "{separator}{} {:.2}",
                rating.scorer,
                rating.weight * rating.values[winner]
            );
        }
        if matches!(self.picker, PickerConfig::MaxScore {}) {
            let tied = survivors.iter().filter(|&&idx| totals[idx] == totals[winner]).count();
            if tied > 1 {
                let _ = write!(reason, "; {tied} tied, random tie-break");
            }
        }
        reason
    }
}
