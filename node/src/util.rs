//! Small helpers shared by the subsystems.

use crate::error::NodeError;

/// Runs blocking storage work on tokio's blocking pool (bounded by the runtime's
/// `max_blocking_threads`; work beyond it waits for a thread).
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, NodeError> + Send + 'static,
) -> Result<R, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Unavailable(format!("storage task failed: {e}")))?
}
