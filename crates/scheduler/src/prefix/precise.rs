//! The precise prefix index: which KV blocks each engine *reports* resident (vLLM's `BlockStored` /
//! `BlockRemoved` / `AllBlocksCleared` events), not what this gateway guesses from what it sent.
//!
//! # Keys
//! Engines name blocks by their own hashes, which depend on the engine's hash function and seed. The index keys
//! blocks by its own chained hash over token ids instead — `k_0 = xxh3(tokens_0, seed = ROOT ⊕ lora)`,
//! `k_i = xxh3(tokens_i, seed = k_{i−1})` — so a request's prompt, tokenized, yields the same keys whichever
//! engine stored the blocks. Each pod keeps the map from its engine's hashes to these keys, for removals and
//! for the parent of the next stored block. A stored block whose parent the index never saw cannot be placed on a
//! chain and is counted as orphaned.
//!
//! # Scoring
//! A key maps to the pods holding it. A request's keys are walked once from the root, narrowing the set of pods
//! that hold every block so far; each pod's depth is where it drops out. The cost is one map lookup per block
//! until no pod is left, independent of the pool's size.
//!
//! # Memory
//! Per resident block and pod: one entry in the pod's engine-hash map (`u64 → u64`, 16 bytes plus a control byte
//! at ≤ 7/8 load); per distinct block, one entry in the holders map (the key and a pod set: 64 pods as an inline
//! bit mask, more in a list; 40 bytes plus a control byte), shared by the pods holding it.
//! [`PreciseIndex::heap_bytes`] counts the allocated capacities; `cargo xtask bench overhead` states the figure at
//! one million resident blocks.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::EndpointId;

/// Seed of the first block of a chain (then XORed with the LoRA adapter id + 1, so adapters never share blocks).
const ROOT: u64 = 0x5357_4954_4348_5944;

/// A block of a prompt, named by its tokens and everything before them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey(pub u64);

/// Chains `block`'s tokens onto `parent` (`None` for a prompt's first block).
pub fn chain(parent: Option<BlockKey>, block: &[u32], lora: Option<u32>) -> BlockKey {
    let seed = match parent {
        Some(BlockKey(parent)) => parent,
        None => ROOT ^ lora.map_or(0, |id| u64::from(id) + 1),
    };
    let mut bytes = [0u8; 4 * 64];
    let mut hash = seed;
    // Tokens are hashed in chunks of 64 so a block of any size needs no allocation.
    for chunk in block.chunks(64) {
        for (i, t) in chunk.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&t.to_le_bytes());
        }
        hash = xxh3_64_with_seed(&bytes[..4 * chunk.len()], hash);
    }
    BlockKey(hash)
}

/// The keys of every full block of `tokens`, `block_size` tokens each, at most `max_blocks`.
pub fn block_keys(tokens: &[u32], block_size: usize, lora: Option<u32>, max_blocks: usize) -> Vec<BlockKey> {
    let mut keys = Vec::with_capacity((tokens.len() / block_size.max(1)).min(max_blocks));
    let mut parent = None;
    for block in tokens.chunks_exact(block_size.max(1)).take(max_blocks) {
        let key = chain(parent, block, lora);
        keys.push(key);
        parent = Some(key);
    }
    keys
}

/// Why a `BlockStored` event could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{tokens} token ids for {blocks} blocks of {block_size}")]
    TokenCount {
        tokens: usize,
        blocks: usize,
        block_size: usize,
    },
    #[error("parent block {0:#x} is not known on this pod")]
    UnknownParent(u64),
}

/// One pod's view: its engine's hashes and the keys they stand for.
#[derive(Debug, Default)]
struct Pod {
    slot: u32,
    blocks: HashMap<u64, BlockKey, Mix>,
}

/// Resident blocks of every subscribed pod.
#[derive(Debug, Default)]
pub struct PreciseIndex {
    pods: HashMap<EndpointId, Pod>,
    /// Slot → pod, for turning holder slots back into endpoints; `None` for a freed slot.
    slots: Vec<Option<EndpointId>>,
    holders: HashMap<BlockKey, PodSet, Mix>,
}

impl PreciseIndex {
    pub fn new() -> PreciseIndex {
        PreciseIndex::default()
    }

