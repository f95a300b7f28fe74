//! The replica side of the node, and how the coordinator reaches any replica.
//!
//! * [`ReplicaStore`]: this node's records in its storage engine (token-ordered keys,
//!   one writer thread for every merge, range scans).
//! * [`Replicas`]: the coordinator's handle on every replica, this node's own included:
//!   reads and writes go through bounded per-replica queues that coalesce calls.
//! * [`PeerEndpoint`]: what this node answers when a peer calls it.

pub mod checks;
mod handler;
pub mod keys;
mod queues;
mod store;
mod writer;

use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use distkv_engine::StorageEngine;
use distkv_network::{range_checksum, NodeInfo, PeerError, Transport, TransportExt};
use distkv_proto::v1::{
    MergeEntry, MergeOutcome, MergeRequest, PeerReadRequest, PingRequest, RangePullRequest,
    WriteOrigin,
};

pub use checks::PeerLimits;
pub use handler::{MembershipCalls, PeerEndpoint, MAX_SIZE_RANGES};
pub use queues::Entries;
use queues::{ReadBatcher, SendBatch, SendReads, WriteBatcher};
pub use store::{RangePage, ReplicaStore};

use crate::placement::TokenRange;
use crate::version::Record;

/// Where a record sent to a replica comes from; it decides whether the replica may
/// refuse it (see [`Refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A new write a client just made through a coordinator, acknowledged nowhere yet:
    /// a replica refuses it when it would grow the key past `limits.max_siblings`.
    Client,
    /// A record already acknowledged elsewhere (read repair, hint delivery, range pull):
    /// a replica always stores it, or an acknowledged write would be hidden.
    Repair,
}

/// Why a replica refused one record (the others of its call are not affected).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A client write would have grown the key past the sibling limit.
    #[error("the key holds {held} siblings on this replica and the write would add another, past limits.max_siblings = {limit}")]
    TooManySiblings {
        /// Siblings the replica holds for the key.
        held: usize,
        /// The replica's `limits.max_siblings`.
        limit: usize,
    },
}

/// Told of every change the replica's storage writer makes to a stored record (client
/// writes, replication, read repair, hints, range pulls all merge through it; tombstone
/// purges delete through it): the anti-entropy tree is kept current this way. Called on
/// the storage writer thread, after the engine accepted the write, once per key whose
/// record changed (a merge that changes nothing is not reported), so it must be quick
/// and must not panic or block on storage.
pub trait MergeObserver: Send + Sync {
    /// `key` (a user key, at `token`) went from `old` to `new` (`None`: absent, i.e.
    /// before its first write or after a purge).
    fn merged(&self, key: &[u8], token: u64, old: Option<&Record>, new: Option<&Record>);
}

/// One record sent to a replica: the key, the record, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The user key (the stored key inside the store's writer).
    pub key: Vec<u8>,
    /// The record to merge.
    pub record: Record,
    /// Client write or repair.
    pub origin: Origin,
}

/// What a replica did with one record: stored it, or refused it.
pub type Outcome = Result<(), Refusal>;

/// Why one replica did not answer a read or acknowledge a write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The replica's queue on this node was full; the call was not made.
    #[error("its queue on this node is full ({depth} calls waiting): the replica is slow or the node overloaded")]
    QueueFull {
        /// The queue's bound.
        depth: usize,
    },
    /// The peer call failed.
    #[error("{0}")]
    Peer(PeerError),
    /// This node's own storage failed the call.
    #[error("local storage: {0}")]
    Local(String),
    /// The replica refused a record of the write (it stored nothing of that record).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The replica answered something that cannot be right.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

/// How the coordinator reaches replicas, this node's own included.
pub struct Replicas<S: StorageEngine + ?Sized, T: Transport> {
    local: NodeInfo,
    store: Arc<ReplicaStore<S>>,
    transport: Arc<T>,
    timeout: Duration,
    queue_depth: usize,
    this: Weak<Self>,
    writes: DashMap<String, WriteBatcher>,
    reads: DashMap<String, ReadBatcher>,
}

/// Most entries coalesced into one replica write call, and keys into one read call.
const MAX_COALESCED: usize = 1024;
/// About the most bytes of records coalesced into one replica write call (a single
/// larger write goes alone), well under the peer message limit.
const MAX_COALESCED_BYTES: usize = 8 << 20;

