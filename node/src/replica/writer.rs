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

use super::{keys, Incoming, MergeObserver, Origin, Outcome, Refusal};
use crate::error::NodeError;
use crate::version::{ConflictPolicy, Record};

/// Most entries merged into one engine write (a single larger merge still goes whole).
const MAX_ENTRIES_PER_WRITE: usize = 4096;

struct Job {
    /// Entries by stored key.
    entries: Vec<Incoming>,
    done: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// What the writer thread is asked to do: merge, or run a closure between merges.
enum Task {
    Merge(Job),
    Exclusive(Box<dyn FnOnce() + Send>),
}

/// What the writer applies to every merge.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MergePolicy {
    /// Siblings or last-write-wins.
    pub conflict: ConflictPolicy,
    /// Most siblings a client write may grow a key to (`limits.max_siblings`).
    pub max_siblings: usize,
}

/// Handle to the writer thread; the thread ends when the handle is dropped.
///
/// Its queue holds at most `depth` merges: a merge that finds it full is refused at once
/// ([`NodeError::Unavailable`], "overloaded"), so a node that cannot keep up with its
/// writes sheds them (the coordinator then keeps a hint or misses its quorum) instead
/// of queueing without bound.
pub(crate) struct StorageWriter {
    tx: Result<mpsc::SyncSender<Task>, String>,
    depth: usize,
    /// Wait for answers from tokio's blocking pool ([`StorageWriter::wait_on_blocking_pool`]).
    blocking_wait: bool,
}

impl StorageWriter {
    /// Starts the writer thread of `storage` (named after the node, for debuggers);
    /// `observer`, if any, is told of every key a merge changed (see [`MergeObserver`]).
    pub fn spawn<S: StorageEngine + ?Sized>(
        storage: Arc<S>,
        policy: MergePolicy,
        observer: Option<Arc<dyn MergeObserver>>,
        node_id: &str,
        depth: usize,
    ) -> Self {
        let depth = depth.max(1);
        let (tx, rx) = mpsc::sync_channel::<Task>(depth);
        let spawned = std::thread::Builder::new()
            .name(format!("storage-writer-{node_id}"))
            .spawn(move || run(&*storage, policy, observer.as_deref(), rx));
        let tx = match spawned {
            Ok(_) => Ok(tx),
            Err(e) => {
                let msg = format!("cannot start the storage writer thread ({e}): the node cannot store writes; restart it with more threads/memory available");
                tracing::error!("{msg}");
                Err(msg)
            }
        };
        StorageWriter {
            tx,
            depth,
            blocking_wait: false,
        }
    }

    /// Makes callers wait for the writer's answers from tokio's blocking pool: under a
    /// paused tokio clock (in-process tests), a task waiting on the blocking pool keeps
    /// virtual time from auto-advancing while the writer thread works, where a plain
    /// await would let every timeout fire at once. Costs a thread hand-off per merge.
    pub fn wait_on_blocking_pool(&mut self, on: bool) {
        self.blocking_wait = on;
    }

    /// The writer's answer on `rx` (`None`: the writer dropped the task).
    async fn answer<R: Send + 'static>(&self, rx: oneshot::Receiver<R>) -> Option<R> {
        if self.blocking_wait {
            tokio::task::spawn_blocking(move || rx.blocking_recv().ok())
                .await
                .ok()
                .flatten()
        } else {
            rx.await.ok()
        }
    }

    /// Merges `entries` (by stored key) into local storage; returns once the engine has
    /// made the result as durable as its sync policy promises, with the outcome of each
    /// entry (a client write that would grow its key past the sibling limit is refused
    /// and leaves the key as it was).
    pub async fn merge(&self, entries: Vec<Incoming>) -> Result<Vec<Outcome>, NodeError> {
        let (done, rx) = oneshot::channel();
        self.send(Task::Merge(Job { entries, done }))?;
        self.answer(rx)
            .await
            .ok_or_else(|| {
                NodeError::Unavailable(
                    "storage writer dropped the write (node shutting down)".into(),
                )
            })?
            .map_err(NodeError::Unavailable)
    }
}

impl StorageWriter {
    /// Runs `f` on the writer thread between two merges and returns its result: no
    /// merge (nor its observer call) runs meanwhile, so what `f` reads from storage is
    /// consistent with what the observer has been told. Keep `f` short: merges wait.
    pub async fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (done, rx) = oneshot::channel();
        self.send(Task::Exclusive(Box::new(move || {
            let _ = done.send(f());
        })))?;
        self.answer(rx).await.ok_or_else(|| {
            NodeError::Unavailable(
                "storage writer dropped an exclusive task (it panicked, see the log, or the node is shutting down)".into(),
            )
        })
    }

    fn send(&self, task: Task) -> Result<(), NodeError> {
        let tx = self
            .tx
            .as_ref()
            .map_err(|e| NodeError::Unavailable(e.clone()))?;
        tx.try_send(task).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => NodeError::Unavailable(format!(
                "node overloaded: {} merges already wait for the storage writer; retry later or add nodes",
                self.depth
            )),
            mpsc::TrySendError::Disconnected(_) => {
                NodeError::Unavailable("storage writer has stopped (node shutting down)".into())
            }
        })
    }
}

