//! How DistKV nodes find and call each other.
//!
//! * [`Membership`]: who is in the cluster (the [`Layout`]: explicit, versioned, changed
//!   only by a join, a decommission or a removal) and who answers now ([`Liveness`], from
//!   a sans-IO phi accrual detector, [`LivenessTable`]). Changes arrive as
//!   [`MembershipEvent`]s. [`StaticMembership`] is the fixed-list implementation;
//!   [`probe_members`] is the ping round that feeds its failure detector.
//! * [`Transport`]: how a node calls a peer's [`PeerHandler`]. Every call is one
//!   envelope ([`PeerRequest`] / [`PeerResponse`]); [`PeerRpc`] types the calls and
//!   [`TransportExt::call`] makes them; failures are a typed [`PeerError`].
//!   [`GrpcTransport`] speaks the `distkv.v1.Peer` gRPC service; [`InMemoryNetwork`]
//!   connects nodes inside one process, with injected faults, for deterministic cluster
//!   tests.
//!
//! Liveness never rewrites the layout: a dead node keeps its place in the ring until an
//! operator removes it.

#![deny(missing_docs)]

mod grpc;
mod membership;
mod memory;
pub mod tls;
mod transport;

pub use grpc::{GrpcTransport, PeerService};
/// The time now on the runtime's clock, for the protocol shells (gossip rounds, failure
/// detection, streams, throttles): `std::time::Instant::now()` in a running node; the
/// paused clock under a test runtime with paused time (tokio's `test-util`), so that
/// in-process cluster tests follow virtual time and need no wall clock.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

pub use membership::{
    decode_layout, encode_layout, layout_authority, newest_layout_of, parse_seed, plan_change,
    plan_join, plan_join_done, plan_leave, plan_leave_done, plan_removal, probe_members, Contact,
    DetectorSettings, DigestEntry, GossipEvent, GossipMembership, GossipMessage, GossipOptions,
    GossipSettings, Gossiper, IdentityTaken, Layout, LayoutChange, LayoutError, Liveness,
    LivenessTable, LivenessView, Member, MemberState, Membership, MembershipError, MembershipEvent,
    NodeInfo, NodeState, Outgoing, PhiDetector, Refusal, ReplicationFingerprint, StaticMembership,
    Succession, XorShift64, DEFAULT_MAX_NODES, DEFAULT_MAX_STATES_PER_MESSAGE, EVENT_CAPACITY,
    MAX_GOSSIP_STRING_BYTES, NOT_AUTHORITY,
};
pub use memory::{InMemoryNetwork, InMemoryTransport};
pub use transport::{
    peer_request, peer_response, range_checksum, request_name, response_name, HandlerError,
    PeerError, PeerHandler, PeerRequest, PeerResponse, PeerRpc, Transport, TransportExt,
    DEFAULT_MAX_MESSAGE_BYTES,
};
