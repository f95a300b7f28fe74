//! The default storage engine: a log-structured merge tree.
//!
//! Writes go to a write-ahead log ([`wal`]) and a memtable ([`memtable`]); full memtables
//! are flushed by a background thread to immutable SSTables ([`sstable`]) in L0; a
//! background compaction thread merges tables as the configured strategy
//! ([`compaction`]) decides. The [`manifest`] records the live tables. Every write batch
//! gets consecutive sequence numbers; readers see the batches up to a sequence number
//! taken when they start, so gets and scans are snapshot-consistent while flushes and
//! compactions run.
//!
//! On-disk files of a data directory: `MANIFEST`, `NNNNNN.wal`, `NNNNNN.sst`. Only one
//! process may open a directory at a time (the node owns its data directory).

mod background;
mod cache;
mod codec;
mod compaction;
mod filter;
pub(crate) mod fuzz_hooks;
mod manifest;
mod memtable;
mod merge;
mod options;
mod read;
mod sstable;
mod wal;
mod write;

pub use options::{CompactionStrategy, LsmOptions, SyncPolicy};

pub(crate) use memtable::scan_then_overwrite as memtable_scan_then_overwrite;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::{EngineStats, Error, KeyRange, Result, StorageEngine, WriteBatch, WriteOp};
use cache::BlockCache;
use codec::{unix_now, Value};
use compaction::CompactionPolicy;
use manifest::{Edit, Manifest, ManifestState, Version};
use memtable::{MemIter, MemTable};
use merge::NewestVersions;
use sstable::{Table, TableSettings};
use wal::WalWriter;

/// The tables and memtables a reader sees, swapped as a whole under a lock.
pub(crate) struct SuperVersion {
    mem: Arc<MemTable>,
    /// Frozen memtables waiting for flush, oldest first.
    imms: Vec<Arc<MemTable>>,
    version: Arc<Version>,
    tables: Arc<HashMap<u64, Arc<Table>>>,
}

#[derive(Default)]
struct BgState {
    shutdown: bool,
    compaction_wanted: bool,
    compacting: bool,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    user_bytes: AtomicU64,
    wal_bytes: AtomicU64,
    flushed_bytes: AtomicU64,
    compacted_bytes: AtomicU64,
    compactions: AtomicU64,
    trivial_moves: AtomicU64,
    table_probes: AtomicU64,
    bloom_negatives: AtomicU64,
    tombstones_dropped: AtomicU64,
    write_stalls: AtomicU64,
    write_slowdowns: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// State shared by the engine handle and its background threads.
pub(crate) struct Inner {
    dir: PathBuf,
    opts: LsmOptions,
    policy: Box<dyn CompactionPolicy>,
    sv: RwLock<Arc<SuperVersion>>,
    /// Highest sequence number whose batch is wholly applied: what new readers see.
    visible_seq: AtomicU64,
    /// Highest sequence number assigned (only the commit leader changes it).
    last_seq: AtomicU64,
    next_file: AtomicU64,
    commit: Mutex<write::CommitQueue>,
    commit_cv: Condvar,
    wal: Mutex<WalWriter>,
    manifest: Mutex<Manifest>,
    bg: Mutex<BgState>,
    bg_cv: Condvar,
    cache: Arc<BlockCache>,
    poisoned: Mutex<Option<String>>,
    /// Set once `poisoned` holds a message, so the write path checks an atomic rather
    /// than taking the mutex.
    is_poisoned: AtomicBool,
    closed: AtomicBool,
    stats: Counters,
}

/// The LSM-tree storage engine: a write-ahead log and memtable, SSTables flushed and
/// compacted in the background, and a manifest of live tables. See
/// [`LsmOptions`] for its settings. Durability follows [`LsmOptions::sync`].
pub struct Lsm {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The directory's `LOCK` file, locked exclusively while the engine is open.
    lock: Mutex<Option<std::fs::File>>,
}

/// Takes the exclusive lock of `dir/LOCK` (as RocksDB and fjall do: two engines over
/// one directory would each delete the other's files as leftovers), or
/// [`Error::Locked`] when someone holds it. The lock lasts as long as the returned file
/// is open, and ends with the process, `kill -9` included.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

impl std::fmt::Debug for Lsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsm")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

enum FileKind {
    Wal,
    Table,
}

fn parse_file_name(name: &str) -> Option<(u64, FileKind)> {
    let (stem, ext) = name.split_once('.')?;
    let id = stem.parse().ok()?;
    match ext {
        "wal" => Some((id, FileKind::Wal)),
        "sst" => Some((id, FileKind::Table)),
        _ => None,
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove obsolete file");
        }
    }
}