fn run<S: StorageEngine + ?Sized>(
    storage: &S,
    policy: MergePolicy,
    observer: Option<&dyn MergeObserver>,
    rx: mpsc::Receiver<Task>,
) {
    while let Ok(task) = rx.recv() {
        let first = match task {
            Task::Merge(job) => job,
            Task::Exclusive(f) => {
                run_exclusive(f);
                continue;
            }
        };
        let mut count = first.entries.len();
        let mut jobs = vec![first];
        let mut exclusive = None;
        while count < MAX_ENTRIES_PER_WRITE {
            match rx.try_recv() {
                Ok(Task::Merge(job)) => {
                    count += job.entries.len();
                    jobs.push(job);
                }
                Ok(Task::Exclusive(f)) => {
                    exclusive = Some(f); // after this group, in queue order
                    break;
                }
                Err(_) => break,
            }
        }
        apply_group(storage, policy, observer, jobs);
        if let Some(f) = exclusive {
            run_exclusive(f);
        }
    }
}

fn run_exclusive(f: Box<dyn FnOnce() + Send>) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(
            "an exclusive task panicked on the storage writer thread; the writer goes on"
        );
    }
}

fn apply_group<S: StorageEngine + ?Sized>(
    storage: &S,
    policy: MergePolicy,
    observer: Option<&dyn MergeObserver>,
    jobs: Vec<Job>,
) {
    match apply(storage, policy, observer, &jobs) {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for job in jobs {
                let mine = outcomes.by_ref().take(job.entries.len()).collect();
                let _ = job.done.send(Ok(mine));
            }
            return;
        }
        Err(e) if jobs.len() == 1 => {
            for job in jobs {
                let _ = job.done.send(Err(e.clone()));
            }
            return;
        }
        Err(_) => {}
    }
    // One bad merge (say a stored record that cannot be decoded) must not fail the
    // writes it happened to be grouped with: apply each on its own. Nothing of the
    // group was written (the engine write is atomic), and merging is idempotent.
    for job in jobs {
        let result = apply(storage, policy, observer, std::slice::from_ref(&job));
        let _ = job.done.send(result);
    }
}

fn apply<S: StorageEngine + ?Sized>(
    storage: &S,
    policy: MergePolicy,
    observer: Option<&dyn MergeObserver>,
    jobs: &[Job],
) -> Result<Vec<Outcome>, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        merge_and_write(storage, policy, observer, jobs)
    }))
    .unwrap_or_else(|_| {
        Err(NodeError::Unavailable(
            "storage engine panicked while applying a write (see the log); the write is not stored"
                .into(),
        ))
    })
    .map_err(|e| e.to_string())
}

/// Reads each key once, merges every incoming version of it, writes all changed keys
/// in one engine write, then tells `observer` of each key whose record changed;
/// returns the outcome of each entry, in order.
fn merge_and_write<S: StorageEngine + ?Sized>(
    storage: &S,
    policy: MergePolicy,
    observer: Option<&dyn MergeObserver>,
    jobs: &[Job],
) -> Result<Vec<Outcome>, NodeError> {
    let mut merged: HashMap<&[u8], (Record, bool)> = HashMap::new();
    // The record each key held before this write (kept only for an observer).
    let mut before: HashMap<&[u8], Option<Record>> = HashMap::new();
    let mut outcomes = Vec::new();
    for entry in jobs.iter().flat_map(|j| &j.entries) {
        let key = entry.key.as_slice();
        let (mut record, mut changed) = match merged.remove(key) {
            Some(r) => r,
            None => {
                let held = match storage.get(key)? {
                    Some(bytes) => Some(decode_stored(key, &bytes)?),
                    None => None,
                };
                if observer.is_some() {
                    before.insert(key, held.clone());
                }
                (held.unwrap_or_default(), false)
            }
        };
        let outcome = admit(&record, entry, policy);
        if outcome.is_ok() {
            record.merge(&entry.record);
            record.resolve(policy.conflict);
            changed = true;
        }
        outcomes.push(outcome);
        merged.insert(key, (record, changed));
    }
    let mut batch = WriteBatch::new();
    for (key, (record, changed)) in &merged {
        if *changed {
            batch.put(key.to_vec(), record.encode());
        }
    }
    if !batch.is_empty() {
        storage.write(batch)?;
    }
    if let Some(observer) = observer {
        for (key, (record, changed)) in &merged {
            let old = before.get(key).and_then(Option::as_ref);
            if *changed && old != Some(record) {
                if let Some((token, user_key)) = keys::decode(key) {
                    observer.merged(user_key, token, old, Some(record));
                }
            }
        }
    }
    Ok(outcomes)
}

