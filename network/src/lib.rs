//! How DistKV nodes find and call each other.
//!
//! * [`Membership`]: who is in the cluster (the topology, explicit and versioned) and who
//!   answers now (liveness). [`StaticMembership`] is the fixed-list implementation.
//! * [`Transport`]: how a node calls a peer's [`PeerHandler`]. Every call is one
//!   envelope ([`PeerRequest`] / [`PeerResponse`]); [`PeerRpc`] types the calls and
//!   [`TransportExt::call`] makes them; failures are a typed [`PeerError`].
//!   [`GrpcTransport`] speaks the `distkv.v1.Peer` gRPC service; [`InMemoryNetwork`]
//!   connects nodes inside one process, with injected faults, for deterministic cluster
//!   tests.
//!
//! Liveness never rewrites the topology: a dead node keeps its place in the ring until an
//! operator removes it.

#![deny(missing_docs)]

mod grpc;
mod membership;
mod memory;
mod transport;

pub use grpc::{GrpcTransport, PeerService};
pub use membership::{
    parse_seed, Liveness, Membership, MembershipError, NodeInfo, StaticMembership, Topology,
};
pub use memory::{InMemoryNetwork, InMemoryTransport};
pub use transport::{
    peer_request, peer_response, range_checksum, request_name, response_name, HandlerError,
    PeerError, PeerHandler, PeerRequest, PeerResponse, PeerRpc, Transport, TransportExt,
    DEFAULT_MAX_MESSAGE_BYTES,
};
