//! The read path: point lookups and range scans over a consistent snapshot.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cache::BlockCache;
use super::codec::{Entry, Value};
use super::manifest::FileMeta;
use super::memtable::MemIter;
use super::merge::{EntryIter, MergeIter, NewestVersions};
use super::sstable::{Table, TableIter};
use super::{bump, Inner, SuperVersion};
use crate::{Error, KeyRange, Result};

fn live(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Put(v) => Some(v),
        Value::Tombstone { .. } => None,
    }
}

/// True when `f`'s key range intersects `range`.
fn overlaps(range: &KeyRange, f: &FileMeta) -> bool {
    let after_start = match &range.start {
        Bound::Included(s) => f.largest >= *s,
        Bound::Excluded(s) => f.largest > *s,
        Bound::Unbounded => true,
    };
    after_start && range.below_end(&f.smallest)
}

impl SuperVersion {
    fn table(&self, id: u64) -> Result<&Arc<Table>> {
        self.tables
            .get(&id)
            .ok_or_else(|| Error::Other(format!("internal error: table {id} is not open")))
    }
}

impl Inner {
    /// The snapshot a read works on: the sequence number is read under the same lock
    /// that guards the table set, so every table in it holds only visible data.
    fn snapshot(&self) -> (u64, Arc<SuperVersion>) {
        let g = self.sv.read();
        (self.visible_seq.load(Ordering::Acquire), g.clone())
    }

    fn probe(&self, sv: &SuperVersion, f: &FileMeta, key: &[u8]) -> Result<Option<(u64, Value)>> {
        let t = sv.table(f.id)?;
        if !t.may_contain(key) {
            bump(&self.stats.bloom_negatives, 1);
            return Ok(None);
        }
        bump(&self.stats.table_probes, 1);
        t.get(key, &self.cache)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        bump(&self.stats.reads, 1);
        let (seq, sv) = self.snapshot();
        for m in std::iter::once(&sv.mem).chain(sv.imms.iter().rev()) {
            if let Some((_, v)) = m.get(key, seq) {
                return Ok(live(v));
            }
        }
        // L0 files overlap: the newest version among them wins. They are ordered by
        // largest sequence number, so the search stops once no file can beat the best.
        let mut best: Option<(u64, Value)> = None;
        for f in sv.version.levels.first().into_iter().flatten() {
            if best.as_ref().is_some_and(|b| f.max_seq < b.0) {
                break;
            }
            if !f.covers(key) {
                continue;
            }
            if let Some(e) = self.probe(&sv, f, key)? {
                if e.0 <= seq && best.as_ref().is_none_or(|b| e.0 > b.0) {
                    best = Some(e);
                }
            }
        }
        if let Some((_, v)) = best {
            return Ok(live(v));
        }
        for level in sv.version.levels.iter().skip(1) {
            let i = level.partition_point(|f| f.largest.as_slice() < key);
            if let Some(f) = level.get(i).filter(|f| f.smallest.as_slice() <= key) {
                if let Some((_, v)) = self.probe(&sv, f, key)? {
                    return Ok(live(v));
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        bump(&self.stats.reads, 1);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (seq, sv) = self.snapshot();
        let mut sources: Vec<Box<dyn EntryIter>> = Vec::new();
        for m in std::iter::once(&sv.mem).chain(sv.imms.iter()) {
            if !m.is_empty() {
                sources.push(Box::new(MemIter::new(m.clone(), range.start.clone())));
            }
        }
        for f in sv.version.levels.first().into_iter().flatten() {
            if overlaps(range, f) {
                sources.push(Box::new(
                    sv.table(f.id)?
                        .iter(range.start.clone(), self.cache.clone()),
                ));
            }
        }
        for level in 1..sv.version.levels.len() {
            if let Some(it) = LevelIter::new(&sv, level, range, &self.cache) {
                sources.push(Box::new(it));
            }
        }
        let mut it = NewestVersions::new(MergeIter::new(sources), seq);
        let mut out = Vec::with_capacity(limit.min(1024));
        while let Some(e) = it.next_entry()? {
            if !range.below_end(&e.key) {
                break;
            }
            if let Value::Put(v) = e.value {
                out.push((e.key, v));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Iterates the non-overlapping, key-ordered tables of one level from a start key,
/// opening each table only when the previous one is exhausted and stopping at the first
/// table that begins past the range's end: a scan seeks into one table per level
/// rather than walking the level.
struct LevelIter {
    sv: Arc<SuperVersion>,
    level: usize,
    /// Index in the level of the next table to open.
    next: usize,
    current: Option<TableIter>,
    /// The scan's start bound, used to seek in the first table only.
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    cache: Arc<BlockCache>,
}

impl LevelIter {
    /// An iterator over `level` of `sv` from `range`'s start, or `None` when no table of
    /// the level overlaps `range`.
    fn new(
        sv: &Arc<SuperVersion>,
        level: usize,
        range: &KeyRange,
        cache: &Arc<BlockCache>,
    ) -> Option<LevelIter> {
        let files = sv.version.levels.get(level)?;
        let first = match &range.start {
            Bound::Included(s) => files.partition_point(|f| f.largest < *s),
            Bound::Excluded(s) => files.partition_point(|f| f.largest <= *s),
            Bound::Unbounded => 0,
        };
        let f = files.get(first)?;
        if !range.below_end(&f.smallest) {
            return None;
        }
        Some(LevelIter {
            sv: sv.clone(),
            level,
            next: first,
            current: None,
            start: range.start.clone(),
            end: range.end.clone(),
            cache: cache.clone(),
        })
    }
}

impl EntryIter for LevelIter {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(it) = self.current.as_mut() {
                if let Some(e) = it.next_entry()? {
                    return Ok(Some(e));
                }
                self.current = None;
            }
            let files = self.sv.version.levels.get(self.level);
            let Some(f) = files.and_then(|l| l.get(self.next)) else {
                return Ok(None);
            };
            let past_end = match &self.end {
                Bound::Included(e) => f.smallest > *e,
                Bound::Excluded(e) => f.smallest >= *e,
                Bound::Unbounded => false,
            };
            if past_end {
                return Ok(None);
            }
            self.next += 1;
            let start = std::mem::replace(&mut self.start, Bound::Unbounded);
            self.current = Some(self.sv.table(f.id)?.iter(start, self.cache.clone()));
        }
    }
}
