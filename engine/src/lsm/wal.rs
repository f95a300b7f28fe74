//! Write-ahead log: one file per memtable (`NNNNNN.wal`), one CRC-framed record per
//! write batch, so a batch is recovered whole or not at all.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use super::codec::{self, Cursor};
use crate::{Error, Result, WriteOp};

/// Smallest valid batch payload: base sequence number and operation count.
pub(crate) const MIN_PAYLOAD: usize = 12;

/// Path of WAL file `id` in `dir`.
pub(crate) fn wal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:06}.wal"))
}

/// Appends batches to one WAL file.
///
/// The file grows in preallocated steps (`fallocate`, so the disk space is reserved and
/// a full disk is an error at growth time, not a fault later) and records are copied into
/// a shared memory map of it. A copy into the map is in the kernel's page cache the moment
/// it is made, exactly like the bytes of a `write(2)`: an acknowledged write survives a
/// `kill -9` of the process, and `sync` (fdatasync) makes it survive a power loss. What
/// this saves is one system call per group commit. Unused preallocated space is cut off
/// when the WAL is closed; after a crash it reads as zeros, which replay recognises.
pub(crate) struct WalWriter {
    file: File,
    path: PathBuf,
    /// Shared writable map of the first `cap` bytes of the file (none while `cap` is 0).
    map: Option<MmapMut>,
    /// Bytes of records written.
    pos: usize,
    /// Bytes allocated in the file (and mapped).
    cap: usize,
    /// Reused encoding buffer, so an append allocates nothing in the steady state.
    buf: Vec<u8>,
}

/// Capacity above which the encoding buffer is released after an append (a huge batch
/// should not pin its memory for the life of the WAL).
const KEEP_BUF_BYTES: usize = 1 << 20;

/// Preallocation step of a WAL file.
const GROW_BYTES: usize = 4 << 20;

impl WalWriter {
    /// Creates WAL `id` (it must not exist) and makes its directory entry durable.
    pub fn create(dir: &Path, id: u64) -> Result<Self> {
        let path = wal_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(WalWriter {
            file,
            path,
            map: None,
            pos: 0,
            cap: 0,
            buf: Vec::new(),
        })
    }

    /// Makes room for `more` bytes after `pos`: reserves the next step of the file on
    /// disk and maps it.
    fn reserve(&mut self, more: usize) -> Result<()> {
        let need = self.pos + more;
        if need > self.cap {
            let new_cap = need.max(self.cap + GROW_BYTES).next_multiple_of(GROW_BYTES);
            // The current map stays valid while the file grows, so a failed reservation
            // (a full disk) leaves the writer able to append into the space it has.
            allocate(&self.file, self.cap as u64, (new_cap - self.cap) as u64).map_err(|e| {
                Error::io(
                    &self.path,
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot reserve {} bytes for the write-ahead log ({e}); free disk space",
                            new_cap - self.cap
                        ),
                    ),
                )
            })?;
            self.cap = new_cap;
            self.map = None;
        }
        if self.map.is_none() && self.cap > 0 {
            // SAFETY: the file is this writer's own (created with `create_new`, the data
            // directory is locked by the node); nothing else truncates it while mapped.
            let map = unsafe { MmapOptions::new().len(self.cap).map_mut(&self.file) }
                .map_err(|e| Error::io(&self.path, e))?;
            self.map = Some(map);
        }
        Ok(())
    }

    /// Appends already framed records; they are in the page cache (visible to a reader
    /// of the file, and surviving a crash of this process) when this returns.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        if framed.is_empty() {
            return Ok(());
        }
        self.reserve(framed.len())?;
        let map = self
            .map
            .as_mut()
            .expect("reserve maps the file when cap > 0");
        map[self.pos..self.pos + framed.len()].copy_from_slice(framed);
        self.pos += framed.len();
        Ok(())
    }

    /// Encodes records with `encode` into the reused buffer and appends them (see
    /// [`Self::append`]). Returns the number of bytes written.
    pub fn append_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode(&mut buf);
        let r = self.append(&buf);
        let n = buf.len();
        if buf.capacity() <= KEEP_BUF_BYTES {
            self.buf = buf;
        }
        r.map(|_| n)
    }

    /// fsyncs the data written so far (the mapped pages are the file's page cache, so
    /// fdatasync writes them back).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Cuts the unused preallocated space off and fsyncs (used when the WAL is closed).
    pub fn sync_and_trim(&mut self) -> Result<()> {
        self.trim().map_err(|e| Error::io(&self.path, e))?;
        self.sync()
    }

    /// Cuts the file to the records written (unmapping it first).
    fn trim(&mut self) -> std::io::Result<()> {
        if self.cap > self.pos {
            self.map = None;
            self.file.set_len(self.pos as u64)?;
            self.cap = self.pos;
        }
        Ok(())
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        if let Err(e) = self.trim() {
            tracing::warn!(path = %self.path.display(), error = %e,
                "could not cut preallocated space off a write-ahead log (harmless: replay skips it)");
        }
    }
}

/// Reserves `len` bytes of `file` from `offset` on disk, growing the file.
fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::other("write-ahead log too large"));
    };
    // SAFETY: a valid open file descriptor and plain integers.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), off, n) } {
        0 => Ok(()),
        // Filesystems without fallocate: a plain (sparse) extension.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(offset + len),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// fsyncs a directory so that created, renamed or removed entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Encodes a batch whose operations get sequence numbers `base + 1 ..= base + n` and
