//! Anti-entropy and tombstone GC: the sans-IO core (DESIGN.md §3, issue 13).
//!
//! * [`tree`]: [`HashTree`], an incremental hash tree over the whole token space, kept
//!   current from the write path ([`HashTree::update`]) and rebuilt after a crash.
//! * [`exchange`]: [`Exchange`], one comparison of a token range with one peer (requests
//!   out, responses in, differing keys at the end, after the in-flight filter
//!   [`Suspects`]); [`answer`] is the peer's side.
//! * [`gc`]: [`gc::decide`], the two-phase tombstone GC decision, and [`PurgeGuard`],
//!   the compare-and-delete predicate.
//! * [`gc_driver`]: [`TombstoneGc`], the GC pass: the thin async shell around
//!   [`gc::decide`] (paged scan, `GcPush` and `GcPurge` peer calls).
//! * [`upkeep`]: the link to [`crate::replica::ReplicaStore`]: the tree as the store's
//!   [`crate::replica::MergeObserver`], key hashes read from storage, the background
//!   rebuild ([`upkeep::rebuild`]).
//!
//! How a driver uses it: one `Arc<Mutex<HashTree>>` per node, given to the store with
//! `ReplicaStore::with_observer` and rebuilt with [`upkeep::rebuild`] at start-up; every
//! `antientropy.interval`, for each (peer, range) this node replicates, an [`Exchange`]
//! round against the peer's [`answer`] (one RPC per request), then the keys of
//! [`RoundReport::to_pull`] read from the peer and merged as repairs (and pushed for
//! `MissingThere`), throttled by the bytes of [`ExchangeStats`]; for tombstones, a GC
//! pass feeding [`gc::decide`] and executing its decision with `ReplicaStore::delete_if`.
//!
//! Nothing here does I/O, sleeps or reads a clock: the driver (RPCs, timers, throttle)
//! passes `now` and carries the messages.

pub mod driver;
pub mod exchange;
pub mod gc;
pub mod gc_driver;
pub mod tree;
pub mod upkeep;
pub mod wire;

pub use driver::{AntiEntropy, AntiEntropySettings, PassReport, RangeStats, RepairPass};
pub use exchange::{
    answer, DiffKind, Difference, Exchange, ExchangeError, ExchangeLimits, ExchangeStats, KeyHash,
    KeyHashSource, Request, Response, RoundReport, ServeError, ServeLimits, Suspects,
};
pub use gc::{
    decide, Confirmation, GcDecision, GcInput, GcPolicy, KeepReason, PurgeGuard, TombstoneVersion,
};
pub use gc_driver::{GcCounters, GcInfo, GcReport, GcSettings, GcView, TombstoneGc};
pub use tree::{item_hash, HashTree, Position, Summary, TreeError, TreeShape};

/// The tree's upkeep from the write path: give the store an
/// `Arc<parking_lot::Mutex<HashTree>>` as its [`crate::replica::MergeObserver`]
/// ([`crate::replica::ReplicaStore::with_observer`]).
impl crate::replica::MergeObserver for parking_lot::Mutex<HashTree> {
    fn merged(&self, key: &[u8], token: u64, old: Option<&Record>, new: Option<&Record>) {
        self.lock().update(key, token, old, new);
    }
}

use crate::version::Record;

#[cfg(test)]
mod tests;
