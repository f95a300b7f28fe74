//! The coordinator: any node serves any client request by finding the key's replicas,
//! sending the operation to all of them at once (its own replica straight to the
//! engine), and answering after the quorum. Replicas that answer later still apply the
//! write; a remote replica that does not acknowledge gets a hint.
//!
//! [`Node`] is generic over the four pluggable parts (storage engine, membership,
//! partitioner, transport) and knows nothing of which implementations it was given. It
//! holds handles to the subsystems it uses — placement, replicas, handoff — and reaches
//! into none of their fields.

mod clock;
pub mod quorum;

pub(crate) use clock::now_micros;

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkv_engine::{EngineStats, StorageEngine};
use distkv_network::{LivenessView, Member, Membership, NodeInfo, Transport};
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use crate::api::{BatchEntry, Consistency, NodeSettings, ReadRepair, ReadResult};
use crate::error::NodeError;
use crate::handoff::Handoff;
use crate::observe::{self, CoordinatorOp};
use crate::placement::{Partitioner, Placement, WriteSets};
use crate::replica::{Entries, Origin, Refusal, ReplicaError, Replicas};
use crate::version::{ContextLimits, Dot, Record, VersionVector};
use clock::DotClock;
use quorum::{collect, collect_errors, not_reached, required, QuorumTracker};

/// Longest node id: the actor name in every version vector.
pub const MAX_NODE_ID_BYTES: usize = 255;

/// Most entries of one batch being written at once (well under the replica queues'
/// bound, so a batch never fills a queue by itself).
const BATCH_IN_FLIGHT: usize = 512;

/// The subsystems a coordinator works with.
pub struct NodeParts<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    /// Who is in the cluster.
    pub membership: Arc<M>,
    /// Which nodes hold which keys.
    pub placement: Arc<Placement<P>>,
    /// How replicas are reached.
    pub replicas: Arc<Replicas<S, T>>,
    /// Hinted handoff, when enabled.
    pub handoff: Option<Arc<Handoff<S, M, T>>>,
}

/// A DistKV node's coordinator.
pub struct Node<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    local: NodeInfo,
    membership: Arc<M>,
    placement: Arc<Placement<P>>,
    replicas: Arc<Replicas<S, T>>,
    handoff: Option<Arc<Handoff<S, M, T>>>,
    settings: NodeSettings,
    clock: DotClock,
    started: Instant,
    /// Bounds the read-repair tasks running at once.
    repairs: Arc<Semaphore>,
}

