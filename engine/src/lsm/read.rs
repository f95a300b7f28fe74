//! The read path: point lookups and range scans over a consistent snapshot.

use std::collections::VecDeque;
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

    fn probe(&self, sv: &SuperVersion, f: &FileMeta, key: &[u8]) -> Result<Option<Entry>> {
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
        let mut best: Option<Entry> = None;
        for f in sv.version.levels.first().into_iter().flatten() {
            if best.as_ref().is_some_and(|b| f.max_seq < b.seq) {
                break;
            }
            if !f.covers(key) {
                continue;
            }
            if let Some(e) = self.probe(&sv, f, key)? {
                if e.seq <= seq && best.as_ref().is_none_or(|b| e.seq > b.seq) {
                    best = Some(e);
                }
            }
        }
        if let Some(e) = best {
            return Ok(live(e.value));
        }
        for level in sv.version.levels.iter().skip(1) {
            let i = level.partition_point(|f| f.largest.as_slice() < key);
            if let Some(f) = level.get(i).filter(|f| f.smallest.as_slice() <= key) {
                if let Some(e) = self.probe(&sv, f, key)? {
                    return Ok(live(e.value));
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
            sources.push(Box::new(MemIter::new(m.clone(), range.start.clone())));
        }
        for (i, level) in sv.version.levels.iter().enumerate() {
            let files: Vec<&Arc<FileMeta>> = level.iter().filter(|f| overlaps(range, f)).collect();
            if i == 0 {
                for f in files {
                    sources.push(Box::new(
                        sv.table(f.id)?
                            .iter(range.start.clone(), self.cache.clone()),
                    ));
                }
            } else if !files.is_empty() {
                let tables = files
                    .iter()
                    .map(|f| sv.table(f.id).cloned())
                    .collect::<Result<VecDeque<_>>>()?;
                sources.push(Box::new(LevelIter {
                    tables,
                    current: None,
                    start: range.start.clone(),
                    cache: self.cache.clone(),
                }));
            }
        }
        let mut it = NewestVersions::new(MergeIter::new(sources), seq);
        let mut out = Vec::new();
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

/// Iterates the non-overlapping, key-ordered tables of one level, opening each lazily.
struct LevelIter {
    tables: VecDeque<Arc<Table>>,
    current: Option<TableIter>,
    start: Bound<Vec<u8>>,
    cache: Arc<BlockCache>,
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
            let Some(t) = self.tables.pop_front() else {
                return Ok(None);
            };
            self.current = Some(t.iter(self.start.clone(), self.cache.clone()));
        }
    }
}
