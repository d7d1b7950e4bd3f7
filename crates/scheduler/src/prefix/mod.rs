//! Prefix affinity: which endpoint was last sent which prompt prefix, so a request can follow its prefix to
//! a warm KV cache.
//!
//! # Hashing
//! The prompt's bytes are cut into blocks of `blockSizeChars` (64 by default: vLLM's 16-token KV block at
//! roughly 4 characters a token), at most `maxBlocks` of them; a trailing partial block is ignored.
//! Hashes are chained, so a block's hash stands for the whole prefix up to it:
//! `h0 = xxh3(block0, seed = xxh3(target_model))`, `h_i = xxh3(block_i, seed = h_{i−1})`. Working on bytes
//! rather than characters means a block may end inside a UTF-8 sequence, which is harmless for hashing.
//!
//! # Index
//! Each endpoint has a bounded LRU set of block hashes (`lruCapacityPerEndpoint`, 31 250 by default:
//! about 500 000 tokens of KV cache in 16-token blocks), a recency list threaded through a slab with
//! O(1) touch and eviction and no deferred clean-up that could land on one unlucky request. After a request is routed, its hashes are
//! touched on the chosen endpoint deepest first, so the shallowest block is the most recent. Since a
//! block's ancestors are touched whenever it is, an ancestor is never older than its descendants and the
//! LRU always evicts a descendant first: every endpoint's set stays *prefix-closed* (holding `h_i`
//! implies holding `h_0..h_i`). The longest match is therefore monotone along the chain and found by
//! binary search, O(log n) lookups per endpoint instead of n.
//!
//! # Memory
//! An entry is a `(u64 hash, u32 node)` bucket in a hashbrown table (16 bytes with padding, plus 1
//! control byte; the table is sized in powers of two and at most 7/8 full) and a 16-byte node of the
//! recency list (`u64` hash and two `u32` links). Both are reserved for the full capacity when an
//! endpoint first receives a request, because growing the table later would rehash it inside some
//! request's update. At the default capacity of 31 250 entries that is a 65 536-bucket table (1.11 MB)
//! and 31 250 nodes (0.50 MB): **51.7 bytes per entry, 1.6 MB per endpoint**, about 105 MB of address
//! space for a 64-pod pool (pages are committed as entries land in them). For other capacities the
//! table's share varies with the power-of-two rounding between 19 and 39 bytes per entry. The test
//! `a_full_endpoint_costs_about_fifty_bytes_per_entry` computes it from the allocated capacities.

mod lru;
pub mod precise;

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    num::NonZeroUsize,
};

use serde::Deserialize;
use xxhash_rust::{
    xxh3::{xxh3_64, xxh3_64_with_seed},
    xxh64::xxh64,
};

use self::lru::BlockLru;
use crate::EndpointId;

/// How prompts are cut into blocks and how much each endpoint remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixConfig {
    /// Bytes per block.
    pub block_size_chars: NonZeroUsize,
    /// Blocks hashed per prompt; later bytes are ignored.
    pub max_blocks: NonZeroUsize,
    /// Block hashes remembered per endpoint.
    pub lru_capacity_per_endpoint: NonZeroUsize,
}

/// vLLM's 16-token KV block at about 4 characters per token.
const DEFAULT_BLOCK_SIZE_CHARS: NonZeroUsize = nonzero(64);
/// 256 blocks ≈ 4096 tokens: deeper prefixes rarely change which endpoint wins.
const DEFAULT_MAX_BLOCKS: NonZeroUsize = nonzero(256);
/// Upstream's estimate: (80 GB − 16 GB of weights) / 128 KB of KV cache per token ≈ 500 000 tokens,
/// in 16-token blocks.
const DEFAULT_LRU_CAPACITY: NonZeroUsize = nonzero(31_250);

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            block_size_chars: DEFAULT_BLOCK_SIZE_CHARS,
            max_blocks: DEFAULT_MAX_BLOCKS,
            lru_capacity_per_endpoint: DEFAULT_LRU_CAPACITY,
        }
    }
}

/// A non-zero literal, checked when the constant is evaluated at compile time.
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("a prefix size must not be zero"),
    }
}

