//! The replica's storage writer: one thread applies every merge of incoming versions
//! (local writes, peer replication, read repair, hint delivery) to the local engine.
//!
//! A merge is read, merge, write of each key. With one thread doing all of them, two
//! merges of the same key can never interleave (no key locks needed), and every merge
//! queued while the engine is busy (typically in an fsync) leaves together in the next
//! engine write: one write and one fsync for the coordinator's own batch and the
//! batches of every peer that arrived meanwhile. The async side waits on a oneshot, so
//! no runtime worker ever blocks on storage.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use distkv_engine::{StorageEngine, WriteBatch};
use tokio::sync::oneshot;

use crate::error::NodeError;
use crate::version::{ConflictPolicy, Record};

/// Most entries merged into one engine write (a single larger merge still goes whole).
const MAX_ENTRIES_PER_WRITE: usize = 4096;

struct Job {
    entries: Vec<(Vec<u8>, Record)>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the writer thread; the thread ends when the handle is dropped.
///
/// Its queue holds at most `depth` merges: a merge that finds it full is refused at once
/// ([`NodeError::Unavailable`], "overloaded"), so a node that cannot keep up with its
/// writes sheds them (the coordinator then keeps a hint or misses its quorum) instead
/// of queueing without bound.
pub(crate) struct StorageWriter {
    tx: Result<mpsc::SyncSender<Job>, String>,
    depth: usize,
}

impl StorageWriter {
    /// Starts the writer thread of `storage` (named after the node, for debuggers).
    pub fn spawn<S: StorageEngine + ?Sized>(
        storage: Arc<S>,
        conflict: ConflictPolicy,
        node_id: &str,
        depth: usize,
    ) -> Self {
        let depth = depth.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(depth);
        let spawned = std::thread::Builder::new()
            .name(format!("storage-writer-{node_id}"))
            .spawn(move || run(&*storage, conflict, rx));
        let tx = match spawned {
            Ok(_) => Ok(tx),
            Err(e) => {
                let msg = format!("cannot start the storage writer thread ({e}): the node cannot store writes; restart it with more threads/memory available");
                tracing::error!("{msg}");
                Err(msg)
            }
        };
        StorageWriter { tx, depth }
    }

    /// Merges `entries` into local storage; returns once the engine has made the
    /// result as durable as its sync policy promises.
    pub async fn merge(&self, entries: Vec<(Vec<u8>, Record)>) -> Result<(), NodeError> {
        let tx = self
            .tx
            .as_ref()
            .map_err(|e| NodeError::Unavailable(e.clone()))?;
        let (done, rx) = oneshot::channel();
        tx.try_send(Job { entries, done }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => NodeError::Unavailable(format!(
                "node overloaded: {} merges already wait for the storage writer; retry later or add nodes",
                self.depth
            )),
            mpsc::TrySendError::Disconnected(_) => {
                NodeError::Unavailable("storage writer has stopped (node shutting down)".into())
            }
        })?;
        rx.await
            .map_err(|_| {
                NodeError::Unavailable(
                    "storage writer dropped the write (node shutting down)".into(),
                )
            })?
            .map_err(NodeError::Unavailable)
    }
}

fn run<S: StorageEngine + ?Sized>(storage: &S, conflict: ConflictPolicy, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut count = first.entries.len();
        let mut jobs = vec![first];
        while count < MAX_ENTRIES_PER_WRITE {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.entries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let result = apply(storage, conflict, &jobs);
        if result.is_ok() || jobs.len() == 1 {
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
            continue;
        }
        // One bad merge (say a stored record that cannot be decoded) must not fail the
        // writes it happened to be grouped with: apply each on its own. Nothing of the
        // group was written (the engine write is atomic), and merging is idempotent.
        for job in jobs {
            let result = apply(storage, conflict, std::slice::from_ref(&job));
            let _ = job.done.send(result);
        }
    }
}

fn apply<S: StorageEngine + ?Sized>(
    storage: &S,
    conflict: ConflictPolicy,
    jobs: &[Job],
) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        merge_and_write(storage, conflict, jobs)
    }))
    .unwrap_or_else(|_| {
        Err(NodeError::Unavailable(
            "storage engine panicked while applying a write (see the log); the write is not stored"
                .into(),
        ))
    })
    .map_err(|e| e.to_string())
}

