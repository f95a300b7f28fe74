//! The DistKV node: a coordinator over subsystems, each a struct with its own handles.
//!
//! * [`antientropy`]: hash trees, range comparison and tombstone GC (sans-IO).
//! * [`api`]: public types and [`NodeSettings`], the one source of defaults.
//! * [`coordinator`]: [`Node`], quorum reads and writes, read repair.
//! * [`placement`]: the [`placement::Partitioner`] contract, the hash ring, token ranges,
//!   and the atomically swapped placement snapshot.
//! * [`replica`]: this node's records (token-ordered keys), per-replica queues, the peer
//!   endpoint.
//! * [`handoff`]: durable hints and their replay.
//! * [`supervisor`]: owner of the background tasks.
//! * [`assembly`]: wires the subsystems for given implementations.
//! * [`config`], [`server`]: configuration and the one start-up function that names
//!   implementations; [`frontend`]: the client gRPC service.
//! * [`observe`]: the `distkv_*` Prometheus metrics (served on the admin port by
//!   `server`).
//!
//! The binaries `distkv-server` and `distkv-client` live in `src/bin/`.

pub mod antientropy;
pub mod api;
pub mod assembly;
pub mod certs;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod frontend;
pub mod handoff;
pub mod logging;
pub mod observe;
pub mod operator;
pub mod placement;
pub mod rebalance;
pub mod replica;
pub mod server;
pub mod supervisor;
mod util;
pub mod version;

pub use api::{BatchEntry, Consistency, NodeSettings, ReadRepair, ReadResult};
pub use coordinator::Node;
pub use error::NodeError;
