//! Value types of the storage contract: batches, ranges, statistics and errors.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::PathBuf;

/// Result of a storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a storage engine. Every variant says what failed; the `Display`
/// text also says what an operator can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error on {path}: {source} (check that the disk is writable and not full)")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored data failed a checksum or format check. The engine refuses to return it.
    #[error("corruption in {path} at offset {offset}: {detail} (restore the file from a replica or backup)")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record or block.
        offset: u64,
        /// What check failed.
        detail: String,
    },
    /// The engine was closed; no call succeeds after `close`.
    #[error("storage engine is closed")]
    Closed,
    /// An option given to the engine is invalid.
    #[error("invalid storage option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: String,
        /// Why it was refused.
        reason: String,
    },
    /// Writes are refused because an earlier background failure (for instance a failed
    /// flush) left the engine unable to guarantee durability.
    #[error("storage engine stopped accepting writes after a background failure: {0} (restart the node after fixing the cause)")]
    Poisoned(String),
    /// Another open engine (in this process or another) holds the directory's lock.
    #[error("storage directory {path} is in use by another open engine (its LOCK file is held): close that one first, or use another directory")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// Any other engine-specific failure (plugins use this for their own errors).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store `value` under `key`, replacing what was there.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value; may be empty.
        value: Vec<u8>,
    },
    /// Remove `key`. Deleting an absent key is not an error.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl WriteOp {
    /// The key this operation is about.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

impl fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteOp::Put { key, value } => {
                write!(
                    f,
                    "Put({} key bytes, {} value bytes)",
                    key.len(),
                    value.len()
                )
            }
            WriteOp::Delete { key } => write!(f, "Delete({} key bytes)", key.len()),
        }
    }
}

/// An ordered list of puts and deletes applied atomically by [`crate::StorageEngine::write`].
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct WriteBatch {
    /// One operation is kept inline: a single put costs no allocation for the list.
    ops: smallvec::SmallVec<[WriteOp; 1]>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete { key: key.into() });
        self
    }

    /// The operations, in the order they were added.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Consumes the batch, yielding its operations in order.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops.into_vec()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Total bytes of keys and values in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => key.len() + value.len(),
                WriteOp::Delete { key } => key.len(),
            })
            .sum()
    }
}

impl From<Vec<WriteOp>> for WriteBatch {
    fn from(ops: Vec<WriteOp>) -> Self {
        WriteBatch { ops: ops.into() }
    }
}

impl IntoIterator for WriteBatch {
    type Item = WriteOp;
    type IntoIter = smallvec::IntoIter<[WriteOp; 1]>;

    /// The operations in order, without collecting them into a `Vec`.
    fn into_iter(self) -> Self::IntoIter {
        self.ops.into_iter()
    }
}

/// A range of keys: a start bound and an end bound, as in `BTreeMap::range`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: Bound::Included(start.into()),
            end: Bound::Excluded(end.into()),
        }
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let start = Bound::Included(prefix.to_vec());
        // The end is the prefix with its last non-0xFF byte incremented.
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xFF {
                end.push(last + 1);
                return KeyRange {
                    start,
                    end: Bound::Excluded(end),
                };
            }
        }
        KeyRange {
            start,
            end: Bound::Unbounded,
        }
    }

    /// The same range, restarted just after `key` (to page through a scan).
    pub fn after(&self, key: &[u8]) -> Self {
        KeyRange {
            start: Bound::Excluded(key.to_vec()),
            end: self.end.clone(),
        }
    }

    /// True when `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        above && self.below_end(key)
    }

    /// True when `key` is not past the end bound.
    pub fn below_end(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        }
    }

    /// The bounds as borrowed slices, for `BTreeMap::range` and similar APIs.
    pub fn as_slices(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (as_slice_bound(&self.start), as_slice_bound(&self.end))
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// One statistic value.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum StatValue {
    /// A count or a size in bytes.
    U64(u64),
    /// A ratio or rate.
    F64(f64),
    /// Anything else.
    Text(String),
}

impl fmt::Display for StatValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatValue::U64(v) => write!(f, "{v}"),
            StatValue::F64(v) => write!(f, "{v:.3}"),
            StatValue::Text(v) => f.write_str(v),
        }
    }
}

impl From<u64> for StatValue {
    fn from(v: u64) -> Self {
        StatValue::U64(v)
    }
}

impl From<f64> for StatValue {
    fn from(v: f64) -> Self {
        StatValue::F64(v)
    }
}

impl From<String> for StatValue {
    fn from(v: String) -> Self {
        StatValue::Text(v)
    }
}

/// Statistics of an engine: its name and named values, in name order. Names are
/// dotted paths such as `writes`, `level.0.files`, `block_cache.hit_rate`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EngineStats {
    /// The engine's name (`lsm`, `memory`, or the plugin's name).
    pub engine: String,
    /// Named values.
    pub values: BTreeMap<String, StatValue>,
}

impl EngineStats {
    /// Stats of the engine called `engine`, with no values yet.
    pub fn new(engine: impl Into<String>) -> Self {
        EngineStats {
            engine: engine.into(),
            values: BTreeMap::new(),
        }
    }

    /// Sets one value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<StatValue>) -> &mut Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// One value by name.
    pub fn get(&self, name: &str) -> Option<&StatValue> {
        self.values.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let r = KeyRange::prefix(b"ab");
        assert!(r.contains(b"ab"));
        assert!(r.contains(b"ab\xff\xff"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"aa\xff"));
        let r = KeyRange::prefix(b"a\xff");
        assert!(r.contains(b"a\xff\x00"));
        assert!(!r.contains(b"b"));
        assert_eq!(KeyRange::prefix(b"\xff\xff").end, Bound::Unbounded);
    }

    #[test]
    fn after_excludes_the_key_and_keeps_the_end() {
        let r = KeyRange::between(b"a".to_vec(), b"z".to_vec()).after(b"m");
        assert!(!r.contains(b"m"));
        assert!(r.contains(b"m\x00"));
        assert!(!r.contains(b"z"));
    }
}
