//! Placement: which nodes hold which keys.
//!
//! * [`Partitioner`] is the contract of one immutable ring: keys to tokens, tokens to
//!   replicas, and the token ranges each node replicates. [`HashRing`] (consistent
//!   hashing with virtual nodes) is the default implementation.
//! * [`PlacementSnapshot`] is what the request path reads: the ring of the current
//!   owners and, while a layout change is in flight, the ring of the owners after it.
//!   Writes then go to both replica sets; reads stay with the current owners.
//! * [`Placement`] holds the snapshot in force and swaps it atomically. Snapshots are
//!   built off the request path (by whoever learns of a new layout) and a newer
//!   version is never replaced by an older one.

mod ring;

use std::sync::Arc;

use distkv_network::{Layout, MemberState, NodeInfo};
use parking_lot::{Mutex, RwLock};

pub use ring::{key_token, HashRing};

/// The ring positions `(start, end]`, wrapping past `u64::MAX` when `start >= end`;
/// `start == end` is the whole ring. Every key whose token lies in a range of a ring
/// (as returned by [`Partitioner::ranges`]) has the same replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenRange {
    /// Exclusive start.
    pub start: u64,
    /// Inclusive end.
    pub end: u64,
}

impl TokenRange {
    /// The whole ring.
    pub const FULL: TokenRange = TokenRange { start: 0, end: 0 };

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: u64) -> bool {
        if self.start < self.end {
            token > self.start && token <= self.end
        } else {
            // Wrapping (or the whole ring when start == end).
            token > self.start || token <= self.end
        }
    }

    /// The range as at most two non-wrapping inclusive intervals `[lo, hi]`, in token
    /// order.
    pub fn intervals(&self) -> Vec<(u64, u64)> {
        if self.start < self.end {
            return vec![(self.start + 1, self.end)];
        }
        if self.start == self.end {
            return vec![(0, u64::MAX)];
        }
        let mut out = vec![(0, self.end)];
        if self.start < u64::MAX {
            out.push((self.start + 1, u64::MAX));
        }
        out
    }
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({:#018x}, {:#018x}]", self.start, self.end)
    }
}

/// One immutable placement of keys on nodes.
///
/// Contract: a ring is built once from a member list and never changes; for a given
/// member list every node builds an identical ring (same tokens, same fingerprint);
/// [`Partitioner::replicas`] holds `min(n, members)` distinct nodes, the first being the
/// primary owner; adding a member moves only the keys that the new member now owns.
pub trait Partitioner: Send + Sync + Sized + 'static {
    /// The ring of `nodes` at layout `version`, with `virtual_nodes` tokens per node.
    fn build(version: u64, virtual_nodes: u32, nodes: &[NodeInfo]) -> Self;
    /// The token of a key: a fixed function, the same on every node and version, since
    /// keys are stored in token order on disk.
    fn token(key: &[u8]) -> u64;
    /// The layout version this ring was built for.
    fn version(&self) -> u64;
    /// The members placed on this ring, sorted by id.
    fn nodes(&self) -> &[NodeInfo];
    /// The `n` replicas of the keys at `token`, in preference order.
    fn replicas(&self, token: u64, n: usize) -> Vec<NodeInfo>;
    /// Every range between two consecutive tokens, in token order; together they cover
    /// the ring exactly once.
    fn ranges(&self) -> Vec<TokenRange>;
    /// The fraction of the token space whose primary owner is each node, by node id.
    fn ownership(&self) -> Vec<(String, f64)>;
    /// A fingerprint of the whole ring: equal on two nodes iff they place every key
    /// identically.
    fn fingerprint(&self) -> u64;

    /// The nodes that hold `key`, in preference order.
    fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeInfo> {
        self.replicas(Self::token(key), n)
    }

    /// The replicas of every key in `range` (a range of [`Partitioner::ranges`]).
    fn replicas_of_range(&self, range: TokenRange, n: usize) -> Vec<NodeInfo> {
        self.replicas(range.end, n)
    }

    /// The ranges whose `n` replicas include the node `id`.
    fn ranges_of(&self, id: &str, n: usize) -> Vec<TokenRange> {
        self.ranges()
            .into_iter()
            .filter(|r| self.replicas_of_range(*r, n).iter().any(|x| x.id == id))
            .collect()
    }
}

/// The replicas a write must reach: the current owners and, while a layout change is in
/// flight, the owners after it. A write needs its quorum in *each* set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSets {
    /// Owners under the layout in force.
    pub current: Vec<NodeInfo>,
    /// Owners after the change in flight, when they differ from `current`.
    pub pending: Option<Vec<NodeInfo>>,
}

impl WriteSets {
    /// Every node of either set, each once (current owners first).
    pub fn all(&self) -> Vec<NodeInfo> {
        let mut all = self.current.clone();
        for n in self.pending.iter().flatten() {
            if !all.iter().any(|a| a.id == n.id) {
                all.push(n.clone());
            }
        }
        all
    }

