//! The tombstone GC pass: the thin async shell around [`gc::decide`] (the rules live
//! there; nothing here decides on its own).
//!
//! One pass, every `gc.interval`:
//! 1. scans this node's store in pages (`SCAN_PAGE` records, throttled by
//!    `antientropy.max_bytes_per_sec`), counting tombstones and collecting those older
//!    than `gc.grace` as candidates; at [`MAX_CANDIDATES`] it stops collecting and
//!    handles that batch (steps 2 to 4) before scanning on, so memory holds one batch
//!    whatever the number of tombstones;
//! 2. **phase 1**: for each candidate, [`gc::decide`] names the replicas (of every
//!    active layout version) that have not confirmed it; each gets one `GcPush` call per
//!    [`PUSH_CHUNK`] tombstones, merged there as repairs; the answer, per key, is the
//!    [`TombstoneVersion`] the replica holds after the merge, recorded as a
//!    [`Confirmation`]. A replica that gossip marks dead is not called; one that fails
//!    the call confirms nothing: the key waits (and the next pass tries again);
//! 3. waits `in_flight` (at least the request timeout), so that any replication or read
//!    repair that started before the confirmations has ended;
//! 4. **phase 2**: re-reads each candidate and asks [`gc::decide`] again, with the
//!    replica sets of the layout in force then (an owner added since phase 1 has
//!    confirmed nothing, so the key waits); on
//!    `Purge(guard)` it deletes the key here with [`ReplicaStore::delete_each_if`] and
//!    `guard.still_current` (a write that came in since cancels it), then sends every
//!    other replica a `GcPurge` with the key and version, which each applies with the
//!    same guard and only if no hint for the key is pending there.
//!
//! Every pass starts afresh: confirmations are not kept between passes (a key that was
//! not purged is pushed again next time, which costs one small call per replica).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use distkv_engine::StorageEngine;
use distkv_network::{Liveness, Membership, NodeInfo, Transport, TransportExt};
use distkv_proto::v1::{GcPurgeItem, GcPurgeRequest, GcPushRequest, KeyRecord};
use parking_lot::Mutex;

use super::driver::Throttle;
use super::gc::{self, Confirmation, GcDecision, GcInput, GcPolicy, KeepReason, TombstoneVersion};
use crate::handoff::HintStore;
use crate::placement::{Partitioner, Placement, TokenRange};
use crate::replica::ReplicaStore;
use crate::util::blocking;
use crate::version::Record;

/// Most candidates (tombstones past the grace) held at once; the scan pauses there
/// while they are pushed and purged.
pub const MAX_CANDIDATES: usize = 1024;
/// Records read per page of the scan.
pub const SCAN_PAGE: usize = 512;
/// About the most bytes read per page of the scan.
const SCAN_BYTES: usize = 1 << 20;
/// Most tombstones in one `GcPush` or keys in one `GcPurge` call.
pub const PUSH_CHUNK: usize = 256;
/// Most items a node accepts in one `GcPush` or `GcPurge` call.
pub const MAX_GC_ITEMS: usize = 4096;
/// Most distinct waiting reasons kept for `status`.
const MAX_REASONS: usize = 8;

/// The `[gc]` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// Run a pass every `interval`.
    pub enabled: bool,
    /// How long a tombstone is kept before GC considers it (`gc.grace`). Also the age
    /// past which a hint is dropped instead of replayed.
    pub grace: Duration,
    /// Time between the starts of two passes.
    pub interval: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            enabled: true,
            grace: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(600),
        }
    }
}

/// Counters shared by the pass, the peer endpoint (purges at a peer's request) and
/// hint replay (hints dropped as older than the grace).
#[derive(Debug, Default)]
pub struct GcCounters {
    /// Tombstones deleted from this node's store.
    pub purged: AtomicU64,
    /// Hints dropped at replay because they were older than `gc.grace`.
    pub hints_dropped: AtomicU64,
}

