//! The tree's link to the replica store: key hashes read from storage for the key-level
//! comparison, and the background rebuild after a crash.

use std::sync::Arc;

use distkv_engine::StorageEngine;
use parking_lot::Mutex;

use super::exchange::{KeyHash, KeyHashSource};
use super::tree::{item_hash, HashTree, Position};
use crate::error::NodeError;
use crate::placement::TokenRange;
use crate::replica::{keys, ReplicaStore};
use crate::version::Record;

/// Bytes a rebuild page or key-hash page reads at most (besides the entry count).
const PAGE_BYTES: usize = 4 << 20;

/// The token range holding exactly the tokens `[lo, hi]`.
fn range_of(lo: u64, hi: u64) -> TokenRange {
    TokenRange {
        start: lo.wrapping_sub(1),
        end: hi,
    }
}

/// The store's key hashes, computed from the stored records by a range scan.
impl<S: StorageEngine + ?Sized> KeyHashSource for ReplicaStore<S> {
    fn key_hashes(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&Position>,
        max: usize,
    ) -> Result<(Vec<KeyHash>, bool), String> {
        let after = after.map(|p| keys::encode(p.token, &p.key));
        let page = self
            .scan_range(range_of(lo, hi), after.as_deref(), max.max(1), PAGE_BYTES)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(page.entries.len());
        for (key, bytes) in page.entries {
            let record = Record::decode(&bytes).map_err(|e| {
                format!("stored record of a {}-byte key cannot be decoded ({e}); repair it from a replica", key.len())
            })?;
            out.push(KeyHash {
                token: self.token_of(&key),
                hash: item_hash(&key, &record),
                key,
            });
        }
        Ok((out, page.next.is_some()))
    }
}

