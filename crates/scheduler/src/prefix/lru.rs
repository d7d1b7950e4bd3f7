//! A bounded least-recently-used set of block hashes, one per endpoint.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    mem,
};

/// Block hashes are xxh3 outputs already; hashing them again would only cost time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    // Only `u64` keys are hashed here; this fold keeps the hasher total for any other key anyway.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

type BuildIdentity = BuildHasherDefault<IdentityHasher>;

/// End of the recency list.
const NIL: u32 = u32::MAX;

/// One held hash and its neighbours in recency order.
#[derive(Clone, Copy, Debug)]
struct Node {
    hash: u64,
    /// Towards the most recent.
    newer: u32,
    /// Towards the least recent.
    older: u32,
}

/// LRU set as a doubly linked recency list threaded through a slab of nodes, indexed by a hash map.
///
/// Every operation is O(1) with no deferred clean-up, so no single touch ever pays for earlier ones (a
/// lazily compacted queue would make an occasional request scan the whole set, a tail-latency spike).
/// Once full, the least recent node is reused in place, so the slab never shrinks or reallocates.
#[derive(Clone, Debug)]
pub(crate) struct BlockLru {
    capacity: usize,
    /// Hash → index of its node.
    slots: HashMap<u64, u32, BuildIdentity>,
    nodes: Vec<Node>,
    newest: u32,
    oldest: u32,
}

impl BlockLru {
    /// Reserves room for `capacity` entries up front: growing the table on the way would rehash it,
    /// up to tens of thousands of entries inside one request's update, a latency spike that a busy
    /// endpoint would hit several times as it fills. The memory is what a full endpoint needs anyway,
    /// and its pages are only committed as entries land in them.
    pub(crate) fn new(capacity: usize) -> Self {
        // Node indices are u32 with one value reserved for NIL; four billion blocks is far beyond any GPU.
        let capacity = capacity.clamp(1, NIL as usize);
        Self {
            capacity,
            slots: HashMap::with_capacity_and_hasher(capacity, BuildIdentity::default()),
            nodes: Vec::with_capacity(capacity),
            newest: NIL,
            oldest: NIL,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.slots.contains_key(&hash)
    }

    /// Marks `hash` as the most recently used, evicting the least recently used beyond capacity.
    pub(crate) fn touch(&mut self, hash: u64) {
        if let Some(&slot) = self.slots.get(&hash) {
            if slot != self.newest {
                self.unlink(slot);
                self.push_newest(slot);
            }
            return;
        }
        let slot = if self.nodes.len() < self.capacity {
            // Fits in u32: capacity ≤ NIL.
            let slot = self.nodes.len() as u32;
            self.nodes.push(Node {
                hash,
                newer: NIL,
                older: NIL,
            });
            slot
        } else {
            let slot = self.oldest;
            self.unlink(slot);
            let node = &mut self.nodes[slot as usize];
            self.slots.remove(&node.hash);
            node.hash = hash;
            slot
        };
        self.slots.insert(hash, slot);
        self.push_newest(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let Node { newer, older, .. } = self.nodes[slot as usize];
        match newer {
            NIL => self.newest = older,
            newer => self.nodes[newer as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            older => self.nodes[older as usize].newer = newer,
        }
    }

    fn push_newest(&mut self, slot: u32) {
        let previous = self.newest;
        self.nodes[slot as usize].newer = NIL;
        self.nodes[slot as usize].older = previous;
        match previous {
            NIL => self.oldest = slot,
            previous => self.nodes[previous as usize].newer = slot,
        }
        self.newest = slot;
    }

    /// Heap bytes held, from the allocated capacities: a hashbrown table has one control byte per bucket
    /// plus one group of trailing control bytes, and keeps at most 7/8 of its buckets full.
    pub(crate) fn heap_bytes(&self) -> usize {
        const GROUP_WIDTH: usize = 16;
        let capacity = self.slots.capacity();
        let buckets = match capacity {
            0 => 0,
            1..8 => (capacity + 1).next_power_of_two(),
            _ => (capacity * 8 / 7).next_power_of_two(),
        };
        let table = if buckets == 0 {
            0
        } else {
            buckets * (mem::size_of::<(u64, u32)>() + 1) + GROUP_WIDTH
        };
        table + self.nodes.capacity() * mem::size_of::<Node>()
    }
}