    /// The sets, as lists of node ids (for the quorum tracker).
    pub fn id_sets(&self) -> Vec<Vec<String>> {
        let ids = |s: &[NodeInfo]| s.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let mut sets = vec![ids(&self.current)];
        if let Some(p) = &self.pending {
            sets.push(ids(p));
        }
        sets
    }

    /// The size of the smallest set (what a consistency level can ask for).
    pub fn min_len(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(self.current.len(), |p| p.len().min(self.current.len()))
    }
}

/// The placement in force at one layout version. Immutable.
pub struct PlacementSnapshot<P> {
    version: u64,
    current: Arc<P>,
    pending: Option<Arc<P>>,
}

impl<P: Partitioner> PlacementSnapshot<P> {
    /// The placement of layout `version`: `owners` hold and serve the keys now;
    /// `future_owners` (equal to `owners` unless a change is in flight) hold them after
    /// the change and take writes meanwhile.
    pub fn build(
        version: u64,
        virtual_nodes: u32,
        owners: &[NodeInfo],
        future_owners: &[NodeInfo],
    ) -> Self {
        let current = Arc::new(P::build(version, virtual_nodes, owners));
        let same = {
            let mut a: Vec<&str> = owners.iter().map(|n| n.id.as_str()).collect();
            let mut b: Vec<&str> = future_owners.iter().map(|n| n.id.as_str()).collect();
            a.sort_unstable();
            a.dedup();
            b.sort_unstable();
            b.dedup();
            a == b
        };
        let pending = (!same).then(|| Arc::new(P::build(version, virtual_nodes, future_owners)));
        PlacementSnapshot {
            version,
            current,
            pending,
        }
    }

    /// The placement of `layout`: members `normal` or `leaving` own keys now; members
    /// `normal` or `joining` own them after the change in flight (the same set when
    /// nothing is joining or leaving). Members that `left` own nothing.
    pub fn of_layout(layout: &Layout) -> Self {
        PlacementSnapshot::build(
            layout.version(),
            layout.virtual_nodes(),
            &layout.nodes_in(&[MemberState::Normal, MemberState::Leaving]),
            &layout.nodes_in(&[MemberState::Normal, MemberState::Joining]),
        )
    }

    /// The layout version of this placement.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The ring of the current owners.
    pub fn ring(&self) -> &P {
        &self.current
    }

    /// The ring of the owners after the change in flight, if one is.
    pub fn pending_ring(&self) -> Option<&P> {
        self.pending.as_deref()
    }

    /// The replicas a read of `key` asks: the current owners.
    pub fn read_replicas(&self, key: &[u8], n: usize) -> Vec<NodeInfo> {
        self.current.preference_list(key, n)
    }

    /// The replicas a write of `key` must reach.
    pub fn write_sets(&self, key: &[u8], n: usize) -> WriteSets {
        let token = P::token(key);
        let current = self.current.replicas(token, n);
        let pending = self.pending.as_ref().and_then(|p| {
            let future = p.replicas(token, n);
            let same = future.len() == current.len()
                && future.iter().all(|f| current.iter().any(|c| c.id == f.id));
            (!same).then_some(future)
        });
        WriteSets { current, pending }
    }

    /// The ranges node `id` replicates now, and those it will replicate after the
    /// change in flight (equal when none is).
    pub fn ranges_of(&self, id: &str, n: usize) -> (Vec<TokenRange>, Vec<TokenRange>) {
        let now = self.current.ranges_of(id, n);
        let after = match &self.pending {
            Some(p) => p.ranges_of(id, n),
            None => now.clone(),
        };
        (now, after)
    }
}

/// The placement in force, swapped atomically as layouts change. Readers take an
/// `Arc` of the snapshot (one uncontended read lock); installing never blocks them for
/// longer than a pointer swap, since snapshots are built before [`Placement::install`].
pub struct Placement<P> {
    snapshot: RwLock<Arc<PlacementSnapshot<P>>>,
    /// Serialises installs so that the version check and the swap are one step.
    install: Mutex<()>,
}

impl<P: Partitioner> Placement<P> {
    /// A placement starting at `snapshot`.
    pub fn new(snapshot: PlacementSnapshot<P>) -> Self {
        Placement {
            snapshot: RwLock::new(Arc::new(snapshot)),
            install: Mutex::new(()),
        }
    }

