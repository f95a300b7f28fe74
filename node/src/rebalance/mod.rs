//! Joining: a node that is not in the cluster's layout asks to join, streams the ranges
//! it will own from the replicas that hold them, and asks to become normal.
//!
//! 1. **Ask.** A `LayoutChange` peer call to the layout authority ([`authority`]: the
//!    lowest-id normal member not held dead), which commits layout `v + 1` with this
//!    node `joining` (one change at a time). From
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
//! 4. **Done.** A `JOIN_DONE` change commits `v + 2` with this node `normal`; reads
//!    move to it.
//!
//! **Resuming.** The stream's progress ([`StreamProgress`]: per range and peer, done or
//! the last key moved) is saved in the data directory every second and at the end. A failed call
//! (a source or target restarting) retries that page; a restart of this node resumes at
//! it, for the same change (layout version). Writes this node missed while it was down
//! reach it by hints, read repair and anti-entropy, as for any replica.
//!
//! Leaving (decommission) is the mirror: the authority commits layout `v + 1` with this
//! node `leaving` (it
//! still owns its ranges; writes reach old and new owners), the same barrier, then this
//! node pushes every range it replicates to the replicas that gain it (paged local
//! scans, `Merge` calls with the repair origin, throttled), then `v + 2` with it `left`.
//! Writes it missed reach the new owners from the other replicas by read repair and
//! anti-entropy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use distkv_engine::StorageEngine;
use distkv_network::{
    range_checksum, LayoutChange, MemberState, Membership, NodeInfo, Transport, TransportExt,
};
pub mod authority;
pub mod cleanup;
mod progress;
pub mod removal;

use distkv_proto::v1::{
    LayoutPullRequest, MergeEntry, MergeRequest, RangeBounds, RangePullRequest, RangeSizeRequest,
    WriteOrigin,
};

pub use progress::{ProgressSummary, StreamKind, StreamProgress, PROGRESS_FILE};

use crate::antientropy::HashTree;
use crate::coordinator::now_micros;
use crate::placement::{Partitioner, Placement, TokenRange};
use crate::replica::MAX_SIZE_RANGES;
use crate::replica::{checks, Origin, PeerLimits, ReplicaStore};
use crate::version::Record;
use authority::LayoutChanges;

/// Entries asked per range-pull page.
const PAGE_ENTRIES: u32 = 1024;
/// Bytes asked per range-pull page.
const PAGE_BYTES: u64 = 1 << 20;
/// How long the joiner waits for every member to hold the joining layout.
const BARRIER_WAIT: Duration = Duration::from_secs(30);
/// Pause between attempts when a step fails (a member down, a change in flight).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Attempts of one page of a stream before the stream fails (a join then starts its
/// retry loop from that page; a decommission answers the error, and run again resumes).
const PAGE_RETRIES: u32 = 8;
/// How often a stream saves its progress.
const SAVE_EVERY: Duration = Duration::from_secs(1);

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

/// The delete condition of a cleanup: whatever the record is now, it goes (the range
/// is not this node's).
type DropAlways = fn(Option<&Record>) -> bool;

fn drop_always(_: Option<&Record>) -> bool {
    true
}

/// What a cleanup dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// The layout version it followed.
    pub layout_version: u64,
    /// Ranges dropped.
    pub ranges: usize,
    /// Records deleted.
    pub records: u64,
    /// Bytes of keys and records deleted.
    pub bytes: u64,
}

