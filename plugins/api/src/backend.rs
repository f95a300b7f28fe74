//! The safe side of the ABI: what a plugin author implements.

use std::collections::BTreeMap;
use std::ops::Bound;

/// The options a backend is opened with: the JSON object from the node's
/// `storage.plugin.options`, passed through verbatim (the host adds nothing to it).
///
/// The DistKV node always puts its storage directory into the options as `"data_dir"`
/// (a string) unless the operator set `data_dir` there already; a persistent backend
/// should keep its files there unless told otherwise.
pub type Options = BTreeMap<String, serde_json::Value>;

/// One key and its value, as a scan returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One operation of a batch, in the order it was added: a later operation on the same
/// key wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`, replacing what was there. The value may be empty: an
    /// empty value is a value, distinct from an absent key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// An error a backend reports to the node.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend was closed; the node reports `storage engine is closed`.
    #[error("backend is closed")]
    Closed,
    /// Anything else. The message is shown to operators: say what failed and what to do.
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    /// A [`BackendError::Failed`] with this message.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        BackendError::Failed(message.to_string())
    }
}

/// A storage backend, as a plugin author writes it. Export it with
/// [`export_plugin!`](crate::export_plugin).
///
/// The contract is the node's `StorageEngine` contract: keys are ordered as unsigned bytes;
/// `write` applies a batch atomically (all or nothing, also across a crash) and a later
/// operation on the same key wins; a `get` or `scan` that starts after a `write` returned
/// sees it; after `close`, every call returns [`BackendError::Closed`]. Every method may be
/// called from several threads at once. A panic is caught at the boundary and reported to
/// the node as an error, but a backend should return errors, not panic.
pub trait Backend: Send + Sync + Sized + 'static {
    /// The plugin's name, shown in the node's stats and error messages.
    const NAME: &'static str;

    /// Opens the backend. `options` is the JSON object the operator configured (see
    /// [`Options`]). Reject unknown or invalid options with a message naming the option.
    fn open(options: &Options) -> Result<Self, BackendError>;

    /// The value under `key`, or `None` if it is absent.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Applies every operation atomically, in order. Returns once the batch is visible
    /// and as durable as the backend documents. Never called with an empty batch.
    fn write(&self, ops: Vec<Op>) -> Result<(), BackendError>;

    /// Up to `limit` entries whose keys fall between `start` and `end`, in ascending key
    /// order, from one consistent snapshot. Never called with `limit == 0` nor with a
    /// range whose start lies after its end.
    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError>;

    /// Makes every write that returned so far durable. The default does nothing, which is
    /// right for a backend that keeps no files.
    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Named counters and gauges (values as text; numbers are shown as numbers).
    fn stats(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Flushes and releases files; later calls should fail with [`BackendError::Closed`].
    /// Called at most once. The default does nothing.
    fn close(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
