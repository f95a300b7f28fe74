//! An incremental hash tree over the whole token space (Riak's Tictac AAE idea).
//!
//! The `u64` token space is cut into `2^segment_bits` leaf *segments* by the top bits of
//! a key's token. A segment's [`Summary`] is the XOR of the [`item_hash`]es of the keys it
//! holds, and their count; each inner level groups `2^fanout_bits` nodes of the level
//! below, up to one root. The cut does not depend on the layout, so a layout change
//! never needs a rebuild: a token range is compared through the nodes that lie wholly
//! inside it, and the (at most four) segments it cuts through are compared key by key.
//!
//! Updating is O(levels): the write path reports `(key, token, old, new)` on every merge
//! and [`HashTree::update`] XORs `old ^ new` into the one node of each level that covers
//! the token. Nothing is recomputed and nothing is scanned.
//!
//! Memory: one [`Summary`] (16 bytes) per node, about `16 * 2^segment_bits * (1 +
//! 1/fanout)` bytes: with the defaults (2^16 segments, fanout 16) ~1.1 MiB per node,
//! whatever the number of keys or ranges. Shapes are bounded to at most 2^24 segments
//! (~270 MiB); larger shapes are refused.
//!
//! After a crash the tree is rebuilt from a scan of the store ([`HashTree::rebuild_from`]
//! or, while writes continue, [`HashTree::new_rebuilding`] + [`HashTree::scanned`]). A
//! tree that is not [ready](HashTree::is_ready) answers no hash query: comparisons must
//! wait (see `exchange`).

use crate::placement::TokenRange;
use crate::version::Record;

/// Default number of leaf-segment bits: 2^16 segments.
pub const DEFAULT_SEGMENT_BITS: u32 = 16;
/// Default fanout bits: 16 children per inner node.
pub const DEFAULT_FANOUT_BITS: u32 = 4;
/// Most segment bits accepted (2^24 segments, ~270 MiB of tree).
pub const MAX_SEGMENT_BITS: u32 = 24;
/// Most fanout bits accepted (256 children per node).
pub const MAX_FANOUT_BITS: u32 = 8;

/// Why a tree could not be built or updated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The shape asked for is outside the supported bounds.
    #[error("anti-entropy tree shape {segment_bits} segment bits / {fanout_bits} fanout bits is not supported: use 1..={max_segment} segment bits and 1..={max_fanout} fanout bits, fanout not above segments")]
    BadShape {
        /// Segment bits asked for.
        segment_bits: u32,
        /// Fanout bits asked for.
        fanout_bits: u32,
        /// [`MAX_SEGMENT_BITS`].
        max_segment: u32,
        /// [`MAX_FANOUT_BITS`].
        max_fanout: u32,
    },
    /// A rebuild scan went backwards: the caller must feed keys in storage order.
    #[error("anti-entropy tree rebuild received token {token:#x} after a later key: scan the store in token order and restart the rebuild")]
    ScanOutOfOrder {
        /// Token of the offending key.
        token: u64,
    },
    /// A rebuild step was given to a tree that is not rebuilding.
    #[error("anti-entropy tree is not rebuilding: call HashTree::new_rebuilding first")]
    NotRebuilding,
}

/// The geometry of a tree: how many segments, how many children per inner node.
/// Two replicas can compare trees only if their shapes are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeShape {
    segment_bits: u32,
    fanout_bits: u32,
}

impl Default for TreeShape {
    fn default() -> Self {
        TreeShape {
            segment_bits: DEFAULT_SEGMENT_BITS,
            fanout_bits: DEFAULT_FANOUT_BITS,
        }
    }
}

impl TreeShape {
    /// A shape of `2^segment_bits` segments and `2^fanout_bits` children per inner node.
    pub fn new(segment_bits: u32, fanout_bits: u32) -> Result<Self, TreeError> {
        let ok = (1..=MAX_SEGMENT_BITS).contains(&segment_bits)
            && (1..=MAX_FANOUT_BITS).contains(&fanout_bits)
            && fanout_bits <= segment_bits;
        if !ok {
            return Err(TreeError::BadShape {
                segment_bits,
                fanout_bits,
                max_segment: MAX_SEGMENT_BITS,
                max_fanout: MAX_FANOUT_BITS,
            });
        }
        Ok(TreeShape {
            segment_bits,
            fanout_bits,
        })
    }

