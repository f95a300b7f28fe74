//! Durable hints: writes kept for a replica that did not acknowledge them, replayed when
//! it answers again (hinted handoff).
//!
//! Hints live in their own storage engine (by default a memory engine with a
//! write-ahead log under `data_dir/hints`), never among user keys. A hint's key is the
//! target node id, a zero byte, and a sequence number (big-endian, so hints replay in
//! the order they were taken); its value is the user key and the version record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use distkv_engine::{KeyRange, StorageEngine, WriteBatch};
use parking_lot::Mutex;

use crate::version::Record;

/// One stored hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The hint's own key in the hint store (to delete it once delivered).
    pub id: Vec<u8>,
    /// The user key.
    pub key: Vec<u8>,
    /// The version record to deliver.
    pub record: Record,
}

/// The hints this node holds for other nodes.
pub struct HintStore {
    engine: Arc<dyn StorageEngine>,
    seq: AtomicU64,
    /// Pending hints per target, kept in memory for Status and to skip idle targets.
    pending: Mutex<BTreeMap<String, u64>>,
    /// Which user keys have a pending hint (any target), for tombstone GC.
    keys: Mutex<KeyFilter>,
}

/// Slots of the [`KeyFilter`]: 256 KiB whatever the number of hints.
const FILTER_SLOTS: usize = 1 << 16;

/// A counting filter of the user keys with pending hints: fixed memory; a key with a
/// pending hint is always reported pending, and a key without one may be reported
/// pending too when another key shares its slot (tombstone GC then merely waits).
struct KeyFilter {
    counts: Vec<u32>,
}

impl KeyFilter {
    fn new() -> Self {
        KeyFilter {
            counts: vec![0; FILTER_SLOTS],
        }
    }

    fn slot(key: &[u8]) -> usize {
        (xxhash_rust::xxh3::xxh3_64(key) % FILTER_SLOTS as u64) as usize
    }

    fn add(&mut self, key: &[u8]) {
        let c = &mut self.counts[Self::slot(key)];
        *c = c.saturating_add(1);
    }

    fn remove(&mut self, key: &[u8]) {
        let c = &mut self.counts[Self::slot(key)];
        // A saturated slot stays pending for ever (safe: GC waits).
        if *c != u32::MAX {
            *c = c.saturating_sub(1);
        }
    }

    fn may_hold(&self, key: &[u8]) -> bool {
        self.counts[Self::slot(key)] > 0
    }
}