/// Reads each key once, merges every incoming version of it, writes all keys in one
/// engine write.
fn merge_and_write<S: StorageEngine + ?Sized>(
    storage: &S,
    conflict: ConflictPolicy,
    jobs: &[Job],
) -> Result<(), NodeError> {
    let mut merged: HashMap<&[u8], Record> = HashMap::new();
    for (key, incoming) in jobs.iter().flat_map(|j| &j.entries) {
        let mut record = match merged.remove(key.as_slice()) {
            Some(r) => r,
            None => match storage.get(key)? {
                Some(bytes) => decode_stored(key, &bytes)?,
                None => Record::default(),
            },
        };
        record.merge(incoming);
        record.resolve(conflict);
        merged.insert(key.as_slice(), record);
    }
    let mut batch = WriteBatch::new();
    for (key, record) in merged {
        batch.put(key.to_vec(), record.encode());
    }
    storage.write(batch)?;
    Ok(())
}

/// Decodes a record read from storage, naming the problem if it cannot be decoded.
pub(crate) fn decode_stored(key: &[u8], bytes: &[u8]) -> Result<Record, NodeError> {
    Record::decode(bytes).map_err(|e| {
        NodeError::Storage(distkv_engine::Error::Other(format!(
            "stored record of a {}-byte key cannot be decoded ({e}); repair it from a replica",
            key.len()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Dot, VersionVector};
    use distkv_backends::MemoryEngine;

    fn record(actor: &str, counter: u64, value: &[u8]) -> Record {
        let dot = Dot {
            actor: actor.into(),
            counter,
        };
        Record::write(dot, VersionVector::new(), counter, Some(value.to_vec()))
    }

    fn values(storage: &MemoryEngine, key: &[u8]) -> Vec<Vec<u8>> {
        let bytes = storage.get(key).unwrap().expect("stored");
        let mut v: Vec<Vec<u8>> = Record::decode(&bytes)
            .unwrap()
            .values()
            .map(<[u8]>::to_vec)
            .collect();
        v.sort();
        v
    }

    /// Runs the writer loop over `jobs` queued before it starts, so they are applied
    /// as one group; returns each job's result.
    fn run_group(
        storage: &MemoryEngine,
        jobs: Vec<Vec<(Vec<u8>, Record)>>,
    ) -> Vec<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        let mut answers = Vec::new();
        for entries in jobs {
            let (done, answer) = oneshot::channel();
            tx.send(Job { entries, done }).unwrap();
            answers.push(answer);
        }
        drop(tx);
        run(storage, ConflictPolicy::Siblings, rx);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("every job is answered"))
            .collect()
    }

    #[test]
    fn a_group_merges_every_version_of_a_key() {
        let storage = MemoryEngine::ephemeral();
        let results = run_group(
            &storage,
            vec![
                vec![(b"k".to_vec(), record("a", 1, b"from-a"))],
                vec![
                    (b"k".to_vec(), record("b", 1, b"from-b")),
                    (b"j".to_vec(), record("b", 2, b"j")),
                ],
                vec![(b"k".to_vec(), record("a", 1, b"from-a"))],
            ],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // Two concurrent versions of k: both kept, the duplicate delivery changes nothing.
        assert_eq!(
            values(&storage, b"k"),
            vec![b"from-a".to_vec(), b"from-b".to_vec()]
        );
        assert_eq!(values(&storage, b"j"), vec![b"j".to_vec()]);
    }

    #[test]
    fn one_bad_merge_fails_alone_and_its_group_is_still_written() {
        let storage = MemoryEngine::ephemeral();
        let mut garbage = WriteBatch::new();
        garbage.put(b"bad".to_vec(), b"\xffnot a record".to_vec());
        storage.write(garbage).unwrap();
        let results = run_group(
            &storage,
            vec![
                vec![(b"good1".to_vec(), record("a", 1, b"g1"))],
                vec![(b"bad".to_vec(), record("a", 2, b"x"))],
                vec![(b"good2".to_vec(), record("a", 3, b"g2"))],
            ],
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1]
            .as_ref()
            .expect_err("the undecodable record fails its merge");
        assert!(err.contains("cannot be decoded"), "{err}");
        assert_eq!(values(&storage, b"good1"), vec![b"g1".to_vec()]);
        assert_eq!(values(&storage, b"good2"), vec![b"g2".to_vec()]);
        // The damaged record was left as it was, not overwritten.
        assert_eq!(
            storage.get(b"bad").unwrap(),
            Some(b"\xffnot a record".to_vec())
        );
    }
}
