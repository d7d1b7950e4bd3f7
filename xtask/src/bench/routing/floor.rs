//! The workload's floor in a report: the mean and P90 TTFT of an oracle that prefills each request alone at its
//! best possible cache hit (`vllm_sim::oracle`), the physical limit no router can beat on this fleet.

use vllm_sim::{
    EngineConfig,
    oracle::{self, Fleet},
    tokenize::tokenize,
};

use crate::{load::percentile, workload::BenchRequest};

/// Floor TTFT figures of one dataset (or their mean over seeds), in simulated ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Floor {
    pub(crate) mean_ms: f64,
    pub(crate) p90_ms: f64,
    /// Whether the fleet caches prefixes, so later requests may hit earlier ones.
    pub(crate) prefix_caching: bool,
}

impl Floor {
    /// The floor of `dataset` on the benchmark's pods (the simulator's default engine, caching prefixes when the
    /// race's pods do).
    pub(crate) fn of(dataset: &[BenchRequest], prefix_caching: bool) -> Floor {
        let engine = EngineConfig::default();
        let fleet = Fleet {
            model: engine.profile.model(),
            chunk: u64::from(engine.max_num_batched_tokens),
            prefix_caching,
        };
        let prompts: Vec<Vec<u32>> = dataset.iter().map(|r| tokenize(&r.prompt)).collect();
        let mut ttfts = oracle::floor_ttft_ms(&fleet, prompts.iter().map(Vec::as_slice));
        let mean_ms = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
        ttfts.sort_by(f64::total_cmp);
        Floor {
            mean_ms,
            p90_ms: percentile(&ttfts, 90.0),
            prefix_caching: fleet.prefix_caching,
        }
    }

    /// The mean over seeds.
    pub(crate) fn mean_of(floors: &[Floor]) -> Floor {
        let n = floors.len().max(1) as f64;
        Floor {
            mean_ms: floors.iter().map(|f| f.mean_ms).sum::<f64>() / n,
            p90_ms: floors.iter().map(|f| f.p90_ms).sum::<f64>() / n,
            prefix_caching: floors.iter().any(|f| f.prefix_caching),
        }
    }

    /// One sentence for the report.
    pub(crate) fn describe(&self) -> String {
        let hit = if self.prefix_caching {
            "at the longest prefix it shares with any earlier request (prefix caching on)"
        } else {
            "with no cache hit (prefix caching off, as vLLM 0.7's V0 default)"
        };
        format!(
            "Floor: TTFT mean {:.0} ms, P90 {:.0} ms — each request prefilled alone on an idle pod {hit}; no queueing, \
             no batching with others, no HTTP. The ratios above are each router's distance from it.",
            self.mean_ms, self.p90_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{self, Workload};

    #[test]
    fn shared_prefixes_lower_the_floor_only_when_the_fleet_caches_them() {
        let shared = workload::generate(Workload::SharedPrefix, 50, 0);
        let cached = Floor::of(&shared, Workload::SharedPrefix.prefix_caching());
        let seed = workload::generate(Workload::Seed, 50, 0);
        let uncached = Floor::of(&seed, Workload::Seed.prefix_caching());
        assert!(cached.prefix_caching && !uncached.prefix_caching);
        // 4 800-token prompts: ~2.1 s cold, ~0.4 s when the 4 000-token system prompt is cached; most of the 50 have
        // a group-mate before them (10 groups of 5).
        assert!(cached.mean_ms < 1_200.0 && cached.p90_ms > 1_900.0, "{cached:?}");
        // The seed's prompts: 1 000 + U[800, 4 000] tokens, ~1.5 s mean cold.
        assert!((1_100.0..1_900.0).contains(&uncached.mean_ms), "{uncached:?}");
        assert!(uncached.p90_ms > uncached.mean_ms);
    }
}