impl HintStore {
    /// Opens the store over `engine`, counting the hints already there.
    pub fn open(engine: Arc<dyn StorageEngine>) -> Result<Self, distkv_engine::Error> {
        let mut pending = BTreeMap::new();
        let mut keys = KeyFilter::new();
        let mut range = KeyRange::all();
        loop {
            let page = engine.scan(&range, 1024)?;
            let Some((last, _)) = page.last() else { break };
            range = range.after(last);
            for (k, v) in &page {
                if let Some(target) = target_of(k) {
                    *pending.entry(target).or_insert(0) += 1;
                    // An undecodable hint names no key (and `take` reports it).
                    if let Some(key) = key_of_hint(v) {
                        keys.add(key);
                    }
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Ok(HintStore {
            engine,
            seq: AtomicU64::new(now),
            pending: Mutex::new(pending),
            keys: Mutex::new(keys),
        })
    }

    /// Stores hints for `target`; returns once they are durable.
    pub fn add(
        &self,
        target: &str,
        entries: &[(Vec<u8>, Record)],
    ) -> Result<(), distkv_engine::Error> {
        let mut batch = WriteBatch::new();
        for (key, record) in entries {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut id = Vec::with_capacity(target.len() + 9);
            id.extend_from_slice(target.as_bytes());
            id.push(0);
            id.extend_from_slice(&seq.to_be_bytes());
            let encoded = record.encode();
            let mut value = Vec::with_capacity(8 + key.len() + encoded.len());
            value.extend_from_slice(&(key.len() as u64).to_be_bytes());
            value.extend_from_slice(key);
            value.extend_from_slice(&encoded);
            batch.put(id, value);
        }
        // Counted before the write: a key is never shown without a pending hint while
        // its hint is already stored.
        {
            let mut keys = self.keys.lock();
            for (key, _) in entries {
                keys.add(key);
            }
        }
        if let Err(e) = self.engine.write(batch) {
            let mut keys = self.keys.lock();
            for (key, _) in entries {
                keys.remove(key);
            }
            return Err(e);
        }
        *self.pending.lock().entry(target.to_string()).or_insert(0) += entries.len() as u64;
        Ok(())
    }

    /// Whether a hint for user key `key` may be pending (for any target): false means
    /// none is; true may be a false alarm (see `KeyFilter`).
    pub fn may_have_hint_for(&self, key: &[u8]) -> bool {
        self.keys.lock().may_hold(key)
    }

    /// Targets with pending hints, and how many each.
    pub fn pending(&self) -> Vec<(String, u64)> {
        self.pending
            .lock()
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(t, &n)| (t.clone(), n))
            .collect()
    }

    /// Total pending hints.
    pub fn total_pending(&self) -> u64 {
        self.pending.lock().values().sum()
    }

    /// Up to `limit` oldest hints for `target`. Undecodable hints are reported as errors.
    pub fn take(&self, target: &str, limit: usize) -> Result<Vec<Hint>, distkv_engine::Error> {
        let mut prefix = target.as_bytes().to_vec();
        prefix.push(0);
        let page = self.engine.scan(&KeyRange::prefix(&prefix), limit)?;
        page.into_iter()
            .map(|(id, value)| {
                decode_hint(&value)
                    .map(|(key, record)| Hint { id, key, record })
                    .ok_or_else(|| {
                        distkv_engine::Error::Other(format!(
                            "hint for {target} is malformed; remove the hints directory to drop it"
                        ))
                    })
            })
            .collect()
    }

    /// Deletes hints of `target` (delivered, or dropped as too old).
    pub fn remove(&self, target: &str, hints: &[Hint]) -> Result<(), distkv_engine::Error> {
        let n = hints.len() as u64;
        let mut batch = WriteBatch::new();
        for hint in hints {
            batch.delete(hint.id.clone());
        }
        self.engine.write(batch)?;
        {
            let mut keys = self.keys.lock();
            for hint in hints {
                keys.remove(&hint.key);
            }
        }
        if let Some(c) = self.pending.lock().get_mut(target) {
            *c = c.saturating_sub(n);
        }
        Ok(())
    }

    /// Flushes the hint store.
    pub fn flush(&self) -> Result<(), distkv_engine::Error> {
        self.engine.flush()
    }

    /// Closes the hint store.
    pub fn close(&self) -> Result<(), distkv_engine::Error> {
        self.engine.close()
    }
}

fn target_of(id: &[u8]) -> Option<String> {
    // target id, a zero byte, then 8 bytes of sequence number (which may hold zeros).
    let zero = id.len().checked_sub(9)?;
    if id[zero] != 0 {
        return None;
    }
    String::from_utf8(id[..zero].to_vec()).ok()
}

fn key_of_hint(value: &[u8]) -> Option<&[u8]> {
    let len = u64::from_be_bytes(value.get(..8)?.try_into().ok()?) as usize;
    value.get(8..8usize.checked_add(len)?)
}

fn decode_hint(value: &[u8]) -> Option<(Vec<u8>, Record)> {
    let len = u64::from_be_bytes(value.get(..8)?.try_into().ok()?) as usize;
    let key = value.get(8..8usize.checked_add(len)?)?.to_vec();
    let record = Record::decode(value.get(8 + len..)?).ok()?;
    Some((key, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Dot, VersionVector};
    use distkv_backends::{MemoryEngine, MemoryOptions};

    fn record(v: &str) -> Record {
        Record::write(
            Dot {
                actor: "n1".into(),
                counter: 7,
            },
            VersionVector::new(),
            1,
            Some(v.as_bytes().to_vec()),
        )
    }

    #[test]
    fn hints_survive_a_reopen_and_are_removed_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let engine = MemoryEngine::open(dir.path(), MemoryOptions::default()).unwrap();
            HintStore::open(Arc::new(engine)).unwrap()
        };
        let store = open();
        store
            .add(
                "n2",
                &[(b"a".to_vec(), record("x")), (b"b".to_vec(), record("y"))],
            )
            .unwrap();
        store.add("n3", &[(b"a".to_vec(), record("x"))]).unwrap();
        store.close().unwrap();
        drop(store);

        let store = open();
        assert_eq!(
            store.pending(),
            vec![("n2".to_string(), 2), ("n3".to_string(), 1)]
        );
        let hints = store.take("n2", 10).unwrap();
        assert_eq!(
            hints.iter().map(|h| h.key.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(hints[1].record, record("y"));
        assert!(store.may_have_hint_for(b"a") && store.may_have_hint_for(b"b"));
        store.remove("n2", &hints).unwrap();
        assert_eq!(store.take("n2", 10).unwrap(), vec![]);
        assert_eq!(store.total_pending(), 1);
        assert!(store.may_have_hint_for(b"a"), "n3's hint for a is pending");
        assert!(!store.may_have_hint_for(b"b"), "b's only hint was removed");
    }
}
