//! Joining: a node that is not in the cluster's layout asks to join, streams the ranges
//! it will own from the replicas that hold them, and asks to become normal.
//!
//! 1. **Ask.** A `Join` peer call to the lowest-id normal member (then the next ones),
//!    which commits layout `v + 1` with this node `joining` (one change at a time). From
//!    then on writes need W acknowledgements in both the old and the new replica sets;
//!    reads stay on the old set.
//! 2. **Barrier.** Before streaming, every normal member must hold version `v + 1` (asked
//!    with `LayoutPull`; bounded wait), so no coordinator still writes to the old set only
//!    behind the stream.
//! 3. **Stream.** For every range this node will replicate, every live replica of the
//!    current ring is paged through with `RangePull` (each page checksummed, records
//!    checked as peer input) and merged as repairs; bytes are throttled by
//!    `rebalance.max_bytes_per_sec`. Pulling from every live replica, not one, gives
//!    every write acknowledged by W of them.
//! 4. **Done.** A `Join { done }` call commits `v + 2` with this node `normal`; reads
//!    move to it.
//!
//! A restart while joining starts the stream again from the first page (merges are
//! idempotent); resuming per range is not built yet.
//!
//! Leaving (decommission) is the mirror: layout `v + 1` with this node `leaving` (it
//! still owns its ranges; writes reach old and new owners), the same barrier, then this
//! node pushes every range it replicates to the replicas that gain it (paged local
//! scans, `Merge` calls with the repair origin, throttled), then `v + 2` with it `left`.
//! Writes it missed reach the new owners from the other replicas by read repair and
//! anti-entropy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkv_engine::StorageEngine;
use distkv_network::{
    decode_layout, plan_leave, plan_leave_done, range_checksum, Layout, MemberState, Membership,
    NodeInfo, PeerError, Transport, TransportExt, DEFAULT_MAX_NODES,
};
use distkv_proto::v1::{
    JoinRequest, LayoutPullRequest, MergeEntry, MergeRequest, RangePullRequest, WriteOrigin,
};

use crate::coordinator::now_micros;
use crate::placement::{Partitioner, Placement, TokenRange};
use crate::replica::{checks, Origin, PeerLimits, ReplicaStore};

/// Entries asked per range-pull page.
const PAGE_ENTRIES: u32 = 1024;
/// Bytes asked per range-pull page.
const PAGE_BYTES: u64 = 1 << 20;
/// How long the joiner waits for every member to hold the joining layout.
const BARRIER_WAIT: Duration = Duration::from_secs(30);
/// Pause between attempts when a step fails (a member down, a change in flight).
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What a join moved, for the log and the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Ranges streamed.
    pub ranges: usize,
    /// Records merged.
    pub records: u64,
    /// Bytes of keys and records received.
    pub bytes: u64,
}

/// The join of this node (see the module documentation).
pub struct Joiner<S: StorageEngine + ?Sized, M, P, T> {
    /// This node.
    pub local: NodeInfo,
    /// Its membership.
    pub membership: Arc<M>,
    /// Its peer transport.
    pub transport: Arc<T>,
    /// Its records.
    pub store: Arc<ReplicaStore<S>>,
    /// Its placement (installed from the layout by the placement updater).
    pub placement: Arc<Placement<P>>,
    /// Checks on records pulled from peers.
    pub limits: PeerLimits,
    /// Replicas per key (N).
    pub replicas: usize,
    /// Throttle of the stream, in bytes per second.
    pub max_bytes_per_sec: u64,
    /// Timeout of each peer call.
    pub timeout: Duration,
}