impl<S: StorageEngine + ?Sized, T: Transport> Replicas<S, T> {
    /// Replicas reached from `local`: its own through `store`, the others through
    /// `transport`, every call bounded by `timeout`, every queue by `queue_depth`.
    pub fn new(
        local: NodeInfo,
        store: Arc<ReplicaStore<S>>,
        transport: Arc<T>,
        timeout: Duration,
        queue_depth: usize,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Replicas {
            local,
            store,
            transport,
            timeout,
            queue_depth,
            this: this.clone(),
            writes: DashMap::new(),
            reads: DashMap::new(),
        })
    }

    /// This node's own records.
    pub fn store(&self) -> &Arc<ReplicaStore<S>> {
        &self.store
    }

    /// Whether `replica` is this node.
    pub fn is_local(&self, replica: &NodeInfo) -> bool {
        replica.id == self.local.id
    }

    /// Writes `entries` of `origin` to `replica` through its queue (coalesced with other
    /// writes waiting for it); returns once the replica made them durable, or
    /// [`ReplicaError::Refused`] when it refused one of them (only client writes can be).
    pub async fn write(
        &self,
        replica: &NodeInfo,
        entries: Arc<Entries>,
        origin: Origin,
    ) -> Result<(), ReplicaError> {
        self.write_queue(replica).write(entries, origin).await
    }

    /// Reads the record of `key` from `replica`: this node's own inline, a remote one
    /// through its queue (coalesced with other reads waiting for it).
    pub async fn read(
        &self,
        replica: &NodeInfo,
        key: Vec<u8>,
    ) -> Result<Option<Record>, ReplicaError> {
        if self.is_local(replica) {
            return self
                .store
                .get(&key)
                .map_err(|e| ReplicaError::Local(e.to_string()));
        }
        self.read_queue(replica).read(key).await
    }

    /// Sends records already acknowledged elsewhere (hints) to `replica` now, in one
    /// call, bypassing its queue. As repairs they are never refused.
    pub async fn send(&self, replica: &NodeInfo, entries: Entries) -> Result<(), ReplicaError> {
        let entries = entries
            .into_iter()
            .map(|(key, record)| Incoming {
                key,
                record,
                origin: Origin::Repair,
            })
            .collect();
        self.send_batch(replica, entries).await.map(|_| ())
    }

    /// Sends `entries` to `replica` now, in one call; answers the outcome of each.
    async fn send_batch(
        &self,
        replica: &NodeInfo,
        entries: Vec<Incoming>,
    ) -> Result<Vec<Outcome>, ReplicaError> {
        if self.is_local(replica) {
            return self
                .store
                .merge(entries)
                .await
                .map_err(|e| ReplicaError::Local(e.to_string()));
        }
        let n = entries.len();
        let request = MergeRequest {
            entries: entries
                .iter()
                .map(|e| MergeEntry {
                    key: e.key.clone().into(),
                    record: e.record.encode().into(),
                    origin: wire_origin(e.origin) as i32,
                })
                .collect(),
        };
        let response = self
            .transport
            .call(replica, request, self.timeout)
            .await
            .map_err(ReplicaError::Peer)?;
        if response.outcomes.is_empty() {
            return Ok(vec![Ok(()); n]);
        }
        if response.outcomes.len() != n {
            return Err(ReplicaError::BadAnswer(format!(
                "{} answered {} outcomes for {n} records",
                replica.id,
                response.outcomes.len()
            )));
        }
        Ok(response.outcomes.iter().map(outcome_from_wire).collect())
    }

    /// Whether `replica` answers a ping.
    pub async fn ping(&self, replica: &NodeInfo) -> Result<(), ReplicaError> {
        let pong = self
            .transport
            .call(replica, PingRequest {}, self.timeout)
            .await
            .map_err(ReplicaError::Peer)?;
        if pong.node_id != replica.id {
            return Err(ReplicaError::BadAnswer(format!(
                "{} answered as node {:?}: another node holds its address",
                replica.id, pong.node_id
            )));
        }
        Ok(())
    }

    /// One page of the records `replica` holds in token range `range`, after the cursor
    /// `after` (from the previous page's `next`; `None` for the first page). Verifies
    /// the page's checksum. The page's `next` is `None` once the range is done.
    pub async fn pull_range(
        &self,
        replica: &NodeInfo,
        range: TokenRange,
        after: Option<Vec<u8>>,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<RangePage, ReplicaError> {
        let request = RangePullRequest {
            start_token: range.start,
            end_token: range.end,
            after: after.unwrap_or_default().into(),
            max_entries,
            max_bytes,
        };
        let page = self
            .transport
            .call(replica, request, self.timeout)
            .await
            .map_err(ReplicaError::Peer)?;
        let sum = range_checksum(&page.entries);
        if sum != page.checksum {
            return Err(ReplicaError::BadAnswer(format!(
                "a page of range {range} from {} has checksum {:016x} but says {:016x}: it was damaged in transit; pull it again",
                replica.id, sum, page.checksum
            )));
        }
        Ok(RangePage {
            entries: page
                .entries
                .into_iter()
                .map(|kr| (kr.key.to_vec(), kr.record.to_vec()))
                .collect(),
            next: (!page.done).then(|| page.next.to_vec()),
        })
    }

    /// Reads `keys` from a remote replica: in one call, or, when the answer would be
    /// over the peer message limit, in halves (recursively) until each part fits.
    async fn fetch(
        &self,
        replica: &NodeInfo,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<Record>>, ReplicaError> {
        let keys: Vec<bytes::Bytes> = keys.into_iter().map(Into::into).collect();
        self.fetch_parts(replica, &keys).await
    }

    fn fetch_parts<'a>(
        &'a self,
        replica: &'a NodeInfo,
        keys: &'a [bytes::Bytes],
    ) -> futures::future::BoxFuture<'a, Result<Vec<Option<Record>>, ReplicaError>> {
        Box::pin(async move {
            match self.fetch_once(replica, keys.to_vec()).await {
                Err(ReplicaError::Peer(PeerError::TooLarge { .. })) if keys.len() > 1 => {
                    let (first, second) = keys.split_at(keys.len() / 2);
                    let mut records = self.fetch_parts(replica, first).await?;
                    records.extend(self.fetch_parts(replica, second).await?);
                    Ok(records)
                }
                other => other,
            }
        })
    }

    /// Reads `keys` from a remote replica in one call.
    async fn fetch_once(
        &self,
        replica: &NodeInfo,
        keys: Vec<bytes::Bytes>,
    ) -> Result<Vec<Option<Record>>, ReplicaError> {
        let n = keys.len();
        let request = PeerReadRequest { keys };
        let response = self
            .transport
            .call(replica, request, self.timeout)
            .await
            .map_err(ReplicaError::Peer)?;
        if response.records.len() != n {
            return Err(ReplicaError::BadAnswer(format!(
                "{} answered {} records for {n} keys",
                replica.id,
                response.records.len()
            )));
        }
        response
            .records
            .into_iter()
            .map(|kr| {
                if kr.record.is_empty() {
                    return Ok(None);
                }
                Record::decode(&kr.record).map(Some).map_err(|e| {
                    ReplicaError::BadAnswer(format!("{} sent a bad record: {e}", replica.id))
                })
            })
            .collect()
    }

    /// The write queue of `replica`, started on first use.
    fn write_queue(&self, replica: &NodeInfo) -> WriteBatcher {
        queue_for(&self.writes, replica, || {
            let weak = self.this.clone();
            let target = replica.clone();
            let send: SendBatch = Arc::new(move |entries: Vec<Incoming>| {
                let (weak, target) = (weak.clone(), target.clone());
                Box::pin(async move { alive(&weak)?.send_batch(&target, entries).await })
            });
            WriteBatcher::spawn(
                self.queue_depth,
                1,
                MAX_COALESCED,
                MAX_COALESCED_BYTES,
                send,
            )
        })
    }

    /// The read queue of `replica`, started on first use.
    fn read_queue(&self, replica: &NodeInfo) -> ReadBatcher {
        queue_for(&self.reads, replica, || {
            let weak = self.this.clone();
            let target = replica.clone();
            let send: SendReads = Arc::new(move |keys: Vec<Vec<u8>>| {
                let (weak, target) = (weak.clone(), target.clone());
                Box::pin(async move { alive(&weak)?.fetch(&target, keys).await })
            });
            ReadBatcher::spawn(self.queue_depth, 1, MAX_COALESCED, send)
        })
    }
}

