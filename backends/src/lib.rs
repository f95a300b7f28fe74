//! Storage engines of DistKV besides the LSM tree.
//!
//! * [`MemoryEngine`]: an in-memory ordered map made durable by a write-ahead log (or
//!   with no files at all, [`MemoryEngine::ephemeral`]).

#![deny(missing_docs)]

pub mod memory;

pub use memory::{MemoryEngine, MemoryOptions};