impl<S, M, P, T> Joiner<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// Whether this node has a join to do: it is not in the layout, or it is joining.
    pub fn needed(&self) -> bool {
        match self.membership.layout().member(&self.local.id) {
            None => true,
            Some(m) => m.state == MemberState::Joining,
        }
    }

    /// Runs the join to the end, retrying failed steps; returns what was streamed.
    pub async fn run(&self) -> StreamStats {
        loop {
            let layout = self.membership.layout();
            match layout.member(&self.local.id).map(|m| m.state) {
                None => {
                    if let Err(e) = self.ask(&layout, false).await {
                        tracing::warn!("join not accepted yet: {e}; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Some(MemberState::Joining) => {
                    let version = layout.version();
                    self.barrier(version).await;
                    let stats = match self.stream(version).await {
                        Ok(stats) => stats,
                        Err(e) => {
                            tracing::warn!("streaming for the join failed: {e}; starting over");
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    };
                    loop {
                        match self.ask(&self.membership.layout(), true).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!("join completion not accepted yet: {e}; retrying");
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                        }
                    }
                    tracing::info!(
                        ranges = stats.ranges,
                        records = stats.records,
                        bytes = stats.bytes,
                        version = self.membership.layout().version(),
                        "joined the cluster: this node is normal"
                    );
                    return stats;
                }
                Some(_) => return StreamStats::default(),
            }
        }
    }

    /// Asks the normal members, lowest id first, to commit our join (or its end), and
    /// installs the layout they answer.
    async fn ask(&self, layout: &Layout, done: bool) -> Result<(), String> {
        let mut last = String::from("the layout has no normal member to ask");
        for member in layout.nodes_in(&[MemberState::Normal]) {
            if member.id == self.local.id {
                continue;
            }
            let request = JoinRequest {
                node_id: self.local.id.clone(),
                address: self.local.address.clone(),
                done,
            };
            match self.transport.call(&member, request, self.timeout).await {
                Ok(answer) => {
                    let Some(next) = answer.layout else {
                        last = format!("{} answered no layout", member.id);
                        continue;
                    };
                    let next = decode_layout(next, DEFAULT_MAX_NODES)?;
                    return self.install(next);
                }
                Err(PeerError::Refused { reason, .. }) => return Err(reason),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn install(&self, next: Layout) -> Result<(), String> {
        if next.version() <= self.membership.layout().version() {
            return Ok(());
        }
        self.membership
            .apply_layout(next)
            .map_err(|e| format!("the answered layout is refused: {e}"))
    }

    /// Waits (bounded) until every other normal member holds layout `version`.
    async fn barrier(&self, version: u64) {
        let deadline = Instant::now() + BARRIER_WAIT;
        loop {
            let layout = self.membership.layout();
            let mut behind = Vec::new();
            for member in layout.nodes_in(&[MemberState::Normal]) {
                let theirs = self
                    .transport
                    .call(&member, LayoutPullRequest {}, self.timeout)
                    .await
                    .ok()
                    .and_then(|r| r.layout)
                    .map_or(0, |l| l.version);
                if theirs < version {
                    behind.push(member.id);
                }
            }
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    ?behind,
                    version,
                    "members do not hold the joining layout after {BARRIER_WAIT:?}: streaming \
                     anyway (writes they coordinate meanwhile reach the new node by read repair \
                     or anti-entropy)"
                );
                return;
            }
            tokio::time::sleep(RETRY_PAUSE / 2).await;
        }
    }

    /// Waits (bounded) until the placement updater installed layout `version`.
    async fn placement_of(&self, version: u64) -> Result<(), String> {
        let deadline = Instant::now() + BARRIER_WAIT;
        while self.placement.current().version() < version {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the placement of layout {version} was not installed"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Decommissions this node (see the module documentation): returns what it pushed
    /// once the layout says it left. The caller stops the process then.
    pub async fn decommission(&self) -> Result<StreamStats, String> {
        let current = self.membership.layout();
        let leaving = plan_leave(&current, &self.local.id)?;
        let version = leaving.version();
        if version != current.version() {
            self.membership
                .apply_layout(leaving)
                .map_err(|e| format!("the layout changed meanwhile ({e}); retry"))?;
        }
        self.barrier(version).await;
        self.placement_of(version).await?;
        let snapshot = self.placement.current();
        let Some(pending) = snapshot.pending_ring() else {
            return Err("the leaving layout has no future ring".into());
        };
        let (now, _) = snapshot.ranges_of(&self.local.id, self.replicas);
        let mut stats = StreamStats::default();
        let started = Instant::now();
        for range in now {
            let old: Vec<String> = snapshot
                .ring()
                .replicas_of_range(range, self.replicas)
                .into_iter()
                .map(|n| n.id)
                .collect();
            let gaining: Vec<NodeInfo> = pending
                .replicas_of_range(range, self.replicas)
                .into_iter()
                .filter(|n| !old.contains(&n.id))
                .collect();
            if !gaining.is_empty() {
                self.push_range(range, &gaining, &mut stats, started)
                    .await?;
            }
            stats.ranges += 1;
        }
        let current = self.membership.layout();
        let left = plan_leave_done(&current, &self.local.id)?;
        let left_version = left.version();
        if left_version != current.version() {
            self.membership
                .apply_layout(left)
                .map_err(|e| format!("the layout changed meanwhile ({e}); retry"))?;
        }
        // Let the others learn it before this node goes.
        self.barrier(left_version).await;
        tracing::info!(
            ranges = stats.ranges,
            records = stats.records,
            bytes = stats.bytes,
            version = left_version,
            "decommissioned: this node left the cluster"
        );
        Ok(stats)
    }

    /// Sends every record of `range` this node holds to `targets` as repairs.
    async fn push_range(
        &self,
        range: TokenRange,
        targets: &[NodeInfo],
        stats: &mut StreamStats,
        started: Instant,
    ) -> Result<(), String> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_range(
                    range,
                    after.as_deref(),
                    PAGE_ENTRIES as usize,
                    PAGE_BYTES as usize,
                )
                .map_err(|e| format!("reading range {range}: {e}"))?;
            let entries: Vec<MergeEntry> = page
                .entries
                .into_iter()
                .map(|(key, record)| MergeEntry {
                    key: key.into(),
                    record: record.into(),
                    origin: WriteOrigin::Repair as i32,
                })
                .collect();
            let bytes: u64 = entries
                .iter()
                .map(|e| (e.key.len() + e.record.len()) as u64)
                .sum();
            if !entries.is_empty() {
                for target in targets {
                    let request = MergeRequest {
                        entries: entries.clone(),
                    };
                    self.transport
                        .call(target, request, self.timeout)
                        .await
                        .map_err(|e| format!("pushing range {range} to {}: {e}", target.id))?;
                    stats.bytes += bytes;
                }
                stats.records += entries.len() as u64;
            }
            self.throttle(stats.bytes, started).await;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Streams every range this node will replicate from every live current replica.
    async fn stream(&self, version: u64) -> Result<StreamStats, String> {
        // The placement updater installs the joining layout's snapshot shortly after it
        // is applied.
        self.placement_of(version).await?;
        let snapshot = self.placement.current();
        let (_, future) = snapshot.ranges_of(&self.local.id, self.replicas);
        let mut stats = StreamStats::default();
        let started = Instant::now();
        for range in future {
            let sources: Vec<NodeInfo> = snapshot
                .ring()
                .replicas_of_range(range, self.replicas)
                .into_iter()
                .filter(|n| n.id != self.local.id)
                .collect();
            for source in sources {
                let live =
                    self.membership.liveness(&source.id).liveness != distkv_network::Liveness::Dead;
                if !live {
                    continue;
                }
                self.pull_range(&source, range, &mut stats, started).await?;
            }
            stats.ranges += 1;
        }
        Ok(stats)
    }

    /// Pages through `range` on `source`, merging every record as a repair.
    async fn pull_range(
        &self,
        source: &NodeInfo,
        range: TokenRange,
        stats: &mut StreamStats,
        started: Instant,
    ) -> Result<(), String> {
        let mut after = bytes::Bytes::new();
        loop {
            let request = RangePullRequest {
                start_token: range.start,
                end_token: range.end,
                after: after.clone(),
                max_entries: PAGE_ENTRIES,
                max_bytes: PAGE_BYTES,
            };
            let page = self
                .transport
                .call(source, request, self.timeout)
                .await
                .map_err(|e| format!("range {range} from {}: {e}", source.id))?;
            if range_checksum(&page.entries) != page.checksum {
                return Err(format!(
                    "a page of range {range} from {} was damaged (checksum mismatch)",
                    source.id
                ));
            }
            let now = now_micros();
            let mut batch = Vec::with_capacity(page.entries.len());
            for entry in &page.entries {
                stats.bytes += (entry.key.len() + entry.record.len()) as u64;
                if entry.record.is_empty() {
                    continue;
                }
                let record = checks::accept_record(
                    &entry.key,
                    &entry.record,
                    Origin::Repair,
                    &self.limits,
                    now,
                )
                .map_err(|e| {
                    format!(
                        "a record of range {range} from {} is refused: {e}",
                        source.id
                    )
                })?;
                batch.push((entry.key.to_vec(), record));
            }
            stats.records += batch.len() as u64;
            if !batch.is_empty() {
                self.store
                    .merge_repairs(batch)
                    .await
                    .map_err(|e| format!("merging range {range}: {e}"))?;
            }
            self.throttle(stats.bytes, started).await;
            if page.done {
                return Ok(());
            }
            after = page.next;
        }
    }

    /// Sleeps until `bytes` fit under `max_bytes_per_sec` since `started`.
    async fn throttle(&self, bytes: u64, started: Instant) {
        if self.max_bytes_per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes as f64 / self.max_bytes_per_sec as f64);
        let spent = started.elapsed();
        if due > spent {
            tokio::time::sleep(due - spent).await;
        }
    }
}

/// What the client API needs to decommission this node (object-safe).
pub trait Decommission: Send + Sync + 'static {
    /// Runs the decommission ([`Joiner::decommission`]).
    fn leave(&self) -> futures::future::BoxFuture<'_, Result<StreamStats, String>>;
}

impl<S, M, P, T> Decommission for Joiner<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    fn leave(&self) -> futures::future::BoxFuture<'_, Result<StreamStats, String>> {
        Box::pin(self.decommission())
    }
}
