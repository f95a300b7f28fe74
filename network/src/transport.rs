//! The `Transport` contract: how a node calls its peers, and what a peer answers with.
//!
//! Every peer call travels in one envelope, [`PeerRequest`] / [`PeerResponse`], whose
//! `body` oneof names the call. [`PeerRpc`] ties a request message to its response
//! message; the `peer_rpcs!` list below declares every call, so adding one means adding
//! a variant to the proto oneofs and a line to that list, nothing else.

use std::time::Duration;

use async_trait::async_trait;
pub use distkv_proto::v1::{peer_request, peer_response, PeerRequest, PeerResponse};
use distkv_proto::v1::{
    AntiEntropyRequest, AntiEntropyResponse, GcPurgeRequest, GcPurgeResponse, GcPushRequest,
    GcPushResponse, GossipRequest, GossipResponse, KeyRecord, LayoutChangeRequest,
    LayoutChangeResponse, LayoutPullRequest, LayoutPullResponse, MergeRequest, MergeResponse,
    OperatorRequest, OperatorResponse, PeerReadRequest, PeerReadResponse, PingRequest,
    PingResponse, RangePullRequest, RangePullResponse, RangeSizeRequest, RangeSizeResponse,
    ReplicateRequest, ReplicateResponse,
};

use crate::NodeInfo;

/// Default largest encoded envelope (request or response) a transport sends or accepts:
/// 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One kind of peer call: a request message, the response message it gets, and how both
/// sit in the envelope's `body` oneofs.
pub trait PeerRpc: Send + 'static {
    /// The message the peer answers with.
    type Response: Send + 'static;
    /// Name for logs and metrics ("replicate", "read", "ping", "range_pull").
    const NAME: &'static str;
    /// Wraps the request into the envelope's body.
    fn into_body(self) -> peer_request::Body;
    /// Unwraps the response from the envelope's body; `None` when the body is another
    /// call's response.
    fn from_body(body: peer_response::Body) -> Option<Self::Response>;
}

/// Declares every peer RPC: `Variant("name"): Request => Response`, where `Variant` is the
/// name of the variant in both `peer_request::Body` and `peer_response::Body`.
macro_rules! peer_rpcs {
    ($($variant:ident($name:literal): $req:ident => $resp:ident),+ $(,)?) => {
        $(
            impl PeerRpc for $req {
                type Response = $resp;
                const NAME: &'static str = $name;
                fn into_body(self) -> peer_request::Body {
                    peer_request::Body::$variant(self)
                }
                fn from_body(body: peer_response::Body) -> Option<$resp> {
                    match body {
                        peer_response::Body::$variant(response) => Some(response),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )+

        /// The call name ([`PeerRpc::NAME`]) of a request body, for logs and metrics.
        pub fn request_name(body: &peer_request::Body) -> &'static str {
            match body {
                $(peer_request::Body::$variant(_) => $name,)+
            }
        }

        /// The call name ([`PeerRpc::NAME`]) of a response body, for logs and metrics.
        pub fn response_name(body: &peer_response::Body) -> &'static str {
            match body {
                $(peer_response::Body::$variant(_) => $name,)+
            }
        }
    };
}

peer_rpcs! {
    Replicate("replicate"): ReplicateRequest => ReplicateResponse,
    Read("read"): PeerReadRequest => PeerReadResponse,
    Ping("ping"): PingRequest => PingResponse,
    RangePull("range_pull"): RangePullRequest => RangePullResponse,
    RangeSize("range_size"): RangeSizeRequest => RangeSizeResponse,
    Merge("merge"): MergeRequest => MergeResponse,
    Gossip("gossip"): GossipRequest => GossipResponse,
    LayoutPull("layout_pull"): LayoutPullRequest => LayoutPullResponse,
    LayoutChange("layout_change"): LayoutChangeRequest => LayoutChangeResponse,
    AntiEntropy("anti_entropy"): AntiEntropyRequest => AntiEntropyResponse,
    Operator("operator"): OperatorRequest => OperatorResponse,
    GcPush("gc_push"): GcPushRequest => GcPushResponse,
    GcPurge("gc_purge"): GcPurgeRequest => GcPurgeResponse,
}

/// The checksum of a range-pull page, `RangePullResponse::checksum`: XXH3-64 over, per
/// entry in order, the key length as u64 big-endian, the key, the record length as u64
/// big-endian, the record. Sender and receiver compute it the same way; a page whose
/// checksum differs was damaged and must be pulled again.
pub fn range_checksum(entries: &[KeyRecord]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for entry in entries {
        hasher.update(&(entry.key.len() as u64).to_be_bytes());
        hasher.update(&entry.key);
        hasher.update(&(entry.record.len() as u64).to_be_bytes());
        hasher.update(&entry.record);
    }
    hasher.digest()
}

/// Why a peer call failed, as the caller sees it. `peer` is the called node's id.
///
/// A call that failed may still have been applied by the peer (except [`PeerError::Refused`]
/// and [`PeerError::TooLarge`], which the peer or the transport rejected whole).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// No connection: refused, partitioned, or backing off after earlier failures.
    #[error(
        "peer {peer} is unreachable: {reason}; check that it runs and that this node can reach \
         its address, then retry"
    )]
    Unreachable {
        /// The peer's id.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The call did not complete within its deadline.
    #[error(
        "peer {peer} did not answer within {timeout:?}; it may be overloaded or cut off: \
         retry later or raise the peer timeout"
    )]
    Timeout {
        /// The peer's id.
        peer: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The peer understood the request and refused it (bad or oversized record, wrong
    /// cluster, shutting down). Retrying it unchanged fails again.
    #[error(
        "peer {peer} refused the request: {reason}; retrying it unchanged fails again: fix the \
         request or the peer's configuration"
    )]
    Refused {
        /// The peer's id.
        peer: String,
        /// The peer's reason.
        reason: String,
    },
    /// The request or the response exceeds a message size limit (this node's or the
    /// peer's).
    #[error(
        "a message to or from peer {peer} is {} over the {limit}-byte message limit; send \
         smaller batches or pages, or raise the limit on both nodes",
        size_of_message(*bytes)
    )]
    TooLarge {
        /// The peer's id.
        peer: String,
        /// Size of the message in bytes; 0 when unknown.
        bytes: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The peer tried and failed (storage error, overloaded, internal error).
    #[error(
        "peer {peer} failed the request: {message}; retry later, and read that peer's log if \
         it persists"
    )]
    Failed {
        /// The peer's id.
        peer: String,
        /// What failed, as the peer or the transport reported it.
        message: String,
    },
}

