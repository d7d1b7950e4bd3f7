//! KV-cache block manager: fixed pool of blocks, refcounts, LRU free queue and the prefix-cache index.

use std::collections::HashMap;

use crate::kv_events::{KvEvent, push_merged};

/// Tokens per KV block (vLLM's default `--block-size`).
pub const BLOCK_SIZE: usize = 16;

/// Index of a physical block.
pub(crate) type BlockId = u32;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_count: u32,
    /// Content hash when the block is full and registered in the prefix index.
    hash: Option<u64>,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Result of looking a token sequence up in the prefix cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrefixHit {
    /// Resident blocks covering the longest cached prefix, in order.
    pub(crate) blocks: Vec<BlockId>,
    /// How many of them are unreferenced (so currently counted as free).
    pub(crate) evictable: usize,
}

/// The block pool of one replica.
///
/// Blocks with refcount 0 sit in a doubly linked free queue in eviction order. Blocks that still carry a
/// cached hash are appended at the tail (least recently used evicted first), blocks without one are
/// pushed at the head because nothing is lost by reusing them. Evictable cached blocks count as free,
/// exactly as vLLM reports them.
#[derive(Debug)]
pub(crate) struct BlockManager {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    prefix_caching: bool,
    cached: HashMap<u64, BlockId>,
    /// vLLM's KV events since the last [`BlockManager::take_events`]; `None` when nobody listens.
    events: Option<Vec<KvEvent>>,
}

impl BlockManager {
    pub(crate) fn new(num_blocks: u32, prefix_caching: bool) -> Self {
        let n = num_blocks as usize;
        let blocks = (0..num_blocks)
            .map(|i| Block {
                ref_count: 0,
                hash: None,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == num_blocks { NIL } else { i + 1 },
                in_free_queue: true,
            })
            .collect();
        Self {
            blocks,
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { num_blocks - 1 },
            num_free: n,
            prefix_caching,
            cached: HashMap::new(),
            events: None,
        }
    }

    /// Records a [`KvEvent`] for every block stored in or evicted from the prefix index from now on.
    pub(crate) fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call, in the order they happened.
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(crate) fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn num_free(&self) -> usize {
        self.num_free
    }

    pub(crate) fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// `1 − free/total`: the share of blocks referenced by live requests.
    pub(crate) fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// Longest prefix of `hashes` whose blocks are resident. Empty when prefix caching is off.
    pub(crate) fn lookup(&self, hashes: &[u64]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if !self.prefix_caching {
            return hit;
        }
        for h in hashes {
            let Some(&b) = self.cached.get(h) else { break };
            if self.blocks[b as usize].ref_count == 0 {
                hit.evictable += 1;
            }
            hit.blocks.push(b);
        }
        hit
    }

    /// Takes a reference on a resident cached block (a prefix hit), pulling it out of the free queue.
    pub(crate) fn touch(&mut self, b: BlockId) {
        if self.blocks[b as usize].ref_count == 0 {
            self.unlink(b);
        }
        self.blocks[b as usize].ref_count += 1;
    }

    /// Allocates one block, evicting the least recently used cached block if need be.
    pub(crate) fn allocate(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        let block = &mut self.blocks[b as usize];
        block.ref_count = 1;
        if let Some(h) = block.hash.take() {
            self.cached.remove(&h);
            if let Some(events) = self.events.as_mut() {
                push_merged(events, KvEvent::BlockRemoved { block_hashes: vec![h] });
            }
        }
        Some(b)
    }