    /// Bits of the token that name a segment.
    pub fn segment_bits(&self) -> u32 {
        self.segment_bits
    }

    /// Number of leaf segments.
    pub fn segments(&self) -> u64 {
        1 << self.segment_bits
    }

    /// The level of the leaves (the root is level 0).
    pub fn leaf_level(&self) -> u32 {
        self.segment_bits.div_ceil(self.fanout_bits)
    }

    /// Token bits that name a node at `level` (0 for the root).
    pub fn bits_at(&self, level: u32) -> u32 {
        (level.saturating_mul(self.fanout_bits)).min(self.segment_bits)
    }

    /// Number of nodes at `level`.
    pub fn nodes_at(&self, level: u32) -> u64 {
        1 << self.bits_at(level)
    }

    /// The node at `level` that covers `token`.
    pub fn node_of(&self, level: u32, token: u64) -> u64 {
        let bits = self.bits_at(level);
        if bits == 0 {
            0
        } else {
            token >> (64 - bits)
        }
    }

    /// The segment of `token`.
    pub fn segment_of(&self, token: u64) -> u64 {
        self.node_of(self.leaf_level(), token)
    }

    /// The tokens `[lo, hi]` covered by node `index` of `level`.
    pub fn interval(&self, level: u32, index: u64) -> (u64, u64) {
        let bits = self.bits_at(level);
        if bits == 0 {
            return (0, u64::MAX);
        }
        let lo = index << (64 - bits);
        (lo, lo | (u64::MAX >> bits))
    }

    /// The indexes, at `level + 1`, of the children of node `index` of `level`.
    pub fn children(&self, level: u32, index: u64) -> std::ops::Range<u64> {
        let shift = self.bits_at(level + 1) - self.bits_at(level);
        (index << shift)..((index + 1) << shift)
    }

    /// Bytes of memory a tree of this shape takes (its summaries).
    pub fn memory_bytes(&self) -> usize {
        let nodes: u64 = (0..=self.leaf_level()).map(|l| self.nodes_at(l)).sum();
        nodes as usize * std::mem::size_of::<Summary>()
    }
}

/// What one node of the tree says about the keys under it: the XOR of their item
/// hashes and how many there are. Equal summaries mean equal contents (up to a 64-bit
/// hash collision).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// XOR of the [`item_hash`]es of the keys under the node.
    pub hash: u64,
    /// Number of keys under the node.
    pub keys: u64,
}

/// A key's place in storage order: its token, then its bytes (the order of the
/// token-prefixed stored keys).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The key's token.
    pub token: u64,
    /// The user key.
    pub key: Vec<u8>,
}

