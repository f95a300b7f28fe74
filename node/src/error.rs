//! Errors of the node's client-facing operations.

use distkv_engine::Error as StorageError;

/// Why a client request failed. Each message says what failed and what the client can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The request is malformed or over a limit; retrying it unchanged will fail again.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too few replicas acknowledged within the deadline.
    #[error("quorum not reached: {got} of {needed} acknowledged{detail}")]
    QuorumNotReached {
        /// Acknowledgements received.
        got: usize,
        /// Acknowledgements required.
        needed: usize,
        /// Why the others failed, when known (starts with "; ").
        detail: String,
    },
    /// The cluster has fewer nodes than the consistency level needs.
    #[error("consistency level needs {needed} replicas but the key has only {available} (add nodes or lower the consistency)")]
    NotEnoughReplicas {
        /// Replicas required.
        needed: usize,
        /// Replicas in the key's preference list.
        available: usize,
    },
    /// The local storage engine failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    /// The node is shutting down or a background task failed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            NodeError::QuorumNotReached { .. } | NodeError::NotEnoughReplicas { .. } => {
                tonic::Status::unavailable(msg)
            }
            NodeError::Storage(_) => tonic::Status::internal(msg),
            NodeError::Unavailable(_) => tonic::Status::unavailable(msg),
        }
    }
}
