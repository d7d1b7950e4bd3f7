//! The floor of a workload: each request's TTFT if it were prefilled alone, at the best cache hit it could have.
//!
//! No router can beat this on a fleet of these engines: it removes queueing, batching with other requests and
//! every cache miss that an earlier request could have prevented (a replica that had seen every earlier prompt,
//! with unbounded KV). Routing reports print it so that "better than random" can be read against "how far from
//! the physical limit".

use std::collections::HashSet;

use crate::kv::{BLOCK_SIZE, block_hash};
use crate::profile::StepModel;

/// The fleet the floor is computed for.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub model: StepModel,
    /// Most tokens prefilled per step (`max_num_batched_tokens`).
    pub chunk: u64,
    /// Whether the engines cache prefixes (vLLM's APC); without it no request has a hit.
    pub prefix_caching: bool,
}

/// The floor TTFT (simulated ms) of each prompt, in order; a prompt may hit the full blocks it shares with any
/// earlier one, and at least one token is always computed, as in the engine.
pub fn floor_ttft_ms<'a>(fleet: &Fleet, prompts: impl IntoIterator<Item = &'a [u32]>) -> Vec<f64> {
    let mut seen: HashSet<u64> = HashSet::new();
    prompts
        .into_iter()
        .map(|prompt| {
            let len = prompt.len();
            let mut cached_blocks = 0;
            if fleet.prefix_caching && len > 0 {
                let mut parent = None;
                let mut hit = true;
                for (k, block) in prompt.chunks_exact(BLOCK_SIZE).enumerate() {
                    let hash = block_hash(parent, block, 0);
                    if hit && k < (len - 1) / BLOCK_SIZE && seen.contains(&hash) {
                        cached_blocks += 1;
                    } else {
                        hit = false;
                    }
                    seen.insert(hash);
                    parent = Some(hash);
                }
            }
            let cached = (cached_blocks * BLOCK_SIZE) as u64;
            fleet.model.solo_prefill_after_hit_ms(len as u64, cached, fleet.chunk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(prefix_caching: bool) -> Fleet {
        Fleet {
            model: StepModel::QWQ_32B_4XA10,
            chunk: 8192,
            prefix_caching,
        }
    }

    #[test]
    fn a_lone_prompt_costs_its_solo_prefill() {
        let prompt: Vec<u32> = (0..1000).collect();
        let floor = floor_ttft_ms(&fleet(true), [prompt.as_slice()]);
        assert!((floor[0] - 440.0).abs() < 10.0, "{floor:?}");
    }

    #[test]
    fn later_prompts_hit_the_full_blocks_they_share_only_with_caching_on() {
        let system: Vec<u32> = (0..4000).collect();
        let a: Vec<u32> = system.iter().copied().chain(10_000..10_800).collect();
        let b: Vec<u32> = system.iter().copied().chain(20_000..20_800).collect();
        let on = floor_ttft_ms(&fleet(true), [a.as_slice(), b.as_slice(), a.as_slice()]);
        let off = floor_ttft_ms(&fleet(false), [a.as_slice(), b.as_slice()]);
        assert_eq!(on[0], off[0], "the first request has nothing to hit");
        assert_eq!(off[0], off[1]);
        // b computes only its 800 own tokens (4000 is a whole number of blocks) over 4000 cached ones.
        let expected = StepModel::QWQ_32B_4XA10.solo_prefill_after_hit_ms(4800, 4000, 8192);
        assert!((on[1] - expected).abs() < 1e-9, "{} vs {expected}", on[1]);
        assert!(on[1] < on[0] / 3.0);
        // A repeat of a hits everything but its last block, which holds the token always recomputed.
        let repeat = StepModel::QWQ_32B_4XA10.solo_prefill_after_hit_ms(4800, 4784, 8192);
        assert!((on[2] - repeat).abs() < 1e-9, "{} vs {repeat}", on[2]);
    }
}