/// The hash of one key's version information: the key, the `seen` vector (actors with
/// a zero counter left out, since they mean the same as absent ones) and the dot of each
/// sibling, sorted. Values and timestamps are not hashed: a dot names one write, so two
/// records with the same dots hold the same writes. The input is framed (tags and
/// lengths), so different version information never encodes to the same bytes; the
/// record's stored encoding is not used because equal versions need not encode alike.
///
/// XXH3-64 is not collision-resistant against an adversary; dots are issued by
/// coordinators, not clients, so a client cannot aim a collision at another key's
/// version.
pub fn item_hash(key: &[u8], record: &Record) -> u64 {
    let mut buf = Vec::with_capacity(16 + key.len() + 24 * (record.siblings.len() + 2));
    buf.extend_from_slice(&(key.len() as u64).to_le_bytes());
    buf.extend_from_slice(key);
    for (actor, counter) in record.seen.iter().filter(|(_, c)| *c > 0) {
        buf.push(1);
        buf.extend_from_slice(&(actor.len() as u64).to_le_bytes());
        buf.extend_from_slice(actor.as_bytes());
        buf.extend_from_slice(&counter.to_le_bytes());
    }
    let mut dots: Vec<_> = record.siblings.iter().map(|s| &s.dot).collect();
    dots.sort();
    dots.dedup();
    for dot in dots {
        buf.push(2);
        buf.extend_from_slice(&(dot.actor.len() as u64).to_le_bytes());
        buf.extend_from_slice(dot.actor.as_bytes());
        buf.extend_from_slice(&dot.counter.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Ready,
    /// Rebuilding from a scan; keys at or before `cursor` have been scanned.
    Rebuilding {
        cursor: Option<Position>,
    },
}

/// The hash tree of one node's records (every key it stores, whatever range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    shape: TreeShape,
    /// `levels[l][i]`: node `i` of level `l`.
    levels: Vec<Vec<Summary>>,
    state: State,
}

impl HashTree {
    /// The tree of an empty store: ready.
    pub fn new(shape: TreeShape) -> Self {
        let levels = (0..=shape.leaf_level())
            .map(|l| vec![Summary::default(); shape.nodes_at(l) as usize])
            .collect();
        HashTree {
            shape,
            levels,
            state: State::Ready,
        }
    }

    /// An empty tree to be rebuilt while writes continue: not ready until
    /// [`HashTree::finish_rebuild`]. Feed it every stored record in storage order with
    /// [`HashTree::scanned`]; meanwhile [`HashTree::update`] applies only changes to keys
    /// already scanned (the scan picks up the others).
    ///
    /// Contract for the caller: reading a scan page from storage and passing it to
    /// `scanned` must not interleave with a merge's storage write and its `update` (hold
    /// one lock across each pair), or the tree may count a key's version twice or not at
    /// all.
    pub fn new_rebuilding(shape: TreeShape) -> Self {
        HashTree {
            state: State::Rebuilding { cursor: None },
            ..HashTree::new(shape)
        }
    }

    /// A ready tree of `records`, `(key, token, record)` in any order: the rebuild after
    /// a crash when no write runs meanwhile.
    pub fn rebuild_from<'a>(
        shape: TreeShape,
        records: impl IntoIterator<Item = (&'a [u8], u64, &'a Record)>,
    ) -> Self {
        let mut tree = HashTree::new(shape);
        for (key, token, record) in records {
            tree.toggle(token, item_hash(key, record), 1, true);
        }
        tree
    }

    /// The shape of the tree.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// Whether the tree reflects every stored record (false while rebuilding): hash
    /// queries must not be answered from a tree that is not ready.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Records that `key` (at `token`) went from `old` to `new` (`None`: absent, e.g.
    /// before the first write or after a purge). Call it for every merge, after the
    /// store wrote `new`.
    pub fn update(&mut self, key: &[u8], token: u64, old: Option<&Record>, new: Option<&Record>) {
        if let State::Rebuilding { cursor } = &self.state {
            let scanned = cursor
                .as_ref()
                .is_some_and(|c| (token, key) <= (c.token, c.key.as_slice()));
            if !scanned {
                return; // the scan will read the new record
            }
        }
        let old = old.map(|r| item_hash(key, r));
        let new = new.map(|r| item_hash(key, r));
        match (old, new) {
            (Some(o), Some(n)) => self.toggle(token, o ^ n, 0, true),
            (Some(o), None) => self.toggle(token, o, 1, false),
            (None, Some(n)) => self.toggle(token, n, 1, true),
            (None, None) => {}
        }
    }

    /// One step of a rebuild: the stored `record` of `key`, in storage order.
    pub fn scanned(&mut self, key: &[u8], token: u64, record: &Record) -> Result<(), TreeError> {
        let State::Rebuilding { cursor } = &mut self.state else {
            return Err(TreeError::NotRebuilding);
        };
        if cursor
            .as_ref()
            .is_some_and(|c| (token, key) <= (c.token, c.key.as_slice()))
        {
            return Err(TreeError::ScanOutOfOrder { token });
        }
        *cursor = Some(Position {
            token,
            key: key.to_vec(),
        });
        self.toggle(token, item_hash(key, record), 1, true);
        Ok(())
    }

    /// Ends a rebuild whose scan has read every stored key: the tree is ready.
    pub fn finish_rebuild(&mut self) {
        self.state = State::Ready;
    }

    /// XORs `hash` into every node covering `token` and adds (or removes) `keys`.
    fn toggle(&mut self, token: u64, hash: u64, keys: u64, add: bool) {
        for (level, nodes) in self.levels.iter_mut().enumerate() {
            let i = self.shape.node_of(level as u32, token) as usize;
            let node = &mut nodes[i];
            node.hash ^= hash;
            node.keys = if add {
                node.keys.wrapping_add(keys)
            } else {
                node.keys.wrapping_sub(keys)
            };
        }
    }

    /// The summary of node `index` of `level`; `None` if there is no such node or the
    /// tree is not ready.
    pub fn summary(&self, level: u32, index: u64) -> Option<Summary> {
        if !self.is_ready() {
            return None;
        }
        self.levels
            .get(level as usize)?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// About how many keys the tree counts in `range` (`None` while not ready): the keys
    /// of the leaf segments inside it, plus a share of the (at most four) segments its
    /// ends cut, in proportion to the tokens covered. An estimate for progress reports
    /// (ranges of a ring span hundreds of segments), never for comparisons.
    pub fn approx_keys_in(&self, range: TokenRange) -> Option<u64> {
        if !self.is_ready() {
            return None;
        }
        let leaf = self.shape.leaf_level();
        let leaves = self.levels.get(leaf as usize)?;
        let mut parts = Vec::with_capacity(2);
        if range.start < range.end {
            parts.push((range.start + 1, range.end));
        } else {
            // Wrapping, or the whole ring when start == end.
            if range.start < u64::MAX {
                parts.push((range.start + 1, u64::MAX));
            }
            parts.push((0, range.end));
        }
        let mut total: u128 = 0;
        for (lo, hi) in parts {
            for segment in self.shape.segment_of(lo)..=self.shape.segment_of(hi) {
                let keys = leaves.get(segment as usize).map_or(0, |s| s.keys);
                if keys == 0 {
                    continue;
                }
                let (a, b) = self.shape.interval(leaf, segment);
                total += u128::from(keys) * (u128::from(b.min(hi) - a.max(lo)) + 1);
            }
        }
        // Every leaf segment spans the same number of tokens; rounded to the nearest.
        let (a, b) = self.shape.interval(leaf, 0);
        let width = u128::from(b - a) + 1;
        Some(u64::try_from((total + width / 2) / width).unwrap_or(u64::MAX))
    }

    /// The summary of the whole tree; `None` while not ready.
    pub fn root(&self) -> Option<Summary> {
        self.summary(0, 0)
    }
}

/// How a tree node relates to a token range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overlap {
    /// No token of the node is in the range.
    Outside,
    /// Every token of the node is in the range.
    Inside,
    /// Some are.
    Partial,
}