/// Whether `entry` may be merged into `held`: a client write is refused when it would
/// grow the key past the sibling limit (one that keeps or lowers the count, such as a
/// write with the context of a read, is always admitted); a repair always is, since it
/// was acknowledged elsewhere. Under last-write-wins a merge leaves one sibling, so
/// there is nothing to bound.
fn admit(held: &Record, entry: &Incoming, policy: MergePolicy) -> Outcome {
    if entry.origin == Origin::Repair || policy.conflict == ConflictPolicy::LastWriteWins {
        return Ok(());
    }
    let after = held.siblings_after_merge(&entry.record);
    if after > policy.max_siblings && after > held.siblings.len() {
        return Err(Refusal::TooManySiblings {
            held: held.siblings.len(),
            limit: policy.max_siblings,
        });
    }
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

    fn client(key: &[u8], record: Record) -> Incoming {
        Incoming {
            key: key.to_vec(),
            record,
            origin: Origin::Client,
        }
    }

    fn repair(key: &[u8], record: Record) -> Incoming {
        Incoming {
            origin: Origin::Repair,
            ..client(key, record)
        }
    }

    const POLICY: MergePolicy = MergePolicy {
        conflict: ConflictPolicy::Siblings,
        max_siblings: 3,
    };

    /// Runs the writer loop over `jobs` queued before it starts, so they are applied
    /// as one group; returns each job's result.
    fn run_group(
        storage: &MemoryEngine,
        jobs: Vec<Vec<Incoming>>,
    ) -> Vec<Result<Vec<Outcome>, String>> {
        run_group_with(storage, POLICY, jobs)
    }

    fn run_group_with(
        storage: &MemoryEngine,
        policy: MergePolicy,
        jobs: Vec<Vec<Incoming>>,
    ) -> Vec<Result<Vec<Outcome>, String>> {
        run_group_observed(storage, policy, None, jobs)
    }

    fn run_group_observed(
        storage: &MemoryEngine,
        policy: MergePolicy,
        observer: Option<&dyn MergeObserver>,
        jobs: Vec<Vec<Incoming>>,
    ) -> Vec<Result<Vec<Outcome>, String>> {
        let (tx, rx) = mpsc::channel();
        let mut answers = Vec::new();
        for entries in jobs {
            let (done, answer) = oneshot::channel();
            tx.send(Task::Merge(Job { entries, done })).unwrap();
            answers.push(answer);
        }
        drop(tx);
        run(storage, policy, observer, rx);
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
                vec![client(b"k", record("a", 1, b"from-a"))],
                vec![
                    client(b"k", record("b", 1, b"from-b")),
                    client(b"j", record("b", 2, b"j")),
                ],
                vec![client(b"k", record("a", 1, b"from-a"))],
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
                vec![client(b"good1", record("a", 1, b"g1"))],
                vec![client(b"bad", record("a", 2, b"x"))],
                vec![client(b"good2", record("a", 3, b"g2"))],
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

    fn blind(i: u64) -> Record {
        record(&format!("n{i}"), 10 + i, format!("v{i}").as_bytes())
    }

    #[test]
    fn a_blind_client_write_past_the_sibling_limit_is_refused_and_changes_nothing() {
        let storage = MemoryEngine::ephemeral();
        for i in 0..3 {
            let r = run_group(&storage, vec![vec![client(b"k", blind(i))]]);
            assert_eq!(r, vec![Ok(vec![Ok(())])], "write {i} is within the limit");
        }
        let before = storage.get(b"k").unwrap();
        let r = run_group(
            &storage,
            vec![vec![client(b"k", blind(3)), client(b"j", blind(3))]],
        );
        assert_eq!(
            r,
            vec![Ok(vec![
                Err(Refusal::TooManySiblings { held: 3, limit: 3 }),
                Ok(())
            ])],
            "only the entry that would grow its key past the limit is refused"
        );
        assert_eq!(
            storage.get(b"k").unwrap(),
            before,
            "the refused key is untouched"
        );
        assert_eq!(values(&storage, b"j"), vec![b"v3".to_vec()]);
        // A duplicate delivery of a sibling it holds does not grow the key: admitted.
        let r = run_group(&storage, vec![vec![client(b"k", blind(1))]]);
        assert_eq!(r, vec![Ok(vec![Ok(())])]);
    }

    #[test]
    fn a_write_with_the_context_resolves_the_siblings_at_the_limit() {
        let storage = MemoryEngine::ephemeral();
        run_group(
            &storage,
            (0..3).map(|i| vec![client(b"k", blind(i))]).collect(),
        );
        let held = Record::decode(&storage.get(b"k").unwrap().unwrap()).unwrap();
        let resolved = Record::write(
            Dot {
                actor: "n0".into(),
                counter: 100,
            },
            held.context(),
            100,
            Some(b"one".to_vec()),
        );
        let r = run_group(&storage, vec![vec![client(b"k", resolved)]]);
        assert_eq!(r, vec![Ok(vec![Ok(())])]);
        assert_eq!(values(&storage, b"k"), vec![b"one".to_vec()]);
    }

    #[test]
    fn repairs_are_stored_past_the_sibling_limit() {
        let storage = MemoryEngine::ephemeral();
        run_group(
            &storage,
            (0..3).map(|i| vec![client(b"k", blind(i))]).collect(),
        );
        // A record acknowledged elsewhere (read repair, hint, range pull) with two more
        // siblings: stored whole, nothing hidden.
        let mut elsewhere = blind(3);
        elsewhere.merge(&blind(4));
        let r = run_group(&storage, vec![vec![repair(b"k", elsewhere)]]);
        assert_eq!(r, vec![Ok(vec![Ok(())])]);
        assert_eq!(values(&storage, b"k").len(), 5);
        // Past the limit, a blind client write is still refused, naming what is held.
        let r = run_group(&storage, vec![vec![client(b"k", blind(5))]]);
        assert_eq!(
            r,
            vec![Ok(vec![Err(Refusal::TooManySiblings {
                held: 5,
                limit: 3
            })])]
        );
    }

    #[test]
    fn last_write_wins_never_refuses() {
        let storage = MemoryEngine::ephemeral();
        let lww = MergePolicy {
            conflict: ConflictPolicy::LastWriteWins,
            max_siblings: 1,
        };
        for i in 0..5 {
            let r = run_group_with(&storage, lww, vec![vec![client(b"k", blind(i))]]);
            assert_eq!(r, vec![Ok(vec![Ok(())])]);
        }
        assert_eq!(values(&storage, b"k"), vec![b"v4".to_vec()]);
    }

    /// Records what it is told.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<Reported>>);

    /// One report: key, token, old record, new record.
    type Reported = (Vec<u8>, u64, Option<Record>, Option<Record>);

    impl MergeObserver for Recorder {
        fn merged(&self, key: &[u8], token: u64, old: Option<&Record>, new: Option<&Record>) {
            self.0
                .lock()
                .push((key.to_vec(), token, old.cloned(), new.cloned()));
        }
    }

    #[test]
    fn the_observer_sees_each_changed_key_once_with_its_old_and_new_record() {
        let storage = MemoryEngine::ephemeral();
        let recorder = Recorder::default();
        let stored = |k: &[u8]| keys::encode(7, k);
        let a1 = record("a", 1, b"x");
        let b1 = record("b", 1, b"y");
        let incoming = |key: &[u8], record: Record| client(&stored(key), record);
        // One group: two versions of k (reported once, from absent to both) and j.
        run_group_observed(
            &storage,
            POLICY,
            Some(&recorder),
            vec![
                vec![incoming(b"k", a1.clone())],
                vec![incoming(b"k", b1.clone()), incoming(b"j", a1.clone())],
            ],
        );
        let mut k_both = a1.clone();
        k_both.merge(&b1);
        let mut seen = std::mem::take(&mut *recorder.0.lock());
        seen.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            seen,
            vec![
                (b"j".to_vec(), 7, None, Some(a1.clone())),
                (b"k".to_vec(), 7, None, Some(k_both.clone())),
            ]
        );
        // A duplicate delivery changes nothing and is not reported; a refused write
        // neither; a real change reports the old record.
        let more: Vec<Incoming> = (2..5)
            .map(|i| incoming(b"k", record("c", i, b"z")))
            .collect();
        run_group_observed(
            &storage,
            POLICY,
            Some(&recorder),
            vec![vec![incoming(b"k", a1.clone())], more],
        );
        let seen = std::mem::take(&mut *recorder.0.lock());
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].2.as_ref(), Some(&k_both));
        let new = seen[0].3.as_ref().expect("a merge never deletes");
        assert_eq!(new.siblings.len(), 3, "the third sibling was refused");
    }
}
