//! The in-memory write buffer: a lock-free skip list of key versions.
//!
//! crossbeam-skiplist 0.1.3's `SkipMap::range` leaks every node it visits (crossbeam
//! issue #1178), so this module never calls it: iteration seeks with `lower_bound` and
//! walks with `Entry::next`. `tests/memtable_no_leak.rs` checks that scans free memory.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use crossbeam_skiplist::SkipMap;
use smallvec::SmallVec;

use super::codec::{Entry, Value};
use super::merge::EntryIter;
use crate::Result;

/// Keys up to this many bytes are stored inside the skip-list node rather than in a
/// separate allocation, so comparing against them during a search touches one cache line
/// fewer per node visited.
const INLINE_KEY: usize = 24;

/// A user key, inline when short.
pub(crate) type UserKey = SmallVec<[u8; INLINE_KEY]>;

/// A user key and a sequence number, ordered by key ascending then sequence descending,
/// so the newest version of a key comes first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InternalKey {
    pub user: UserKey,
    pub seq: u64,
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_user_keys(&self.user, &other.user).then(other.seq.cmp(&self.seq))
    }
}

/// Byte-wise key order (the same as `<[u8]>::cmp`), comparing eight bytes at a time as
/// big-endian integers: most comparisons in a skip-list search are decided in the first
/// word or two, without a call to `memcmp`.
#[inline]
fn compare_user_keys(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a, mut b) = (a, b);
    while let (Some((wa, ra)), Some((wb, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        let (x, y) = (u64::from_be_bytes(*wa), u64::from_be_bytes(*wb));
        if x != y {
            return x.cmp(&y);
        }
        a = ra;
        b = rb;
    }
    a.cmp(b)
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Fixed per-entry overhead counted towards the memtable size (skip-list node, tower).
const ENTRY_OVERHEAD: usize = 64;

/// A memtable and the WAL file that holds its writes.
pub(crate) struct MemTable {
    map: SkipMap<InternalKey, Value>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    /// Id of the WAL that makes this memtable's contents durable.
    pub wal_id: u64,
}

impl MemTable {
    pub fn new(wal_id: u64) -> Self {
        MemTable {
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            wal_id,
        }
    }

    pub fn insert(&self, key: Vec<u8>, seq: u64, value: Value) {
        let size = key.len()
            + ENTRY_OVERHEAD
            + match &value {
                Value::Put(v) => v.len(),
                Value::Tombstone { .. } => 8,
            };
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::Relaxed);
        let user = if key.len() <= INLINE_KEY {
            UserKey::from_slice(&key)
        } else {
            UserKey::from_vec(key)
        };
        self.map.insert(InternalKey { user, seq }, value);
    }

    /// The newest version of `key` with a sequence number <= `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: u64) -> Option<(u64, Value)> {
        let probe = InternalKey {
            user: UserKey::from_slice(key),
            seq: snapshot,
        };
        let e = self.map.lower_bound(Bound::Included(&probe))?;
        (e.key().user.as_slice() == key).then(|| (e.key().seq, e.value().clone()))
    }

    /// Approximate memory used by the entries.
    pub fn approx_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Relaxed)
    }

    /// Up to `max` entries at or after `from`, walking node to node.
    fn chunk(&self, from: Bound<&InternalKey>, max: usize, out: &mut VecDeque<Entry>) {
        let mut cur = self.map.lower_bound(from);
        while let Some(e) = cur {
            if out.len() >= max {
                break;
            }
            out.push_back(Entry {
                key: e.key().user.to_vec(),
                seq: e.key().seq,
                value: e.value().clone(),
            });
            cur = e.next();
        }
    }
}

/// Test hook behind [`crate::test_hooks`]: fills a memtable with `n` entries, iterates
/// it completely, overwrites every entry in place (same key and sequence number, which
/// unlinks the visited node), and drops it. A node whose reference count an iteration
/// leaked is never freed; the leak test counts heap bytes around this call.
pub(crate) fn scan_then_overwrite(n: usize) {
    let m = Arc::new(MemTable::new(0));
    for i in 0..n {
        m.insert(
            format!("key{i:08}").into_bytes(),
            i as u64 + 1,
            Value::Put(vec![1; 100]),
        );
    }
    let mut it = MemIter::new(m.clone(), Bound::Unbounded);
    let mut seen = 0;
    while let Ok(Some(_)) = it.next_entry() {
        seen += 1;
    }
    assert_eq!(seen, n);
    drop(it);
    for i in 0..n {
        m.insert(
            format!("key{i:08}").into_bytes(),
            i as u64 + 1,
            Value::Put(vec![2; 100]),
        );
    }
}

/// Iterates a memtable from a start key in chunks, so that it holds no borrow of the
/// skip list between calls and can own its `Arc<MemTable>`.
pub(crate) struct MemIter {
    mem: Arc<MemTable>,
    buf: VecDeque<Entry>,
    resume: Option<InternalKey>,
    start: Bound<Vec<u8>>,
    started: bool,
    done: bool,
    /// Entries copied by the next refill: small at first, since a short scan (seek + a
    /// few next) would otherwise copy many entries, keys and values, it never returns.
    chunk: usize,
}

/// Entries copied by the first refill, and the most copied by any refill.
const FIRST_CHUNK: usize = 8;
const CHUNK: usize = 128;