    /// Registers a full block's content hash so later requests can hit it. A block whose content is
    /// already cached elsewhere stays unregistered (the first copy wins, as in vLLM V1).
    ///
    /// `parent` (the previous block's hash), `tokens` and `lora` only describe the block in its `BlockStored` event.
    pub(crate) fn register(&mut self, b: BlockId, hash: u64, parent: Option<u64>, tokens: &[u32], lora: Option<u32>) {
        if !self.prefix_caching || self.blocks[b as usize].hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(b);
            self.blocks[b as usize].hash = Some(hash);
            if let Some(events) = self.events.as_mut() {
                let stored = KvEvent::BlockStored {
                    block_hashes: vec![hash],
                    parent,
                    token_ids: tokens.to_vec(),
                    block_size: BLOCK_SIZE as u32,
                    lora_id: lora,
                };
                push_merged(events, stored);
            }
        }
    }

    /// Drops a request's references. Blocks are released tail first so the deepest blocks of a prefix
    /// are evicted before its root.
    pub(crate) fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.ref_count > 0, "double free of block {b}");
            block.ref_count = block.ref_count.saturating_sub(1);
            if block.ref_count == 0 {
                if block.hash.is_some() {
                    self.push_back(b);
                } else {
                    self.push_front(b);
                }
            }
        }
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let block = &self.blocks[b as usize];
            debug_assert!(block.in_free_queue);
            (block.prev, block.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let block = &mut self.blocks[b as usize];
        block.prev = NIL;
        block.next = NIL;
        block.in_free_queue = false;
        self.num_free -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        let old_tail = self.tail;
        {
            let block = &mut self.blocks[b as usize];
            block.prev = old_tail;
            block.next = NIL;
            block.in_free_queue = true;
        }
        if old_tail == NIL {
            self.head = b;
        } else {
            self.blocks[old_tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn push_front(&mut self, b: BlockId) {
        let old_head = self.head;
        {
            let block = &mut self.blocks[b as usize];
            block.prev = NIL;
            block.next = old_head;
            block.in_free_queue = true;
        }
        if old_head == NIL {
            self.tail = b;
        } else {
            self.blocks[old_head as usize].prev = b;
        }
        self.head = b;
        self.num_free += 1;
    }
}

/// Hash of a full block, chained on its parent's hash so equal hashes mean equal prefixes.
/// `extra` separates namespaces that must not share KV (e.g. different LoRA adapters).
pub(crate) fn block_hash(parent: Option<u64>, tokens: &[u32], extra: u64) -> u64 {
    // FNV-1a over the parent, the extra key and the token ids, then a final avalanche (splitmix64).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| {
        for byte in v.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    mix(parent.unwrap_or(0x9e37_79b9_7f4a_7c15));
    mix(extra);
    for &t in tokens {
        mix(u64::from(t));
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_free_track_usage() {
        let mut kv = BlockManager::new(4, false);
        assert_eq!(kv.usage(), 0.0);
        let a = kv.allocate().unwrap();
        let b = kv.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(kv.num_free(), 2);
        assert_eq!(kv.usage(), 0.5);
        kv.free(&[a, b]);
        assert_eq!(kv.num_free(), 4);
        for _ in 0..4 {
            assert!(kv.allocate().is_some());
        }
        assert!(kv.allocate().is_none());
    }

    #[test]
    fn cached_blocks_are_free_but_hit_until_evicted() {
        let mut kv = BlockManager::new(3, true);
        let h1 = block_hash(None, &[1; BLOCK_SIZE], 0);
        let h2 = block_hash(Some(h1), &[2; BLOCK_SIZE], 0);
        let a = kv.allocate().unwrap();
        let b = kv.allocate().unwrap();
        kv.register(a, h1, None, &[1; BLOCK_SIZE], None);
        kv.register(b, h2, Some(h1), &[2; BLOCK_SIZE], None);
        kv.free(&[a, b]);
        assert_eq!(kv.num_free(), 3, "evictable cached blocks count as free");
        let hit = kv.lookup(&[h1, h2]);
        assert_eq!(hit.blocks, vec![a, b]);
        assert_eq!(hit.evictable, 2);

        // The unhashed block is reused first, then the deepest cached block (b) is evicted.
        let c = kv.allocate().unwrap();
        assert!(c != a && c != b);
        let d = kv.allocate().unwrap();
        assert_eq!(d, b);
        assert_eq!(kv.lookup(&[h1, h2]).blocks, vec![a]);

        kv.touch(a);
        assert_eq!(kv.num_free(), 0);
        assert_eq!(kv.lookup(&[h1]).evictable, 0);
    }

    #[test]
    fn hashes_chain_on_parent_and_extra_key() {
        let root = block_hash(None, &[7; BLOCK_SIZE], 0);
        assert_eq!(root, block_hash(None, &[7; BLOCK_SIZE], 0));
        assert_ne!(root, block_hash(None, &[7; BLOCK_SIZE], 1));
        assert_ne!(
            block_hash(Some(root), &[7; BLOCK_SIZE], 0),
            block_hash(Some(root ^ 1), &[7; BLOCK_SIZE], 0)
        );
    }
}
