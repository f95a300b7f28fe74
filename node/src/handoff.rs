//! Hinted handoff: replaying the hints this node holds once their targets answer.

use std::sync::Arc;

use distkv_engine::StorageEngine;
use distkv_network::{Liveness, Membership, Transport};
use distkv_proto::v1::PingRequest;

use crate::batcher::Entries;
use crate::error::NodeError;
use crate::node::{blocking, Node};
use crate::ring::Partitioner;

impl<S, M, P, T> Node<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// One round of hinted handoff: for each node this one holds hints for, if it answers
    /// a ping, send it up to `hint_replay_batch` hints and delete those it acknowledged.
    /// Returns the number of hints delivered. The server calls this periodically; tests
    /// call it directly.
    pub async fn replay_hints_once(self: &Arc<Self>) -> usize {
        let Some(hints) = self.hints.clone() else {
            return 0;
        };
        let topology = self.membership.topology();
        let mut delivered = 0;
        for (target_id, _) in hints.pending() {
            let Some(target) = topology.node(&target_id).cloned() else {
                continue;
            };
            if self.membership.liveness(&target.id) == Liveness::Dead {
                continue;
            }
            let ping = PingRequest {
                from_node: self.local.id.clone(),
            };
            if self
                .transport
                .ping(&target, ping, self.settings.request_timeout)
                .await
                .is_err()
            {
                continue;
            }
            let store = hints.clone();
            let t = target_id.clone();
            let limit = self.settings.hint_replay_batch;
            let batch = match blocking(move || store.take(&t, limit).map_err(NodeError::from)).await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(peer = %target, error = %e, "cannot read hints");
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let ids: Vec<Vec<u8>> = batch.iter().map(|h| h.id.clone()).collect();
            let entries: Entries = batch.into_iter().map(|h| (h.key, h.record)).collect();
            let n = entries.len();
            match self.send_to_replica(&target, entries).await {
                Ok(()) => {
                    let store = hints.clone();
                    let t = target_id.clone();
                    if let Err(e) =
                        blocking(move || store.remove(&t, ids).map_err(NodeError::from)).await
                    {
                        tracing::warn!(peer = %target, error = %e, "delivered hints could not be removed; they will be sent again");
                    } else {
                        delivered += n;
                        tracing::info!(peer = %target, hints = n, "hints delivered");
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %target, error = %e, "hint replay failed; will retry")
                }
            }
        }
        delivered
    }
}
