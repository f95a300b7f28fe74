//! The local replica's records: reads, merges and range scans over the storage engine,
//! with keys laid out in token order ([`super::keys`]).

use std::sync::Arc;

use distkv_engine::{EngineStats, StorageEngine};

use super::keys;
use super::writer::{decode_stored, MergePolicy, StorageWriter};
use super::{Incoming, MergeObserver, Outcome};
use crate::error::NodeError;
use crate::placement::TokenRange;
use crate::version::{ConflictPolicy, Record};

/// One page of a range scan: user keys and their encoded records, in storage order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePage {
    /// `(user key, encoded record)` pairs.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The stored key to resume after, when the range has more.
    pub next: Option<Vec<u8>>,
}

/// The records this node holds as a replica.
pub struct ReplicaStore<S: StorageEngine + ?Sized> {
    engine: Arc<S>,
    writer: StorageWriter,
    token_of: fn(&[u8]) -> u64,
    observer: Option<Arc<dyn MergeObserver>>,
}

impl<S: StorageEngine + ?Sized> ReplicaStore<S> {
    /// The store over `engine`. `token_of` is the partitioner's key-to-token function
    /// (keys are stored behind their token); merges go through one writer thread whose
    /// queue holds at most `queue_depth` merges. A client write that would grow a key
    /// past `max_siblings` siblings is refused (repairs never are).
    pub fn new(
        engine: Arc<S>,
        conflict: ConflictPolicy,
        max_siblings: usize,
        token_of: fn(&[u8]) -> u64,
        node_id: &str,
        queue_depth: usize,
    ) -> Self {
        Self::with_observer(
            engine,
            conflict,
            max_siblings,
            token_of,
            node_id,
            queue_depth,
            None,
        )
    }

    /// As [`ReplicaStore::new`], with an `observer` told of every record a merge
    /// changes (the anti-entropy tree's upkeep; see [`MergeObserver`]).
    pub fn with_observer(
        engine: Arc<S>,
        conflict: ConflictPolicy,
        max_siblings: usize,
        token_of: fn(&[u8]) -> u64,
        node_id: &str,
        queue_depth: usize,
        observer: Option<Arc<dyn MergeObserver>>,
    ) -> Self {
        let policy = MergePolicy {
            conflict,
            max_siblings: max_siblings.max(1),
        };
        let writer = StorageWriter::spawn(
            engine.clone(),
            policy,
            observer.clone(),
            node_id,
            queue_depth,
        );
        ReplicaStore {
            engine,
            writer,
            token_of,
            observer,
        }
    }

    /// Makes merges wait for the writer thread from tokio's blocking pool (see
    /// [`crate::NodeSettings::storage_wait_on_blocking_pool`]).
    pub fn waiting_on_blocking_pool(mut self, on: bool) -> Self {
        self.writer.wait_on_blocking_pool(on);
        self
    }

    /// The token of a user key.
    pub fn token_of(&self, key: &[u8]) -> u64 {
        (self.token_of)(key)
    }