impl MemIter {
    pub fn new(mem: Arc<MemTable>, start: Bound<Vec<u8>>) -> Self {
        MemIter {
            mem,
            buf: VecDeque::new(),
            resume: None,
            start,
            started: false,
            done: false,
            chunk: FIRST_CHUNK,
        }
    }

    fn refill(&mut self) {
        let chunk = self.chunk;
        self.chunk = (chunk * 2).min(CHUNK);
        if !self.started {
            self.started = true;
            match &self.start {
                Bound::Unbounded => self.mem.chunk(Bound::Unbounded, chunk, &mut self.buf),
                Bound::Included(k) => {
                    let probe = InternalKey {
                        user: UserKey::from_slice(k),
                        seq: u64::MAX,
                    };
                    self.mem
                        .chunk(Bound::Included(&probe), chunk, &mut self.buf)
                }
                Bound::Excluded(k) => {
                    let probe = InternalKey {
                        user: UserKey::from_slice(k),
                        seq: 0,
                    };
                    self.mem
                        .chunk(Bound::Excluded(&probe), chunk, &mut self.buf)
                }
            }
        } else if let Some(last) = self.resume.take() {
            self.mem.chunk(Bound::Excluded(&last), chunk, &mut self.buf);
        }
        match self.buf.back() {
            Some(e) => {
                self.resume = Some(InternalKey {
                    user: UserKey::from_slice(&e.key),
                    seq: e.seq,
                })
            }
            None => self.done = true,
        }
    }
}

impl EntryIter for MemIter {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.buf.is_empty() && !self.done {
            self.refill();
        }
        Ok(self.buf.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &[u8]) -> Value {
        Value::Put(v.to_vec())
    }

    #[test]
    fn get_respects_the_snapshot() {
        let m = MemTable::new(1);
        m.insert(b"k".to_vec(), 1, put(b"a"));
        m.insert(b"k".to_vec(), 5, put(b"b"));
        m.insert(b"j".to_vec(), 3, put(b"x"));
        assert_eq!(m.get(b"k", 10), Some((5, put(b"b"))));
        assert_eq!(m.get(b"k", 4), Some((1, put(b"a"))));
        assert_eq!(m.get(b"k", 0), None);
        assert_eq!(m.get(b"kk", 10), None);
    }

    #[test]
    fn inline_and_heap_keys_order_and_compare_alike() {
        let m = Arc::new(MemTable::new(1));
        let long = |c: u8| vec![c; INLINE_KEY + 9];
        m.insert(long(b'b'), 1, put(b"long-b"));
        m.insert(b"b".to_vec(), 2, put(b"short-b"));
        m.insert(vec![b'b'; INLINE_KEY], 3, put(b"exactly-inline"));
        m.insert(long(b'a'), 4, put(b"long-a"));
        m.insert(long(b'b'), 5, put(b"long-b-new"));
        assert_eq!(m.get(&long(b'b'), 10), Some((5, put(b"long-b-new"))));
        assert_eq!(m.get(&long(b'b'), 4), Some((1, put(b"long-b"))));
        assert_eq!(
            m.get(&[b'b'; INLINE_KEY], 10),
            Some((3, put(b"exactly-inline")))
        );
        assert_eq!(m.get(b"b", 10), Some((2, put(b"short-b"))));
        assert_eq!(m.get(&long(b'c'), 10), None);
        let mut it = MemIter::new(m, Bound::Unbounded);
        let mut got = Vec::new();
        while let Some(e) = it.next_entry().unwrap() {
            got.push((e.key, e.seq));
        }
        let mut want = vec![
            (long(b'a'), 4),
            (b"b".to_vec(), 2),
            (vec![b'b'; INLINE_KEY], 3),
            (long(b'b'), 5),
            (long(b'b'), 1),
        ];
        want.sort_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
        assert_eq!(got, want);
    }

    proptest::proptest! {
        /// The word-at-a-time comparison orders keys exactly as byte slices do, for
        /// every length and for keys that share long prefixes.
        #[test]
        fn word_compare_matches_slice_order(
            prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
        ) {
            let a = [prefix.as_slice(), &a].concat();
            let b = [prefix.as_slice(), &b].concat();
            proptest::prop_assert_eq!(compare_user_keys(&a, &b), a.cmp(&b));
            proptest::prop_assert_eq!(compare_user_keys(&b, &a), b.cmp(&a));
            proptest::prop_assert_eq!(compare_user_keys(&a, &a), Ordering::Equal);
            proptest::prop_assert_eq!(compare_user_keys(&a, &prefix), a.as_slice().cmp(&prefix));
        }
    }

    #[test]
    fn iteration_is_ordered_and_honours_start_bounds() {
        let m = Arc::new(MemTable::new(1));
        for i in 0..300u32 {
            m.insert(format!("{i:04}").into_bytes(), u64::from(i) + 1, put(b"v"));
        }
        m.insert(b"0100".to_vec(), 1000, put(b"new"));
        let mut it = MemIter::new(m.clone(), Bound::Excluded(b"0099".to_vec()));
        let first = it.next_entry().unwrap().unwrap();
        assert_eq!((first.key.as_slice(), first.seq), (&b"0100"[..], 1000));
        let mut n = 1;
        let mut prev = InternalKey {
            user: first.key.into(),
            seq: first.seq,
        };
        while let Some(e) = it.next_entry().unwrap() {
            let k = InternalKey {
                user: e.key.into(),
                seq: e.seq,
            };
            assert!(k > prev);
            prev = k;
            n += 1;
        }
        assert_eq!(n, 201);
    }
}
