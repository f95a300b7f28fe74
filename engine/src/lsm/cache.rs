//! A bounded, sharded cache of decompressed SSTable blocks, with CLOCK eviction
//! (approximately least recently used, without a linked list).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Identifies a block: SSTable id and block offset.
type BlockKey = (u64, u64);

const SHARDS: usize = 16;

/// Hashes a [`BlockKey`] with two multiplications: the keys are ours (table ids and
/// offsets), not an attacker's, so SipHash's flooding resistance buys nothing here and
/// costs more than the rest of a cache hit.
#[derive(Default)]
struct BlockKeyHasher(u64);

impl Hasher for BlockKeyHasher {
    fn finish(&self) -> u64 {
        // The table picks buckets with the low bits: fold the well-mixed high bits in.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

struct Slot {
    block: Arc<Vec<u8>>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<BlockKey, Slot, BuildHasherDefault<BlockKeyHasher>>,
    clock: VecDeque<BlockKey>,
    bytes: usize,
}

/// The block cache. Capacity is split evenly over the shards.
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Whether raw (uncompressed) blocks are cached too; otherwise they are read in
    /// place from the table's memory map.
    raw_blocks: bool,
}

impl BlockCache {
    /// A cache of compressed tables' blocks only (raw blocks are read in place).
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_raw_blocks(capacity_bytes, false)
    }

    /// A cache that holds raw blocks as well when `raw_blocks`.
    pub fn with_raw_blocks(capacity_bytes: u64, raw_blocks: bool) -> Self {
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (capacity_bytes as usize) / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            raw_blocks,
        }
    }

    pub fn caches_raw_blocks(&self) -> bool {
        self.raw_blocks
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard> {
        let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (key.1 >> 9).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        &self.shards[(h >> 32) as usize % SHARDS]
    }

    pub fn get(&self, file: u64, offset: u64) -> Option<Arc<Vec<u8>>> {
        let mut s = self.shard((file, offset)).lock();
        match s.map.get_mut(&(file, offset)) {
            Some(slot) => {
                slot.referenced = true;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(slot.block.clone())
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn insert(&self, file: u64, offset: u64, block: Arc<Vec<u8>>) {
        let size = block.len() + 64;
        if size > self.shard_capacity {
            return;
        }
        let key = (file, offset);
        let mut s = self.shard(key).lock();
        if s.map.contains_key(&key) {
            return;
        }
        s.map.insert(
            key,
            Slot {
                block,
                referenced: false,
            },
        );
        s.clock.push_back(key);
        s.bytes += size;
        while s.bytes > self.shard_capacity {
            let Some(victim) = s.clock.pop_front() else {
                break;
            };
            let referenced = s.map.get(&victim).map(|slot| slot.referenced);
            match referenced {
                Some(true) => {
                    if let Some(slot) = s.map.get_mut(&victim) {
                        slot.referenced = false;
                    }
                    s.clock.push_back(victim);
                }
                Some(false) => {
                    if let Some(slot) = s.map.remove(&victim) {
                        s.bytes -= slot.block.len() + 64;
                    }
                }
                None => {}
            }
        }
    }

    /// Fraction of lookups served from the cache.
    pub fn hit_rate(&self) -> f64 {
        let h = self.hits.load(Ordering::Relaxed) as f64;
        let m = self.misses.load(Ordering::Relaxed) as f64;
        if h + m == 0.0 {
            0.0
        } else {
            h / (h + m)
        }
    }

    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().bytes as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_keeps_hot_blocks() {
        let c = BlockCache::new(16 * 4 * 1088);
        c.insert(1, 0, Arc::new(vec![0; 1024]));
        for i in 1..1000u64 {
            assert!(c.get(1, 0).is_some(), "hot block evicted at {i}");
            c.insert(1, i * 4096, Arc::new(vec![0; 1024]));
        }
        assert!(c.bytes() <= 16 * 4 * 1088);
        assert!(c.get(1, 999 * 4096).is_some());
        assert!(c.get(1, 4096).is_none());
        assert!(c.hit_rate() > 0.0);
    }
}
