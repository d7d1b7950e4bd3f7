//! A bounded least-recently-used set of block hashes, one per endpoint.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    mem,
};

/// Block hashes are xxh64 outputs already; hashing them again would only cost time.
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

/// LRU set with lazy deletion: every touch appends the hash to `touches`, and `positions` remembers
/// where its latest touch sits. Entries of `touches` that are no longer a key's latest touch are skipped
/// when they reach the front, and dropped in bulk once they make up half the queue, so a touch is O(1)
/// amortised with no linked list and no per-entry allocation.
#[derive(Clone, Debug)]
pub(crate) struct BlockLru {
    capacity: usize,
    /// Hash → absolute position of its latest touch in `touches`.
    positions: HashMap<u64, u64, BuildIdentity>,
    /// Touched hashes, oldest first, including superseded touches.
    touches: VecDeque<u64>,
    /// Absolute position of `touches[0]`.
    front: u64,
}

impl BlockLru {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, positions: HashMap::default(), touches: VecDeque::new(), front: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }

    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.positions.contains_key(&hash)
    }

    /// Marks `hash` as the most recently used, evicting the least recently used beyond capacity.
    pub(crate) fn touch(&mut self, hash: u64) {
        let position = self.front + self.touches.len() as u64;
        self.positions.insert(hash, position);
        self.touches.push_back(hash);
        while self.positions.len() > self.capacity {
            self.evict_oldest();
        }
        if self.touches.len() > 2 * self.capacity {
            self.compact();
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(hash) = self.touches.pop_front() {
            let position = self.front;
            self.front += 1;
            if self.positions.get(&hash) == Some(&position) {
                self.positions.remove(&hash);
                return;
            }
        }
    }

    /// Drops superseded touches and renumbers the live ones, keeping their order.
    fn compact(&mut self) {
        let positions = &mut self.positions;
        let (mut old, mut new) = (self.front, self.front);
        self.touches.retain(|hash| {
            let live = match positions.get_mut(hash) {
                Some(position) if *position == old => {
                    *position = new;
                    new += 1;
                    true
                }
                _ => false,
            };
            old += 1;
            live
        });
    }

    /// Heap bytes held, from the allocated capacities: a hashbrown table has one control byte per bucket
    /// plus one group of trailing control bytes, and keeps at most 7/8 of its buckets full.
    pub(crate) fn heap_bytes(&self) -> usize {
        const GROUP_WIDTH: usize = 16;
        let capacity = self.positions.capacity();
        let buckets = match capacity {
            0 => 0,
            1..8 => (capacity + 1).next_power_of_two(),
            _ => (capacity * 8 / 7).next_power_of_two(),
        };
        let table = if buckets == 0 { 0 } else { buckets * (mem::size_of::<(u64, u64)>() + 1) + GROUP_WIDTH };
        table + self.touches.capacity() * mem::size_of::<u64>()
    }
}
