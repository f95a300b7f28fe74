//! Per-replica queues: while earlier writes (or reads) to a replica are in flight, new
//! ones queue up and leave together as one call (one RPC, or one storage write with one
//! fsync for the local replica). Under light load every call leaves at once, alone.
//!
//! Each queue is bounded: a write or read that finds its replica's queue full is not
//! queued but answered at once with [`ReplicaError::QueueFull`], which the coordinator
//! treats as that replica not acknowledging (a write for a remote replica then becomes
//! a hint).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Incoming, Origin, Outcome, ReplicaError};
use crate::version::Record;

/// Entries of one write: keys and their version records.
pub type Entries = Vec<(Vec<u8>, Record)>;

/// Sends one coalesced batch; answers the outcome of each entry, in order, or an error
/// that applies to every write in it.
pub type SendBatch = Arc<
    dyn Fn(
            Vec<Incoming>,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<Outcome>, ReplicaError>> + Send>>
        + Send
        + Sync,
>;

struct Pending {
    entries: Arc<Entries>,
    origin: Origin,
    /// Approximate encoded size of `entries`.
    bytes: usize,
    done: oneshot::Sender<Result<(), ReplicaError>>,
}

/// The write queue of one replica.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<Pending>,
}

impl WriteBatcher {
    /// Starts the queue: at most `depth` writes waiting, at most `max_in_flight` batches
    /// in flight, each of at most `max_entries` entries and about `max_bytes` bytes (a
    /// single write larger than that still leaves whole, alone), so that a coalesced
    /// call stays within the peer message limit.
    pub fn spawn(
        depth: usize,
        max_in_flight: usize,
        max_entries: usize,
        max_bytes: usize,
        send: SendBatch,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(depth.max(1));
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            // A write that would have taken a group past `max_bytes` starts the next one.
            let mut carried: Option<Pending> = None;
            loop {
                let first = match carried.take() {
                    Some(p) => p,
                    None => match rx.recv().await {
                        Some(p) => p,
                        None => break,
                    },
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let mut count = first.entries.len();
                let mut bytes = first.bytes;
                let mut group = vec![first];
                while count < max_entries && bytes < max_bytes {
                    match rx.try_recv() {
                        Ok(p) if bytes + p.bytes > max_bytes => {
                            carried = Some(p);
                            break;
                        }
                        Ok(p) => {
                            count += p.entries.len();
                            bytes += p.bytes;
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let mut entries = Vec::with_capacity(count);
                for p in &group {
                    entries.extend(p.entries.iter().map(|(key, record)| Incoming {
                        key: key.clone(),
                        record: record.clone(),
                        origin: p.origin,
                    }));
                }
                let fut = send(entries);
                tokio::spawn(async move {
                    answer_writes(group, count, fut.await);
                    drop(permit);
                });
            }
        });
        WriteBatcher { tx }
    }

    /// Queues a write and waits for the result of the batch that carried it; a full
    /// queue refuses it at once. A write of which the replica refused a record is
    /// [`ReplicaError::Refused`] (the other writes of its batch are not affected).
    pub async fn write(&self, entries: Arc<Entries>, origin: Origin) -> Result<(), ReplicaError> {
        let (done, rx) = oneshot::channel();
        let bytes = entries
            .iter()
            .map(|(k, r)| k.len() + r.approx_bytes())
            .sum();
        self.tx
            .try_send(Pending {
                entries,
                origin,
                bytes,
                done,
            })
            .map_err(|e| queue_error(e, self.tx.max_capacity()))?;
        rx.await.map_err(|_| ReplicaError::ShuttingDown)?
    }
}

/// Answers each write of a batch of `count` entries from the batch's `result`: a write is
/// refused when the replica refused any of its entries.
fn answer_writes(group: Vec<Pending>, count: usize, result: Result<Vec<Outcome>, ReplicaError>) {
    let outcomes = match result {
        Ok(o) if o.len() == count => o,
        Ok(o) => {
            let e = ReplicaError::BadAnswer(format!(
                "answered {} outcomes for {count} records",
                o.len()
            ));
            for p in group {
                let _ = p.done.send(Err(e.clone()));
            }
            return;
        }
        Err(e) => {
            for p in group {
                let _ = p.done.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut outcomes = outcomes.into_iter();
    for p in group {
        let refused = outcomes
            .by_ref()
            .take(p.entries.len())
            .fold(None, |first, o| first.or(o.err()));
        let _ = p.done.send(match refused {
            None => Ok(()),
            Some(r) => Err(ReplicaError::Refused(r)),
        });
    }
}

/// Reads one batch of keys from a replica; answers in key order (`None`: no record).
pub type SendReads = Arc<
    dyn Fn(
            Vec<Vec<u8>>,
        )
            -> Pin<Box<dyn Future<Output = Result<Vec<Option<Record>>, ReplicaError>> + Send>>
        + Send
        + Sync,
>;

struct PendingRead {
    key: Vec<u8>,
    done: oneshot::Sender<Result<Option<Record>, ReplicaError>>,
}

/// The read queue of one replica: like [`WriteBatcher`], reads queued while a call is in
/// flight leave together as one call, and each gets its own record back.
#[derive(Clone)]
pub struct ReadBatcher {
    tx: mpsc::Sender<PendingRead>,
}

impl ReadBatcher {
    /// Starts the queue (at most `depth` reads waiting, `max_in_flight` calls in
    /// flight, `max_keys` keys each).
    pub fn spawn(depth: usize, max_in_flight: usize, max_keys: usize, send: SendReads) -> Self {
        let (tx, mut rx) = mpsc::channel::<PendingRead>(depth.max(1));
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let mut group = vec![first];
                while group.len() < max_keys {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let fut = send(group.iter().map(|p| p.key.clone()).collect());
                tokio::spawn(async move {
                    match fut.await {
                        Ok(records) if records.len() == group.len() => {
                            for (p, r) in group.into_iter().zip(records) {
                                let _ = p.done.send(Ok(r));
                            }
                        }
                        Ok(records) => {
                            let e = ReplicaError::BadAnswer(format!(
                                "answered {} records for {} keys",
                                records.len(),
                                group.len()
                            ));
                            for p in group {
                                let _ = p.done.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for p in group {
                                let _ = p.done.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        ReadBatcher { tx }
    }

    /// Queues a read of `key` and waits for its record; a full queue refuses it at once.
    pub async fn read(&self, key: Vec<u8>) -> Result<Option<Record>, ReplicaError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(PendingRead { key, done })
            .map_err(|e| queue_error(e, self.tx.max_capacity()))?;
        rx.await.map_err(|_| ReplicaError::ShuttingDown)?
    }
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>, depth: usize) -> ReplicaError {
    match e {
        mpsc::error::TrySendError::Full(_) => ReplicaError::QueueFull { depth },
        mpsc::error::TrySendError::Closed(_) => ReplicaError::ShuttingDown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Dot, VersionVector};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry(i: u64) -> Arc<Entries> {
        let r = Record::write(
            Dot {
                actor: "a".into(),
                counter: i + 1,
            },
            VersionVector::new(),
            0,
            Some(vec![]),
        );
        Arc::new(vec![(i.to_be_bytes().to_vec(), r)])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_busy_replica_leave_together() {
        let calls = Arc::new(AtomicUsize::new(0));
        let entries_seen = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let send: SendBatch = {
            let calls = calls.clone();
            let entries_seen = entries_seen.clone();
            Arc::new(move |entries: Vec<Incoming>| {
                calls.fetch_add(1, Ordering::SeqCst);
                entries_seen.fetch_add(entries.len(), Ordering::SeqCst);
                let mut release = release_rx.clone();
                let n = entries.len();
                Box::pin(async move {
                    // The first batch is held until released, so the rest pile up.
                    let _ = release.wait_for(|r| *r).await;
                    Ok(vec![Ok(()); n])
                })
            })
        };
        let batcher = WriteBatcher::spawn(1024, 1, 1000, usize::MAX, send);
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.write(entry(0), Origin::Client).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=100)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.write(entry(i), Origin::Client).await })
            })
            .collect();
        // Let every writer enqueue before releasing the first batch.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        assert_eq!(entries_seen.load(Ordering::SeqCst), 101);
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 101, "{n} calls for 101 writes: nothing was coalesced");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_reads_share_a_call_and_each_gets_its_own_record() {
        let calls = Arc::new(AtomicUsize::new(0));
        let send: SendReads = {
            let calls = calls.clone();
            Arc::new(move |keys: Vec<Vec<u8>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    Ok(keys
                        .iter()
                        .map(|k| (k[0] % 2 == 0).then(|| entry(u64::from(k[0]))[0].1.clone()))
                        .collect())
                })
            })
        };
        let batcher = ReadBatcher::spawn(1024, 1, 100, send);
        let reads: Vec<_> = (0u8..50)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.read(vec![i]).await) })
            })
            .collect();
        for r in reads {
            let (i, got) = r.await.unwrap();
            let expected = (i % 2 == 0).then(|| entry(u64::from(i))[0].1.clone());
            assert_eq!(got.unwrap(), expected, "key {i}");
        }
        assert!(calls.load(Ordering::SeqCst) <= 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coalesced_writes_stay_under_the_byte_budget() {
        let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let send: SendBatch = {
            let sizes = sizes.clone();
            Arc::new(move |entries: Vec<Incoming>| {
                let bytes: usize = entries
                    .iter()
                    .map(|e| e.key.len() + e.record.approx_bytes())
                    .sum();
                let n = entries.len();
                sizes.lock().push((n, bytes));
                let mut release = release_rx.clone();
                Box::pin(async move {
                    let _ = release.wait_for(|r| *r).await;
                    Ok(vec![Ok(()); n])
                })
            })
        };
        let budget = 10_000;
        let batcher = WriteBatcher::spawn(1024, 1, 1000, budget, send);
        let big = |i: u64| {
            let mut e = entry(i);
            let (k, r) = Arc::make_mut(&mut e).pop().unwrap();
            let r = Record::write(
                r.siblings[0].dot.clone(),
                VersionVector::new(),
                0,
                Some(vec![7; 3000]),
            );
            Arc::new(vec![(k, r)])
        };
        let writes: Vec<_> = (0..20)
            .map(|i| {
                let b = batcher.clone();
                let e = big(i);
                tokio::spawn(async move { b.write(e, Origin::Client).await })
            })
            .collect();
        while sizes.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().clone();
        assert_eq!(
            sizes.iter().map(|s| s.0).sum::<usize>(),
            20,
            "every write sent once"
        );
        assert!(sizes.len() < 20, "writes were still coalesced: {sizes:?}");
        for (n, bytes) in &sizes {
            assert!(
                *bytes <= budget || *n == 1,
                "a group over the budget: {sizes:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_the_queued_writes_still_finish() {
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let send: SendBatch = Arc::new(move |entries: Vec<Incoming>| {
            let mut release = release_rx.clone();
            let n = entries.len();
            Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
                Ok(vec![Ok(()); n])
            })
        });
        let batcher = WriteBatcher::spawn(2, 1, 1, usize::MAX, send);
        let writes: Vec<_> = (0..10)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.write(entry(i), Origin::Client).await })
            })
            .collect();
        // Refusals answer without waiting for the blocked batch.
        let mut refused = 0;
        let mut accepted = Vec::new();
        for w in writes {
            tokio::task::yield_now().await;
            if w.is_finished() {
                match w.await.unwrap() {
                    Err(ReplicaError::QueueFull { depth: 2 }) => refused += 1,
                    other => panic!("only refusals finish before the release: {other:?}"),
                }
            } else {
                accepted.push(w);
            }
        }
        assert!(
            refused >= 6,
            "at most 2 queued + 1 waiting + 1 in flight: {refused}"
        );
        release_tx.send(true).unwrap();
        for w in accepted {
            match w.await.unwrap() {
                Ok(()) | Err(ReplicaError::QueueFull { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_write_in_it() {
        let send: SendBatch =
            Arc::new(|_| Box::pin(async { Err(ReplicaError::BadAnswer("peer down".into())) }));
        let batcher = WriteBatcher::spawn(8, 2, 10, usize::MAX, send);
        assert_eq!(
            batcher.write(entry(1), Origin::Client).await,
            Err(ReplicaError::BadAnswer("peer down".into()))
        );
    }
}

#[cfg(test)]
mod refusals {
    use super::*;
    use crate::replica::Refusal;
    use crate::version::{Dot, VersionVector};

    fn write_of(key: u8, value: &[u8]) -> Arc<Entries> {
        let r = Record::write(
            Dot {
                actor: "a".into(),
                counter: u64::from(key) + 1,
            },
            VersionVector::new(),
            0,
            Some(value.to_vec()),
        );
        Arc::new(vec![(vec![key], r)])
    }

    /// A replica that refuses the client writes of value "no" and stores the rest.
    fn picky() -> SendBatch {
        Arc::new(|entries: Vec<Incoming>| {
            let outcomes = entries
                .iter()
                .map(|e| {
                    let no = e.record.values().any(|v| v == b"no");
                    if no && e.origin == Origin::Client {
                        Err(Refusal::TooManySiblings { held: 3, limit: 3 })
                    } else {
                        Ok(())
                    }
                })
                .collect();
            Box::pin(async move { Ok(outcomes) })
        })
    }

    #[tokio::test]
    async fn a_refused_entry_fails_only_its_own_write() {
        let batcher = WriteBatcher::spawn(64, 1, 100, usize::MAX, picky());
        let writes: Vec<_> = [
            (1, "yes", Origin::Client),
            (2, "no", Origin::Client),
            (3, "no", Origin::Repair),
        ]
        .into_iter()
        .map(|(k, v, origin)| {
            let b = batcher.clone();
            tokio::spawn(async move { b.write(write_of(k, v.as_bytes()), origin).await })
        })
        .collect();
        let mut results = Vec::new();
        for w in writes {
            results.push(w.await.unwrap());
        }
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1],
            Err(ReplicaError::Refused(Refusal::TooManySiblings {
                held: 3,
                limit: 3
            }))
        );
        assert_eq!(results[2], Ok(()), "the origin travels with each entry");
    }

    #[tokio::test]
    async fn a_wrong_number_of_outcomes_is_a_bad_answer() {
        let send: SendBatch = Arc::new(|_| Box::pin(async { Ok(vec![]) }));
        let batcher = WriteBatcher::spawn(8, 1, 10, usize::MAX, send);
        let err = batcher
            .write(write_of(1, b"x"), Origin::Client)
            .await
            .unwrap_err();
        assert!(matches!(err, ReplicaError::BadAnswer(_)), "{err:?}");
    }
}
