//! Byte encodings shared by the WAL, SSTables and the manifest: little-endian integers,
//! CRC-framed records, and the internal entry (key, sequence number, value or tombstone).

use std::path::Path;

use crate::{Error, Result};

/// The stored value of one key version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// A live value.
    Put(Vec<u8>),
    /// A deletion, stamped with its wall-clock time (unix seconds) for the tombstone TTL.
    Tombstone { deleted_at: u64 },
}

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    pub seq: u64,
    pub value: Value,
}

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// Appends `e` as `[klen u32][key][seq u64][kind u8][vlen u32][value]`.
pub(crate) fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    put_u32(out, e.key.len() as u32);
    out.extend_from_slice(&e.key);
    put_u64(out, e.seq);
    match &e.value {
        Value::Put(v) => {
            out.push(KIND_PUT);
            put_u32(out, v.len() as u32);
            out.extend_from_slice(v);
        }
        Value::Tombstone { deleted_at } => {
            out.push(KIND_TOMBSTONE);
            put_u32(out, 8);
            put_u64(out, *deleted_at);
        }
    }
}

/// Reads one entry written by [`encode_entry`]; `None` if the bytes are malformed.
pub(crate) fn decode_entry(c: &mut Cursor<'_>) -> Option<Entry> {
    let klen = c.u32()? as usize;
    let key = c.bytes(klen)?.to_vec();
    let (seq, value) = decode_after_key(c)?;
    Some(Entry { key, seq, value })
}

/// Reads the sequence number and value of one entry written by [`encode_entry`],
/// skipping its key (no copy of it); `None` if the bytes are malformed.
pub(crate) fn decode_entry_value(c: &mut Cursor<'_>) -> Option<(u64, Value)> {
    let klen = c.u32()? as usize;
    c.bytes(klen)?;
    decode_after_key(c)
}

/// The sequence number and value of an entry whose key was just read.
#[inline]
fn decode_after_key(c: &mut Cursor<'_>) -> Option<(u64, Value)> {
    let seq = c.u64()?;
    let kind = c.u8()?;
    let vlen = c.u32()? as usize;
    let raw = c.bytes(vlen)?;
    let value = match kind {
        KIND_PUT => Value::Put(raw.to_vec()),
        KIND_TOMBSTONE if vlen == 8 => Value::Tombstone {
            deleted_at: u64::from_le_bytes(raw.try_into().ok()?),
        },
        _ => return None,
    };
    Some((seq, value))
}

/// Reads only the key of the entry at the cursor, advancing past the whole entry.
pub(crate) fn skip_entry_key<'a>(c: &mut Cursor<'a>) -> Option<&'a [u8]> {
    let klen = c.u32()? as usize;
    let key = c.bytes(klen)?;
    c.bytes(9)?;
    let vlen = c.u32()? as usize;
    c.bytes(vlen)?;
    Some(key)
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

/// A bounds-checked reader over a byte slice. Every read returns `None` past the end.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub fn len_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

/// Header of a framed record: `[crc32 of (len ++ payload) u32][len u32]`.
pub(crate) const RECORD_HEADER: usize = 8;

/// Appends `payload` framed as a CRC-checked record.
pub(crate) fn frame_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    put_u32(out, h.finalize());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
}

/// Starts a record in place: reserves its header and returns where the record begins.
/// Append the payload to `out`, then call [`finish_record`]; the result is the same bytes
/// as [`frame_record`] without copying the payload through a second buffer.
pub(crate) fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    start
}