/// The queue of `replica` in `queues`, started by `spawn` on first use.
fn queue_for<Q: Clone>(
    queues: &DashMap<String, Q>,
    replica: &NodeInfo,
    spawn: impl FnOnce() -> Q,
) -> Q {
    if let Some(q) = queues.get(&replica.id) {
        return q.clone();
    }
    queues
        .entry(replica.id.clone())
        .or_insert_with(spawn)
        .clone()
}

/// `origin` as it travels in a [`MergeEntry`].
pub fn wire_origin(origin: Origin) -> WriteOrigin {
    match origin {
        Origin::Client => WriteOrigin::Client,
        Origin::Repair => WriteOrigin::Repair,
    }
}

/// The origin of a [`MergeEntry`]: anything but a client write (unset, unknown, repair)
/// is a repair, so that no acknowledged write is ever refused.
pub fn origin_from_wire(raw: i32) -> Origin {
    match WriteOrigin::try_from(raw) {
        Ok(WriteOrigin::Client) => Origin::Client,
        _ => Origin::Repair,
    }
}

/// `outcome` as it travels in a [`MergeResponse`](distkv_proto::v1::MergeResponse).
pub fn outcome_to_wire(outcome: &Outcome) -> MergeOutcome {
    match outcome {
        Ok(()) => MergeOutcome {
            stored: true,
            siblings: 0,
            max_siblings: 0,
        },
        Err(Refusal::TooManySiblings { held, limit }) => MergeOutcome {
            stored: false,
            siblings: u32::try_from(*held).unwrap_or(u32::MAX),
            max_siblings: u32::try_from(*limit).unwrap_or(u32::MAX),
        },
    }
}

/// The outcome a [`MergeOutcome`] reports.
pub fn outcome_from_wire(wire: &MergeOutcome) -> Outcome {
    if wire.stored {
        Ok(())
    } else {
        Err(Refusal::TooManySiblings {
            held: wire.siblings as usize,
            limit: wire.max_siblings as usize,
        })
    }
}

/// The owner of a queue's weak handle, unless it is gone (shutting down).
fn alive<N>(weak: &Weak<N>) -> Result<Arc<N>, ReplicaError> {
    weak.upgrade().ok_or(ReplicaError::ShuttingDown)
}