/// Rebuilds `tree` from `store` while writes go on: resets it to not ready, then reads
/// the store in pages of `page` keys, each page on the writer thread between merges
/// ([`ReplicaStore::exclusive`]) so that no write is counted twice or missed; the tree
/// is ready when it returns `Ok`. The store must report its merges to the same tree
/// ([`ReplicaStore::with_observer`]). An error leaves the tree not ready: run it again.
pub async fn rebuild<S: StorageEngine + ?Sized + 'static>(
    store: Arc<ReplicaStore<S>>,
    tree: Arc<Mutex<HashTree>>,
    page: usize,
) -> Result<(), NodeError> {
    {
        let mut t = tree.lock();
        *t = HashTree::new_rebuilding(t.shape());
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (s, t, resume) = (store.clone(), tree.clone(), after.take());
        let next = store
            .exclusive(move || -> Result<Option<Vec<u8>>, NodeError> {
                let page = s.scan_range(TokenRange::FULL, resume.as_deref(), page.max(1), PAGE_BYTES)?;
                let mut t = t.lock();
                for (key, bytes) in &page.entries {
                    let record = Record::decode(bytes).map_err(|e| {
                        NodeError::Storage(distkv_engine::Error::Other(format!(
                            "stored record of a {}-byte key cannot be decoded ({e}) while rebuilding the anti-entropy tree; repair it from a replica",
                            key.len()
                        )))
                    })?;
                    t.scanned(key, s.token_of(key), &record)
                        .map_err(|e| NodeError::Storage(distkv_engine::Error::Other(e.to_string())))?;
                }
                // Ready inside the same exclusive step as the last page: a merge that
                // ran between the last page and a later `finish_rebuild` would be left
                // out (its key is past the cursor, so `update` leaves it to a scan that
                // is over), and two replicas could then agree on a tree without it.
                if page.next.is_none() {
                    t.finish_rebuild();
                }
                Ok(page.next)
            })
            .await??;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{HashRing, Partitioner};
    use crate::replica::MergeObserver;
    use crate::version::{ConflictPolicy, Dot, VersionVector};
    use std::collections::BTreeMap;

    fn write(i: u32, round: u64) -> Record {
        let dot = Dot {
            actor: "a".into(),
            counter: round * 10_000 + u64::from(i),
        };
        Record::write(dot, VersionVector::new(), 0, Some(i.to_be_bytes().to_vec()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_keeps_the_tree_current_and_a_rebuild_during_writes_agrees() {
        let shape = super::super::TreeShape::new(8, 2).unwrap();
        let tree = Arc::new(Mutex::new(HashTree::new(shape)));
        let observer: Arc<dyn MergeObserver> = tree.clone();
        let store = Arc::new(ReplicaStore::with_observer(
            Arc::new(distkv_backends::MemoryEngine::ephemeral()),
            ConflictPolicy::Siblings,
            64,
            HashRing::token,
            "t",
            64,
            Some(observer),
        ));
        let key = |i: u32| format!("key-{i}").into_bytes();
        store
            .merge_repairs((0..400).map(|i| (key(i), write(i, 1))).collect())
            .await
            .unwrap();
        let expected = |records: &BTreeMap<Vec<u8>, Record>| {
            HashTree::rebuild_from(
                shape,
                records
                    .iter()
                    .map(|(k, r)| (k.as_slice(), HashRing::token(k), r)),
            )
        };
        let read_all = |store: &ReplicaStore<distkv_backends::MemoryEngine>| {
            let page = store
                .scan_range(TokenRange::FULL, None, 10_000, usize::MAX)
                .unwrap();
            page.entries
                .into_iter()
                .map(|(k, v)| (k, Record::decode(&v).unwrap()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(*tree.lock(), expected(&read_all(&store)));
        // A rebuild in pages of 7 while writes go on.
        let rebuilding = tokio::spawn(rebuild(store.clone(), tree.clone(), 7));
        for chunk in (0..400u32).collect::<Vec<_>>().chunks(20) {
            let entries = chunk.iter().map(|&i| (key(i), write(i, 2))).collect();
            store.merge_repairs(entries).await.unwrap();
        }
        rebuilding.await.unwrap().unwrap();
        assert!(tree.lock().is_ready());
        assert_eq!(*tree.lock(), expected(&read_all(&store)));
        // The store answers key-hash pages in order, resuming after a position.
        let (first, more) = store.key_hashes(0, u64::MAX, None, 5).unwrap();
        assert!(more && first.len() == 5);
        let last = first.last().map(|e| Position {
            token: e.token,
            key: e.key.clone(),
        });
        let (next, _) = store.key_hashes(0, u64::MAX, last.as_ref(), 5).unwrap();
        assert!((next[0].token, &next[0].key) > (first[4].token, &first[4].key));
        let records = read_all(&store);
        for e in first.iter().chain(&next) {
            assert_eq!(e.hash, item_hash(&e.key, &records[&e.key]));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_through_the_store_deletes_only_the_confirmed_tombstone() {
        use crate::antientropy::{PurgeGuard, TombstoneVersion};
        let shape = super::super::TreeShape::new(4, 2).unwrap();
        let tree = Arc::new(Mutex::new(HashTree::new(shape)));
        let observer: Arc<dyn MergeObserver> = tree.clone();
        let store = ReplicaStore::with_observer(
            Arc::new(distkv_backends::MemoryEngine::ephemeral()),
            ConflictPolicy::Siblings,
            64,
            HashRing::token,
            "t",
            64,
            Some(observer),
        );
        let dot = |c| Dot {
            actor: "a".into(),
            counter: c,
        };
        let tomb = Record::write(dot(1), VersionVector::new(), 5, None);
        store
            .merge_repairs(vec![
                (b"k".to_vec(), tomb.clone()),
                (b"j".to_vec(), write(1, 1)),
            ])
            .await
            .unwrap();
        let guard = PurgeGuard {
            key: b"k".to_vec(),
            version: TombstoneVersion::of(b"k", &tomb).unwrap(),
        };
        // A write came in after the confirmations: the purge is cancelled.
        let newer = Record::write(dot(2), tomb.context(), 6, Some(b"v".to_vec()));
        store
            .merge_repairs(vec![(b"k".to_vec(), newer)])
            .await
            .unwrap();
        let g = guard.clone();
        assert!(!store
            .delete_if(b"k", move |r| g.still_current(r))
            .await
            .unwrap());
        assert!(store.get(b"k").unwrap().is_some());
        // The current tombstone, confirmed: deleted, and the tree follows.
        let current = store.get(b"k").unwrap().unwrap();
        let tomb2 = Record::write(dot(3), current.context(), 7, None);
        store
            .merge_repairs(vec![(b"k".to_vec(), tomb2)])
            .await
            .unwrap();
        let held = store.get(b"k").unwrap().unwrap();
        let guard = PurgeGuard {
            key: b"k".to_vec(),
            version: TombstoneVersion::of(b"k", &held).unwrap(),
        };
        assert!(store
            .delete_if(b"k", move |r| guard.still_current(r))
            .await
            .unwrap());
        assert_eq!(store.get(b"k").unwrap(), None);
        assert!(
            !store.delete_if(b"k", |_| true).await.unwrap(),
            "nothing left to delete"
        );
        let j = store.get(b"j").unwrap().unwrap();
        let expected =
            HashTree::rebuild_from(shape, [(b"j".as_slice(), HashRing::token(b"j"), &j)]);
        assert_eq!(*tree.lock(), expected);
    }
}
