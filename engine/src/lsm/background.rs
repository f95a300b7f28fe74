//! Background work: flushing frozen memtables to L0 and running compaction tasks, and
//! installing their results through the manifest.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::BlockCache;
use super::codec::{unix_now, Value};
use super::compaction::CompactionTask;
use super::manifest::{Edit, FileMeta};
use super::memtable::MemIter;
use super::merge::{EntryIter, MergeIter, NewestVersions};
use super::sstable::{table_path, Table, TableBuilder, TableSettings};
use super::wal::{self, wal_path};
use super::{bump, remove_file, table_settings, Inner, SuperVersion, SyncPolicy};
use crate::{Error, Result};

/// Writes every entry of `it` to table `id` and returns its metadata.
pub(crate) fn write_table(
    dir: &Path,
    id: u64,
    settings: TableSettings,
    mut it: impl EntryIter,
) -> Result<FileMeta> {
    let mut b = TableBuilder::create(dir, id, settings)?;
    while let Some(e) = it.next_entry()? {
        b.add(&e)?;
    }
    b.finish()
}

const IDLE_WAIT: Duration = Duration::from_millis(200);

/// The flush thread: writes frozen memtables to L0, oldest first, and runs the periodic
/// WAL fsync of `sync = "interval"`.
pub(crate) fn flush_loop(inner: Arc<Inner>) {
    let interval = Duration::from_millis(inner.opts.sync_interval_ms.max(1));
    let mut last_sync = Instant::now();
    loop {
        {
            let mut g = inner.bg.lock();
            loop {
                if g.shutdown {
                    return;
                }
                let due =
                    inner.opts.sync == SyncPolicy::Interval && last_sync.elapsed() >= interval;
                if due || (!inner.current().imms.is_empty() && inner.poisoned.lock().is_none()) {
                    break;
                }
                let wait = if inner.opts.sync == SyncPolicy::Interval {
                    interval
                } else {
                    IDLE_WAIT
                };
                inner.bg_cv.wait_for(&mut g, wait);
            }
        }
        if inner.opts.sync == SyncPolicy::Interval && last_sync.elapsed() >= interval {
            last_sync = Instant::now();
            if let Err(e) = inner.wal.lock().sync() {
                inner.poison(&e);
            }
        }
        if !inner.current().imms.is_empty() {
            if let Err(e) = inner.flush_oldest() {
                inner.poison(&e);
            }
        }
    }
}

/// The compaction thread: asks the strategy for tasks and runs them until it has none.
pub(crate) fn compaction_loop(inner: Arc<Inner>) {
    loop {
        {
            let mut g = inner.bg.lock();
            while !g.compaction_wanted && !g.shutdown {
                inner.bg_cv.wait_for(&mut g, IDLE_WAIT);
            }
            if g.shutdown {
                return;
            }
            g.compaction_wanted = false;
            g.compacting = true;
        }
        loop {
            if inner.bg.lock().shutdown || inner.poisoned.lock().is_some() {
                break;
            }
            let version = inner.current().version.clone();
            let Some(task) = inner.policy.pick(&version) else {
                break;
            };
            if let Err(e) = inner.run_compaction(&task) {
                inner.poison(&e);
                break;
            }
            inner.notify_bg();
        }
        let mut g = inner.bg.lock();
        g.compacting = false;
        inner.bg_cv.notify_all();
    }
}

impl Inner {
    /// Records `edit` in the manifest, then makes it the current version, with
    /// `new_tables` opened for the files it adds. `pop_imm` also retires the oldest
    /// frozen memtable (a flush).
    fn install(&self, edit: &Edit, new_tables: Vec<Arc<Table>>, pop_imm: bool) -> Result<()> {
        let mut manifest = self.manifest.lock();
        manifest.append(edit)?;
        let mut sv = self.sv.write();
        let mut tables: HashMap<u64, Arc<Table>> = (*sv.tables).clone();
        let mut removed = HashMap::new();
        for (_, id) in &edit.deleted {
            if let Some(t) = tables.remove(id) {
                removed.insert(*id, t);
            }
        }
        for t in new_tables {
            tables.insert(t.id, t);
        }
        for (_, meta) in &edit.added {
            if let Some(t) = removed.remove(&meta.id) {
                tables.insert(meta.id, t);
            }
        }
        let imms = if pop_imm {
            sv.imms[1..].to_vec()
        } else {
            sv.imms.clone()
        };
        *sv = Arc::new(SuperVersion {
            mem: sv.mem.clone(),
            imms,
            version: Arc::new(sv.version.apply(edit)),
            tables: Arc::new(tables),
        });
        Ok(())
    }

    /// Writes the oldest frozen memtable to an L0 table and retires its WAL.
    pub(crate) fn flush_oldest(&self) -> Result<()> {
        let (imm, next_log) = {
            let sv = self.current();
            let Some(imm) = sv.imms.first().cloned() else {
                return Ok(());
            };
            let next_log = sv.imms.get(1).map_or(sv.mem.wal_id, |m| m.wal_id);
            (imm, next_log)
        };
        let mut edit = Edit {
            log_number: Some(next_log),
            last_seq: Some(imm.max_seq()),
            ..Edit::default()
        };
        let mut new_tables = Vec::new();
        if !imm.is_empty() {
            let id = self.next_file.fetch_add(1, Ordering::Relaxed);
            let it = NewestVersions::new(MemIter::new(imm.clone(), Bound::Unbounded), u64::MAX);
            let meta = write_table(&self.dir, id, table_settings(&self.opts, 0), it)?;
            wal::sync_dir(&self.dir)?;
            new_tables.push(Arc::new(Table::open(&self.dir, id)?));
            bump(&self.stats.flushed_bytes, meta.size);
            edit.added.push((0, meta));
        }
        edit.next_file = Some(self.next_file.load(Ordering::Relaxed));
        self.install(&edit, new_tables, true)?;
        remove_file(&wal_path(&self.dir, imm.wal_id));
        self.request_compaction();
        Ok(())
    }