    /// Runs `f` on the storage writer thread between two merges: no merge, and no
    /// [`MergeObserver`] call, happens while it runs, so a rebuild of the anti-entropy
    /// tree can read a page of storage and count it without racing a write. Keep `f` to
    /// one page: merges wait meanwhile. Refused like a merge when the writer's queue is
    /// full.
    pub async fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        self.writer.exclusive(f).await
    }

    /// Deletes `key` if `still_current` holds for its stored record, checked on the
    /// writer thread so that no merge comes in between the check and the delete: the
    /// compare-and-delete of tombstone GC (phase 2; pass the guard's
    /// `still_current`). Tells the observer `(old, None)`. Returns whether it deleted.
    pub async fn delete_if(
        &self,
        key: &[u8],
        still_current: impl FnOnce(Option<&Record>) -> bool + Send + 'static,
    ) -> Result<bool, NodeError>
    where
        S: 'static,
    {
        let deleted = self
            .delete_each_if(vec![(key.to_vec(), still_current)])
            .await?;
        Ok(deleted.first().copied().unwrap_or(false))
    }

    /// [`ReplicaStore::delete_if`] for several keys at once: one turn of the writer
    /// thread, one engine write for every key whose predicate holds. Answers, per key
    /// in order, whether it was deleted.
    pub async fn delete_each_if<F>(&self, items: Vec<(Vec<u8>, F)>) -> Result<Vec<bool>, NodeError>
    where
        S: 'static,
        F: FnOnce(Option<&Record>) -> bool + Send + 'static,
    {
        let engine = self.engine.clone();
        let observer = self.observer.clone();
        let items: Vec<(u64, Vec<u8>, F)> = items
            .into_iter()
            .map(|(key, f)| (self.token_of(&key), key, f))
            .collect();
        self.writer
            .exclusive(move || -> Result<Vec<bool>, NodeError> {
                let mut batch = distkv_engine::WriteBatch::new();
                let mut deleted = Vec::with_capacity(items.len());
                let mut told = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for (token, key, still_current) in items {
                    let stored = keys::encode(token, &key);
                    let old = match engine.get(&stored)? {
                        Some(bytes) => Some(decode_stored(&key, &bytes)?),
                        None => None,
                    };
                    // The same key twice in one call: the second finds it gone.
                    if !seen.insert(key.clone()) || old.is_none() || !still_current(old.as_ref()) {
                        deleted.push(false);
                        continue;
                    }
                    batch.delete(stored);
                    deleted.push(true);
                    if let Some(old) = old {
                        told.push((token, key, old));
                    }
                }
                if batch.is_empty() {
                    return Ok(deleted);
                }
                engine.write(batch)?;
                if let Some(o) = &observer {
                    for (token, key, old) in &told {
                        o.merged(key, *token, Some(old), None);
                    }
                }
                Ok(deleted)
            })
            .await?
    }

    /// The stored form of a user key.
    pub fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        keys::encode((self.token_of)(key), key)
    }

    /// The encoded record of `key`, as stored. Reads run inline on the caller's thread:
    /// a memtable or block-cache hit costs less than a hand-off to a blocking pool, and
    /// a miss faults in one mmapped page at worst.
    pub fn get_encoded(&self, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        Ok(self.engine.get(&self.stored_key(key))?)
    }

    /// The record of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Record>, NodeError> {
        match self.get_encoded(key)? {
            None => Ok(None),
            Some(bytes) => decode_stored(key, &bytes).map(Some),
        }
    }

    /// Merges records into local storage (read, merge, write, on the writer thread) and
    /// returns once the engine has made the stored ones durable, with the outcome of
    /// each entry, in order (see [`Origin`](super::Origin) for which may be refused).
    pub async fn merge(&self, entries: Vec<Incoming>) -> Result<Vec<Outcome>, NodeError> {
        let stored = entries
            .into_iter()
            .map(|e| Incoming {
                key: self.stored_key(&e.key),
                ..e
            })
            .collect();
        self.writer.merge(stored).await
    }

    /// Merges repairs (records already acknowledged elsewhere, which are never refused).
    pub async fn merge_repairs(&self, entries: Vec<(Vec<u8>, Record)>) -> Result<(), NodeError> {
        let entries = entries
            .into_iter()
            .map(|(key, record)| Incoming {
                key,
                record,
                origin: super::Origin::Repair,
            })
            .collect();
        self.merge(entries).await.map(|_| ())
    }

    /// Up to `max_entries` records (and about `max_bytes`, at least one entry) whose
    /// tokens lie in `range`, after the stored key `after` (from a previous page's
    /// `next`). Reads only the stored keys of that range.
    pub fn scan_range(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<RangePage, NodeError> {
        let mut page = RangePage::default();
        let mut bytes = 0usize;
        let max_entries = max_entries.max(1);
        for mut part in keys::storage_ranges(range) {
            if let Some(after) = after {
                if !part.below_end(after) {
                    continue; // this part was finished by an earlier page
                }
                if part.contains(after) {
                    part = part.after(after);
                }
            }
            loop {
                let want = max_entries - page.entries.len();
                let rows = self.engine.scan(&part, want)?;
                let got = rows.len();
                for (stored, value) in rows {
                    let Some((_, key)) = keys::decode(&stored) else {
                        return Err(NodeError::Storage(distkv_engine::Error::Other(format!(
                            "stored key of {} bytes has no token prefix: the data directory holds keys this node did not write",
                            stored.len()
                        ))));
                    };
                    bytes += stored.len() + value.len();
                    page.entries.push((key.to_vec(), value));
                    if page.entries.len() >= max_entries || bytes >= max_bytes {
                        page.next = Some(stored);
                        return Ok(page);
                    }
                    part = part.after(&stored);
                }
                if got < want {
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Statistics of the storage engine.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), NodeError> {
        Ok(self.engine.flush()?)
    }

    /// Flushes and closes the engine.
    pub fn close(&self) -> Result<(), NodeError> {
        Ok(self.engine.close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{HashRing, Partitioner};
    use crate::version::{Dot, VersionVector};
    use distkv_engine::{KeyRange, WriteBatch};
    use parking_lot::Mutex;

    /// A memory engine that counts the entries its scans return.
    struct Counting {
        inner: distkv_backends::MemoryEngine,
        scanned: Mutex<usize>,
    }

    impl StorageEngine for Counting {
        fn get(&self, key: &[u8]) -> distkv_engine::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn write(&self, batch: WriteBatch) -> distkv_engine::Result<()> {
            self.inner.write(batch)
        }
        fn scan(
            &self,
            range: &KeyRange,
            limit: usize,
        ) -> distkv_engine::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let rows = self.inner.scan(range, limit)?;
            *self.scanned.lock() += rows.len();
            Ok(rows)
        }
        fn flush(&self) -> distkv_engine::Result<()> {
            self.inner.flush()
        }
        fn stats(&self) -> EngineStats {
            self.inner.stats()
        }
        fn close(&self) -> distkv_engine::Result<()> {
            self.inner.close()
        }
    }

    fn record(i: u32) -> Record {
        let dot = Dot {
            actor: "a".into(),
            counter: u64::from(i) + 1,
        };
        Record::write(dot, VersionVector::new(), 0, Some(i.to_be_bytes().to_vec()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_scan_reads_only_that_range_and_pages_resume() {
        let engine = Arc::new(Counting {
            inner: distkv_backends::MemoryEngine::ephemeral(),
            scanned: Mutex::new(0),
        });
        let store = ReplicaStore::new(
            engine.clone(),
            ConflictPolicy::Siblings,
            64,
            HashRing::token,
            "t",
            64,
        );
        let keys: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        for chunk in keys.chunks(500) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), record(i as u32)))
                .collect();
            store.merge_repairs(entries).await.unwrap();
        }
        let nodes: Vec<_> = (0..4)
            .map(|i| distkv_network::NodeInfo {
                id: format!("n{i}"),
                address: format!("h:{i}"),
            })
            .collect();
        let ring = HashRing::build(1, 4, &nodes);
        let mut seen = 0;
        for range in ring.ranges() {
            let expected: Vec<&Vec<u8>> = keys
                .iter()
                .filter(|k| range.contains(HashRing::token(k)))
                .collect();
            *engine.scanned.lock() = 0;
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            let mut pages = 0;
            loop {
                let page = store
                    .scan_range(range, after.as_deref(), 7, 1 << 20)
                    .unwrap();
                pages += 1;
                got.extend(page.entries.into_iter().map(|(k, v)| {
                    assert!(Record::decode(&v).is_ok());
                    k
                }));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got.len(), expected.len(), "range {range}");
            for k in &got {
                assert!(
                    range.contains(HashRing::token(k)),
                    "{range} returned a stranger"
                );
            }
            assert!(pages >= expected.len() / 7, "paged by 7");
            assert_eq!(
                *engine.scanned.lock(),
                expected.len(),
                "the engine read only the keys of {range}"
            );
            seen += got.len();
        }
        assert_eq!(seen, keys.len(), "the ranges cover every key once");
        // A byte budget cuts a page short, but never below one entry.
        let one = store.scan_range(TokenRange::FULL, None, 100, 1).unwrap();
        assert_eq!(one.entries.len(), 1);
        assert!(one.next.is_some());
    }
}
