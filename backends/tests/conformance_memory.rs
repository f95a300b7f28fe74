//! The storage conformance suite on the memory backend, durable and ephemeral.

use std::path::Path;
use std::sync::Arc;

use distkv_backends::{MemoryEngine, MemoryOptions};
use distkv_engine::conformance::Capabilities;
use distkv_engine::StorageEngine;

fn open(dir: &Path, sync: bool) -> Arc<dyn StorageEngine> {
    match MemoryEngine::open(dir, MemoryOptions { sync }) {
        Ok(engine) => Arc::new(engine),
        Err(e) => panic!("cannot open the memory engine in {}: {e}", dir.display()),
    }
}

mod synced {
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::open(dir, true),
        super::Capabilities::durable()
    );
}

mod unsynced {
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::open(dir, false),
        super::Capabilities::durable()
    );
}

mod ephemeral {
    use super::*;
    distkv_engine::storage_conformance_tests!(
        |_dir: &Path| -> Arc<dyn StorageEngine> { Arc::new(MemoryEngine::ephemeral()) },
        Capabilities::volatile()
    );
}
