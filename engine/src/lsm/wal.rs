//! Write-ahead log: one file per memtable (`NNNNNN.wal`), one CRC-framed record per
//! write batch, so a batch is recovered whole or not at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::codec::{self, Cursor};
use crate::{Error, Result, WriteOp};

/// Smallest valid batch payload: base sequence number and operation count.
const MIN_PAYLOAD: usize = 12;

/// Path of WAL file `id` in `dir`.
pub(crate) fn wal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:06}.wal"))
}

/// Appends batches to one WAL file.
pub(crate) struct WalWriter {
    file: File,
    path: PathBuf,
    /// Reused encoding buffer, so an append allocates nothing in the steady state.
    buf: Vec<u8>,
}

/// Capacity above which the encoding buffer is released after an append (a huge batch
/// should not pin its memory for the life of the WAL).
const KEEP_BUF_BYTES: usize = 1 << 20;

impl WalWriter {
    /// Creates WAL `id` (it must not exist) and makes its directory entry durable.
    pub fn create(dir: &Path, id: u64) -> Result<Self> {
        let path = wal_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(WalWriter {
            file,
            path,
            buf: Vec::new(),
        })
    }

    /// Writes already framed records with one `write(2)` call sequence.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        self.file
            .write_all(framed)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Encodes records with `encode` into the reused buffer and writes them with one
    /// `write(2)` call sequence (the bytes reach the kernel before this returns; nothing
    /// stays buffered in user space). Returns the number of bytes written.
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

    /// fsyncs the data written so far.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
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

fn decode_batch(payload: &[u8]) -> Option<RecoveredBatch> {
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
        tracing::warn!(path = %path.display(), offset = at, dropped_bytes = data.len() as u64 - at,
            "truncating torn tail of write-ahead log (a write interrupted by a crash)");
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
            // (in the kernel), as a killed process would leave them.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), total as u64);
            let got = replay(&path).unwrap();
            assert_eq!(got.len(), i as usize + 1);
            assert_eq!(got[i as usize].ops, ops);
        }
    }
}