/// What one step of a stream did.
enum Page {
    /// A page moved; the transfer goes on after `next`, or is done.
    Moved {
        next: Option<Vec<u8>>,
        records: u64,
        bytes: u64,
    },
    /// The transfer's peer is dead: skipped.
    Skip,
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
    /// Where the stream's progress is saved (`None`: in memory only, no resuming after a
    /// restart).
    pub state_dir: Option<PathBuf>,
    /// The stream in flight or the last one.
    pub current: parking_lot::Mutex<Option<StreamProgress>>,
    /// This node's anti-entropy tree (estimates of what a decommission pushes).
    pub tree: Arc<parking_lot::Mutex<HashTree>>,
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
                    if let Err(e) = self.ask(false).await {
                        tracing::warn!("join not accepted yet: {e}; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Some(MemberState::Joining) => {
                    let version = layout.version();
                    self.barrier(version).await;
                    let streaming = Instant::now();
                    let stats = match self.stream(version).await {
                        Ok(stats) => stats,
                        Err(e) => {
                            tracing::warn!(
                                "streaming for the join failed: {e}; retrying from the page \
                                 where it stopped"
                            );
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    };
                    loop {
                        match self.ask(true).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!("join completion not accepted yet: {e}; retrying");
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                        }
                    }
                    self.clear_saved();
                    tracing::info!(
                        ranges = stats.ranges,
                        records = stats.records,
                        bytes = stats.bytes,
                        stream_ms = streaming.elapsed().as_millis() as u64,
                        version = self.membership.layout().version(),
                        "joined the cluster: this node is normal"
                    );
                    return stats;
                }
                Some(_) => return StreamStats::default(),
            }
        }
    }

    /// Asks the layout authority to commit our join (or its end); installs the layout
    /// it answers.
    async fn ask(&self, done: bool) -> Result<(), String> {
        let id = self.local.id.clone();
        let change = if done {
            LayoutChange::JoinDone { id }
        } else {
            LayoutChange::Join {
                id,
                address: self.local.address.clone(),
            }
        };
        self.changes().request(&change).await.map(|_| ())
    }

    /// This node's way to the layout authority.
    fn changes(&self) -> LayoutChanges<M, T> {
        LayoutChanges {
            local: self.local.clone(),
            membership: self.membership.clone(),
            transport: self.transport.clone(),
            timeout: self.timeout,
        }
    }

    /// The normal members that do not answer holding layout `version` or newer (this
    /// node included when it is one: it answers its own call).
    async fn members_behind(&self, version: u64) -> Vec<String> {
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
        behind
    }

    /// Waits (bounded) until every other normal member holds layout `version`.
    async fn barrier(&self, version: u64) {
        let deadline = Instant::now() + BARRIER_WAIT;
        loop {
            let behind = self.members_behind(version).await;
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

    /// Drops the records of every range this node no longer replicates (see
    /// [`cleanup::plan_cleanup`]): refused while a change is in flight or while any
    /// normal member does not answer holding this node's layout; then, one request
    /// timeout later (writes that a coordinator with an older layout started have
    /// ended), deletes page by page, stopping if the layout changes meanwhile.
    pub async fn cleanup(&self) -> Result<CleanupStats, String> {
        let version = self.membership.layout().version();
        self.placement_of(version).await?;
        let snapshot = self.placement.current();
        let ranges = cleanup::plan_cleanup(&*snapshot, &self.local.id, self.replicas)?;
        let behind = self.members_behind(version).await;
        if !behind.is_empty() {
            return Err(format!(
                "members {behind:?} do not answer holding layout version {version}: a \
                 coordinator with an older layout may still write here; run cleanup once every \
                 member is up and holds it"
            ));
        }
        tokio::time::sleep(self.timeout).await;
        let mut stats = CleanupStats {
            layout_version: version,
            ..CleanupStats::default()
        };
        for range in ranges {
            let mut after: Option<Vec<u8>> = None;
            loop {
                if self.membership.layout().version() != version {
                    return Err(format!(
                        "the layout changed during the cleanup (it was version {version}); run \
                         it again once the change is done ({} records dropped so far)",
                        stats.records
                    ));
                }
                let page = self.local_page(range, after.as_deref())?;
                let bytes: u64 = page
                    .entries
                    .iter()
                    .map(|(k, r)| (k.len() + r.len()) as u64)
                    .sum();
                let keys: Vec<(Vec<u8>, DropAlways)> = page
                    .entries
                    .into_iter()
                    .map(|(k, _)| (k, drop_always as DropAlways))
                    .collect();
                if !keys.is_empty() {
                    let deleted = self
                        .store
                        .delete_each_if(keys)
                        .await
                        .map_err(|e| format!("dropping range {range}: {e}"))?;
                    stats.records += deleted.iter().filter(|d| **d).count() as u64;
                    stats.bytes += bytes;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            stats.ranges += 1;
        }
        tracing::info!(
            ranges = stats.ranges,
            records = stats.records,
            bytes = stats.bytes,
            version,
            "cleanup: dropped the records of ranges this node no longer replicates"
        );
        Ok(stats)
    }

    /// Waits (bounded) until the placement updater installed layout `version`.
    async fn placement_of(&self, version: u64) -> Result<(), String> {
        if self.placement.installed(version, BARRIER_WAIT).await {
            Ok(())
        } else {
            Err(format!(
                "the placement of layout {version} was not installed"
            ))
        }
    }

    /// Decommissions this node (see the module documentation): returns what it pushed
    /// once the layout says it left. The caller stops the process then. Run again after a
    /// failure or a restart, it resumes the pushes where they stood.
    pub async fn decommission(&self) -> Result<StreamStats, String> {
        let id = self.local.id.clone();
        let leaving = self
            .changes()
            .request(&LayoutChange::Leave { id: id.clone() })
            .await?;
        let version = leaving.version();
        self.barrier(version).await;
        self.placement_of(version).await?;
        let snapshot = self.placement.current();
        let Some(pending) = snapshot.pending_ring() else {
            return Err("the leaving layout has no future ring".into());
        };
        let (now, _) = snapshot.ranges_of(&self.local.id, self.replicas);
        let mut transfers = Vec::new();
        for range in now {
            let old: Vec<String> = snapshot
                .ring()
                .replicas_of_range(range, self.replicas)
                .into_iter()
                .map(|n| n.id)
                .collect();
            for gaining in pending.replicas_of_range(range, self.replicas) {
                if !old.contains(&gaining.id) {
                    transfers.push((range, gaining.id));
                }
            }
        }
        let stats = self
            .run_stream(StreamProgress::plan(StreamKind::Leave, version, transfers))
            .await?;
        let left = self
            .changes()
            .request(&LayoutChange::LeaveDone { id })
            .await?;
        let left_version = left.version();
        self.clear_saved();
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

    /// The progress of this node's join or decommission (the one in flight, or the last
    /// one since the process started); `None` if there was none.
    pub fn progress(&self) -> Option<ProgressSummary> {
        self.current.lock().as_ref().map(StreamProgress::summary)
    }

    /// Runs the transfers of `plan`, resuming the progress of the same change kept in
    /// memory (a retry) or saved in the state directory (a restart).
    async fn run_stream(&self, plan: StreamProgress) -> Result<StreamStats, String> {
        let saved = {
            let kept = self.current.lock().take();
            match kept {
                Some(p) => Some(p),
                None => self.load_saved().await,
            }
        };
        let mut progress = plan.resume(saved);
        self.estimate(&mut progress).await;
        let summary = progress.summary();
        if summary.resumed {
            tracing::info!(
                kind = summary.kind,
                version = summary.layout_version,
                ranges_done = summary.ranges_done,
                ranges_total = summary.ranges_total,
                bytes = summary.bytes,
                "resuming the range stream where it stood"
            );
        }
        *self.current.lock() = Some(progress);
        let started = Instant::now();
        let mut moved = 0u64;
        let mut saved_at = Instant::now();
        loop {
            let next = {
                let guard = self.current.lock();
                let Some(p) = guard.as_ref() else {
                    return Err("the stream's progress went away".into());
                };
                p.next()
                    .map(|(i, t)| (i, p.kind(), t.range(), t.peer.clone(), t.after.clone()))
            };
            let Some((index, kind, range, peer_id, after)) = next else {
                break;
            };
            let mut attempt = 0;
            let step = loop {
                match self.step(kind, &peer_id, range, after.clone()).await {
                    Ok(step) => break step,
                    Err(e) if attempt < PAGE_RETRIES => {
                        attempt += 1;
                        tracing::debug!(
                            attempt,
                            "a page of the range stream failed: {e}; retrying"
                        );
                        tokio::time::sleep(RETRY_PAUSE / 4).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            {
                let mut guard = self.current.lock();
                if let Some(p) = guard.as_mut() {
                    match step {
                        Page::Moved {
                            next,
                            records,
                            bytes,
                        } => {
                            moved += bytes;
                            p.advance(index, next, records, bytes);
                        }
                        Page::Skip => p.skip(index),
                    }
                }
            }
            // Saved at most every SAVE_EVERY (a ring has thousands of small transfers;
            // an fsync each would be most of the stream's time): a crash repeats at most
            // that much, and merges are idempotent.
            if saved_at.elapsed() >= SAVE_EVERY {
                self.save().await;
                saved_at = Instant::now();
            }
            self.throttle(moved, started).await;
        }
        self.save().await;
        let summary = self.progress().unwrap_or_default();
        Ok(StreamStats {
            ranges: summary.ranges_total,
            records: summary.records,
            bytes: summary.bytes,
        })
    }

    /// One page of the transfer of `range` with `peer_id`, after key `after`.
    async fn step(
        &self,
        kind: StreamKind,
        peer_id: &str,
        range: TokenRange,
        after: Option<Vec<u8>>,
    ) -> Result<Page, String> {
        let peer = self.membership.layout().member(peer_id).map(|m| NodeInfo {
            id: m.id.clone(),
            address: m.address.clone(),
        });
        Ok(match (kind, peer) {
            (StreamKind::Join, Some(peer))
                if self.membership.liveness(&peer.id).liveness
                    != distkv_network::Liveness::Dead =>
            {
                self.pull_page(&peer, range, after).await?
            }
            (StreamKind::Join, _) => {
                tracing::warn!(
                    source = %peer_id,
                    %range,
                    "a source of the range is dead or gone: its copy is not pulled (the \
                     other replicas' are; anti-entropy covers what only it held)"
                );
                Page::Skip
            }
            (StreamKind::Leave, Some(peer)) => self.push_page(&peer, range, after).await?,
            (StreamKind::Leave, None) => {
                return Err(format!(
                    "node {peer_id} gains range {range} but is not in the layout; retry \
                     the decommission"
                ))
            }
        })
    }

    /// Fills in the estimated records of the transfers that have none: a pull's from
    /// its source's anti-entropy tree (one `RangeSize` call per source), a push's from
    /// this node's. What cannot be estimated (a source down or still rebuilding its tree)
    /// stays unknown, and `status` then shows no total.
    async fn estimate(&self, progress: &mut StreamProgress) {
        let missing: Vec<(usize, TokenRange, String)> = progress
            .transfers()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.expected.is_none())
            .map(|(i, t)| (i, t.range(), t.peer.clone()))
            .collect();
        if progress.kind() == StreamKind::Leave {
            let tree = self.tree.lock();
            for (i, range, _) in missing {
                if let Some(n) = tree.approx_keys_in(range) {
                    progress.set_expected(i, n);
                }
            }
            return;
        }
        let mut by_source: std::collections::BTreeMap<String, Vec<(usize, TokenRange)>> =
            std::collections::BTreeMap::new();
        for (i, range, peer) in missing {
            by_source.entry(peer).or_default().push((i, range));
        }
        let layout = self.membership.layout();
        for (source, wanted) in by_source {
            let Some(member) = layout.member(&source) else {
                continue;
            };
            let node = NodeInfo {
                id: member.id.clone(),
                address: member.address.clone(),
            };
            for chunk in wanted.chunks(MAX_SIZE_RANGES) {
                let request = RangeSizeRequest {
                    ranges: chunk
                        .iter()
                        .map(|(_, r)| RangeBounds {
                            start: r.start,
                            end: r.end,
                        })
                        .collect(),
                };
                match self.transport.call(&node, request, self.timeout).await {
                    Ok(answer) if answer.ready && answer.records.len() == chunk.len() => {
                        for ((i, _), n) in chunk.iter().zip(answer.records) {
                            progress.set_expected(*i, n);
                        }
                    }
                    Ok(_) => {
                        tracing::debug!(%source, "no size estimate yet (its tree is being rebuilt)")
                    }
                    Err(e) => tracing::debug!(%source, "no size estimate: {e}"),
                }
            }
        }
    }

    async fn load_saved(&self) -> Option<StreamProgress> {
        let dir = self.state_dir.clone()?;
        tokio::task::spawn_blocking(move || StreamProgress::load(&dir))
            .await
            .ok()
            .flatten()
    }

    /// Saves the progress (a failure is logged: a restart would stream from further back).
    async fn save(&self) {
        let (Some(dir), Some(progress)) = (self.state_dir.clone(), self.current.lock().clone())
        else {
            return;
        };
        let saved = tokio::task::spawn_blocking(move || progress.save(&dir)).await;
        if let Ok(Err(e)) | Err(e) = saved.map_err(std::io::Error::other) {
            tracing::warn!(
                "cannot save the stream progress: {e}; a restart would stream from an earlier \
                 page (check the data directory's space and permissions)"
            );
        }
    }

    fn clear_saved(&self) {
        if let Some(dir) = &self.state_dir {
            StreamProgress::clear(dir);
        }
    }

    /// One page of the records of `range` this node holds, after key `after`.
    fn local_page(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
    ) -> Result<crate::replica::RangePage, String> {
        self.store
            .scan_range(range, after, PAGE_ENTRIES as usize, PAGE_BYTES as usize)
            .map_err(|e| format!("reading range {range}: {e}"))
    }

    /// Sends one page of the records of `range` this node holds, after key `after`, to
    /// `target` as repairs.
    async fn push_page(
        &self,
        target: &NodeInfo,
        range: TokenRange,
        after: Option<Vec<u8>>,
    ) -> Result<Page, String> {
        let page = self.local_page(range, after.as_deref())?;
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
        let records = entries.len() as u64;
        if !entries.is_empty() {
            self.transport
                .call(target, MergeRequest { entries }, self.timeout)
                .await
                .map_err(|e| {
                    format!(
                        "pushing range {range} to {}: {e} (run the decommission again once \
                         it answers: it resumes where it stood)",
                        target.id
                    )
                })?;
        }
        Ok(Page::Moved {
            next: page.next,
            records,
            bytes,
        })
    }

    /// Streams every range this node will replicate from every live current replica.
    async fn stream(&self, version: u64) -> Result<StreamStats, String> {
        // The placement updater installs the joining layout's snapshot shortly after it
        // is applied.
        self.placement_of(version).await?;
        let snapshot = self.placement.current();
        let (_, future) = snapshot.ranges_of(&self.local.id, self.replicas);
        let mut transfers = Vec::new();
        for range in future {
            for source in snapshot.ring().replicas_of_range(range, self.replicas) {
                if source.id != self.local.id {
                    transfers.push((range, source.id));
                }
            }
        }
        self.run_stream(StreamProgress::plan(StreamKind::Join, version, transfers))
            .await
    }

    /// Pulls one page of `range` from `source`, after key `after`, and merges every
    /// record as a repair.
    async fn pull_page(
        &self,
        source: &NodeInfo,
        range: TokenRange,
        after: Option<Vec<u8>>,
    ) -> Result<Page, String> {
        let request = RangePullRequest {
            start_token: range.start,
            end_token: range.end,
            after: after.map(bytes::Bytes::from).unwrap_or_default(),
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
        let mut bytes = 0u64;
        for entry in &page.entries {
            bytes += (entry.key.len() + entry.record.len()) as u64;
            if entry.record.is_empty() {
                continue;
            }
            let record =
                checks::accept_record(&entry.key, &entry.record, Origin::Repair, &self.limits, now)
                    .map_err(|e| {
                        format!(
                            "a record of range {range} from {} is refused: {e}",
                            source.id
                        )
                    })?;
            batch.push((entry.key.to_vec(), record));
        }
        let records = batch.len() as u64;
        if !batch.is_empty() {
            self.store
                .merge_repairs(batch)
                .await
                .map_err(|e| format!("merging range {range}: {e}"))?;
        }
        let next = if page.done {
            None
        } else if page.next.is_empty() {
            return Err(format!(
                "{} answered a page of range {range} that is not the last without a key to go on after",
                source.id
            ));
        } else {
            Some(page.next.to_vec())
        };
        Ok(Page::Moved {
            next,
            records,
            bytes,
        })
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

/// What the client API needs to decommission this node and to show the progress of its
/// join or decommission (object-safe).
pub trait Decommission: Send + Sync + 'static {
    /// Runs the decommission ([`Joiner::decommission`]).
    fn leave(&self) -> futures::future::BoxFuture<'_, Result<StreamStats, String>>;
    /// The stream in flight or the last one ([`Joiner::progress`]).
    fn progress(&self) -> Option<ProgressSummary>;
    /// Drops the ranges this node no longer replicates ([`Joiner::cleanup`]).
    fn cleanup(&self) -> futures::future::BoxFuture<'_, Result<CleanupStats, String>>;
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

    fn progress(&self) -> Option<ProgressSummary> {
        Joiner::progress(self)
    }

    fn cleanup(&self) -> futures::future::BoxFuture<'_, Result<CleanupStats, String>> {
        Box::pin(Joiner::cleanup(self))
    }
}
