//! The memory backend: every key and value in a `BTreeMap`, made durable by a write-ahead
//! log.
//!
//! # Durability
//!
//! Each [`WriteBatch`] becomes one log record, appended (and, with
//! [`MemoryOptions::sync`], fsynced) before the batch becomes visible, so a batch is in
//! the log whole or not at all. On [`MemoryEngine::open`] the log is replayed into the
//! map, then rewritten as a compact snapshot (written to a temporary file, fsynced, and
//! renamed over the log) so that the log does not grow forever across restarts.
//!
//! # Log format
//!
//! The log is `memory.wal` in the engine's directory, a sequence of records:
//!
//! ```text
//! record  = len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! payload = op_count: u32 LE | op*
//! op      = 0x01 | key_len: u32 LE | key | value_len: u32 LE | value     (put)
//!         | 0x02 | key_len: u32 LE | key                                 (delete)
//! ```
//!
//! Recovery stops at the first record that is incomplete or fails its checksum. If no
//! valid record follows it, it is a torn tail left by a crash during an append: the log is
//! truncated there and a warning is logged. If a valid record follows it, data in the
//! middle of the log is damaged and `open` fails with [`Error::Corruption`].
//!
//! A `write` that fails while appending poisons the engine: later writes fail with
//! [`Error::Poisoned`] until it is reopened. A batch whose `write` returned an error may or
//! may not be present after a restart (the append may have reached the disk before the
//! failure); a batch whose `write` returned `Ok` is always present.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use distkv_engine::{EngineStats, Error, KeyRange, Result, StorageEngine, WriteBatch, WriteOp};
use parking_lot::{Mutex, RwLock};

/// Name of the write-ahead log inside the engine's directory.
pub const LOG_FILE: &str = "memory.wal";
const SNAPSHOT_TMP_FILE: &str = "memory.wal.tmp";
const HEADER_LEN: usize = 8;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// Snapshot records are cut at about this many payload bytes.
const SNAPSHOT_RECORD_BYTES: usize = 1 << 20;

/// Options of the memory backend (`storage.memory` in the node's configuration).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryOptions {
    /// Fsync the log before each `write` returns (default `true`). With `false`, an
    /// acknowledged write survives a process crash but may be lost if the machine loses
    /// power before the operating system writes it back; `flush` always fsyncs.
    pub sync: bool,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions { sync: true }
    }
}

/// The open log file and what is needed to append to it.
struct Log {
    file: File,
    path: PathBuf,
    sync: bool,
    bytes: u64,
}

