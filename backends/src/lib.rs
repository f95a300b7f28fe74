//! Storage engines of DistKV besides the LSM tree.
//!
//! * [`MemoryEngine`]: an in-memory ordered map made durable by a write-ahead log (or
//!   with no files at all, [`MemoryEngine::ephemeral`]).
//! * [`PluginEngine`]: a storage backend in a dynamically loaded plugin library (see
//!   `docs/plugins.md` and the `distkv-plugin-api` crate).

#![deny(missing_docs)]

pub mod memory;
pub mod plugin;

pub use memory::{MemoryEngine, MemoryOptions};
pub use plugin::{options_with_data_dir, PluginEngine, PluginError};