/// How the tokens `[lo, hi]` relate to the inclusive `intervals` (disjoint, sorted).
pub(crate) fn overlap(intervals: &[(u64, u64)], lo: u64, hi: u64) -> Overlap {
    let mut any = false;
    for &(a, b) in intervals {
        if a <= lo && hi <= b {
            return Overlap::Inside;
        }
        if a <= hi && lo <= b {
            any = true;
        }
    }
    if any {
        Overlap::Partial
    } else {
        Overlap::Outside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::key_token;
    use crate::version::{Dot, Sibling, VersionVector};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn dot(actor: &str, counter: u64) -> Dot {
        Dot {
            actor: actor.into(),
            counter,
        }
    }

    #[test]
    fn shapes_are_bounded_and_their_geometry_adds_up() {
        assert!(TreeShape::new(0, 1).is_err());
        assert!(TreeShape::new(25, 4).is_err());
        assert!(TreeShape::new(4, 9).is_err());
        let err = TreeShape::new(3, 4).unwrap_err().to_string();
        assert!(err.contains("fanout not above segments"), "{err}");
        let s = TreeShape::default();
        assert_eq!(s.leaf_level(), 4);
        assert_eq!(s.segments(), 1 << 16);
        assert_eq!(s.memory_bytes(), 16 * (1 + 16 + 256 + 4096 + 65536));
        // Uneven: 5 segment bits, fanout 4 → levels of 1, 16, 32 nodes.
        let s = TreeShape::new(5, 2).unwrap();
        assert_eq!(s.leaf_level(), 3);
        assert_eq!(s.nodes_at(3), 32);
        assert_eq!(s.children(2, 3), 6..8);
        assert_eq!(s.interval(0, 0), (0, u64::MAX));
        assert_eq!(s.interval(3, 31), (31 << 59, u64::MAX));
        assert_eq!(s.segment_of(u64::MAX), 31);
    }

    #[test]
    fn item_hashes_ignore_zero_counters_and_sibling_order_but_not_dots() {
        let mut a = Record::write(dot("a", 2), VersionVector::new(), 1, None);
        let b = a.clone();
        let h = item_hash(b"k", &a);
        assert_eq!(h, item_hash(b"k", &b));
        assert_ne!(h, item_hash(b"j", &a));
        let mut zero = VersionVector::new();
        zero.add(&dot("z", 0));
        a.seen = zero;
        assert_eq!(item_hash(b"k", &a), h, "a zero counter is an absent actor");
        let mut c = b.clone();
        c.siblings.push(Sibling {
            dot: dot("b", 1),
            timestamp_ms: 0,
            value: None,
        });
        let mut d = c.clone();
        d.siblings.reverse();
        assert_eq!(item_hash(b"k", &c), item_hash(b"k", &d));
        assert_ne!(item_hash(b"k", &c), h);
        // Framing: actor "ab" counter 1 differs from actor "a" with other bytes.
        let e = Record::write(dot("ab", 1), VersionVector::new(), 1, None);
        let f = Record::write(dot("a", 1), VersionVector::new(), 1, None);
        assert_ne!(item_hash(b"k", &e), item_hash(b"k", &f));
    }

    #[test]
    fn keys_in_a_range_are_estimated_from_the_segments_it_covers() {
        // 16 segments of 2^60 tokens; 10 keys in each of segments 0..8 (none above).
        let shape = TreeShape::new(4, 2).unwrap();
        let r = Record::write(dot("a", 1), VersionVector::new(), 1, Some(b"v".to_vec()));
        let width = 1u64 << 60;
        let keys: Vec<(Vec<u8>, u64)> = (0..80u64)
            .map(|i| {
                (
                    i.to_be_bytes().to_vec(),
                    (i / 10) * width + (i % 10) * 7 + 1,
                )
            })
            .collect();
        let tree = HashTree::rebuild_from(shape, keys.iter().map(|(k, t)| (k.as_slice(), *t, &r)));
        let range = |start: u64, end: u64| TokenRange { start, end };
        assert_eq!(tree.approx_keys_in(TokenRange::FULL), Some(80));
        // Segments 0..4 (the range starts after token 0 of segment 0: one token in 2^60
        // less, lost in the rounding).
        assert_eq!(tree.approx_keys_in(range(0, 4 * width - 1)), Some(40));
        // Half of segment 2: prorated by tokens.
        assert_eq!(
            tree.approx_keys_in(range(2 * width - 1, 2 * width + width / 2 - 1)),
            Some(5)
        );
        // Wrapping: segments 15 (empty) and 0 (10 keys).
        assert_eq!(
            tree.approx_keys_in(range(15 * width - 1, width - 1)),
            Some(10)
        );
        // Nothing where no key is.
        assert_eq!(tree.approx_keys_in(range(9 * width, 12 * width)), Some(0));
        assert_eq!(
            HashTree::new_rebuilding(shape).approx_keys_in(TokenRange::FULL),
            None
        );
    }

    #[test]
    fn a_rebuilding_tree_is_not_ready_and_counts_each_key_once() {
        let shape = TreeShape::new(4, 2).unwrap();
        let r1 = Record::write(dot("a", 1), VersionVector::new(), 1, Some(b"1".to_vec()));
        let r2 = Record::write(dot("a", 2), r1.context(), 2, Some(b"2".to_vec()));
        let keys: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'k', i]).collect();
        let mut sorted: Vec<(u64, &Vec<u8>)> = keys.iter().map(|k| (key_token(k), k)).collect();
        sorted.sort();
        let mut tree = HashTree::new_rebuilding(shape);
        assert!(!tree.is_ready());
        assert_eq!(tree.root(), None);
        let (half, rest) = sorted.split_at(10);
        for (t, k) in half {
            tree.scanned(k, *t, &r1).unwrap();
        }
        // Writes during the rebuild: one to a scanned key, one to a key not yet scanned
        // (the scan then reads its new record).
        let (t0, k0) = half[0];
        tree.update(k0, t0, Some(&r1), Some(&r2));
        let (t1, k1) = rest[0];
        tree.update(k1, t1, Some(&r1), Some(&r2));
        assert_eq!(
            tree.scanned(k0, t0, &r1),
            Err(TreeError::ScanOutOfOrder { token: t0 })
        );
        for (i, (t, k)) in rest.iter().enumerate() {
            tree.scanned(k, *t, if i == 0 { &r2 } else { &r1 }).unwrap();
        }
        tree.finish_rebuild();
        assert!(tree.is_ready());
        let expected = HashTree::rebuild_from(
            shape,
            sorted.iter().map(|(t, k)| {
                let r = if k == &k0 || k == &k1 { &r2 } else { &r1 };
                (k.as_slice(), *t, r)
            }),
        );
        assert_eq!(tree, expected);
        assert_eq!(tree.root().map(|s| s.keys), Some(20));
        assert_eq!(tree.scanned(k0, t0, &r1), Err(TreeError::NotRebuilding));
    }

    /// One step of a random history of one key: a write with or without the context
    /// of what is held (a blind write makes siblings), a delete, or a purge.
    #[derive(Clone, Debug)]
    pub(crate) enum Op {
        Write { key: u8, actor: u8, blind: bool },
        Delete { key: u8, actor: u8 },
        Purge { key: u8 },
    }

    pub(crate) fn arb_op(keys: u8) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..keys, 0..3u8, any::<bool>()).prop_map(|(key, actor, blind)| Op::Write { key, actor, blind }),
            2 => (0..keys, 0..3u8).prop_map(|(key, actor)| Op::Delete { key, actor }),
            1 => (0..keys).prop_map(|key| Op::Purge { key }),
        ]
    }

    proptest! {
        /// Updating the tree on every merge gives the tree rebuilt from the final records.
        #[test]
        fn incremental_updates_equal_a_rebuild(
            ops in prop::collection::vec(arb_op(12), 0..80),
            segment_bits in 1u32..7,
            fanout_bits in 1u32..4,
        ) {
            let fanout_bits = fanout_bits.min(segment_bits);
            let shape = TreeShape::new(segment_bits, fanout_bits).unwrap();
            let mut tree = HashTree::new(shape);
            let mut store: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
            for (counter, op) in ops.into_iter().enumerate() {
                let counter = counter as u64 + 1;
                let (key, write) = match op {
                    Op::Write { key, actor, blind } => (key, Some((actor, blind, true))),
                    Op::Delete { key, actor } => (key, Some((actor, false, false))),
                    Op::Purge { key } => (key, None),
                };
                let key = vec![key];
                let incoming = write.map(|(actor, blind, live)| {
                    let ctx = match store.get(&key) {
                        Some(r) if !blind => r.context(),
                        _ => VersionVector::new(),
                    };
                    let value = live.then(|| vec![counter as u8]);
                    Record::write(dot(&format!("n{actor}"), counter), ctx, counter, value)
                });
                let token = key_token(&key);
                let old = store.get(&key).cloned();
                let new = match incoming {
                    Some(w) => {
                        let mut r = old.clone().unwrap_or_default();
                        r.merge(&w);
                        Some(r)
                    }
                    None => None,
                };
                tree.update(&key, token, old.as_ref(), new.as_ref());
                match new {
                    Some(r) => { store.insert(key, r); }
                    None => { store.remove(&key); }
                }
            }
            let rebuilt = HashTree::rebuild_from(
                shape,
                store.iter().map(|(k, r)| (k.as_slice(), key_token(k), r)),
            );
            prop_assert_eq!(&tree, &rebuilt);
            prop_assert_eq!(tree.root().map(|s| s.keys), Some(store.len() as u64));
        }
    }
}
