//! The storage contract of a DistKV node.
//!
//! A [`StorageEngine`] is an ordered map from byte keys to byte values on one node. The
//! node above it knows nothing else about it: the LSM tree of this crate, the memory
//! backend and dynamically loaded plugins all stand behind the same trait, usually as an
//! `Arc<dyn StorageEngine>`.
//!
//! # Contract
//!
//! * **Ordering.** Keys compare as unsigned bytes (lexicographically, shorter prefix
//!   first). [`StorageEngine::scan`] returns keys in ascending order.
//! * **Atomicity.** [`StorageEngine::write`] applies a whole [`WriteBatch`] or none of it;
//!   a reader never sees half a batch, and after a crash either all of the batch is there
//!   or none. Within a batch, a later operation on the same key wins.
//! * **Durability.** When `write` returns `Ok`, the batch survives a crash of the process
//!   (`kill -9`) if the engine's configured sync policy says so; an engine documents its
//!   policy. [`StorageEngine::flush`] makes everything written so far durable regardless
//!   of the policy. [`StorageEngine::close`] flushes and releases the files; calls after
//!   `close` fail with [`Error::Closed`].
//! * **Visibility.** A `get` or `scan` that starts after a `write` returned sees that write.
//!   A scan sees a consistent snapshot: a batch is either wholly in it or wholly absent.
//! * **Values.** An empty value is a value, distinct from an absent key.
//! * **Errors.** Engines never return wrong data: a corrupt file is an
//!   [`Error::Corruption`] naming the file and offset. Errors are values, never panics.
//! * **Blocking.** Calls are synchronous and may block on I/O; async callers run them on a
//!   blocking thread pool. Every method takes `&self`: engines are shared between threads.

#![deny(missing_docs)]

pub mod conformance;
mod lsm;
mod types;

/// Hooks for the engine's own integration tests; not part of the API.
#[doc(hidden)]
pub mod test_hooks {
    /// See `lsm::memtable::scan_then_overwrite`.
    pub fn memtable_scan_then_overwrite(n: usize) {
        crate::lsm::memtable_scan_then_overwrite(n)
    }
}

/// Entry points into the engine's decoders of on-disk bytes, for fuzzing and robustness
/// tests; not part of the API. Each takes arbitrary bytes and must never panic.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::lsm::fuzz_hooks::{data_block, log, manifest_edit, sstable, wal_batch};
}

pub use lsm::{lock_dir, CompactionStrategy, Lsm, LsmOptions, SyncPolicy};
pub use types::{EngineStats, Error, KeyRange, Result, StatValue, WriteBatch, WriteOp};

/// An ordered, durable byte-key store on one node. See the [crate docs](crate) for the
/// full contract. Object-safe: `Arc<dyn StorageEngine>` is the usual handle.
pub trait StorageEngine: Send + Sync + 'static {
    /// The value stored under `key`, or `None` if the key is absent or deleted.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies every operation of `batch` atomically. Returns once the batch is visible
    /// and as durable as the engine's sync policy promises. An empty batch is a no-op.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Up to `limit` live entries whose keys fall in `range`, in ascending key order.
    /// To page through a large range, call again with a range starting just after the
    /// last key returned ([`KeyRange::after`]). `limit == 0` returns nothing.
    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Makes every write that returned so far durable, whatever the sync policy.
    fn flush(&self) -> Result<()>;

    /// Counters and gauges describing the engine (name -> value), for `status` and
    /// benchmarks. Cheap enough to call once a second.
    fn stats(&self) -> EngineStats;

    /// Flushes and releases the engine's files. Later calls fail with [`Error::Closed`].
    /// Closing twice is not an error.
    fn close(&self) -> Result<()>;
}
