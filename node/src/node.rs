//! The node: coordinator of client requests and replica of its share of the keys.
//!
//! [`Node`] is generic over the four pluggable parts (storage engine, membership,
//! partitioner, transport) and knows nothing of which implementations it was given.
//! Any node coordinates any request: it finds the key's preference list, sends the
//! operation to every replica at once (the local one straight to the engine), and answers
//! after the quorum. Replicas that answer later still apply the write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use distkv_engine::{EngineStats, StorageEngine};
use distkv_network::{Liveness, Membership, NodeInfo, Transport, TransportError};
use distkv_proto::v1::{KeyRecord, PeerReadRequest, ReplicateRequest};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::batcher::{Entries, ReadBatcher, SendBatch, SendReads, WriteBatcher};
use crate::error::NodeError;
use crate::hints::HintStore;
use crate::ring::Partitioner;
use crate::version::{ConflictPolicy, Dot, Record, VersionVector};
use crate::writer::StorageWriter;

/// How many replicas must answer, per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The configured R (reads) or W (writes).
    Default,
    /// One replica.
    One,
    /// A majority of N.
    Quorum,
    /// All N replicas.
    All,
}

/// When read repair runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRepair {
    /// After answering the client.
    Background,
    /// Before answering, for the replicas that answered.
    Blocking,
    /// Never.
    Off,
}

/// The settings the coordinator works with.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// N.
    pub replicas: usize,
    /// R.
    pub read_quorum: usize,
    /// W.
    pub write_quorum: usize,
    /// Deadline of a request inside the cluster.
    pub request_timeout: Duration,
    /// Siblings or last-write-wins.
    pub conflict: ConflictPolicy,
    /// When stale replicas are repaired.
    pub read_repair: ReadRepair,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Most entries in one batch.
    pub max_batch_entries: usize,
    /// Keep a hint for a replica that did not acknowledge a write.
    pub hinted_handoff: bool,
    /// A stored hint counts as an acknowledgement toward W (sloppy quorum).
    pub hints_count_toward_w: bool,
    /// Most hints sent to one target per replay round (the replay throttle).
    pub hint_replay_batch: usize,
    /// Most actors kept in a write's causal context (oldest dropped beyond).
    pub max_vector_entries: usize,
}

impl NodeSettings {
    /// Settings for `replicas`/`read_quorum`/`write_quorum` with every other value at its
    /// default (5 s deadline, siblings, background read repair, 64 KiB keys, 16 MiB values,
    /// hinted handoff on, hints not counted toward W).
    pub fn new(replicas: usize, read_quorum: usize, write_quorum: usize) -> Self {
        NodeSettings {
            replicas,
            read_quorum,
            write_quorum,
            request_timeout: Duration::from_secs(5),
            conflict: ConflictPolicy::Siblings,
            read_repair: ReadRepair::Background,
            max_key_bytes: 64 * 1024,
            max_value_bytes: 16 * 1024 * 1024,
            max_batch_entries: 10_000,
            hinted_handoff: true,
            hints_count_toward_w: false,
            hint_replay_batch: 512,
            max_vector_entries: 64,
        }
    }
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// Live sibling values (empty when absent or deleted).
    pub values: Vec<Vec<u8>>,
    /// Causal context to hand back on the next write of the key.
    pub context: VersionVector,
}

/// One entry of a batch write.
#[derive(Clone, Debug)]
pub struct BatchEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value (`None` deletes).
    pub value: Option<Vec<u8>>,
    /// Causal context bytes from an earlier read (may be empty).
    pub context: Vec<u8>,
}

/// A DistKV node.
pub struct Node<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    pub(crate) local: NodeInfo,
    pub(crate) storage: Arc<S>,
    pub(crate) membership: Arc<M>,
    pub(crate) partitioner: Arc<P>,
    pub(crate) transport: Arc<T>,
    pub(crate) settings: NodeSettings,
    clock: DotClock,
    writer: StorageWriter,
    pub(crate) started: Instant,
    pub(crate) this: Weak<Self>,
    pub(crate) batchers: DashMap<String, WriteBatcher>,
    pub(crate) read_batchers: DashMap<String, ReadBatcher>,
    pub(crate) hints: Option<Arc<HintStore>>,
}

/// Issues write counters for this node: strictly increasing, and at least the current
/// time in microseconds, so counters keep growing across restarts.
struct DotClock {
    last: AtomicU64,
}