fn size_of_message(bytes: usize) -> String {
    if bytes == 0 {
        "of unknown size,".to_string()
    } else {
        format!("{bytes} bytes,")
    }
}

impl PeerError {
    /// The id of the peer the call went to.
    pub fn peer(&self) -> &str {
        match self {
            PeerError::Unreachable { peer, .. }
            | PeerError::Timeout { peer, .. }
            | PeerError::Refused { peer, .. }
            | PeerError::TooLarge { peer, .. }
            | PeerError::Failed { peer, .. } => peer,
        }
    }

    /// A short stable name of the variant, for metrics labels: "unreachable", "timeout",
    /// "refused", "too_large" or "failed".
    pub fn kind(&self) -> &'static str {
        match self {
            PeerError::Unreachable { .. } => "unreachable",
            PeerError::Timeout { .. } => "timeout",
            PeerError::Refused { .. } => "refused",
            PeerError::TooLarge { .. } => "too_large",
            PeerError::Failed { .. } => "failed",
        }
    }
}

/// Why a [`PeerHandler`] did not answer a request. Transports carry it to the caller as a
/// [`PeerError`]: `Refused` → [`PeerError::Refused`], `TooLarge` → [`PeerError::TooLarge`],
/// `Unavailable` and `Failed` → [`PeerError::Failed`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// The request is understood and refused (bad record, wrong cluster, shutting down);
    /// the same request fails again.
    #[error("{0}")]
    Refused(String),
    /// A request or an answer would exceed a size limit.
    #[error("found {bytes} bytes, the limit is: {limit} bytes")]
    TooLarge {
        /// Size of the message in bytes; 0 when unknown.
        bytes: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The node cannot serve now (overloaded, starting); a later retry may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node tried and failed (storage error).
    #[error("{0}")]
    Failed(String),
}

impl HandlerError {
    /// The caller's view of this error from peer `peer` (see the type's mapping).
    pub fn into_peer_error(self, peer: &str) -> PeerError {
        let peer = peer.to_string();
        match self {
            HandlerError::Refused(reason) => PeerError::Refused { peer, reason },
            HandlerError::TooLarge { bytes, limit } => PeerError::TooLarge { peer, bytes, limit },
            e @ HandlerError::Unavailable(_) => PeerError::Failed {
                peer,
                message: e.to_string(),
            },
            HandlerError::Failed(message) => PeerError::Failed { peer, message },
        }
    }
}

/// The receiving side of peer calls: what a node does when a peer calls it. The node
/// implements it; transports deliver calls to it.
#[async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers one request from node `from` (the envelope's from_node). The answer's body
    /// is the variant matching the request's (a replicate request gets a replicate
    /// response); the caller treats any other variant as a failure.
    async fn handle(
        &self,
        from: &str,
        request: peer_request::Body,
    ) -> Result<peer_response::Body, HandlerError>;
}

/// How a node calls a peer.
///
/// Contract: every call finishes within `timeout` (with [`PeerError::Timeout`] if the
/// peer is slow); a call that failed may still have been applied by the peer (calls are
/// idempotent merges, so retrying is safe); implementations keep at most one connection
/// per peer and reconnect on their own. Use [`TransportExt::call`] for typed calls.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// This node's id (put in every envelope's from_node).
    fn local_id(&self) -> &str;
    /// Sends one envelope body to `to` and waits at most `timeout`.
    async fn send(
        &self,
        to: &NodeInfo,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, PeerError>;
}