/// Fills in the header of the record begun at `start` (see [`begin_record`]).
pub(crate) fn finish_record(out: &mut [u8], start: usize) {
    let len = ((out.len() - start - RECORD_HEADER) as u32).to_le_bytes();
    out[start + 4..start + RECORD_HEADER].copy_from_slice(&len);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The payload of the record at `pos` and the offset after it, if a complete record with
/// a matching CRC starts there.
pub(crate) fn parse_record(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let header = data.get(pos..pos.checked_add(RECORD_HEADER)?)?;
    let crc = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let start = pos + RECORD_HEADER;
    let payload = data.get(start..start.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[4..8]);
    h.update(payload);
    (h.finalize() == crc).then_some((payload, start + len))
}

/// Outcome of reading a log of framed records.
pub(crate) struct LogContents<'a> {
    pub records: Vec<(u64, &'a [u8])>,
    /// Offset of a torn (incomplete or unchecked) tail, if there is one.
    pub torn_tail_at: Option<u64>,
}

/// Splits a log into records. A bad record followed by at least one valid record is
/// corruption (`Error::Corruption` naming `path` and the offset); a bad record with
/// nothing valid after it is a torn tail, reported in `torn_tail_at`.
pub(crate) fn read_log<'a>(path: &Path, data: &'a [u8], min_len: usize) -> Result<LogContents<'a>> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        match parse_record(data, pos) {
            Some((payload, next)) if payload.len() >= min_len => {
                records.push((pos as u64, payload));
                pos = next;
            }
            _ => {
                let valid_later = (pos + 1..data.len().saturating_sub(RECORD_HEADER))
                    .any(|p| parse_record(data, p).is_some_and(|(pl, _)| pl.len() >= min_len));
                if valid_later {
                    return Err(Error::Corruption {
                        path: path.to_path_buf(),
                        offset: pos as u64,
                        detail: "record checksum mismatch followed by valid records".into(),
                    });
                }
                return Ok(LogContents {
                    records,
                    torn_tail_at: Some(pos as u64),
                });
            }
        }
    }
    Ok(LogContents {
        records,
        torn_tail_at: None,
    })
}

/// Seconds since the unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(key in proptest::collection::vec(any::<u8>(), 0..40),
                              seq in any::<u64>(),
                              value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                              at in any::<u64>()) {
            let e = Entry { key, seq, value: match value { Some(v) => Value::Put(v), None => Value::Tombstone { deleted_at: at } } };
            let mut buf = Vec::new();
            encode_entry(&mut buf, &e);
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(decode_entry(&mut c), Some(e.clone()));
            prop_assert!(c.is_empty());
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(skip_entry_key(&mut c), Some(e.key.as_slice()));
        }

        #[test]
        fn truncated_entries_never_decode(cut in 0usize..20) {
            let e = Entry { key: b"key".to_vec(), seq: 7, value: Value::Put(b"value".to_vec()) };
            let mut buf = Vec::new();
            encode_entry(&mut buf, &e);
            buf.truncate(cut.min(buf.len() - 1));
            prop_assert_eq!(decode_entry(&mut Cursor::new(&buf)), None);
        }
    }

    #[test]
    fn records_framed_in_place_match_frame_record() {
        for payload in [&b""[..], b"x", &[7u8; 300]] {
            let mut a = b"prefix".to_vec();
            frame_record(&mut a, payload);
            let mut b = b"prefix".to_vec();
            let start = begin_record(&mut b);
            b.extend_from_slice(payload);
            finish_record(&mut b, start);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn log_distinguishes_torn_tail_from_corruption() {
        let mut data = Vec::new();
        for i in 0..5u8 {
            frame_record(&mut data, &[i; 20]);
        }
        let p = Path::new("x.log");
        assert_eq!(read_log(p, &data, 1).unwrap().records.len(), 5);
        let mut torn = data.clone();
        torn.truncate(data.len() - 3);
        let c = read_log(p, &torn, 1).unwrap();
        assert_eq!(c.records.len(), 4);
        assert_eq!(c.torn_tail_at, Some(4 * 28));
        let mut bad = data.clone();
        bad[28 + 10] ^= 0x40;
        match read_log(p, &bad, 1) {
            Err(Error::Corruption { offset, .. }) => assert_eq!(offset, 28),
            _ => panic!("expected corruption"),
        }
    }
}
