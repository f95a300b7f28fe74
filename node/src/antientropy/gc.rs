//! Two-phase tombstone GC: the decision, as plain code over data (Garage's `gc.rs` idea).
//!
//! A key whose record holds only tombstones may be purged once
//! 1. it is older than `gc_grace`: its *deletion time* is the newest `timestamp_ms` of
//!    its siblings (records carry the coordinator's wall-clock time per write, see
//!    [`crate::version::Sibling`]), so a record that is a tombstone now counts from
//!    its latest delete; grace must exceed clock skew between coordinators;
//! 2. **phase 1**: the tombstone has been pushed to every replica of every active layout
//!    version (current owners and, during a change, future owners), and each confirmed
//!    holding *exactly* this version ([`TombstoneVersion`]), at least `in_flight_ms` ago
//!    (so a read repair or replication that started before the confirmation, carrying
//!    an older version, has ended);
//! 3. no hint for the key is pending on this node (a hint replayed after the purge
//!    would bring an old value back);
//! 4. **phase 2**: the delete happens only where the stored record is still that
//!    tombstone: [`PurgeGuard::still_current`] is the compare-and-delete predicate the
//!    storage layer evaluates at delete time, on its writer thread.
//!
//! Why a replica that was down past the grace never resurrects a key: purging needs a
//! confirmation from *every* replica of every active set, so while one is down no
//! replica purges; the tombstone stays everywhere until the down replica is back and
//! has received it (by push or anti-entropy), which dominates the old value it held.
//! Only then can anyone purge, and by then no replica holds an older version. A node
//! that was removed from the layout is wiped before it rejoins (DESIGN.md), so it
//! holds nothing older either.

use std::collections::BTreeSet;

use super::tree::item_hash;
use crate::version::Record;

/// The exact version of a tombstone: [`item_hash`] of the key and record. A replica
/// confirms holding the tombstone by sending back the version it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TombstoneVersion(pub u64);

impl TombstoneVersion {
    /// The version of `record` of `key`, if the record is a tombstone: at least one
    /// sibling and every sibling a delete.
    pub fn of(key: &[u8], record: &Record) -> Option<Self> {
        is_tombstone(record).then(|| TombstoneVersion(item_hash(key, record)))
    }
}

/// True when `record` holds siblings and all are deletes.
pub fn is_tombstone(record: &Record) -> bool {
    !record.siblings.is_empty() && record.siblings.iter().all(|s| s.value.is_none())
}

/// When `record` became a tombstone: the newest timestamp of its siblings (`None` if
/// it is not a tombstone).
pub fn deleted_at_ms(record: &Record) -> Option<u64> {
    if !is_tombstone(record) {
        return None;
    }
    record.siblings.iter().map(|s| s.timestamp_ms).max()
}

/// A replica's answer to a push of the tombstone: it holds `version` (which may be
/// another one, e.g. a newer write) since `at_ms` (this node's clock when the answer
/// came).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// Node id of the replica.
    pub replica: String,
    /// Version it holds for the key.
    pub version: TombstoneVersion,
    /// When the confirmation was received (milliseconds, this node's clock).
    pub at_ms: u64,
}

/// GC settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// How long a tombstone is kept before GC considers it (`gc.grace`).
    pub grace_ms: u64,
    /// How old every confirmation must be before a purge: at least the longest a
    /// replication, read repair or range pull can take (request deadline).
    pub in_flight_ms: u64,
}

/// What to do with one stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcDecision {
    /// Nothing now; the reason says why (for logs and tests).
    Keep(KeepReason),
    /// Phase 1: push the tombstone to these replicas and record their confirmations.
    PushTo(Vec<String>),
    /// Phase 2: delete the key here and ask every replica of every active set to delete
    /// it with the same guard; each deletes only if [`PurgeGuard::still_current`] holds
    /// at delete time. (Deleting only locally would let the next push or exchange bring
    /// the tombstone back from the others, which is safe but never ends.)
    Purge(PurgeGuard),
}

/// Why a record is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// Not a tombstone (a live value or no sibling).
    NotATombstone,
    /// Younger than the grace period.
    InGrace,
    /// A hint for the key is pending.
    HintPending,
    /// Every replica confirmed, but not yet `in_flight_ms` ago.
    Settling,
    /// There is no replica set to check (the node is not told the layout): never purge.
    NoReplicaSets,
}

/// The compare-and-delete condition of a purge: the key, and the tombstone version that
/// every replica confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeGuard {
    /// The user key.
    pub key: Vec<u8>,
    /// The version every replica holds.
    pub version: TombstoneVersion,
}

impl PurgeGuard {
    /// True when `stored` (the key's record as the storage layer holds it at delete
    /// time) is still exactly the confirmed tombstone: delete only then. A write that
    /// came in since (even another delete) changes the version and cancels the purge.
    pub fn still_current(&self, stored: Option<&Record>) -> bool {
        stored.and_then(|r| TombstoneVersion::of(&self.key, r)) == Some(self.version)
    }
}

/// Everything the decision for one key needs.
#[derive(Clone, Copy, Debug)]
pub struct GcInput<'a> {
    /// The user key.
    pub key: &'a [u8],
    /// Its stored record on this node.
    pub record: &'a Record,
    /// This node's id (it holds `record`, so it needs no confirmation).
    pub local: &'a str,
    /// Replica ids of the key under every active layout version (current owners; also
    /// the future owners while a change is in flight).
    pub replica_sets: &'a [Vec<String>],
    /// Confirmations received so far for this key (any version; only those of the
    /// current tombstone count).
    pub confirmations: &'a [Confirmation],
    /// Whether a hint for the key is pending on this node.
    pub hint_pending: bool,
    /// This node's clock, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// Decides what to do with one stored record (see the module docs for the rules).
pub fn decide(input: &GcInput<'_>, policy: &GcPolicy) -> GcDecision {
    let Some(version) = TombstoneVersion::of(input.key, input.record) else {
        return GcDecision::Keep(KeepReason::NotATombstone);
    };
    let deleted = deleted_at_ms(input.record).unwrap_or(u64::MAX);
    if input.now_ms.saturating_sub(deleted) < policy.grace_ms || deleted > input.now_ms {
        return GcDecision::Keep(KeepReason::InGrace);
    }
    if input.hint_pending {
        return GcDecision::Keep(KeepReason::HintPending);
    }
    if input.replica_sets.iter().all(Vec::is_empty) {
        return GcDecision::Keep(KeepReason::NoReplicaSets);
    }
    let replicas: BTreeSet<&str> = input
        .replica_sets
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|r| *r != input.local)
        .collect();
    let mut missing = Vec::new();
    let mut latest = 0u64;
    for r in replicas {
        let confirmed = input
            .confirmations
            .iter()
            .filter(|c| c.replica == r && c.version == version)
            .map(|c| c.at_ms)
            .min();
        match confirmed {
            Some(at) => latest = latest.max(at),
            None => missing.push(r.to_string()),
        }
    }
    if !missing.is_empty() {
        return GcDecision::PushTo(missing);
    }
    if input.now_ms.saturating_sub(latest) < policy.in_flight_ms {
        return GcDecision::Keep(KeepReason::Settling);
    }
    GcDecision::Purge(PurgeGuard {
        key: input.key.to_vec(),
        version,
    })
}