impl Lsm {
    /// Opens (creating if needed) the engine in `dir`: validates `options`, recovers the
    /// manifest and replays the write-ahead logs (a torn tail is truncated with a
    /// warning; damage before valid records is [`Error::Corruption`]), deletes files the
    /// manifest does not reference, and starts the flush and compaction threads.
    pub fn open(dir: &Path, options: LsmOptions) -> Result<Lsm> {
        options.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let levels = options.max_levels;
        let mut state = manifest::load(dir, levels)?.unwrap_or(ManifestState {
            version: Version::empty(levels),
            log_number: 0,
            next_file: 1,
            last_seq: 0,
        });
        if state.version.levels.len() < levels {
            state.version.levels.resize(levels, Vec::new());
        }
        let live: HashSet<u64> = state.version.files().map(|(_, f)| f.id).collect();
        let mut wal_ids = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "MANIFEST.tmp" {
                remove_file(&entry.path());
                continue;
            }
            let Some((id, kind)) = parse_file_name(&name) else {
                continue;
            };
            state.next_file = state.next_file.max(id + 1);
            match kind {
                FileKind::Wal if id >= state.log_number => wal_ids.push(id),
                FileKind::Table if live.contains(&id) => {}
                _ => remove_file(&entry.path()),
            }
        }
        wal_ids.sort_unstable();
        let mut tables = HashMap::new();
        for (_, f) in state.version.files() {
            tables.insert(f.id, Arc::new(Table::open(dir, f.id)?));
        }
        // Replay the logs into one memtable and persist it as an L0 table.
        let recovered = Arc::new(MemTable::new(0));
        let mut last_seq = state.last_seq;
        let now = unix_now();
        for id in &wal_ids {
            for batch in wal::replay(&wal::wal_path(dir, *id))? {
                let mut seq = batch.base_seq;
                for op in batch.ops {
                    seq += 1;
                    match op {
                        WriteOp::Put { key, value } => {
                            recovered.insert(key, seq, Value::Put(value))
                        }
                        WriteOp::Delete { key } => {
                            recovered.insert(key, seq, Value::Tombstone { deleted_at: now })
                        }
                    }
                }
                last_seq = last_seq.max(seq);
            }
        }
        if !recovered.is_empty() {
            let id = state.next_file;
            state.next_file += 1;
            let it = NewestVersions::new(
                MemIter::new(recovered, std::ops::Bound::Unbounded),
                u64::MAX,
            );
            let meta = background::write_table(dir, id, table_settings(&options, 0), it)?;
            tables.insert(id, Arc::new(Table::open(dir, id)?));
            wal::sync_dir(dir)?;
            state.apply(&Edit {
                added: vec![(0, meta)],
                ..Edit::default()
            });
        }
        let wal_id = state.next_file;
        state.next_file += 1;
        state.log_number = wal_id;
        state.last_seq = last_seq;
        let manifest = Manifest::create(dir, &state)?;
        for id in wal_ids {
            remove_file(&wal::wal_path(dir, id));
        }
        let wal = WalWriter::create(dir, wal_id)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            policy: compaction::policy_for(&options),
            sv: RwLock::new(Arc::new(SuperVersion {
                mem: Arc::new(MemTable::new(wal_id)),
                imms: Vec::new(),
                version: Arc::new(state.version),
                tables: Arc::new(tables),
            })),
            visible_seq: AtomicU64::new(last_seq),
            last_seq: AtomicU64::new(last_seq),
            next_file: AtomicU64::new(state.next_file),
            commit: Mutex::new(write::CommitQueue::default()),
            commit_cv: Condvar::new(),
            wal: Mutex::new(wal),
            manifest: Mutex::new(manifest),
            bg: Mutex::new(BgState {
                compaction_wanted: true,
                ..BgState::default()
            }),
            bg_cv: Condvar::new(),
            cache: Arc::new(BlockCache::with_raw_blocks(
                options.block_cache_bytes,
                options.cache_raw_blocks,
            )),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats: Counters::default(),
            opts: options,
        });
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || f(inner))
                .map_err(|e| Error::io(dir, e))
        };
        let threads = vec![
            spawn("lsm-flush", background::flush_loop)?,
            spawn("lsm-compact", background::compaction_loop)?,
        ];
        Ok(Lsm {
            inner,
            threads: Mutex::new(threads),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &LsmOptions {
        &self.inner.opts
    }

    /// Freezes the active memtable and waits until every frozen memtable is written to
    /// an SSTable (for tests, benchmarks and operators; not needed for durability).
    pub fn flush_memtable(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.force_rotation()?;
        self.inner.wait_for_flushes()
    }

    /// Waits until the compaction strategy has nothing left to do (for tests and
    /// benchmarks).
    pub fn compact(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.wait_for_compactions()
    }
}

/// How a table written to `level` is built (see [`LsmOptions::compress_from_level`]).
fn table_settings(opts: &LsmOptions, level: usize) -> TableSettings {
    let raw = opts.compaction == CompactionStrategy::Leveled && level < opts.compress_from_level;
    let compressed = !raw && opts.compression_level != 0;
    TableSettings {
        block_size: if compressed {
            opts.block_size_bytes.min(opts.compressed_block_size_bytes) as usize
        } else {
            opts.block_size_bytes as usize
        },
        compression_level: if raw { 0 } else { opts.compression_level },
        bloom_fpr: opts.bloom_fpr,
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if !self.is_poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(msg) = self.poisoned.lock().as_ref() {
            return Err(Error::Poisoned(msg.clone()));
        }
        Ok(())
    }

    fn poison(&self, e: &Error) {
        tracing::error!(error = %e, "storage engine stops accepting writes after a background failure");
        self.poisoned.lock().get_or_insert_with(|| e.to_string());
        self.is_poisoned.store(true, Ordering::Release);
        self.notify_bg();
    }

    fn notify_bg(&self) {
        let _g = self.bg.lock();
        self.bg_cv.notify_all();
    }

    fn request_compaction(&self) {
        let mut g = self.bg.lock();
        g.compaction_wanted = true;
        self.bg_cv.notify_all();
    }

    fn current(&self) -> Arc<SuperVersion> {
        self.sv.read().clone()
    }

    fn stats(&self) -> EngineStats {
        let mut s = EngineStats::new("lsm");
        let sv = self.current();
        let c = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut total = 0u64;
        let mut deepest = 0u64;
        let mut largest_l0 = 0u64;
        for (i, l) in sv.version.levels.iter().enumerate() {
            let bytes: u64 = l.iter().map(|f| f.size).sum();
            s.set(format!("level.{i}.files"), l.len() as u64);
            s.set(format!("level.{i}.bytes"), bytes);
            total += bytes;
            if bytes > 0 && i > 0 {
                deepest = bytes;
            }
            if i == 0 {
                largest_l0 = l.iter().map(|f| f.size).max().unwrap_or(0);
            }
        }
        let base = if deepest > 0 { deepest } else { largest_l0 };
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (flushed, compacted) = (load(&c.flushed_bytes), load(&c.compacted_bytes));
        let mem_bytes: usize =
            sv.mem.approx_bytes() + sv.imms.iter().map(|m| m.approx_bytes()).sum::<usize>();
        s.set("reads", load(&c.reads))
            .set("writes", load(&c.writes))
            .set("bytes.user_written", load(&c.user_bytes))
            .set("bytes.wal_written", load(&c.wal_bytes))
            .set("bytes.flushed", flushed)
            .set("bytes.compacted", compacted)
            .set("bytes.sstables", total)
            .set("compactions", load(&c.compactions))
            .set("compactions.trivial_moves", load(&c.trivial_moves))
            .set("tombstones.dropped", load(&c.tombstones_dropped))
            .set("write_stalls", load(&c.write_stalls))
            .set("write_slowdowns", load(&c.write_slowdowns))
            .set("write_amplification", ratio(flushed + compacted, flushed))
            .set(
                "read_amplification",
                ratio(load(&c.table_probes), load(&c.reads)),
            )
            .set("space_amplification", ratio(total, base))
            .set("block_cache.hit_rate", self.cache.hit_rate())
            .set("block_cache.bytes", self.cache.bytes())
            .set("bloom.negatives", load(&c.bloom_negatives))
            .set(
                "bloom.bytes",
                sv.tables.values().map(|t| t.bloom_bytes).sum::<u64>(),
            )
            .set("table_probes", load(&c.table_probes))
            .set("memtable.bytes", mem_bytes as u64)
            .set("memtable.immutable", sv.imms.len() as u64)
            .set("sequence", self.visible_seq.load(Ordering::Relaxed))
            .set(
                "compaction.strategy",
                format!("{:?}", self.opts.compaction).to_lowercase(),
            );
        s
    }
}

impl StorageEngine for Lsm {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.check_open()?;
        self.inner.get(key)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.inner.write(batch)
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.check_open()?;
        self.inner.scan(range, limit)
    }

    fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.wal.lock().sync()
    }

    /// Names: `reads`, `writes` (operations), `bytes.user_written`, `bytes.wal_written`,
    /// `bytes.flushed`, `bytes.compacted`, `bytes.sstables`, `compactions`,
    /// `level.N.files`, `level.N.bytes`, `write_amplification` ((flushed + compacted) /
    /// flushed), `read_amplification` (tables probed past the Bloom filter per get),
    /// `space_amplification` (SSTable bytes / bytes of the deepest non-empty level),
    /// `block_cache.hit_rate`, `bloom.negatives` (tables skipped thanks to the filter),
    /// `table_probes`, `bloom.bytes`, `memtable.bytes`, and a few more.
    fn stats(&self) -> EngineStats {
        self.inner.stats()
    }

    fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = self.inner.wait_for_leader_then_sync();
        {
            let mut g = self.inner.bg.lock();
            g.shutdown = true;
            self.inner.bg_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                tracing::error!("an LSM background thread panicked");
            }
        }
        // Nothing touches the directory any more: another engine may open it.
        self.lock.lock().take();
        synced
    }
}

impl Drop for Lsm {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "closing the LSM engine on drop failed");
        }
    }
}
