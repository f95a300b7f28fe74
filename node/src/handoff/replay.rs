//! Keeping hints, and replaying them to their targets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distkv_engine::StorageEngine;
use distkv_network::{Liveness, Membership, NodeInfo, Transport};

use super::HintStore;
use crate::antientropy::gc_driver::GcCounters;
use crate::error::NodeError;
use crate::replica::{Entries, Replicas};
use crate::util::blocking;

/// Hinted handoff of one node.
pub struct Handoff<S: StorageEngine + ?Sized, M: Membership, T: Transport> {
    hints: Arc<HintStore>,
    replicas: Arc<Replicas<S, T>>,
    membership: Arc<M>,
    replay_batch: usize,
    max_age: Option<(Duration, Arc<GcCounters>)>,
}

impl<S, M, T> Handoff<S, M, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    T: Transport,
{
    /// Handoff over `hints`, delivering through `replicas` at most `replay_batch` hints
    /// per target and round.
    pub fn new(
        hints: Arc<HintStore>,
        replicas: Arc<Replicas<S, T>>,
        membership: Arc<M>,
        replay_batch: usize,
    ) -> Self {
        Handoff {
            hints,
            replicas,
            membership,
            replay_batch: replay_batch.max(1),
            max_age: None,
        }
    }

    /// Drops, instead of delivering, every hint whose record's newest sibling is older
    /// than `grace` (`gc.grace`): tombstone GC may have purged the key's delete
    /// everywhere by then, and such a hint (a write from before the delete) would bring
    /// the key back. Anti-entropy still brings a replica every version it missed.
    /// Dropped hints are counted in `counters.hints_dropped`.
    pub fn with_max_age(mut self, grace: Duration, counters: Arc<GcCounters>) -> Self {
        self.max_age = Some((grace, counters));
        self
    }

    /// The durable hints.
    pub fn store(&self) -> &Arc<HintStore> {
        &self.hints
    }

    /// Keeps `entries` as hints for `target`; returns once they are durable.
    pub async fn keep(&self, target: &NodeInfo, entries: Arc<Entries>) -> Result<(), NodeError> {
        let hints = self.hints.clone();
        let target = target.id.clone();
        blocking(move || hints.add(&target, &entries).map_err(NodeError::from)).await
    }

    /// One round of replay: for each node this one holds hints for, if it answers a
    /// ping, send it up to the replay batch of hints and delete those it acknowledged.
    /// Returns the number of hints delivered. The supervisor calls this periodically;
    /// tests call it directly.
    pub async fn replay_once(&self) -> usize {
        let layout = self.membership.layout();
        let mut delivered = 0;
        for (target_id, _) in self.hints.pending() {
            let Some(member) = layout.member(&target_id) else {
                continue;
            };
            let target = NodeInfo {
                id: member.id.clone(),
                address: member.address.clone(),
            };
            if self.membership.liveness(&target.id).liveness == Liveness::Dead {
                continue;
            }
            if self.replicas.ping(&target).await.is_err() {
                continue;
            }
            delivered += self.deliver(&target).await;
        }
        delivered
    }

    /// Sends one batch of `target`'s hints; returns how many were delivered.
    async fn deliver(&self, target: &NodeInfo) -> usize {
        let store = self.hints.clone();
        let t = target.id.clone();
        let limit = self.replay_batch;
        let batch = match blocking(move || store.take(&t, limit).map_err(NodeError::from)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %target, error = %e, "cannot read hints");
                return 0;
            }
        };
        if batch.is_empty() {
            return 0;
        }
        let (stale, batch): (Vec<_>, Vec<_>) = match &self.max_age {
            Some((grace, _)) => {
                let oldest_ok = wall_ms().saturating_sub(grace.as_millis() as u64);
                batch
                    .into_iter()
                    .partition(|h| newest_ms(&h.record) < oldest_ok)
            }
            None => (Vec::new(), batch),
        };
        if !stale.is_empty() {
            let (store, t, n) = (self.hints.clone(), target.id.clone(), stale.len());
            match blocking(move || store.remove(&t, &stale).map_err(NodeError::from)).await {
                Ok(()) => {
                    if let Some((_, counters)) = &self.max_age {
                        counters
                            .hints_dropped
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    tracing::warn!(peer = %target, hints = n, "hints older than gc.grace dropped, not delivered: tombstone GC may have purged a later delete of their keys, which they would bring back; anti-entropy repairs the replica instead");
                }
                Err(e) => {
                    tracing::warn!(peer = %target, error = %e, "hints older than gc.grace could not be removed; they are dropped at the next round");
                    return 0;
                }
            }
            if batch.is_empty() {
                return 0;
            }
        }
        let entries: Entries = batch
            .iter()
            .map(|h| (h.key.clone(), h.record.clone()))
            .collect();
        let n = entries.len();
        if let Err(e) = self.replicas.send(target, entries).await {
            tracing::debug!(peer = %target, error = %e, "hint replay failed; will retry");
            return 0;
        }
        let store = self.hints.clone();
        let t = target.id.clone();
        match blocking(move || store.remove(&t, &batch).map_err(NodeError::from)).await {
            Ok(()) => {
                crate::observe::counters().hints_delivered(n);
                tracing::info!(peer = %target, hints = n, "hints delivered");
                n
            }
            Err(e) => {
                tracing::warn!(peer = %target, error = %e, "delivered hints could not be removed; they will be sent again");
                0
            }
        }
    }
}

/// The newest timestamp of `record`'s siblings (milliseconds since the Unix epoch).
fn newest_ms(record: &crate::version::Record) -> u64 {
    record
        .siblings
        .iter()
        .map(|s| s.timestamp_ms)
        .max()
        .unwrap_or(0)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