/// appends it to `out` as one framed record (encoded in place, no intermediate buffer).
pub(crate) fn encode_batch(out: &mut Vec<u8>, base_seq: u64, ops: &[WriteOp]) {
    let start = codec::begin_record(out);
    codec::put_u64(out, base_seq);
    codec::put_u32(out, ops.len() as u32);
    for op in ops {
        match op {
            WriteOp::Put { key, value } => {
                out.push(1);
                codec::put_bytes(out, key);
                codec::put_bytes(out, value);
            }
            WriteOp::Delete { key } => {
                out.push(2);
                codec::put_bytes(out, key);
            }
        }
    }
    codec::finish_record(out, start);
}

/// One batch recovered from the WAL.
pub(crate) struct RecoveredBatch {
    pub base_seq: u64,
    pub ops: Vec<WriteOp>,
}

pub(crate) fn decode_batch(payload: &[u8]) -> Option<RecoveredBatch> {
    let mut c = Cursor::new(payload);
    let base_seq = c.u64()?;
    let n = c.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(payload.len()));
    for _ in 0..n {
        let op = match c.u8()? {
            1 => WriteOp::Put {
                key: c.len_prefixed()?.to_vec(),
                value: c.len_prefixed()?.to_vec(),
            },
            2 => WriteOp::Delete {
                key: c.len_prefixed()?.to_vec(),
            },
            _ => return None,
        };
        ops.push(op);
    }
    c.is_empty().then_some(RecoveredBatch { base_seq, ops })
}

/// Reads every batch of WAL `path`. A torn tail (a crash in the middle of an append) is
/// logged and truncated away; a damaged record followed by valid ones is corruption.
pub(crate) fn replay(path: &Path) -> Result<Vec<RecoveredBatch>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let contents = codec::read_log(path, &data, MIN_PAYLOAD)?;
    let mut batches = Vec::with_capacity(contents.records.len());
    for (offset, payload) in contents.records {
        let batch = decode_batch(payload).ok_or_else(|| Error::Corruption {
            path: path.to_path_buf(),
            offset,
            detail: "WAL record passed its checksum but is not a valid batch".into(),
        })?;
        batches.push(batch);
    }
    if let Some(at) = contents.torn_tail_at {
        if data[at as usize..].iter().all(|&b| b == 0) {
            // Space preallocated by a writer that did not close the WAL (a crash).
            tracing::debug!(path = %path.display(), offset = at, "cutting unused preallocated space off write-ahead log");
        } else {
            tracing::warn!(path = %path.display(), offset = at, dropped_bytes = data.len() as u64 - at,
                "truncating torn tail of write-ahead log (a write interrupted by a crash)");
        }
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(at)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        encode_batch(
            &mut buf,
            0,
            &[WriteOp::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            }],
        );
        encode_batch(&mut buf, 1, &[WriteOp::Delete { key: b"a".to_vec() }]);
        w.append(&buf).unwrap();
        w.append(&buf[..5]).unwrap();
        w.sync().unwrap();
        let path = wal_path(dir.path(), 1);
        let got = replay(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].base_seq, 1);
        assert_eq!(got[1].ops, vec![WriteOp::Delete { key: b"a".to_vec() }]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), buf.len() as u64);
    }

    #[test]
    fn append_encoded_reaches_the_file_before_returning() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let path = wal_path(dir.path(), 1);
        let mut total = 0;
        for i in 0..3u64 {
            let ops = [WriteOp::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![i as u8; 10 + 100 * i as usize],
            }];
            total += w.append_encoded(|buf| encode_batch(buf, i, &ops)).unwrap();
            // No sync and the writer is still open: the bytes are in the file already
            // (in the kernel's page cache), as a killed process would leave them.
            let data = std::fs::read(&path).unwrap();
            assert!(data.len() >= total, "the file holds the records");
            assert!(
                data[total..].iter().all(|&b| b == 0),
                "then preallocated zeros"
            );
            let got = codec::read_log(&path, &data, MIN_PAYLOAD).unwrap();
            assert_eq!(got.records.len(), i as usize + 1);
            let got: Vec<_> = got
                .records
                .iter()
                .map(|(_, p)| decode_batch(p).unwrap())
                .collect();
            assert_eq!(got.len(), i as usize + 1);
            assert_eq!(got[i as usize].ops, ops);
        }
    }

    #[test]
    fn closing_cuts_preallocation_and_a_crash_leaves_a_zero_tail_replay_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal_path(dir.path(), 1);
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let ops = [WriteOp::Put {
            key: b"k".to_vec(),
            value: vec![7; 300],
        }];
        let mut total = 0;
        // Past one growth step, so the file is remapped at least once.
        for i in 0..(GROW_BYTES / 300 + 100) as u64 {
            total += w.append_encoded(|buf| encode_batch(buf, i, &ops)).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() as usize > total);
        // A crash: the writer never trims; replay finds every record, then zeros.
        let crashed = dir.path().join("crashed.wal");
        std::fs::copy(&path, &crashed).unwrap();
        let got = replay(&crashed).unwrap();
        assert_eq!(got.len(), GROW_BYTES / 300 + 100);
        assert_eq!(got.last().unwrap().ops, ops);
        assert_eq!(std::fs::metadata(&crashed).unwrap().len() as usize, total);
        // A clean close cuts the file to its records.
        w.sync_and_trim().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, total);
        drop(w);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, total);
        assert_eq!(replay(&path).unwrap().len(), GROW_BYTES / 300 + 100);
    }
}
