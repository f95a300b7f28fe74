//! Merging of sorted entry streams (memtables and SSTables) into one stream ordered by
//! key ascending, then sequence number descending.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;

use super::codec::Entry;
use crate::Result;

/// A stream of entries in (key ascending, sequence descending) order.
pub(crate) trait EntryIter: Send {
    /// The next entry, or `None` at the end.
    fn next_entry(&mut self) -> Result<Option<Entry>>;
}

struct HeapItem {
    entry: Entry,
    source: usize,
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.entry
            .key
            .cmp(&other.entry.key)
            .then(other.entry.seq.cmp(&self.entry.seq))
            .then(self.source.cmp(&other.source))
    }
}

/// Merges any number of sorted streams.
pub(crate) struct MergeIter {
    sources: Vec<Box<dyn EntryIter>>,
    heap: BinaryHeap<Reverse<HeapItem>>,
    primed: bool,
}

impl MergeIter {
    pub fn new(sources: Vec<Box<dyn EntryIter>>) -> Self {
        MergeIter {
            sources,
            heap: BinaryHeap::new(),
            primed: false,
        }
    }
}

impl EntryIter for MergeIter {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if !self.primed {
            self.primed = true;
            for (i, s) in self.sources.iter_mut().enumerate() {
                if let Some(entry) = s.next_entry()? {
                    self.heap.push(Reverse(HeapItem { entry, source: i }));
                }
            }
        }
        // Replace the smallest entry in place with the next one of its source: one
        // sift down (usually a comparison or two, since consecutive entries often come
        // from the same source) instead of a pop and a push.
        let Some(mut top) = self.heap.peek_mut() else {
            return Ok(None);
        };
        match self.sources[top.0.source].next_entry()? {
            Some(entry) => Ok(Some(std::mem::replace(&mut top.0.entry, entry))),
            None => Ok(Some(PeekMut::pop(top).0.entry)),
        }
    }
}

/// Keeps only the newest version of each key with a sequence number <= `snapshot`.
pub(crate) struct NewestVersions<I> {
    inner: I,
    snapshot: u64,
    /// Key of the last entry returned (reused buffer); meaningful when `has_last`.
    last_key: Vec<u8>,
    has_last: bool,
}

impl<I: EntryIter> NewestVersions<I> {
    pub fn new(inner: I, snapshot: u64) -> Self {
        NewestVersions {
            inner,
            snapshot,
            last_key: Vec::new(),
            has_last: false,
        }
    }
}

impl<I: EntryIter> EntryIter for NewestVersions<I> {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        while let Some(e) = self.inner.next_entry()? {
            if e.seq > self.snapshot || (self.has_last && self.last_key == e.key) {
                continue;
            }
            self.last_key.clear();
            self.last_key.extend_from_slice(&e.key);
            self.has_last = true;
            return Ok(Some(e));
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lsm::codec::Value;

    /// A stream over a vector, for tests.
    pub(crate) struct VecIter(pub std::vec::IntoIter<Entry>);
    impl EntryIter for VecIter {
        fn next_entry(&mut self) -> Result<Option<Entry>> {
            Ok(self.0.next())
        }
    }

    fn e(k: &str, seq: u64) -> Entry {
        Entry {
            key: k.as_bytes().to_vec(),
            seq,
            value: Value::Put(vec![seq as u8]),
        }
    }

    #[test]
    fn merge_orders_and_dedup_keeps_newest_visible() {
        let a = VecIter(vec![e("a", 5), e("c", 1)].into_iter());
        let b = VecIter(vec![e("a", 7), e("b", 2), e("c", 9)].into_iter());
        let m = MergeIter::new(vec![Box::new(a), Box::new(b)]);
        let mut d = NewestVersions::new(m, 8);
        let mut got = Vec::new();
        while let Some(x) = d.next_entry().unwrap() {
            got.push((String::from_utf8(x.key).unwrap(), x.seq));
        }
        assert_eq!(got, vec![("a".into(), 7), ("b".into(), 2), ("c".into(), 1)]);
    }
}
