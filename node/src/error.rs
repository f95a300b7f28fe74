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
    /// A client write was refused because it would grow its key past
    /// `limits.max_siblings`: the client must resolve the siblings first.
    #[error("{}", too_many_siblings(*held, *limit, *refused, *stored, *needed, *may_land))]
    TooManySiblings {
        /// Siblings a refusing replica holds for the key.
        held: usize,
        /// `limits.max_siblings`.
        limit: usize,
        /// Replicas that refused the write.
        refused: usize,
        /// Replicas that stored it (fewer than `needed`).
        stored: usize,
        /// Acknowledgements the write needed.
        needed: usize,
        /// The write reached some replica, or a hint for one that did not answer, so it
        /// may still appear as a sibling; otherwise nothing was written.
        may_land: bool,
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
            NodeError::TooManySiblings { .. } => tonic::Status::failed_precondition(msg),
            NodeError::QuorumNotReached { .. } | NodeError::NotEnoughReplicas { .. } => {
                tonic::Status::unavailable(msg)
            }
            NodeError::Storage(_) => tonic::Status::internal(msg),
            NodeError::Unavailable(_) => tonic::Status::unavailable(msg),
        }
    }
}

fn too_many_siblings(
    held: usize,
    limit: usize,
    refused: usize,
    stored: usize,
    needed: usize,
    may_land: bool,
) -> String {
    let outcome = if may_land {
        format!(
            "stored on {stored} of the {needed} replicas needed, so it is not confirmed but may still appear as a sibling"
        )
    } else {
        "nothing was written".to_string()
    };
    format!(
        "too many siblings: the key holds {held} siblings, and limits.max_siblings = {limit}; a write without the key's current context would add another, so {refused} replica(s) refused it ({outcome}). Read the key and write with the context the read returns: that replaces its siblings with one value"
    )
}
