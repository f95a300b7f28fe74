//! Keeping hints, and replaying them to their targets.

use std::sync::Arc;

use distkv_engine::StorageEngine;
use distkv_network::{Liveness, Membership, NodeInfo, Transport};

use super::HintStore;
use crate::error::NodeError;
use crate::replica::{Entries, Replicas};
use crate::util::blocking;

/// Hinted handoff of one node.
pub struct Handoff<S: StorageEngine + ?Sized, M: Membership, T: Transport> {
    hints: Arc<HintStore>,
    replicas: Arc<Replicas<S, T>>,
    membership: Arc<M>,
    replay_batch: usize,
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
        }
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
        let ids: Vec<Vec<u8>> = batch.iter().map(|h| h.id.clone()).collect();
        let entries: Entries = batch.into_iter().map(|h| (h.key, h.record)).collect();
        let n = entries.len();
        if let Err(e) = self.replicas.send(target, entries).await {
            tracing::debug!(peer = %target, error = %e, "hint replay failed; will retry");
            return 0;
        }
        let store = self.hints.clone();
        let t = target.id.clone();
        match blocking(move || store.remove(&t, ids).map_err(NodeError::from)).await {
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
