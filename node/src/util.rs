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

/// Writes `bytes` to `dir/name` atomically: a temporary file beside it, fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one, never a mix.
pub(crate) fn write_atomic(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