    /// Waits until a snapshot of layout `version` or newer is installed, at most
    /// `within`; whether it was.
    pub async fn installed(&self, version: u64, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.current().version() < version {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<PlacementSnapshot<P>> {
        self.snapshot.read().clone()
    }

    /// Installs `next` if it is newer than the snapshot in force; returns whether it
    /// was installed. A snapshot of the same or an older version is ignored, so two
    /// racing installs always leave the newest.
    pub fn install(&self, next: PlacementSnapshot<P>) -> bool {
        let _serial = self.install.lock();
        if next.version <= self.snapshot.read().version {
            return false;
        }
        *self.snapshot.write() = Arc::new(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| NodeInfo {
                id: format!("node-{i}"),
                address: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect()
    }

    fn snapshot(version: u64, owners: usize, future: usize) -> PlacementSnapshot<HashRing> {
        PlacementSnapshot::build(version, 16, &nodes(owners), &nodes(future))
    }

    #[test]
    fn token_ranges_contain_what_they_say() {
        let r = TokenRange { start: 10, end: 20 };
        assert!(!r.contains(10) && r.contains(11) && r.contains(20) && !r.contains(21));
        assert_eq!(r.intervals(), vec![(11, 20)]);
        let w = TokenRange {
            start: u64::MAX - 1,
            end: 5,
        };
        assert!(w.contains(u64::MAX) && w.contains(0) && w.contains(5) && !w.contains(6));
        assert!(!w.contains(u64::MAX - 1));
        assert_eq!(w.intervals(), vec![(0, 5), (u64::MAX, u64::MAX)]);
        let edge = TokenRange {
            start: u64::MAX,
            end: 3,
        };
        assert_eq!(edge.intervals(), vec![(0, 3)]);
        assert!(TokenRange::FULL.contains(0) && TokenRange::FULL.contains(u64::MAX));
        assert_eq!(TokenRange::FULL.intervals(), vec![(0, u64::MAX)]);
    }

    #[test]
    fn ring_ranges_cover_the_ring_once_and_agree_with_key_placement() {
        let ring = HashRing::build(1, 8, &nodes(4));
        let ranges = ring.ranges();
        assert_eq!(ranges.len(), 32);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start, "ranges are contiguous");
        }
        assert_eq!(
            ranges.last().unwrap().end,
            ranges[0].start,
            "and close the ring"
        );
        for i in 0..2000u32 {
            let key = i.to_be_bytes();
            let token = HashRing::token(&key);
            let holding: Vec<_> = ranges.iter().filter(|r| r.contains(token)).collect();
            assert_eq!(holding.len(), 1, "token {token} in exactly one range");
            assert_eq!(
                ring.replicas_of_range(*holding[0], 3),
                ring.preference_list(&key, 3),
                "a range's replicas are its keys' replicas"
            );
        }
        // With N=3 of 4 nodes, each node replicates about 3/4 of the ranges.
        for n in nodes(4) {
            let mine = ring.ranges_of(&n.id, 3).len();
            assert!(
                (16..=32).contains(&mine),
                "{} replicates {mine} of 32",
                n.id
            );
        }
        // One node replicates everything.
        assert_eq!(
            HashRing::build(1, 8, &nodes(1))
                .ranges_of("node-0", 3)
                .len(),
            8
        );
    }

    #[test]
    fn during_a_change_writes_reach_old_and_new_owners_and_reads_stay_old() {
        let p = snapshot(2, 3, 4);
        let mut moved = 0;
        for i in 0..2000u32 {
            let key = i.to_be_bytes();
            let sets = p.write_sets(&key, 3);
            assert_eq!(sets.current, p.read_replicas(&key, 3));
            if let Some(pending) = &sets.pending {
                moved += 1;
                assert!(
                    pending.iter().any(|n| n.id == "node-3"),
                    "only the joiner moves keys"
                );
                assert_eq!(sets.id_sets().len(), 2);
                assert_eq!(sets.all().len(), 4, "union of both sets, each node once");
            } else {
                assert_eq!(sets.all(), sets.current);
            }
        }
        assert!(moved > 0, "a joining node takes over some keys");
        // No change in flight: one set.
        let steady = snapshot(2, 3, 3);
        assert!(steady.pending_ring().is_none());
        assert!(steady.write_sets(b"k", 3).pending.is_none());
        let (now, after) = p.ranges_of("node-3", 3);
        assert!(
            now.is_empty() && !after.is_empty(),
            "the joiner owns ranges only after"
        );
    }

    #[test]
    fn racing_installs_leave_the_newest_snapshot() {
        for round in 0..50 {
            let placement = Arc::new(Placement::new(snapshot(1, 3, 3)));
            let versions: Vec<u64> = if round % 2 == 0 {
                vec![2, 3]
            } else {
                vec![3, 2]
            };
            let handles: Vec<_> = versions
                .into_iter()
                .map(|v| {
                    let placement = placement.clone();
                    let snap = snapshot(v, 3 + v as usize, 3 + v as usize);
                    std::thread::spawn(move || placement.install(snap))
                })
                .collect();
            let installed: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(placement.current().version(), 3, "round {round}");
            assert!(installed.iter().any(|i| *i));
            assert_eq!(placement.current().ring().nodes().len(), 6);
            assert!(
                !placement.install(snapshot(3, 1, 1)),
                "same version is ignored"
            );
            assert!(
                !placement.install(snapshot(1, 1, 1)),
                "older version is ignored"
            );
            assert_eq!(placement.current().ring().nodes().len(), 6);
        }
    }
}