/// The numbers of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Records read.
    pub scanned: u64,
    /// Tombstones found (any age).
    pub tombstones: u64,
    /// Tombstones past the grace.
    pub candidates: u64,
    /// Confirmations received (one per replica and key).
    pub confirmations: u64,
    /// Keys deleted here.
    pub purged_here: u64,
    /// Keys deleted on other replicas at this pass's request.
    pub purged_there: u64,
    /// Candidates not purged, and why: `reason -> keys`.
    pub waiting: BTreeMap<String, u64>,
    /// Records that could not be decoded or scans/calls that failed.
    pub failures: u64,
}

impl GcReport {
    /// Candidates not purged.
    pub fn waiting_total(&self) -> u64 {
        self.waiting.values().sum()
    }

    fn wait(&mut self, reason: String) {
        if self.waiting.len() < MAX_REASONS || self.waiting.contains_key(&reason) {
            *self.waiting.entry(reason).or_insert(0) += 1;
        } else {
            *self.waiting.entry("other reasons".into()).or_insert(0) += 1;
        }
    }
}

/// What `status` shows of GC on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcView {
    /// The settings in force.
    pub enabled: bool,
    /// `gc.grace`.
    pub grace: Duration,
    /// Tombstones held after the last pass (found minus purged here), if one ran.
    pub tombstones: Option<u64>,
    /// When the last pass finished (milliseconds since the Unix epoch).
    pub last_pass_ms: Option<u64>,
    /// Tombstones purged here since start.
    pub purged: u64,
    /// Candidates of the last pass not purged.
    pub waiting: u64,
    /// Why, as "reason (n keys)".
    pub waiting_reasons: Vec<String>,
    /// Hints dropped as older than the grace since start.
    pub hints_dropped: u64,
}

/// GC status for the `Status` RPC, whatever the driver's types.
pub trait GcInfo: Send + Sync + 'static {
    /// The current view.
    fn view(&self) -> GcView;
}

/// The parts the GC pass works with.
pub struct GcParts<S: StorageEngine + ?Sized, M, P, T> {
    /// This node's records.
    pub store: Arc<ReplicaStore<S>>,
    /// Who is alive.
    pub membership: Arc<M>,
    /// The replica sets of every active layout version.
    pub placement: Arc<Placement<P>>,
    /// How peers are called.
    pub transport: Arc<T>,
    /// This node's hints (a key with a pending hint is not purged).
    pub hints: Option<Arc<HintStore>>,
    /// Shared counters.
    pub counters: Arc<GcCounters>,
}

struct LastPass {
    at_ms: u64,
    report: GcReport,
}

/// The tombstone GC of one node (see the module docs).
pub struct TombstoneGc<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    parts: GcParts<S, M, P, T>,
    replicas: usize,
    timeout: Duration,
    in_flight: Duration,
    settings: GcSettings,
    clock_shift_ms: AtomicU64,
    pass: tokio::sync::Mutex<Throttle>,
    last: Mutex<Option<LastPass>>,
}

/// One tombstone past the grace, and what the replicas said of it.
struct Candidate {
    key: Vec<u8>,
    record: Record,
    confirmations: Vec<Confirmation>,
    /// Why a replica did not confirm (replica id, reason).
    missed: Vec<(String, String)>,
}