/// Typed calls over any transport (blanket impl for every `T: Transport + ?Sized`).
#[async_trait]
pub trait TransportExt: Transport {
    /// Sends `request` to `to` and returns the matching response. A response of another
    /// call is [`PeerError::Failed`] (`"answered <got> to a <NAME> request"`).
    async fn call<R: PeerRpc>(
        &self,
        to: &NodeInfo,
        request: R,
        timeout: Duration,
    ) -> Result<R::Response, PeerError>;
}

#[async_trait]
impl<T: Transport + ?Sized> TransportExt for T {
    async fn call<R: PeerRpc>(
        &self,
        to: &NodeInfo,
        request: R,
        timeout: Duration,
    ) -> Result<R::Response, PeerError> {
        let body = self.send(to, request.into_body(), timeout).await?;
        let got = response_name(&body);
        R::from_body(body).ok_or_else(|| PeerError::Failed {
            peer: to.id.clone(),
            message: format!("answered {got} to a {} request", R::NAME),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(key: &[u8], value: &[u8]) -> KeyRecord {
        KeyRecord {
            key: Bytes::copy_from_slice(key),
            record: Bytes::copy_from_slice(value),
        }
    }

    #[test]
    fn range_checksum_frames_each_field() {
        let a = range_checksum(&[record(b"ab", b"c")]);
        // The same bytes split differently between key and record, or between entries,
        // must not collide: the lengths are part of the hash.
        assert_ne!(a, range_checksum(&[record(b"a", b"bc")]));
        assert_ne!(a, range_checksum(&[record(b"a", b""), record(b"b", b"c")]));
        assert_eq!(a, range_checksum(&[record(b"ab", b"c")]));
        // Pinned: both sides of the wire and every platform must agree.
        let mut framed = Vec::new();
        framed.extend_from_slice(&2u64.to_be_bytes());
        framed.extend_from_slice(b"ab");
        framed.extend_from_slice(&1u64.to_be_bytes());
        framed.extend_from_slice(b"c");
        assert_eq!(a, xxhash_rust::xxh3::xxh3_64(&framed));
        assert_eq!(range_checksum(&[]), xxhash_rust::xxh3::xxh3_64(b""));
    }

    #[test]
    fn bodies_round_trip_and_names_match() {
        let body = RangePullRequest::default().into_body();
        assert_eq!(request_name(&body), RangePullRequest::NAME);
        assert_eq!(request_name(&PingRequest {}.into_body()), "ping");
        let pong = peer_response::Body::Ping(PingResponse {
            node_id: "b".into(),
            generation: 0,
        });
        assert_eq!(response_name(&pong), "ping");
        assert_eq!(
            PingRequest::from_body(pong.clone()),
            Some(PingResponse {
                node_id: "b".into(),
                generation: 0
            })
        );
        assert_eq!(ReplicateRequest::from_body(pong), None);
    }

    #[test]
    fn handler_errors_map_to_peer_errors() {
        let refused = HandlerError::Refused("wrong cluster".into()).into_peer_error("b");
        assert_eq!(
            refused,
            PeerError::Refused {
                peer: "b".into(),
                reason: "wrong cluster".into()
            }
        );
        assert_eq!(refused.kind(), "refused");
        assert_eq!(refused.peer(), "b");
        let large = HandlerError::TooLarge { bytes: 9, limit: 4 }.into_peer_error("b");
        assert_eq!(large.kind(), "too_large");
        assert!(large.to_string().contains("9 bytes"), "{large}");
        let busy = HandlerError::Unavailable("overloaded".into()).into_peer_error("b");
        assert_eq!(busy.kind(), "failed");
        assert!(busy.to_string().contains("overloaded"), "{busy}");
        let unknown = PeerError::TooLarge {
            peer: "c".into(),
            bytes: 0,
            limit: 4,
        };
        assert!(unknown.to_string().contains("unknown size"), "{unknown}");
        assert!(unknown.to_string().contains("peer c"), "{unknown}");
    }

    struct WrongAnswer;

    #[async_trait]
    impl Transport for WrongAnswer {
        fn local_id(&self) -> &str {
            "a"
        }
        async fn send(
            &self,
            _: &NodeInfo,
            _: peer_request::Body,
            _: Duration,
        ) -> Result<peer_response::Body, PeerError> {
            Ok(peer_response::Body::Replicate(ReplicateResponse {}))
        }
    }

    #[tokio::test]
    async fn a_response_of_the_wrong_call_is_failed() {
        let to = NodeInfo {
            id: "b".into(),
            address: "b:1".into(),
        };
        let t: &dyn Transport = &WrongAnswer;
        let err = t
            .call(&to, PingRequest {}, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PeerError::Failed {
                peer: "b".into(),
                message: "answered replicate to a ping request".into()
            }
        );
    }
}