impl PrefixConfig {
    /// How many blocks an endpoint's index may hold when its server reports a KV cache of `kv_cache_tokens`:
    /// believing more is cached than fits would route requests to prefixes the server already evicted.
    pub fn capacity_for(&self, kv_cache_tokens: Option<u64>) -> usize {
        let configured = self.lru_capacity_per_endpoint.get();
        match kv_cache_tokens {
            Some(tokens) => {
                let blocks = tokens.saturating_mul(crate::CHARS_PER_TOKEN as u64) / self.block_size_chars.get() as u64;
                usize::try_from(blocks).unwrap_or(usize::MAX).clamp(1, configured)
            }
            None => configured,
        }
    }

    /// Writes the chained block hashes of `prompt` into `hashes` (cleared first).
    pub fn block_hashes(&self, target_model: &str, prompt: &str, hashes: &mut Vec<u64>) {
        hashes.clear();
        let block_size = self.block_size_chars.get();
        hashes.reserve((prompt.len() / block_size).min(self.max_blocks.get()));
        // Each block is hashed with its parent's hash as the seed, which chains the blocks like
        // upstream's `xxh64(block ‖ parent)` without copying every block into a scratch buffer; the
        // chain starts from the target model, so two models never share cache entries.
        let mut parent = xxh3_64(target_model.as_bytes());
        for block in prompt.as_bytes().chunks_exact(block_size).take(self.max_blocks.get()) {
            parent = xxh3_64_with_seed(block, parent);
            hashes.push(parent);
        }
    }
}

/// Per-endpoint LRU sets of block hashes: "what we sent where", a model of the servers' prefix caches.
#[derive(Clone, Debug, Default)]
pub struct PrefixIndex {
    endpoints: HashMap<EndpointId, BlockLru, BuildHasherDefault<IdHasher>>,
}

/// Every request looks up every endpoint id, a short string: one-shot xxh64 over it costs a fraction of
/// SipHash or of xxh64's streaming state. The ids come from our own pod list, so flooding is no concern.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh64(bytes, self.0);
    }
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self {
            endpoints: HashMap::default(),
        }
    }

    /// How many leading blocks of the chain `hashes` the endpoint holds.
    pub fn longest_match(&self, endpoint: &EndpointId, hashes: &[u64]) -> usize {
        let Some(lru) = self.endpoints.get(endpoint) else {
            return 0;
        };
        let n = hashes.len();
        // Most endpoints hold none or all of a prompt, so probe both ends before bisecting.
        if n == 0 || !lru.contains(hashes[0]) {
            return 0;
        }
        if lru.contains(hashes[n - 1]) {
            return n;
        }
        // Prefix-closed sets make "holds block i" monotone: the answer lies in [lo, hi].
        let (mut lo, mut hi) = (1, n - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if lru.contains(hashes[mid - 1]) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Records that the prompt with these block hashes was sent to `endpoint`, whose set holds at most
    /// `capacity` blocks (see [`PrefixConfig::capacity_for`]).
    pub fn insert(&mut self, endpoint: &EndpointId, hashes: &[u64], capacity: usize) {
        if hashes.is_empty() {
            return;
        }
        // A capacity learnt after the first request (the server's first scrape) replaces the guess once;
        // the set starts cold rather than being compacted, which would cost one request a long pause.
        if self
            .endpoints
            .get(endpoint)
            .is_none_or(|lru| lru.capacity() != capacity)
        {
            self.endpoints.insert(endpoint.clone(), BlockLru::new(capacity));
        }
        let Some(lru) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        // Deepest first, so that the shallowest blocks are the most recent and evicted last.
        for &hash in hashes.iter().rev() {
            lru.touch(hash);
        }
    }

    /// Forgets every endpoint for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&EndpointId) -> bool) {
        self.endpoints.retain(|endpoint, _| keep(endpoint));
    }

    /// Block hashes held, over all endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.values().map(BlockLru::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest number of blocks `endpoint`'s set holds, if it has one.
    pub fn capacity(&self, endpoint: &EndpointId) -> Option<usize> {
        self.endpoints.get(endpoint).map(BlockLru::capacity)
    }

    /// Heap bytes held by the per-endpoint sets (not counting the endpoint ids).
    pub fn heap_bytes(&self) -> usize {
        self.endpoints.values().map(BlockLru::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests;