impl DotClock {
    fn new() -> Self {
        DotClock {
            last: AtomicU64::new(0),
        }
    }

    /// A fresh counter greater than every earlier one and than `at_least`.
    fn next(&self, at_least: u64) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = (cur + 1).max(now).max(at_least.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }
}

type ReplicaResult = (NodeInfo, Result<(), String>);

impl<S, M, P, T> Node<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// A node over the given parts.
    pub fn new(
        storage: Arc<S>,
        membership: Arc<M>,
        partitioner: Arc<P>,
        transport: Arc<T>,
        hints: Option<Arc<HintStore>>,
        settings: NodeSettings,
    ) -> Arc<Self> {
        partitioner.set_topology(&membership.topology());
        let writer =
            StorageWriter::spawn(storage.clone(), settings.conflict, &membership.local().id);
        Arc::new_cyclic(|this| Node {
            this: this.clone(),
            local: membership.local().clone(),
            storage,
            membership,
            partitioner,
            transport,
            settings,
            clock: DotClock::new(),
            writer,
            started: Instant::now(),
            batchers: DashMap::new(),
            read_batchers: DashMap::new(),
            hints,
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

    /// The members and their liveness.
    pub fn members(&self) -> Vec<(NodeInfo, Liveness)> {
        self.membership
            .topology()
            .nodes
            .into_iter()
            .map(|n| {
                let l = self.membership.liveness(&n.id);
                (n, l)
            })
            .collect()
    }

    /// Statistics of the local storage engine, plus the pending hints.
    pub fn storage_stats(&self) -> EngineStats {
        let mut stats = self.storage.stats();
        if let Some(h) = &self.hints {
            stats.set("hints.pending", h.total_pending());
        }
        stats
    }

    /// Hints held for other nodes, per target.
    pub fn pending_hints(&self) -> Vec<(String, u64)> {
        self.hints.as_ref().map(|h| h.pending()).unwrap_or_default()
    }

    /// Makes every local write and hint durable (used at shutdown).
    pub async fn flush_storage(&self) -> Result<(), NodeError> {
        let storage = self.storage.clone();
        let hints = self.hints.clone();
        blocking(move || {
            storage.flush()?;
            if let Some(h) = hints {
                h.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Flushes and closes the local storage engine and the hint store.
    pub async fn close_storage(&self) -> Result<(), NodeError> {
        let storage = self.storage.clone();
        let hints = self.hints.clone();
        blocking(move || {
            storage.close()?;
            if let Some(h) = hints {
                h.close()?;
            }
            Ok(())
        })
        .await
    }

    fn preference_list(&self, key: &[u8]) -> Vec<NodeInfo> {
        if self.partitioner.topology_version() != self.membership.topology_version() {
            self.partitioner.set_topology(&self.membership.topology());
        }
        self.partitioner
            .preference_list(key, self.settings.replicas)
    }

    fn required(
        &self,
        consistency: Consistency,
        default: usize,
        available: usize,
    ) -> Result<usize, NodeError> {
        let n = self.settings.replicas;
        let needed = match consistency {
            Consistency::Default => default,
            Consistency::One => 1,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
        };
        if needed > available {
            return Err(NodeError::NotEnoughReplicas { needed, available });
        }
        Ok(needed)
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

    fn parse_context(context: &[u8]) -> Result<VersionVector, NodeError> {
        VersionVector::from_context(context).map_err(|e| {
            NodeError::InvalidArgument(format!(
                "context is not valid ({e}): pass the context returned by a Get of this key unchanged, or none"
            ))
        })
    }

    fn now_record(&self, mut context: VersionVector, value: Option<Vec<u8>>) -> Record {
        context.prune(self.settings.max_vector_entries);
        let counter = self.clock.next(context.get(&self.local.id));
        let dot = Dot {
            actor: self.local.id.clone(),
            counter,
        };
        Record::write(dot, context, counter / 1000, value)
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
        let context = Self::parse_context(context)?;
        let replicas = self.preference_list(&key);
        let needed = self.required(consistency, self.settings.write_quorum, replicas.len())?;
        let record = self.now_record(context, value);
        let new_context = record.context();
        self.replicate(replicas, vec![(key, record)], needed)
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
            let ctx = Self::parse_context(&e.context).map_err(at)?;
            let replicas = self.preference_list(&e.key);
            let needed = self.required(consistency, self.settings.write_quorum, replicas.len())?;
            prepared.push((e.key, e.value, ctx, replicas, needed));
        }
        let writes = prepared
            .into_iter()
            .map(|(key, value, ctx, replicas, needed)| {
                let record = self.now_record(ctx, value);
                let new_context = record.context();
                async move {
                    self.replicate(replicas, vec![(key, record)], needed)
                        .await?;
                    Ok::<_, NodeError>(new_context)
                }
            });
        futures::future::try_join_all(writes).await
    }

    /// Reads `key`: the merged live siblings of at least R replicas and their context.
    pub async fn get(
        self: &Arc<Self>,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<ReadResult, NodeError> {
        self.check_key(&key)?;
        let replicas = self.preference_list(&key);
        let needed = self.required(consistency, self.settings.read_quorum, replicas.len())?;
        // The replica reads are polled right here rather than spawned: the local read
        // answers on the first poll, and the remote ones wait in their replica's queue.
        // Only what is still outstanding at the quorum moves to a task (for repair).
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .cloned()
            .map(|replica| self.clone().read_replica_owned(replica, key.clone()))
            .collect();
        let (mut answers, failures) =
            await_quorum(&mut pending, needed, self.settings.request_timeout).await;
        if answers.len() < needed {
            return Err(quorum_error(answers.len(), needed, &failures));
        }
        let mut merged = Record::default();
        for (_, r) in &answers {
            if let Some(r) = r {
                merged.merge(r);
            }
        }
        merged.resolve(self.settings.conflict);
        match self.settings.read_repair {
            ReadRepair::Off => {}
            ReadRepair::Blocking => {
                self.repair(&key, &merged, &answers).await;
            }
            ReadRepair::Background if pending.is_empty() => {
                if answers.iter().any(|(_, r)| r.as_ref() != Some(&merged)) {
                    let node = self.clone();
                    let merged = merged.clone();
                    tokio::spawn(async move { node.repair(&key, &merged, &answers).await });
                }
            }
            ReadRepair::Background => {
                let node = self.clone();
                let merged = merged.clone();
                tokio::spawn(async move {
                    let mut merged = merged;
                    // Wait for the replicas that had not answered yet, then repair all.
                    let late = async {
                        while let Some((replica, result)) = pending.next().await {
                            if let Ok(record) = result {
                                if let Some(r) = &record {
                                    merged.merge(r);
                                }
                                answers.push((replica, record));
                            }
                        }
                    };
                    let _ = tokio::time::timeout(node.settings.request_timeout, late).await;
                    merged.resolve(node.settings.conflict);
                    node.repair(&key, &merged, &answers).await;
                });
            }
        }
        Ok(ReadResult {
            values: merged.values().map(<[u8]>::to_vec).collect(),
            context: merged.context(),
        })
    }

    /// Sends `merged` to every replica whose answer differs from it.
    async fn repair(
        self: &Arc<Self>,
        key: &[u8],
        merged: &Record,
        answers: &[(NodeInfo, Option<Record>)],
    ) {
        let stale: Vec<NodeInfo> = answers
            .iter()
            .filter(|(_, r)| r.as_ref() != Some(merged))
            .map(|(n, _)| n.clone())
            .collect();
        if stale.is_empty() || merged.siblings.is_empty() && merged.seen.is_empty() {
            return;
        }
        tracing::debug!(key_len = key.len(), stale = stale.len(), "read repair");
        let needed = stale.len();
        if let Err(e) = self
            .replicate(stale, vec![(key.to_vec(), merged.clone())], needed)
            .await
        {
            tracing::warn!(key_len = key.len(), error = %e, "read repair incomplete");
        }
    }

    /// [`Self::read_replica`] owning its arguments, so the future can outlive the request.
    async fn read_replica_owned(
        self: Arc<Self>,
        replica: NodeInfo,
        key: Vec<u8>,
    ) -> (NodeInfo, Result<Option<Record>, String>) {
        let result = self.read_replica(&replica, key).await;
        (replica, result)
    }

    async fn read_replica(
        self: &Arc<Self>,
        replica: &NodeInfo,
        key: Vec<u8>,
    ) -> Result<Option<Record>, String> {
        if replica.id == self.local.id {
            let mut records = self
                .read_local(vec![key])
                .await
                .map_err(|e| e.to_string())?;
            return Ok(records.pop().flatten());
        }
        self.read_batcher(replica).read(key).await
    }

    /// The read queue of `replica`, created on first use.
    fn read_batcher(self: &Arc<Self>, replica: &NodeInfo) -> ReadBatcher {
        queue_for(&self.read_batchers, replica, || {
            let weak = Arc::downgrade(self);
            let target = replica.clone();
            let send: SendReads = Arc::new(move |keys: Vec<Vec<u8>>| {
                let (weak, target) = (weak.clone(), target.clone());
                Box::pin(async move { alive(&weak)?.read_from_peer(&target, keys).await })
            });
            ReadBatcher::spawn(1, 1024, send)
        })
    }

    /// Reads `keys` from a remote replica in one call.
    async fn read_from_peer(
        &self,
        replica: &NodeInfo,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<Record>>, String> {
        let n = keys.len();
        let request = PeerReadRequest {
            from_node: self.local.id.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
        };
        let response = self
            .transport
            .read(replica, request, self.settings.request_timeout)
            .await
            .map_err(|e| e.to_string())?;
        if response.records.len() != n {
            return Err(format!(
                "replica {} answered {} records for {n} keys",
                replica.id,
                response.records.len()
            ));
        }
        response
            .records
            .into_iter()
            .map(|kr| {
                if kr.record.is_empty() {
                    return Ok(None);
                }
                Record::decode(&kr.record)
                    .map(Some)
                    .map_err(|e| format!("replica {} sent a bad record: {e}", replica.id))
            })
            .collect()
    }

    /// Sends `entries` to every replica at once and waits for `needed` acknowledgements
    /// or the deadline. Replicas that answer after this returns still apply the write.
    async fn replicate(
        self: &Arc<Self>,
        replicas: Vec<NodeInfo>,
        entries: Vec<(Vec<u8>, Record)>,
        needed: usize,
    ) -> Result<(), NodeError> {
        let entries = Arc::new(entries);
        // Polled here rather than spawned (the local write and the remote ones wait in
        // their replica queues); whatever is outstanding at the quorum is handed to a
        // task, so every replica still gets the write.
        let mut pending: FuturesUnordered<_> = replicas
            .into_iter()
            .map(|replica| self.clone().write_replica_owned(replica, entries.clone()))
            .collect();
        let (acks, failures) =
            await_quorum(&mut pending, needed, self.settings.request_timeout).await;
        if !pending.is_empty() {
            tokio::spawn(async move { while pending.next().await.is_some() {} });
        }
        if acks.len() < needed {
            return Err(quorum_error(acks.len(), needed, &failures));
        }
        Ok(())
    }

    /// [`Self::write_replica`] owning its arguments, logging a failure.
    async fn write_replica_owned(
        self: Arc<Self>,
        replica: NodeInfo,
        entries: Arc<Entries>,
    ) -> ReplicaResult {
        let result = self.write_replica(&replica, entries).await;
        if let Err(e) = &result {
            tracing::debug!(peer = %replica, error = %e, "replica write failed");
        }
        (replica, result)
    }

    /// Writes to one replica through its queue. When a remote replica fails, the write
    /// becomes a durable hint (if enabled); with `hints_count_toward_w` the stored hint
    /// is the acknowledgement.
    async fn write_replica(
        self: &Arc<Self>,
        replica: &NodeInfo,
        entries: Arc<Entries>,
    ) -> Result<(), String> {
        let result = self.batcher(replica).write(entries.clone()).await;
        let Err(error) = result else { return Ok(()) };
        if replica.id == self.local.id || !self.settings.hinted_handoff {
            return Err(error);
        }
        let Some(hints) = self.hints.clone() else {
            return Err(error);
        };
        let target = replica.id.clone();
        let stored = blocking(move || hints.add(&target, &entries).map_err(NodeError::from)).await;
        match stored {
            Ok(()) => {
                tracing::debug!(peer = %replica, "write kept as a hint");
                if self.settings.hints_count_toward_w {
                    Ok(())
                } else {
                    Err(format!("{error} (kept as a hint)"))
                }
            }
            Err(e) => Err(format!("{error}; the hint could not be stored either: {e}")),
        }
    }

    /// The write queue of `replica`, created on first use.
    fn batcher(self: &Arc<Self>, replica: &NodeInfo) -> WriteBatcher {
        queue_for(&self.batchers, replica, || {
            let weak = Arc::downgrade(self);
            let target = replica.clone();
            let send: SendBatch = Arc::new(move |entries: Entries| {
                let (weak, target) = (weak.clone(), target.clone());
                Box::pin(async move { alive(&weak)?.send_to_replica(&target, entries).await })
            });
            WriteBatcher::spawn(1, 1024, send)
        })
    }

    pub(crate) async fn send_to_replica(
        self: &Arc<Self>,
        replica: &NodeInfo,
        entries: Entries,
    ) -> Result<(), String> {
        if replica.id == self.local.id {
            return self.merge_local(entries).await.map_err(|e| e.to_string());
        }
        let request = ReplicateRequest {
            from_node: self.local.id.clone(),
            records: entries
                .iter()
                .map(|(k, r)| KeyRecord {
                    key: k.clone().into(),
                    record: r.encode().into(),
                })
                .collect(),
        };
        self.transport
            .replicate(replica, request, self.settings.request_timeout)
            .await
            .map(|_| ())
            .map_err(|e: TransportError| e.to_string())
    }

    /// Reads the local record of `key` (for tests and tools).
    pub async fn local_record(self: &Arc<Self>, key: &[u8]) -> Result<Option<Record>, NodeError> {
        Ok(self.read_local(vec![key.to_vec()]).await?.pop().flatten())
    }

    /// Reads local records, off the async reactor.
    /// Reads local records. Reads run inline on the async worker rather than on the
    /// blocking pool: a memtable or block-cache hit costs less than the thread hand-off
    /// (which dominated the profile), and a miss faults in one mmapped page at worst.
    async fn read_local(
        self: &Arc<Self>,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<Record>>, NodeError> {
        keys.iter()
            .map(|k| match self.storage.get(k)? {
                None => Ok(None),
                Some(bytes) => decode_stored(k, &bytes).map(Some),
            })
            .collect()
    }

    /// Merges records into local storage (read, merge, write, on the node's storage
    /// writer thread) and returns once the engine has made them durable.
    pub(crate) async fn merge_local(
        self: &Arc<Self>,
        entries: Vec<(Vec<u8>, Record)>,
    ) -> Result<(), NodeError> {
        self.writer.merge(entries).await
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

/// The node behind a queue's weak handle, unless it is gone (shutting down).
fn alive<N>(weak: &Weak<N>) -> Result<Arc<N>, String> {
    weak.upgrade()
        .ok_or_else(|| "node is shutting down".to_string())
}

pub(crate) fn decode_stored(key: &[u8], bytes: &[u8]) -> Result<Record, NodeError> {
    Record::decode(bytes).map_err(|e| {
        NodeError::Storage(distkv_engine::Error::Other(format!(
            "stored record of a {}-byte key cannot be decoded ({e}); repair it from a replica",
            key.len()
        )))
    })
}

/// Polls replica calls until `needed` of them succeeded, all answered, or `timeout`
/// passed. Returns the successful answers and one line per failure (the deadline
/// included); calls still pending stay in `pending`.
async fn await_quorum<T, F>(
    pending: &mut FuturesUnordered<F>,
    needed: usize,
    timeout: Duration,
) -> (Vec<(NodeInfo, T)>, Vec<String>)
where
    F: std::future::Future<Output = (NodeInfo, Result<T, String>)>,
{
    let mut answers = Vec::with_capacity(needed);
    let mut failures = Vec::new();
    let collect = async {
        while answers.len() < needed {
            match pending.next().await {
                Some((replica, Ok(answer))) => answers.push((replica, answer)),
                Some((replica, Err(e))) => failures.push(format!("{}: {e}", replica.id)),
                None => break,
            }
        }
    };
    if tokio::time::timeout(timeout, collect).await.is_err() {
        failures.push(format!("deadline of {timeout:?} passed"));
    }
    (answers, failures)
}

fn quorum_error(got: usize, needed: usize, failures: &[String]) -> NodeError {
    let detail = if failures.is_empty() {
        String::new()
    } else {
        format!("; {}", failures.join("; "))
    };
    NodeError::QuorumNotReached {
        got,
        needed,
        detail,
    }
}

pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, NodeError> + Send + 'static,
) -> Result<R, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Unavailable(format!("storage task failed: {e}")))?
}