/// An in-memory ordered map, optionally backed by a write-ahead log. See the
/// [module docs](self) for the durability guarantees and the log format.
pub struct MemoryEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// `None` for an ephemeral engine, and after `close`. Held while a batch is logged and
    /// applied, so that the log order is the order in which batches become visible.
    log: Mutex<Option<Log>>,
    ephemeral: bool,
    closed: AtomicBool,
    /// Set when an append failed part-way: the log may end in a partial record, so no
    /// further write is accepted (recovery truncates the partial record on restart).
    poisoned: Mutex<Option<String>>,
    /// Total bytes of the stored keys and values, kept up to date under the map's lock.
    data_bytes: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl MemoryEngine {
    /// Opens (or creates) the durable memory engine in `dir`, replaying and compacting
    /// its log. Fails with [`Error::Corruption`] if the log is damaged before its end, and
    /// with [`Error::Io`] if the directory cannot be created or the log read or written.
    pub fn open(dir: &Path, options: MemoryOptions) -> Result<MemoryEngine> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOG_FILE);
        let map = match fs::read(&path) {
            Ok(bytes) => replay(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bytes = write_snapshot(dir, &map)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        tracing::debug!(dir = %dir.display(), keys = map.len(), log_bytes = bytes, "memory engine opened");
        let data_bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Ok(MemoryEngine {
            data_bytes: AtomicU64::new(data_bytes),
            map: RwLock::new(map),
            log: Mutex::new(Some(Log {
                file,
                path,
                sync: options.sync,
                bytes,
            })),
            ephemeral: false,
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// An engine with no files at all: its data is gone when it is dropped. For tests and
    /// for nodes that keep no state.
    pub fn ephemeral() -> MemoryEngine {
        MemoryEngine {
            data_bytes: AtomicU64::new(0),
            map: RwLock::new(BTreeMap::new()),
            log: Mutex::new(None),
            ephemeral: true,
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl StorageEngine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.map.read().get(key).cloned())
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.check_open()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut log = self.log.lock();
        // Checked again under the log lock: `close` takes the log out under this lock.
        self.check_open()?;
        if let Some(reason) = self.poisoned.lock().clone() {
            return Err(Error::Poisoned(reason));
        }
        if let Some(log) = log.as_mut() {
            let record = encode_record(batch.ops()).map_err(|detail| {
                Error::Other(format!(
                    "memory engine refused a batch: {detail}; split the value"
                ))
            })?;
            if let Err(e) = append(log, &record) {
                *self.poisoned.lock() = Some(e.to_string());
                return Err(e);
            }
        }
        let mut map = self.map.write();
        // Net change of the stored bytes; negative values wrap, which `fetch_add` undoes.
        let mut delta = 0u64;
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { key, value } => {
                    let (key_len, added) = (key.len() as u64, (key.len() + value.len()) as u64);
                    let removed = map
                        .insert(key, value)
                        .map_or(0, |old| key_len + old.len() as u64);
                    delta = delta.wrapping_add(added).wrapping_sub(removed);
                }
                WriteOp::Delete { key } => {
                    if let Some(old) = map.remove(&key) {
                        delta = delta.wrapping_sub((key.len() + old.len()) as u64);
                    }
                }
            }
        }
        self.data_bytes.fetch_add(delta, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_open()?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        if limit == 0 || range_is_empty(range) {
            return Ok(Vec::new());
        }
        let map = self.map.read();
        Ok(map
            .range::<[u8], _>(range.as_slices())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<()> {
        self.check_open()?;
        if let Some(log) = self.log.lock().as_mut() {
            log.file.sync_data().map_err(|e| Error::io(&log.path, e))?;
        }
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::new("memory");
        {
            let map = self.map.read();
            stats
                .set("keys", map.len() as u64)
                .set("bytes", self.data_bytes.load(Ordering::Relaxed));
        }
        stats
            .set("reads", self.reads.load(Ordering::Relaxed))
            .set("writes", self.writes.load(Ordering::Relaxed))
            .set(
                "durable",
                if self.ephemeral { "false" } else { "true" }.to_string(),
            );
        if let Some(log) = self.log.lock().as_ref() {
            stats.set("wal.bytes", log.bytes);
        }
        stats
    }

    fn close(&self) -> Result<()> {
        let mut log = self.log.lock();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(log) = log.take() {
            log.file.sync_all().map_err(|e| Error::io(&log.path, e))?;
        }
        Ok(())
    }
}

/// `BTreeMap::range` panics when start > end (or start == end with both excluded); such a
/// range simply holds no key.
fn range_is_empty(range: &KeyRange) -> bool {
    use std::ops::Bound::{Excluded, Included};
    match (&range.start, &range.end) {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) => s >= e,
        (Excluded(s), Excluded(e)) => s >= e,
        _ => false,
    }
}

fn append(log: &mut Log, record: &[u8]) -> Result<()> {
    log.file
        .write_all(record)
        .map_err(|e| Error::io(&log.path, e))?;
    if log.sync {
        log.file.sync_data().map_err(|e| Error::io(&log.path, e))?;
    }
    log.bytes += record.len() as u64;
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> std::result::Result<(), String> {
    let len = u32::try_from(len)
        .map_err(|_| format!("a key or value of {len} bytes exceeds the 4 GiB limit"))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Encodes `ops` as one log record (header and payload).
fn encode_record(ops: &[WriteOp]) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; HEADER_LEN];
    put_len(&mut out, ops.len())?;
    for op in ops {
        match op {
            WriteOp::Put { key, value } => {
                out.push(OP_PUT);
                put_len(&mut out, key.len())?;
                out.extend_from_slice(key);
                put_len(&mut out, value.len())?;
                out.extend_from_slice(value);
            }
            WriteOp::Delete { key } => {
                out.push(OP_DELETE);
                put_len(&mut out, key.len())?;
                out.extend_from_slice(key);
            }
        }
    }
    let payload_len = out.len() - HEADER_LEN;
    let len = u32::try_from(payload_len)
        .map_err(|_| format!("a batch of {payload_len} bytes exceeds the 4 GiB limit"))?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a record payload; `None` if it is malformed.
fn decode_payload(mut p: &[u8]) -> Option<Vec<WriteOp>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Some(head)
    }
    fn take_u32(p: &mut &[u8]) -> Option<usize> {
        let b = take(p, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let count = take_u32(&mut p)?;
    let mut ops = Vec::with_capacity(count.min(p.len()));
    for _ in 0..count {
        let tag = take(&mut p, 1)?[0];
        let key_len = take_u32(&mut p)?;
        let key = take(&mut p, key_len)?.to_vec();
        match tag {
            OP_PUT => {
                let value_len = take_u32(&mut p)?;
                let value = take(&mut p, value_len)?.to_vec();
                ops.push(WriteOp::Put { key, value });
            }
            OP_DELETE => ops.push(WriteOp::Delete { key }),
            _ => return None,
        }
    }
    p.is_empty().then_some(ops)
}

/// The record starting at `offset` of `log`, with its total length, if it is complete,
/// passes its checksum and decodes.
fn record_at(log: &[u8], offset: usize) -> Option<(Vec<WriteOp>, usize)> {
    let header = log.get(offset..offset.checked_add(HEADER_LEN)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = offset + HEADER_LEN;
    let payload = log.get(start..start.checked_add(len)?)?;
    // The structure check is cheap and fails within a few bytes on garbage, so searching
    // for the next valid record after a damaged one costs about one pass over the log.
    if !well_formed(payload) || crc32fast::hash(payload) != crc {
        return None;
    }
    decode_payload(payload).map(|ops| (ops, HEADER_LEN + len))
}

/// True when `p` parses as a payload, without copying anything.
fn well_formed(p: &[u8]) -> bool {
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Option<usize> {
        let b = p.get(*pos..*pos + 4)?;
        *pos += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(&mut pos) else {
        return false;
    };
    for _ in 0..count {
        let Some(&tag) = p.get(pos) else { return false };
        pos += 1;
        let fields = match tag {
            OP_PUT => 2,
            OP_DELETE => 1,
            _ => return false,
        };
        for _ in 0..fields {
            match u32_at(&mut pos) {
                Some(len) if len <= p.len() - pos => pos += len,
                _ => return false,
            }
        }
    }
    pos == p.len()
}

/// Replays the log bytes read from `path` into a map. Truncates a torn tail on disk.
fn replay(path: &Path, log: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut map = BTreeMap::new();
    let mut offset = 0usize;
    while offset < log.len() {
        let Some((ops, len)) = record_at(log, offset) else {
            // Damaged or incomplete record: a torn tail unless a valid record follows.
            if let Some(next) = (offset + 1..log.len()).find(|&o| record_at(log, o).is_some()) {
                return Err(Error::Corruption {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    detail: format!(
                        "log record fails its checksum or format check, yet a valid record follows at offset {next}"
                    ),
                });
            }
            tracing::warn!(
                path = %path.display(),
                offset,
                dropped_bytes = log.len() - offset,
                "truncating torn tail of the memory engine's log (a write interrupted by a crash)"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            file.set_len(offset as u64)
                .map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
            break;
        };
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    map.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        offset += len;
    }
    Ok(map)
}

/// Rewrites the log of `dir` as the puts of `map`, atomically (temporary file, fsync,
/// rename, fsync of the directory). Returns the new log's size.
fn write_snapshot(dir: &Path, map: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<u64> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let path = dir.join(LOG_FILE);
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut total = 0u64;
    let mut ops = Vec::new();
    let mut pending = 0usize;
    let mut entries = map.iter().peekable();
    while let Some((k, v)) = entries.next() {
        pending += k.len() + v.len();
        ops.push(WriteOp::Put {
            key: k.clone(),
            value: v.clone(),
        });
        if pending >= SNAPSHOT_RECORD_BYTES || entries.peek().is_none() {
            let record = encode_record(&ops).map_err(|detail| Error::Corruption {
                path: path.clone(),
                offset: 0,
                detail: format!("cannot re-encode the snapshot: {detail}"),
            })?;
            file.write_all(&record).map_err(|e| Error::io(&tmp, e))?;
            total += record.len() as u64;
            ops.clear();
            pending = 0;
        }
    }
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ops: &[(&[u8], Option<&[u8]>)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(k.to_vec(), v.to_vec()),
                None => b.delete(k.to_vec()),
            };
        }
        b
    }

    /// Opens `dir` with a log written record by record (not compacted), for damage tests.
    fn write_raw_log(dir: &Path, batches: &[WriteBatch]) -> Vec<u64> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for b in batches {
            offsets.push(bytes.len() as u64);
            bytes.extend(encode_record(b.ops()).unwrap());
        }
        fs::write(dir.join(LOG_FILE), &bytes).unwrap();
        offsets
    }

    #[test]
    fn round_trip_put_get_delete_scan() {
        let dir = tempfile::tempdir().unwrap();
        let e = MemoryEngine::open(dir.path(), MemoryOptions::default()).unwrap();
        e.write(batch(&[
            (b"b", Some(b"2")),
            (b"a", Some(b"1")),
            (b"c", Some(b"")),
        ]))
        .unwrap();
        e.write(batch(&[(b"b", None)])).unwrap();
        assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"b").unwrap(), None);
        assert_eq!(e.get(b"c").unwrap(), Some(Vec::new()));
        let all = e.scan(&KeyRange::all(), 10).unwrap();
        assert_eq!(
            all,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), Vec::new())]
        );
        assert_eq!(
            e.stats().get("keys"),
            Some(&distkv_engine::StatValue::U64(2))
        );
        assert_eq!(
            e.stats().get("bytes"),
            Some(&distkv_engine::StatValue::U64(3))
        );
        assert!(e
            .scan(&KeyRange::between(b"z".to_vec(), b"a".to_vec()), 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn reopen_keeps_data_and_compacts_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = MemoryEngine::open(dir.path(), MemoryOptions { sync: false }).unwrap();
            for i in 0..100u32 {
                e.write(batch(&[(b"k", Some(&i.to_be_bytes()))])).unwrap();
            }
            e.write(batch(&[
                (b"gone", Some(b"x")),
                (b"gone", None),
                (b"kept", Some(b"y")),
            ]))
            .unwrap();
            e.close().unwrap();
        }
        let grown = fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        let e = MemoryEngine::open(dir.path(), MemoryOptions::default()).unwrap();
        assert_eq!(e.get(b"k").unwrap(), Some(99u32.to_be_bytes().to_vec()));
        assert_eq!(e.get(b"gone").unwrap(), None);
        assert_eq!(e.get(b"kept").unwrap(), Some(b"y".to_vec()));
        assert_eq!(
            e.stats().get("bytes"),
            Some(&distkv_engine::StatValue::U64(10))
        );
        let compacted = fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(
            compacted < grown / 10,
            "log not compacted: {grown} -> {compacted} bytes"
        );
        assert!(!dir.path().join(SNAPSHOT_TMP_FILE).exists());
    }

    #[test]
    fn torn_tail_is_truncated_and_earlier_batches_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_raw_log(
            dir.path(),
            &[
                batch(&[(b"a", Some(b"1"))]),
                batch(&[(b"b", Some(b"2")), (b"c", Some(b"3"))]),
            ],
        );
        let path = dir.path().join(LOG_FILE);
        let full = fs::read(&path).unwrap();
        // Every cut inside the second record loses that whole batch and nothing else.
        let first_len = encode_record(batch(&[(b"a", Some(b"1"))]).ops())
            .unwrap()
            .len();
        for cut in first_len..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let e = MemoryEngine::open(dir.path(), MemoryOptions::default()).unwrap();
            assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()), "cut at {cut}");
            assert_eq!(
                e.get(b"b").unwrap(),
                None,
                "half a batch visible after cut at {cut}"
            );
            assert_eq!(
                e.get(b"c").unwrap(),
                None,
                "half a batch visible after cut at {cut}"
            );
            e.close().unwrap();
            // Restore the raw (uncompacted) log for the next cut.
            fs::write(&path, &full).unwrap();
        }
        // A zero-filled tail (extended file, data never written) is also a torn tail.
        let mut zeros = full.clone();
        zeros.extend([0u8; 64]);
        fs::write(&path, &zeros).unwrap();
        let e = MemoryEngine::open(dir.path(), MemoryOptions::default()).unwrap();
        assert_eq!(e.get(b"c").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_raw_log(
            dir.path(),
            &[
                batch(&[(b"a", Some(b"1"))]),
                batch(&[(b"bb", Some(b"22"))]),
                batch(&[(b"c", Some(b"3"))]),
            ],
        );
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let victim = offsets[1] as usize + HEADER_LEN + 9; // the second record's key
        bytes[victim] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match MemoryEngine::open(dir.path(), MemoryOptions::default()) {
            Err(Error::Corruption {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, offsets[1]);
            }
            Err(other) => panic!("expected Corruption, got {other}"),
            Ok(_) => panic!("expected Corruption, the damaged log was accepted"),
        }
        // The damaged log is left untouched for the operator.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn damaged_length_field_in_a_long_log_is_corruption_not_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<WriteBatch> = (0..2000u32)
            .map(|i| batch(&[(&i.to_be_bytes(), Some(&[7u8; 100][..]))]))
            .collect();
        let offsets = write_raw_log(dir.path(), &batches);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        // The length's high byte: the record now claims to run far past the end of the log.
        bytes[offsets[3] as usize + 3] = 0x7F;
        fs::write(&path, &bytes).unwrap();
        match MemoryEngine::open(dir.path(), MemoryOptions::default()) {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, offsets[3]),
            Err(other) => panic!("expected Corruption, got {other}"),
            Ok(_) => panic!("a damaged length must not silently drop 1996 batches"),
        }
    }

    #[test]
    fn ephemeral_engine_works_and_close_is_final() {
        let e = MemoryEngine::ephemeral();
        e.write(batch(&[(b"x", Some(b"1")), (b"x", Some(b"2"))]))
            .unwrap();
        assert_eq!(e.get(b"x").unwrap(), Some(b"2".to_vec()));
        e.flush().unwrap();
        e.close().unwrap();
        e.close().unwrap();
        assert!(matches!(e.get(b"x"), Err(Error::Closed)));
        assert!(matches!(
            e.write(batch(&[(b"y", Some(b"1"))])),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn options_default_to_sync_and_reject_unknown_fields() {
        let o: MemoryOptions = serde_json::from_str("{}").unwrap();
        assert!(o.sync);
        let o: MemoryOptions = serde_json::from_str(r#"{"sync": false}"#).unwrap();
        assert!(!o.sync);
        let err = serde_json::from_str::<MemoryOptions>(r#"{"synk": false}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn record_encoding_round_trips(ops in proptest::collection::vec(
            (proptest::collection::vec(proptest::num::u8::ANY, 0..8),
             proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..16))),
            0..8,
        )) {
            let ops: Vec<WriteOp> = ops
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => WriteOp::Put { key, value },
                    None => WriteOp::Delete { key },
                })
                .collect();
            let record = encode_record(&ops).unwrap();
            let (decoded, len) = record_at(&record, 0).unwrap();
            proptest::prop_assert_eq!(len, record.len());
            proptest::prop_assert_eq!(decoded, ops);
        }
    }
}