impl<S, M, P, T> TombstoneGc<S, M, P, T>
where
    S: StorageEngine + ?Sized + 'static,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// The GC over `parts`, for N = `replicas`, each peer call bounded by `timeout`
    /// (and phase 2 waiting at least that long after phase 1), throttled to
    /// `max_bytes_per_sec`.
    pub fn new(
        parts: GcParts<S, M, P, T>,
        replicas: usize,
        timeout: Duration,
        max_bytes_per_sec: u64,
        settings: GcSettings,
    ) -> Self {
        TombstoneGc {
            parts,
            replicas,
            timeout,
            in_flight: timeout,
            settings,
            clock_shift_ms: AtomicU64::new(0),
            pass: tokio::sync::Mutex::new(Throttle::new(max_bytes_per_sec)),
            last: Mutex::new(None),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> GcSettings {
        self.settings
    }

    /// Makes the pass's clock run `by` ahead of the wall clock (tests: a tombstone
    /// written now counts as older than the grace without waiting for it).
    pub fn shift_clock(&self, by: Duration) {
        self.clock_shift_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        wall_ms() + self.clock_shift_ms.load(Ordering::Relaxed)
    }

    fn policy(&self) -> GcPolicy {
        GcPolicy {
            grace_ms: self.settings.grace.as_millis() as u64,
            in_flight_ms: self.in_flight.as_millis() as u64,
        }
    }

    /// Runs one pass now, after the one in progress if any.
    pub async fn pass(&self) -> GcReport {
        let mut throttle = self.pass.lock().await;
        self.run_pass(&mut throttle).await
    }

    /// Runs one pass unless one is in progress (then `None`).
    pub async fn pass_unless_running(&self) -> Option<GcReport> {
        let mut throttle = self.pass.try_lock().ok()?;
        Some(self.run_pass(&mut throttle).await)
    }

    async fn run_pass(&self, throttle: &mut Throttle) -> GcReport {
        let began = distkv_network::now();
        let mut report = GcReport::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let grace_ms = self.policy().grace_ms;
        loop {
            let store = self.parts.store.clone();
            let resume = after.take();
            let page = match blocking(move || {
                store.scan_range(TokenRange::FULL, resume.as_deref(), SCAN_PAGE, SCAN_BYTES)
            })
            .await
            {
                Ok(page) => page,
                Err(error) => {
                    report.failures += 1;
                    tracing::warn!(%error, "tombstone GC pass stopped: scanning the store failed; the next pass starts over");
                    break;
                }
            };
            let bytes: usize = page.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
            throttle.pace(bytes as u64).await;
            let now = self.now_ms();
            for (key, bytes) in page.entries {
                report.scanned += 1;
                let record = match Record::decode(&bytes) {
                    Ok(r) => r,
                    Err(_) => {
                        report.failures += 1;
                        continue;
                    }
                };
                let Some(deleted) = gc::deleted_at_ms(&record) else {
                    continue;
                };
                report.tombstones += 1;
                if deleted <= now.saturating_sub(grace_ms) {
                    candidates.push(Candidate {
                        key,
                        record,
                        confirmations: Vec::new(),
                        missed: Vec::new(),
                    });
                }
            }
            if candidates.len() >= MAX_CANDIDATES {
                self.collect(std::mem::take(&mut candidates), throttle, &mut report)
                    .await;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if !candidates.is_empty() {
            self.collect(candidates, throttle, &mut report).await;
        }
        let level_info = report.purged_here > 0 || report.waiting_total() > 0;
        if level_info {
            tracing::info!(
                scanned = report.scanned,
                tombstones = report.tombstones,
                candidates = report.candidates,
                purged_here = report.purged_here,
                purged_there = report.purged_there,
                waiting = report.waiting_total(),
                reasons = ?report.waiting,
                took_ms = began.elapsed().as_millis() as u64,
                "tombstone GC pass done"
            );
        } else {
            tracing::debug!(
                scanned = report.scanned,
                tombstones = report.tombstones,
                took_ms = began.elapsed().as_millis() as u64,
                "tombstone GC pass done, nothing past the grace"
            );
        }
        *self.last.lock() = Some(LastPass {
            at_ms: wall_ms(),
            report: report.clone(),
        });
        report
    }

    /// Phases 1 and 2 for one batch of candidates.
    async fn collect(
        &self,
        mut batch: Vec<Candidate>,
        throttle: &mut Throttle,
        report: &mut GcReport,
    ) {
        report.candidates += batch.len() as u64;
        let snapshot = self.parts.placement.current();
        let local = self.parts.membership.local().id.clone();
        let policy = self.policy();
        // Phase 1: who must confirm what.
        let mut nodes: HashMap<String, NodeInfo> = HashMap::new();
        let mut sets: Vec<Vec<Vec<String>>> = Vec::with_capacity(batch.len());
        let mut to_push: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let now = self.now_ms();
        for (i, c) in batch.iter().enumerate() {
            let ws = snapshot.write_sets(&c.key, self.replicas);
            for n in ws.all() {
                nodes.entry(n.id.clone()).or_insert(n);
            }
            let ids = ws.id_sets();
            let input = GcInput {
                key: &c.key,
                record: &c.record,
                local: &local,
                replica_sets: &ids,
                confirmations: &c.confirmations,
                hint_pending: self.hint_pending(&c.key),
                now_ms: now,
            };
            if let GcDecision::PushTo(replicas) = gc::decide(&input, &policy) {
                for r in replicas {
                    to_push.entry(r).or_default().push(i);
                }
            }
            sets.push(ids);
        }
        let mut confirmed_any = false;
        for (replica, indexes) in &to_push {
            let Some(node) = nodes.get(replica) else {
                continue;
            };
            if self.parts.membership.liveness(replica).liveness == Liveness::Dead {
                for &i in indexes {
                    batch[i].missed.push((replica.clone(), "down".into()));
                }
                continue;
            }
            for chunk in indexes.chunks(PUSH_CHUNK) {
                let items: Vec<KeyRecord> = chunk
                    .iter()
                    .map(|&i| KeyRecord {
                        key: batch[i].key.clone().into(),
                        record: batch[i].record.encode().into(),
                    })
                    .collect();
                let bytes: usize = items.iter().map(|kr| kr.key.len() + kr.record.len()).sum();
                throttle.pace(bytes as u64).await;
                match self.push(node, items).await {
                    Ok(held) => {
                        let at_ms = self.now_ms();
                        for (&i, version) in chunk.iter().zip(held) {
                            match version {
                                Some(version) => {
                                    report.confirmations += 1;
                                    confirmed_any = true;
                                    batch[i].confirmations.push(Confirmation {
                                        replica: replica.clone(),
                                        version,
                                        at_ms,
                                    });
                                }
                                None => batch[i]
                                    .missed
                                    .push((replica.clone(), "holds a newer write".into())),
                            }
                        }
                    }
                    Err(error) => {
                        report.failures += 1;
                        tracing::debug!(peer = %replica, %error, "tombstone GC push failed; those tombstones wait for the next pass");
                        for &i in chunk {
                            batch[i]
                                .missed
                                .push((replica.clone(), "unreachable".into()));
                        }
                    }
                }
            }
        }
        // Between the phases: whatever started before the confirmations has ended.
        if confirmed_any {
            tokio::time::sleep(self.in_flight).await;
        }
        // Phase 2: decide again on what is stored now, under the layout in force now (a
        // change since phase 1 may have added owners, which have confirmed nothing).
        let snapshot = self.parts.placement.current();
        for (i, c) in batch.iter().enumerate() {
            let ws = snapshot.write_sets(&c.key, self.replicas);
            for n in ws.all() {
                nodes.entry(n.id.clone()).or_insert(n);
            }
            sets[i] = ws.id_sets();
        }
        let mut guards = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let record = match self.parts.store.get(&c.key) {
                Ok(Some(r)) => r,
                Ok(None) => continue, // purged meanwhile (by a peer's request)
                Err(_) => {
                    report.failures += 1;
                    continue;
                }
            };
            let input = GcInput {
                key: &c.key,
                record: &record,
                local: &local,
                replica_sets: &sets[i],
                confirmations: &c.confirmations,
                hint_pending: self.hint_pending(&c.key),
                now_ms: self.now_ms(),
            };
            match gc::decide(&input, &policy) {
                GcDecision::Purge(guard) => guards.push((i, guard)),
                GcDecision::PushTo(missing) => {
                    let why = missing
                        .iter()
                        .map(|r| {
                            let reason = c
                                .missed
                                .iter()
                                .find(|(m, _)| m == r)
                                .map_or("changed since it confirmed", |(_, why)| why.as_str());
                            format!("{r} {reason}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    report.wait(format!("not confirmed by every replica: {why}"));
                }
                GcDecision::Keep(KeepReason::HintPending) => {
                    report.wait("a hint for the key is pending on this node".into())
                }
                GcDecision::Keep(KeepReason::NotATombstone) => {} // written meanwhile
                GcDecision::Keep(KeepReason::InGrace) => {}       // deleted again meanwhile
                GcDecision::Keep(KeepReason::Settling) => report.wait("confirmed, settling".into()),
                GcDecision::Keep(KeepReason::NoReplicaSets) => {
                    report.wait("no replica set for the key in the layout".into())
                }
            }
        }
        if guards.is_empty() {
            return;
        }
        let items = guards
            .iter()
            .map(|(_, g)| {
                let g = g.clone();
                (g.key.clone(), move |r: Option<&Record>| g.still_current(r))
            })
            .collect();
        let deleted = match self.parts.store.delete_each_if(items).await {
            Ok(d) => d,
            Err(error) => {
                report.failures += 1;
                tracing::warn!(%error, "tombstone GC could not delete here; the next pass retries");
                return;
            }
        };
        let mut to_purge: BTreeMap<String, Vec<GcPurgeItem>> = BTreeMap::new();
        for ((i, guard), deleted) in guards.iter().zip(deleted) {
            if !deleted {
                continue; // written between the decision and the delete
            }
            report.purged_here += 1;
            for r in sets[*i].iter().flatten() {
                if *r != local {
                    to_purge.entry(r.clone()).or_default().push(GcPurgeItem {
                        key: guard.key.clone().into(),
                        version: guard.version.0,
                    });
                }
            }
        }
        self.parts
            .counters
            .purged
            .fetch_add(report.purged_here, Ordering::Relaxed);
        for (replica, items) in to_purge {
            let Some(node) = nodes.get(&replica) else {
                continue;
            };
            let mut items = items;
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(PUSH_CHUNK));
                let n = items.len();
                match self
                    .parts
                    .transport
                    .call(node, GcPurgeRequest { items }, self.timeout)
                    .await
                {
                    Ok(r) if r.purged.len() == n => {
                        report.purged_there += r.purged.iter().filter(|p| **p).count() as u64
                    }
                    Ok(r) => {
                        report.failures += 1;
                        tracing::warn!(peer = %replica, answered = r.purged.len(), asked = n, "tombstone GC purge answer has the wrong length");
                    }
                    Err(error) => {
                        // Safe: the replica still holds the tombstone, which its own
                        // pass (or anti-entropy) handles.
                        report.failures += 1;
                        tracing::debug!(peer = %replica, %error, "tombstone GC purge call failed; the replica keeps those tombstones for now");
                    }
                }
                items = rest;
            }
        }
    }

    /// Pushes tombstones to `node`; answers, per item, the version it holds after the
    /// merge (`None`: not this tombstone any more, e.g. a newer write).
    async fn push(
        &self,
        node: &NodeInfo,
        items: Vec<KeyRecord>,
    ) -> Result<Vec<Option<TombstoneVersion>>, String> {
        let n = items.len();
        let response = self
            .parts
            .transport
            .call(node, GcPushRequest { items }, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        if response.held.len() != n {
            return Err(format!(
                "{} answered {} versions to a push of {n} tombstones",
                node.id,
                response.held.len()
            ));
        }
        Ok(response
            .held
            .into_iter()
            .map(|h| h.has_version.then_some(TombstoneVersion(h.version)))
            .collect())
    }

    fn hint_pending(&self, key: &[u8]) -> bool {
        self.parts
            .hints
            .as_ref()
            .is_some_and(|h| h.may_have_hint_for(key))
    }

    /// What `status` shows.
    pub fn view(&self) -> GcView {
        let last = self.last.lock();
        let counters = &self.parts.counters;
        GcView {
            enabled: self.settings.enabled,
            grace: self.settings.grace,
            tombstones: last
                .as_ref()
                .map(|l| l.report.tombstones.saturating_sub(l.report.purged_here)),
            last_pass_ms: last.as_ref().map(|l| l.at_ms),
            purged: counters.purged.load(Ordering::Relaxed),
            waiting: last.as_ref().map_or(0, |l| l.report.waiting_total()),
            waiting_reasons: last.as_ref().map_or_else(Vec::new, |l| {
                l.report
                    .waiting
                    .iter()
                    .map(|(why, n)| format!("{why} ({n} keys)"))
                    .collect()
            }),
            hints_dropped: counters.hints_dropped.load(Ordering::Relaxed),
        }
    }
}

impl<S, M, P, T> GcInfo for TombstoneGc<S, M, P, T>
where
    S: StorageEngine + ?Sized + 'static,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    fn view(&self) -> GcView {
        TombstoneGc::view(self)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