    /// Applies a `BlockStored` event: `hashes` are consecutive blocks, the first one a child of `parent` (an
    /// engine hash, `None` for a prompt's first block), with `block_size` tokens each in `tokens`.
    pub fn stored(
        &mut self,
        pod: &EndpointId,
        hashes: &[u64],
        parent: Option<u64>,
        tokens: &[u32],
        block_size: usize,
        lora: Option<u32>,
    ) -> Result<(), StoreError> {
        if block_size == 0 || tokens.len() != hashes.len() * block_size {
            return Err(StoreError::TokenCount {
                tokens: tokens.len(),
                blocks: hashes.len(),
                block_size,
            });
        }
        let slot = self.slot(pod);
        let Some(state) = self.pods.get_mut(pod) else {
            return Ok(());
        };
        let mut parent_key = match parent {
            Some(hash) => Some(*state.blocks.get(&hash).ok_or(StoreError::UnknownParent(hash))?),
            None => None,
        };
        for (hash, block) in hashes.iter().zip(tokens.chunks_exact(block_size)) {
            let key = chain(parent_key, block, lora);
            if let Some(old) = state.blocks.insert(*hash, key)
                && old != key
            {
                release(&mut self.holders, old, slot);
            }
            self.holders.entry(key).or_default().insert(slot);
            parent_key = Some(key);
        }
        Ok(())
    }

    /// Applies a `BlockRemoved` event; unknown hashes are ignored (stored before the subscription began).
    pub fn removed(&mut self, pod: &EndpointId, hashes: &[u64]) {
        let Some(state) = self.pods.get_mut(pod) else {
            return;
        };
        for hash in hashes {
            if let Some(key) = state.blocks.remove(hash) {
                release(&mut self.holders, key, state.slot);
            }
        }
    }

    /// Applies `AllBlocksCleared`: the pod holds nothing.
    pub fn cleared(&mut self, pod: &EndpointId) {
        let Some(state) = self.pods.get_mut(pod) else {
            return;
        };
        for (_, key) in state.blocks.drain() {
            release(&mut self.holders, key, state.slot);
        }
    }

    /// Forgets a pod that left the pool (or whose state can no longer be trusted), freeing its slot.
    pub fn remove_pod(&mut self, pod: &EndpointId) {
        self.cleared(pod);
        if let Some(state) = self.pods.remove(pod) {
            self.slots[state.slot as usize] = None;
        }
    }

    /// For each pod holding at least the first of `keys`, how many leading blocks of `keys` it holds.
    pub fn longest_prefixes(&self, keys: &[BlockKey]) -> Vec<(EndpointId, u32)> {
        let mut depths = Vec::new();
        self.walk(keys, |slot, depth| {
            if let Some(Some(id)) = self.slots.get(slot as usize) {
                depths.push((id.clone(), depth));
            }
        });
        depths
    }

    /// How many leading blocks of `keys` each of `pods` holds (0 for a pod that holds none or is unknown), in the
    /// order given: what a decision needs, without cloning ids or matching them up pairwise.
    pub fn prefix_depths(&self, keys: &[BlockKey], pods: &[EndpointId]) -> Vec<u32> {
        let mut by_slot = vec![0u32; self.slots.len()];
        self.walk(keys, |slot, depth| {
            if let Some(at) = by_slot.get_mut(slot as usize) {
                *at = depth;
            }
        });
        pods.iter()
            .map(|pod| self.pods.get(pod).map_or(0, |state| by_slot[state.slot as usize]))
            .collect()
    }

