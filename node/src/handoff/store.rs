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
}

impl HintStore {
    /// Opens the store over `engine`, counting the hints already there.
    pub fn open(engine: Arc<dyn StorageEngine>) -> Result<Self, distkv_engine::Error> {
        let mut pending = BTreeMap::new();
        let mut range = KeyRange::all();
        loop {
            let page = engine.scan(&range, 1024)?;
            let Some((last, _)) = page.last() else { break };
            range = range.after(last);
            for (k, _) in &page {
                if let Some(target) = target_of(k) {
                    *pending.entry(target).or_insert(0) += 1;
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
        self.engine.write(batch)?;
        *self.pending.lock().entry(target.to_string()).or_insert(0) += entries.len() as u64;
        Ok(())
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

    /// Deletes delivered hints of `target`.
    pub fn remove(&self, target: &str, ids: Vec<Vec<u8>>) -> Result<(), distkv_engine::Error> {
        let n = ids.len() as u64;
        let mut batch = WriteBatch::new();
        for id in ids {
            batch.delete(id);
        }
        self.engine.write(batch)?;
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
        store
            .remove("n2", hints.into_iter().map(|h| h.id).collect())
            .unwrap();
        assert_eq!(store.take("n2", 10).unwrap(), vec![]);
        assert_eq!(store.total_pending(), 1);
    }
}