    /// Executes one compaction task.
    pub(crate) fn run_compaction(&self, task: &CompactionTask) -> Result<()> {
        let sv = self.current();
        let find = |level: usize, id: u64| -> Result<Arc<FileMeta>> {
            sv.version
                .levels
                .get(level)
                .and_then(|l| l.iter().find(|f| f.id == id))
                .cloned()
                .ok_or_else(|| {
                    Error::Other(format!(
                        "internal error: compaction input {id} not in L{level}"
                    ))
                })
        };
        if task.trivial_move {
            let (level, id) = task.inputs[0];
            let meta = find(level, id)?;
            let edit = Edit {
                deleted: vec![(level, id)],
                added: vec![(task.output_level, (*meta).clone())],
                ..Edit::default()
            };
            self.install(&edit, Vec::new(), false)?;
            bump(&self.stats.trivial_moves, 1);
            return Ok(());
        }
        let input_ids: HashSet<u64> = task.inputs.iter().map(|(_, id)| *id).collect();
        let uncached = Arc::new(BlockCache::new(0));
        let mut sources: Vec<Box<dyn EntryIter>> = Vec::new();
        for (level, id) in &task.inputs {
            find(*level, *id)?;
            let t = sv
                .tables
                .get(id)
                .ok_or_else(|| Error::Other(format!("internal error: table {id} is not open")))?;
            sources.push(Box::new(t.iter(Bound::Unbounded, uncached.clone())));
        }
        // A tombstone may go only when no file outside the inputs can hold an older
        // version of its key, and only once it is older than the TTL.
        let others: Vec<Arc<FileMeta>> = sv
            .version
            .files()
            .filter(|(_, f)| !input_ids.contains(&f.id))
            .map(|(_, f)| f.clone())
            .collect();
        let now = unix_now();
        let ttl = self.opts.tombstone_ttl_secs;
        let mut it = NewestVersions::new(MergeIter::new(sources), u64::MAX);
        let mut outputs: Vec<FileMeta> = Vec::new();
        let mut builder: Option<TableBuilder> = None;
        let mut dropped = 0u64;
        let mut created = Vec::new();
        let mut merged = 0u64;
        while let Some(e) = it.next_entry()? {
            merged += 1;
            if merged.is_multiple_of(4096) && self.bg.lock().shutdown {
                // Closing: give up the merge; its inputs stay live, its outputs go.
                drop(builder.take());
                for id in &created {
                    remove_file(&table_path(&self.dir, *id));
                }
                tracing::info!(
                    inputs = task.inputs.len(),
                    "compaction abandoned: engine closing"
                );
                return Ok(());
            }
            if let Value::Tombstone { deleted_at } = e.value {
                if now.saturating_sub(deleted_at) >= ttl && !others.iter().any(|f| f.covers(&e.key))
                {
                    dropped += 1;
                    continue;
                }
            }
            let b = match builder.as_mut() {
                Some(b) => b,
                None => {
                    let id = self.next_file.fetch_add(1, Ordering::Relaxed);
                    created.push(id);
                    builder.insert(TableBuilder::create(
                        &self.dir,
                        id,
                        table_settings(&self.opts, task.output_level),
                    )?)
                }
            };
            b.add(&e)?;
            if task.split_output && b.estimated_size() >= self.opts.target_file_size_bytes {
                if let Some(b) = builder.take() {
                    outputs.push(b.finish()?);
                }
            }
        }
        if let Some(b) = builder.take() {
            if !b.is_empty() {
                outputs.push(b.finish()?);
            }
        }
        wal::sync_dir(&self.dir)?;
        let new_tables = outputs
            .iter()
            .map(|m| Table::open(&self.dir, m.id).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let edit = Edit {
            added: outputs
                .iter()
                .map(|m| (task.output_level, m.clone()))
                .collect(),
            deleted: task.inputs.clone(),
            next_file: Some(self.next_file.load(Ordering::Relaxed)),
            ..Edit::default()
        };
        self.install(&edit, new_tables, false)?;
        for id in &input_ids {
            remove_file(&table_path(&self.dir, *id));
        }
        bump(&self.stats.compactions, 1);
        bump(
            &self.stats.compacted_bytes,
            outputs.iter().map(|m| m.size).sum(),
        );
        bump(&self.stats.tombstones_dropped, dropped);
        tracing::debug!(
            inputs = task.inputs.len(),
            outputs = outputs.len(),
            level = task.output_level,
            "compaction done"
        );
        Ok(())
    }

    /// Waits until no frozen memtable is left.
    pub(crate) fn wait_for_flushes(&self) -> Result<()> {
        let mut g = self.bg.lock();
        loop {
            self.check_writable()?;
            if self.current().imms.is_empty() {
                return Ok(());
            }
            self.bg_cv.notify_all();
            self.bg_cv.wait_for(&mut g, Duration::from_millis(50));
        }
    }

    /// Waits until the strategy has no task and no compaction runs.
    pub(crate) fn wait_for_compactions(&self) -> Result<()> {
        let mut g = self.bg.lock();
        loop {
            self.check_writable()?;
            if !g.compacting
                && !g.compaction_wanted
                && self.policy.pick(&self.current().version).is_none()
            {
                return Ok(());
            }
            g.compaction_wanted = true;
            self.bg_cv.notify_all();
            self.bg_cv.wait_for(&mut g, Duration::from_millis(50));
        }
    }
}
