//! Coalescing of replica writes: while earlier writes to a replica are in flight, new
//! ones queue up and leave together as one call (one RPC, or one storage write with one
//! fsync for the local replica). Under light load every write leaves at once, alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::version::Record;

/// Entries of one write: keys and their version records.
pub type Entries = Vec<(Vec<u8>, Record)>;

/// Sends one coalesced batch; the result applies to every write in it.
pub type SendBatch =
    Arc<dyn Fn(Entries) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

struct Pending {
    entries: Arc<Entries>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The write queue of one replica.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl WriteBatcher {
    /// Starts the queue: at most `max_in_flight` batches in flight, each of at most about
    /// `max_entries` entries (a single write larger than that still leaves whole).
    pub fn spawn(max_in_flight: usize, max_entries: usize, send: SendBatch) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let mut group = vec![first];
                let mut count = group[0].entries.len();
                while count < max_entries {
                    match rx.try_recv() {
                        Ok(p) => {
                            count += p.entries.len();
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let mut entries = Vec::with_capacity(count);
                for p in &group {
                    entries.extend(p.entries.iter().cloned());
                }
                let fut = send(entries);
                tokio::spawn(async move {
                    let result = fut.await;
                    for p in group {
                        let _ = p.done.send(result.clone());
                    }
                    drop(permit);
                });
            }
        });
        WriteBatcher { tx }
    }

    /// Queues a write and waits for the result of the batch that carried it.
    pub async fn write(&self, entries: Arc<Entries>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Pending { entries, done })
            .map_err(|_| "write queue is closed (node shutting down)".to_string())?;
        rx.await
            .map_err(|_| "write queue dropped the write (node shutting down)".to_string())?
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
            Arc::new(move |entries: Entries| {
                calls.fetch_add(1, Ordering::SeqCst);
                entries_seen.fetch_add(entries.len(), Ordering::SeqCst);
                let mut release = release_rx.clone();
                Box::pin(async move {
                    // The first batch is held until released, so the rest pile up.
                    let _ = release.wait_for(|r| *r).await;
                    Ok(())
                })
            })
        };
        let batcher = WriteBatcher::spawn(1, 1000, send);
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.write(entry(0)).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=100)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.write(entry(i)).await })
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

    #[tokio::test]
    async fn a_failed_batch_fails_every_write_in_it() {
        let send: SendBatch = Arc::new(|_| Box::pin(async { Err("peer down".to_string()) }));
        let batcher = WriteBatcher::spawn(2, 10, send);
        assert_eq!(batcher.write(entry(1)).await, Err("peer down".to_string()));
    }
}