    /// Calls `reached(slot, depth)` once for every slot holding the first of `keys`, with the number of leading
    /// keys it holds.
    fn walk(&self, keys: &[BlockKey], mut reached: impl FnMut(u32, u32)) {
        let Some(first) = keys.first().and_then(|k| self.holders.get(k)) else {
            return;
        };
        let mut alive = first.clone();
        let mut depth = 1u32;
        // Lookups go out a batch at a time: they do not depend on each other, so the processor overlaps their cache
        // misses, which are the whole cost of a walk over a large index. At most one batch is looked up in vain.
        'walk: for batch in keys[1..].chunks(LOOKUP_BATCH) {
            let mut found: [Option<&PodSet>; LOOKUP_BATCH] = [None; LOOKUP_BATCH];
            for (slot, key) in found.iter_mut().zip(batch) {
                *slot = self.holders.get(key);
            }
            for holders in &found[..batch.len()] {
                let next = match holders {
                    Some(holders) => alive.intersection(holders),
                    None => PodSet::default(),
                };
                alive.for_each_missing_from(&next, |slot| reached(slot, depth));
                alive = next;
                if alive.is_empty() {
                    break 'walk;
                }
                depth += 1;
            }
        }
        alive.for_each(|slot| reached(slot, depth));
    }

    /// Blocks resident over all pods (a block held by two pods counts twice).
    pub fn resident_blocks(&self) -> usize {
        self.pods.values().map(|p| p.blocks.len()).sum()
    }

    /// Heap bytes allocated by the index (from capacities, so a benchmark can state a cost per block).
    pub fn heap_bytes(&self) -> usize {
        let pod_maps: usize = self
            .pods
            .values()
            .map(|p| p.blocks.capacity() * (std::mem::size_of::<(u64, BlockKey)>() + 1))
            .sum();
        let holder_lists: usize = self
            .holders
            .values()
            .map(|h| h.high.capacity() * std::mem::size_of::<u32>())
            .sum();
        let holder_map = self.holders.capacity() * (std::mem::size_of::<(BlockKey, PodSet)>() + 1);
        pod_maps + holder_lists + holder_map
    }

    /// The pod's slot, assigning the first free one to a new pod.
    fn slot(&mut self, pod: &EndpointId) -> u32 {
        if let Some(state) = self.pods.get(pod) {
            return state.slot;
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(pod.clone());
                free
            }
            None => {
                self.slots.push(Some(pod.clone()));
                self.slots.len() - 1
            }
        };
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        self.pods.insert(
            pod.clone(),
            Pod {
                slot,
                blocks: HashMap::default(),
            },
        );
        slot
    }
}

/// Keys looked up together in a walk.
const LOOKUP_BATCH: usize = 16;

/// Drops `slot` from `key`'s holders, and the key once nobody holds it.
fn release(holders: &mut HashMap<BlockKey, PodSet, Mix>, key: BlockKey, slot: u32) {
    if let Some(set) = holders.get_mut(&key) {
        set.remove(slot);
        if set.is_empty() {
            holders.remove(&key);
        }
    }
}

/// The pods holding a block: the first 64 slots as bits, inline in the map entry (one cache line per lookup, the
/// whole cost of a walk), the rest in a list that stays empty for pools up to 64 pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodSet {
    low: u64,
    high: Vec<u32>,
}

impl PodSet {
    fn insert(&mut self, slot: u32) {
        if slot < 64 {
            self.low |= 1 << slot;
        } else if !self.high.contains(&slot) {
            self.high.push(slot);
        }
    }

    fn remove(&mut self, slot: u32) {
        if slot < 64 {
            self.low &= !(1 << slot);
        } else {
            self.high.retain(|&s| s != slot);
        }
    }

    fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_empty()
    }

    fn intersection(&self, other: &PodSet) -> PodSet {
        PodSet {
            low: self.low & other.low,
            high: self.high.iter().copied().filter(|s| other.high.contains(s)).collect(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(u32)) {
        let mut bits = self.low;
        while bits != 0 {
            f(bits.trailing_zeros());
            bits &= bits - 1;
        }
        self.high.iter().copied().for_each(f);
    }

    /// Calls `f` for every slot of `self` not in `other`.
    fn for_each_missing_from(&self, other: &PodSet, mut f: impl FnMut(u32)) {
        let mut bits = self.low & !other.low;
        while bits != 0 {
            f(bits.trailing_zeros());
            bits &= bits - 1;
        }
        self.high
            .iter()
            .copied()
            .filter(|s| !other.high.contains(s))
            .for_each(f);
    }
}

/// A cheap hasher for keys that are already 64-bit hashes (ours) or engine hashes (possibly small integers): one
/// multiply and a fold spread any input over the bits hashbrown uses, at a fraction of SipHash's cost.
type Mix = BuildHasherDefault<MixHasher>;

#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mixed = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> EndpointId {
        EndpointId::new(name)
    }

    /// Tokens of `n` blocks of 4, block `i` filled with `base + i`.
    fn tokens(base: u32, n: u32) -> Vec<u32> {
        (0..n).flat_map(|i| [base + i; 4]).collect()
    }

    #[test]
    fn each_pod_matches_as_deep_as_its_engine_reports() {
        let mut index = PreciseIndex::new();
        let prompt = tokens(100, 4);
        // Pod a stored all four blocks in two events (the second a child of the first's last block).
        index.stored(&pod("a"), &[11, 12], None, &prompt[..8], 4, None).unwrap();
        index
            .stored(&pod("a"), &[13, 14], Some(12), &prompt[8..], 4, None)
            .unwrap();
        // Pod b, with different engine hashes, only the first two.
        index
            .stored(&pod("b"), &[901, 902], None, &prompt[..8], 4, None)
            .unwrap();
        // Pod c holds another prompt.
        index.stored(&pod("c"), &[5], None, &tokens(7, 1), 4, None).unwrap();

        let keys = block_keys(&prompt, 4, None, 64);
        let mut depths = index.longest_prefixes(&keys);
        depths.sort();
        assert_eq!(depths, [(pod("a"), 4), (pod("b"), 2)]);
        // The same, in the asked order, with a pod holding none of it and one the index never heard of.
        assert_eq!(
            index.prefix_depths(&keys, &[pod("c"), pod("b"), pod("z"), pod("a")]),
            [0, 2, 0, 4]
        );

        // Evicting a's second block cuts its run there, whatever it holds deeper.
        index.removed(&pod("a"), &[12]);
        let mut depths = index.longest_prefixes(&keys);
        depths.sort();
        assert_eq!(depths, [(pod("a"), 1), (pod("b"), 2)]);

        index.cleared(&pod("b"));
        assert_eq!(index.longest_prefixes(&keys), [(pod("a"), 1)]);
        assert_eq!(index.resident_blocks(), 3 + 1);
    }

    #[test]
    fn walks_longer_than_a_lookup_batch_count_every_block() {
        let mut index = PreciseIndex::new();
        let prompt = tokens(1, 40);
        let hashes: Vec<u64> = (0..40).collect();
        index.stored(&pod("a"), &hashes, None, &prompt, 4, None).unwrap();
        index
            .stored(&pod("b"), &hashes[..17], None, &prompt[..17 * 4], 4, None)
            .unwrap();
        index
            .stored(&pod("c"), &hashes[..32], None, &prompt[..32 * 4], 4, None)
            .unwrap();
        let mut depths = index.longest_prefixes(&block_keys(&prompt, 4, None, 64));
        depths.sort();
        assert_eq!(depths, [(pod("a"), 40), (pod("b"), 17), (pod("c"), 32)]);
    }

    #[test]
    fn lora_adapters_and_different_tokens_never_match() {
        let mut index = PreciseIndex::new();
        let prompt = tokens(1, 2);
        index.stored(&pod("a"), &[1, 2], None, &prompt, 4, Some(3)).unwrap();
        assert!(index.longest_prefixes(&block_keys(&prompt, 4, None, 8)).is_empty());
        assert_eq!(
            index.longest_prefixes(&block_keys(&prompt, 4, Some(3), 8)),
            [(pod("a"), 2)]
        );
        assert!(
            index
                .longest_prefixes(&block_keys(&tokens(2, 2), 4, Some(3), 8))
                .is_empty()
        );
    }

    #[test]
    fn bad_events_are_refused_and_change_nothing() {
        let mut index = PreciseIndex::new();
        assert_eq!(
            index.stored(&pod("a"), &[1, 2], None, &tokens(0, 1), 4, None),
            Err(StoreError::TokenCount {
                tokens: 4,
                blocks: 2,
                block_size: 4
            })
        );
        assert_eq!(
            index.stored(&pod("a"), &[2], Some(77), &tokens(0, 1), 4, None),
            Err(StoreError::UnknownParent(77))
        );
        assert_eq!(index.resident_blocks(), 0);
    }

    #[test]
    fn a_removed_pod_frees_its_slot_and_its_blocks() {
        let mut index = PreciseIndex::new();
        let prompt = tokens(1, 3);
        index.stored(&pod("a"), &[1, 2, 3], None, &prompt, 4, None).unwrap();
        index.stored(&pod("b"), &[1, 2, 3], None, &prompt, 4, None).unwrap();
        index.remove_pod(&pod("a"));
        index.stored(&pod("c"), &[4], None, &prompt[..4], 4, None).unwrap();
        let mut depths = index.longest_prefixes(&block_keys(&prompt, 4, None, 8));
        depths.sort();
        assert_eq!(depths, [(pod("b"), 3), (pod("c"), 1)]);
        assert_eq!(index.resident_blocks(), 4);
        assert!(index.heap_bytes() > 0);
    }
}
