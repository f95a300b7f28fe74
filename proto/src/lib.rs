//! The wire API of DistKV, package `distkv.v1`.
//!
//! * `KeyValue`: the client service (Put, Get, Delete, BatchPut).
//! * `Admin`: node and cluster status.
//! * `Peer`: node-to-node calls in one envelope (`PeerRequest`/`PeerResponse`, whose
//!   `body` oneof names the call: replicate, read, ping, range pull); not for clients.
//!
//! Keys and values are bytes. A `Get` returns every current sibling and an opaque causal
//! context; a client hands that context back on its next `Put`/`Delete` of the same key.

#![allow(clippy::all, missing_docs)]

/// Generated messages and services of `distkv.v1`.
pub mod v1 {
    tonic::include_proto!("distkv.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/distkv_descriptor.bin"));
