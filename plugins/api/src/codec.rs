//! The byte formats of the buffers that cross the ABI. Integers are little-endian `u64`;
//! a *string* is its length as `u64` followed by its bytes.
//!
//! ```text
//! batch = count | op*                  op    = 0x01 | key | value     (put)
//!                                            | 0x02 | key             (delete)
//! page  = count | (key | value)*       entries in ascending key order
//! stats = count | (name | value)*      name and value are UTF-8 text
//! ```
//!
//! Decoders reject trailing bytes, unknown tags and lengths past the end of the buffer.

use crate::{Entry, Op};

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// A buffer that does not follow its format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} buffer at byte {offset}: {problem}")]
pub struct CodecError {
    /// Which format (`batch`, `page`, `stats`).
    pub what: &'static str,
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub problem: &'static str,
}

/// Builds a batch buffer one operation at a time, without copying the caller's operations
/// into [`Op`]s first.
#[derive(Debug)]
pub struct BatchEncoder {
    buf: Vec<u8>,
    count: u64,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        BatchEncoder {
            buf: vec![0; 8],
            count: 0,
        }
    }
}

impl BatchEncoder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.buf.push(TAG_PUT);
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
        self.count += 1;
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: &[u8]) {
        self.buf.push(TAG_DELETE);
        put_bytes(&mut self.buf, key);
        self.count += 1;
    }

    /// The encoded batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..8].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Encodes operations as a batch buffer.
pub fn encode_batch(ops: &[Op]) -> Vec<u8> {
    let mut enc = BatchEncoder::new();
    for op in ops {
        match op {
            Op::Put { key, value } => enc.put(key, value),
            Op::Delete { key } => enc.delete(key),
        }
    }
    enc.finish()
}

/// Decodes a batch buffer.
pub fn decode_batch(buf: &[u8]) -> Result<Vec<Op>, CodecError> {
    let mut r = Reader {
        buf,
        pos: 0,
        what: "batch",
    };
    let count = r.u64()?;
    let mut ops = Vec::with_capacity(r.capacity_hint(count, 9));
    for _ in 0..count {
        let tag = r.take(1)?[0];
        let key = r.bytes()?.to_vec();
        match tag {
            TAG_PUT => ops.push(Op::Put {
                key,
                value: r.bytes()?.to_vec(),
            }),
            TAG_DELETE => ops.push(Op::Delete { key }),
            _ => return Err(r.error("unknown operation tag")),
        }
    }
    r.finish()?;
    Ok(ops)
}

/// Encodes scan results as a page buffer.
pub fn encode_page(entries: &[Entry]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 16 + k.len() + v.len()).sum();
    let mut buf = Vec::with_capacity(8 + size);
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        put_bytes(&mut buf, k);
        put_bytes(&mut buf, v);
    }
    buf
}

/// Decodes a page buffer.
pub fn decode_page(buf: &[u8]) -> Result<Vec<Entry>, CodecError> {
    let mut r = Reader {
        buf,
        pos: 0,
        what: "page",
    };
    let count = r.u64()?;
    let mut entries = Vec::with_capacity(r.capacity_hint(count, 16));
    for _ in 0..count {
        let key = r.bytes()?.to_vec();
        let value = r.bytes()?.to_vec();
        entries.push((key, value));
    }
    r.finish()?;
    Ok(entries)
}

/// Encodes name/value pairs as a stats buffer.
pub fn encode_stats<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut buf = vec![0; 8];
    let mut count = 0u64;
    for (name, value) in pairs {
        put_bytes(&mut buf, name.as_bytes());
        put_bytes(&mut buf, value.as_bytes());
        count += 1;
    }
    buf[..8].copy_from_slice(&count.to_le_bytes());
    buf
}

/// Decodes a stats buffer.
pub fn decode_stats(buf: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut r = Reader {
        buf,
        pos: 0,
        what: "stats",
    };
    let count = r.u64()?;
    let mut pairs = Vec::with_capacity(r.capacity_hint(count, 16));
    for _ in 0..count {
        let name = r.text()?;
        let value = r.text()?;
        pairs.push((name, value));
    }
    r.finish()?;
    Ok(pairs)
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: &'static str) -> CodecError {
        CodecError {
            what: self.what,
            offset: self.pos,
            problem,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() - self.pos < n {
            return Err(self.error("length runs past the end of the buffer"));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.error("length does not fit in memory"))?;
        self.take(len)
    }

    fn text(&mut self) -> Result<String, CodecError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("text is not UTF-8"))
    }

    /// A capacity that a lying count cannot turn into a huge allocation.
    fn capacity_hint(&self, count: u64, min_entry_bytes: usize) -> usize {
        let room = (self.buf.len() - self.pos) / min_entry_bytes;
        usize::try_from(count).map_or(room, |c| c.min(room))
    }

    fn finish(&self) -> Result<(), CodecError> {
        if self.pos != self.buf.len() {
            return Err(self.error("trailing bytes after the last entry"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..12)
    }

    proptest! {
        #[test]
        fn batch_round_trips(ops in vec((bytes(), proptest::option::of(bytes())), 0..10)) {
            let ops: Vec<Op> = ops.into_iter().map(|(key, value)| match value {
                Some(value) => Op::Put { key, value },
                None => Op::Delete { key },
            }).collect();
            prop_assert_eq!(decode_batch(&encode_batch(&ops)).unwrap(), ops);
        }

        #[test]
        fn page_round_trips(entries in vec((bytes(), bytes()), 0..10)) {
            prop_assert_eq!(decode_page(&encode_page(&entries)).unwrap(), entries);
        }

        #[test]
        fn stats_round_trip(pairs in vec((".{0,8}", ".{0,8}"), 0..10)) {
            let buf = encode_stats(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            prop_assert_eq!(decode_stats(&buf).unwrap(), pairs);
        }

        #[test]
        fn decoders_never_panic_on_garbage(buf in vec(any::<u8>(), 0..64)) {
            let _ = decode_batch(&buf);
            let _ = decode_page(&buf);
            let _ = decode_stats(&buf);
        }
    }

    #[test]
    fn truncated_and_padded_buffers_are_rejected() {
        let buf = encode_batch(&[Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }]);
        for cut in 0..buf.len() {
            assert!(decode_batch(&buf[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut padded = buf.clone();
        padded.push(0);
        let err = decode_batch(&padded).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed batch buffer at byte 27: trailing bytes after the last entry"
        );
    }
}
