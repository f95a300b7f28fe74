//! The DistKV node: coordinator, ring, versions, configuration and start-up.
//!
//! The binaries `distkv-server` and `distkv-client` live in `src/bin/`.

pub mod batcher;
pub mod config;
pub mod error;
mod handoff;
pub mod hints;
pub mod logging;
pub mod node;
mod peer;
pub mod ring;
pub mod server;
pub mod service;
pub mod version;
mod writer;

pub use error::NodeError;
pub use node::{Consistency, Node, NodeSettings, ReadResult};
