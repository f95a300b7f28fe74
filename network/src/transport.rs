//! The `Transport` contract: how a node calls its peers, and what a peer answers with.

use std::time::Duration;

use async_trait::async_trait;
use distkv_proto::v1::{
    PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    ReplicateResponse,
};

use crate::NodeInfo;

/// Why a peer call failed. The coordinator treats every variant as "this replica did not
/// acknowledge"; the distinction is for logs and metrics.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection could be made (refused, unreachable, partitioned).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The call did not complete within its deadline.
    #[error("peer {peer} did not answer within {timeout:?}")]
    Timeout {
        /// The peer's address.
        peer: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The peer answered with an error.
    #[error("peer {peer} failed the call: {message}")]
    Remote {
        /// The peer's address.
        peer: String,
        /// The peer's error message.
        message: String,
    },
}

/// The receiving side of peer calls: what a node does when a peer calls it. The node
/// implements it; transports deliver calls to it.
#[async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Merges the records into local storage; returns once they are durable.
    async fn replicate(&self, request: ReplicateRequest) -> Result<ReplicateResponse, String>;
    /// Reads the local records of some keys.
    async fn read(&self, request: PeerReadRequest) -> Result<PeerReadResponse, String>;
    /// Answers a liveness probe.
    async fn ping(&self, request: PingRequest) -> Result<PingResponse, String>;
}

/// How a node calls a peer.
///
/// Contract: every call finishes within `timeout` (with [`TransportError::Timeout`] if the
/// peer is slow); a call that failed may still have been applied by the peer (calls are
/// idempotent merges, so retrying is safe); implementations keep at most one connection
/// per peer and reconnect on their own.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Asks `to` to merge records.
    async fn replicate(
        &self,
        to: &NodeInfo,
        request: ReplicateRequest,
        timeout: Duration,
    ) -> Result<ReplicateResponse, TransportError>;
    /// Asks `to` for its records of some keys.
    async fn read(
        &self,
        to: &NodeInfo,
        request: PeerReadRequest,
        timeout: Duration,
    ) -> Result<PeerReadResponse, TransportError>;
    /// Probes `to`.
    async fn ping(
        &self,
        to: &NodeInfo,
        request: PingRequest,
        timeout: Duration,
    ) -> Result<PingResponse, TransportError>;
}