impl<S, M, P, T> Node<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// A coordinator over `parts`.
    pub fn new(parts: NodeParts<S, M, P, T>, settings: NodeSettings) -> Arc<Self> {
        Arc::new(Node {
            local: parts.membership.local().clone(),
            membership: parts.membership,
            placement: parts.placement,
            replicas: parts.replicas,
            handoff: parts.handoff,
            repairs: Arc::new(Semaphore::new(settings.max_background_repairs.max(1))),
            settings,
            clock: DotClock::new(),
            started: Instant::now(),
        })
    }

    /// This node.
    pub fn local(&self) -> &NodeInfo {
        &self.local
    }

    /// The settings in force.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The membership this node follows (layout changes go through it).
    pub fn membership(&self) -> &Arc<M> {
        &self.membership
    }

    /// The members of the layout in force, with their liveness.
    pub fn members(&self) -> Vec<(Member, LivenessView)> {
        self.membership
            .layout()
            .members()
            .iter()
            .map(|m| (m.clone(), self.membership.liveness(&m.id)))
            .collect()
    }

    /// The fraction of the token space each member owns as primary, by node id.
    pub fn ownership(&self) -> Vec<(String, f64)> {
        self.placement.current().ring().ownership()
    }

    /// Statistics of the local storage engine, plus the pending hints.
    pub fn storage_stats(&self) -> EngineStats {
        let mut stats = self.replicas.store().stats();
        if let Some(h) = &self.handoff {
            stats.set("hints.pending", h.store().total_pending());
        }
        stats
    }

    /// Hints held for other nodes, per target.
    pub fn pending_hints(&self) -> Vec<(String, u64)> {
        self.handoff
            .as_ref()
            .map(|h| h.store().pending())
            .unwrap_or_default()
    }

    /// Reads the local record of `key` (for tests and tools).
    pub fn local_record(&self, key: &[u8]) -> Result<Option<Record>, NodeError> {
        self.replicas.store().get(key)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), NodeError> {
        if key.is_empty() {
            return Err(NodeError::InvalidArgument(
                "key is empty: keys must be 1 byte or longer".into(),
            ));
        }
        if key.len() > self.settings.max_key_bytes {
            return Err(NodeError::InvalidArgument(format!(
                "key is {} bytes, over the limit of {} bytes (limits.max_key_bytes)",
                key.len(),
                self.settings.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), NodeError> {
        if value.len() > self.settings.max_value_bytes {
            return Err(NodeError::InvalidArgument(format!(
                "value is {} bytes, over the limit of {} bytes (limits.max_value_bytes)",
                value.len(),
                self.settings.max_value_bytes
            )));
        }
        Ok(())
    }

    fn parse_context(&self, context: &[u8]) -> Result<VersionVector, NodeError> {
        let limits = ContextLimits {
            max_bytes: self.settings.max_context_bytes,
            max_actor_bytes: MAX_NODE_ID_BYTES,
            max_ahead_micros: self.settings.max_clock_skew.as_micros() as u64,
        };
        VersionVector::from_client_context(context, &limits, clock::now_micros()).map_err(|e| {
            NodeError::InvalidArgument(format!(
                "context is not valid ({e}): pass the context returned by a Get of this key unchanged, or none"
            ))
        })
    }

    fn now_record(
        &self,
        mut context: VersionVector,
        value: Option<Vec<u8>>,
    ) -> Result<Record, NodeError> {
        context.prune(self.settings.max_vector_entries);
        let counter = self.clock.next(context.get(&self.local.id)).ok_or_else(|| {
            NodeError::Unavailable(format!(
                "node {} has no write counter left (its dot clock reached the end of its range); coordinate writes through another node",
                self.local.id
            ))
        })?;
        let dot = Dot {
            actor: self.local.id.clone(),
            counter,
        };
        Ok(Record::write(dot, context, counter / 1000, value))
    }

    /// The replicas a write of `key` must reach and the acknowledgements it needs.
    fn write_plan(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<(WriteSets, usize), NodeError> {
        let n = self.settings.replicas;
        let sets = self.placement.current().write_sets(key, n);
        let needed = required(consistency, self.settings.write_quorum, n, sets.min_len())?;
        Ok((sets, needed))
    }

    /// Stores `value` under `key` (`None` deletes) and returns the new causal context.
    pub async fn put(
        self: &Arc<Self>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: &[u8],
        consistency: Consistency,
    ) -> Result<VersionVector, NodeError> {
        self.check_key(&key)?;
        if let Some(v) = &value {
            self.check_value(v)?;
        }
        let context = self.parse_context(context)?;
        let (sets, needed) = self.write_plan(&key, consistency)?;
        let record = self.now_record(context, value)?;
        let new_context = record.context();
        self.replicate(sets, vec![(key, record)], needed, Origin::Client)
            .await?;
        Ok(new_context)
    }

    /// Writes several entries; the whole request is validated before anything is written,
    /// then each entry is an independent write. Returns each entry's new context.
    pub async fn batch(
        self: &Arc<Self>,
        entries: Vec<BatchEntry>,
        consistency: Consistency,
    ) -> Result<Vec<VersionVector>, NodeError> {
        if entries.len() > self.settings.max_batch_entries {
            return Err(NodeError::InvalidArgument(format!(
                "batch has {} entries, over the limit of {} (limits.max_batch_entries): split it",
                entries.len(),
                self.settings.max_batch_entries
            )));
        }
        let mut prepared = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let at = |err: NodeError| match err {
                NodeError::InvalidArgument(m) => {
                    NodeError::InvalidArgument(format!("batch entry {i}: {m}"))
                }
                other => other,
            };
            self.check_key(&e.key).map_err(at)?;
            if let Some(v) = &e.value {
                self.check_value(v).map_err(at)?;
            }
            let ctx = self.parse_context(&e.context).map_err(at)?;
            let (sets, needed) = self.write_plan(&e.key, consistency)?;
            prepared.push((e.key, e.value, ctx, sets, needed));
        }
        let writes = prepared.into_iter().map(|(key, value, ctx, sets, needed)| {
            let record = self.now_record(ctx, value);
            async move {
                let record = record?;
                let new_context = record.context();
                self.replicate(sets, vec![(key, record)], needed, Origin::Client)
                    .await?;
                Ok::<_, NodeError>(new_context)
            }
        });
        // At most BATCH_IN_FLIGHT entries are in the replica queues at once, so that one
        // large batch cannot fill them (they are bounded) and fail its own writes.
        futures::stream::iter(writes)
            .buffered(BATCH_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Reads `key`: the merged live siblings of at least R replicas and their context.
    pub async fn get(
        self: &Arc<Self>,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<ReadResult, NodeError> {
        self.check_key(&key)?;
        let n = self.settings.replicas;
        let replicas = self.placement.current().read_replicas(&key, n);
        let needed = required(consistency, self.settings.read_quorum, n, replicas.len())?;
        observe::fanout(CoordinatorOp::Read, replicas.len());
        // The replica reads are polled right here rather than spawned: the local read
        // answers on the first poll, and the remote ones wait in their replica's queue.
        // Only what is still outstanding at the quorum moves to a task (for repair).
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (via, replica, key) = (self.replicas.clone(), replica.clone(), key.clone());
                async move { (i, via.read(&replica, key).await) }
            })
            .collect();
        let mut tracker = QuorumTracker::single(replicas.len(), needed);
        let (mut answers, failures) = collect(
            &mut pending,
            &mut tracker,
            self.settings.request_timeout,
            |i| replicas[i].id.clone(),
        )
        .await;
        if !tracker.reached() {
            let (failed, size) = (tracker.failures(), tracker.smallest_set());
            observe::counters().quorum_failure(CoordinatorOp::Read, failed, size, needed);
            return Err(not_reached(answers.len(), needed, &failures));
        }
        let mut merged = Record::default();
        for (_, r) in answers.iter() {
            if let Some(r) = r {
                merged.merge(r);
            }
        }
        merged.resolve(self.settings.conflict);
        match self.settings.read_repair {
            ReadRepair::Off => {}
            ReadRepair::Blocking => {
                self.repair(&key, &merged, &replicas, &answers).await;
            }
            ReadRepair::Background if pending.is_empty() => {
                if answers.iter().any(|(_, r)| r.as_ref() != Some(&merged)) {
                    let (node, merged) = (self.clone(), merged.clone());
                    self.spawn_repair(async move {
                        node.repair(&key, &merged, &replicas, &answers).await
                    });
                }
            }
            ReadRepair::Background => {
                let (node, mut merged) = (self.clone(), merged.clone());
                self.spawn_repair(async move {
                    // Wait for the replicas that had not answered yet, then repair all.
                    let late = async {
                        while let Some((i, result)) = pending.next().await {
                            if let Ok(record) = result {
                                if let Some(r) = &record {
                                    merged.merge(r);
                                }
                                answers.push((i, record));
                            }
                        }
                    };
                    let _ = tokio::time::timeout(node.settings.request_timeout, late).await;
                    merged.resolve(node.settings.conflict);
                    node.repair(&key, &merged, &replicas, &answers).await;
                });
            }
        }
        Ok(ReadResult {
            values: merged.values().map(<[u8]>::to_vec).collect(),
            context: merged.context(),
        })
    }

    /// Runs a read repair in the background, unless `max_background_repairs` are
    /// already running (then the repair is skipped: a later read finds the replica
    /// stale again).
    fn spawn_repair(&self, repair: impl std::future::Future<Output = ()> + Send + 'static) {
        match self.repairs.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    repair.await;
                    drop(permit);
                });
            }
            Err(_) => {
                observe::counters().read_repair_skipped();
                tracing::debug!("read repair skipped: too many repairs running");
            }
        }
    }

    /// Sends `merged` to every replica whose answer differs from it; `answers` name
    /// their replica by its index in `replicas`.
    async fn repair(
        self: &Arc<Self>,
        key: &[u8],
        merged: &Record,
        replicas: &[NodeInfo],
        answers: &[(usize, Option<Record>)],
    ) {
        let stale: Vec<NodeInfo> = answers
            .iter()
            .filter(|(_, r)| r.as_ref() != Some(merged))
            .map(|(i, _)| replicas[*i].clone())
            .collect();
        if stale.is_empty() || merged.siblings.is_empty() && merged.seen.is_empty() {
            return;
        }
        tracing::debug!(key_len = key.len(), stale = stale.len(), "read repair");
        let needed = stale.len();
        let sets = WriteSets {
            current: stale,
            pending: None,
        };
        let repaired = self
            .replicate(
                sets,
                vec![(key.to_vec(), merged.clone())],
                needed,
                Origin::Repair,
            )
            .await;
        observe::counters().read_repair(needed, repaired.is_ok());
        if let Err(e) = repaired {
            tracing::warn!(key_len = key.len(), error = %e, "read repair incomplete");
        }
    }

    /// Sends `entries` of `origin` to every replica of `sets` at once and waits until
    /// each set has `needed` acknowledgements, or the deadline. Replicas that answer
    /// after this returns still apply the write.
    ///
    /// A replica that refuses a client write (it would grow the key past
    /// `limits.max_siblings`) does not acknowledge it and gets no hint. The write
    /// succeeds only with `needed` replicas that stored it; if it does not, and some
    /// replica refused it, the error is [`NodeError::TooManySiblings`]: definite
    /// ("nothing was written") when no replica stored it and every other replica refused
    /// it too, and "may still land" otherwise (a replica that stored it, or a hint kept
    /// for one that did not answer, leaves it as a sibling that read repair spreads).
    async fn replicate(
        self: &Arc<Self>,
        sets: WriteSets,
        entries: Vec<(Vec<u8>, Record)>,
        needed: usize,
        origin: Origin,
    ) -> Result<(), NodeError> {
        let entries = Arc::new(entries);
        let all = sets.all();
        observe::fanout(CoordinatorOp::Write, all.len());
        let member_of: Vec<u8> = all
            .iter()
            .map(|n| {
                let in_current = sets.current.iter().any(|c| c.id == n.id);
                let in_pending = sets.pending.iter().flatten().any(|p| p.id == n.id);
                u8::from(in_current) | (u8::from(in_pending) << 1)
            })
            .collect();
        let mut tracker =
            QuorumTracker::new(member_of, 1 + usize::from(sets.pending.is_some()), needed);
        // Polled here rather than spawned (the local write and the remote ones wait in
        // their replica queues); whatever is outstanding at the quorum is handed to a
        // task, so every replica still gets the write. Such tasks end by the request
        // deadline at the latest (every replica call is bounded by it).
        let mut pending: FuturesUnordered<_> = all
            .iter()
            .enumerate()
            .map(|(i, replica)| {
                let (node, replica, entries) = (self.clone(), replica.clone(), entries.clone());
                async move { (i, node.write_replica(&replica, entries, origin).await) }
            })
            .collect();
        let (_, failures, late) =
            collect_errors(&mut pending, &mut tracker, self.settings.request_timeout).await;
        if !pending.is_empty() {
            tokio::spawn(async move { while pending.next().await.is_some() {} });
        }
        if !tracker.reached() {
            let (failed, size) = (tracker.failures(), tracker.smallest_set());
            observe::counters().quorum_failure(CoordinatorOp::Write, failed, size, needed);
            let refused = failures.iter().filter(|(_, f)| f.refusal.is_some()).count();
            if let Some(refusal) = failures.iter().find_map(|(_, f)| f.refusal.clone()) {
                let Refusal::TooManySiblings { held, limit } = refusal;
                return Err(NodeError::TooManySiblings {
                    held,
                    limit,
                    refused,
                    stored: tracker.acks(),
                    needed,
                    may_land: tracker.acks() > 0 || refused < all.len(),
                });
            }
            let mut lines: Vec<String> = failures.iter().map(|(_, f)| f.to_string()).collect();
            lines.extend(late);
            return Err(not_reached(tracker.acks(), needed, &lines));
        }
        Ok(())
    }

    /// Writes to one replica through its queue. When a remote replica fails, the write
    /// becomes a durable hint (if enabled); with `hints_count_toward_w` the stored hint
    /// is the acknowledgement. A replica that refused the write gets no hint: the
    /// refusal is its answer, and a hint (delivered as a repair) would override it.
    async fn write_replica(
        &self,
        replica: &NodeInfo,
        entries: Arc<Entries>,
        origin: Origin,
    ) -> Result<(), WriteFailure> {
        let error = match self.replicas.write(replica, entries.clone(), origin).await {
            Ok(()) => return Ok(()),
            Err(ReplicaError::Refused(r)) => {
                tracing::debug!(peer = %replica, reason = %r, "replica refused a write");
                return Err(WriteFailure {
                    replica: replica.id.clone(),
                    message: format!("refused: {r}"),
                    refusal: Some(r),
                });
            }
            Err(e) => e,
        };
        tracing::debug!(peer = %replica, error = %error, "replica write failed");
        let failed = |message: String| WriteFailure {
            replica: replica.id.clone(),
            message,
            refusal: None,
        };
        let handoff = match &self.handoff {
            Some(h) if !self.replicas.is_local(replica) && self.settings.hinted_handoff => h,
            _ => return Err(failed(error.to_string())),
        };
        let entries_len = entries.len();
        match handoff.keep(replica, entries).await {
            Ok(()) => {
                observe::counters().hints_stored(entries_len);
                tracing::debug!(peer = %replica, "write kept as a hint");
                if self.settings.hints_count_toward_w {
                    Ok(())
                } else {
                    Err(failed(format!("{error} (kept as a hint)")))
                }
            }
            Err(e) => {
                observe::counters().hints_dropped(entries_len);
                Err(failed(format!(
                    "{error}; the hint could not be stored either: {e}"
                )))
            }
        }
    }
}

/// Why one replica did not acknowledge a write.
#[derive(Clone, Debug)]
struct WriteFailure {
    replica: String,
    message: String,
    /// Set when the replica refused the write (nothing stored there, no hint kept).
    refusal: Option<Refusal>,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.replica, self.message)
    }
}
