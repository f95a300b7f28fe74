//! The storage conformance suite on the LSM engine, once per compaction strategy, with a
//! small memtable so that flushes and compactions happen inside the cases.

use std::path::Path;
use std::sync::Arc;

use distkv_engine::{CompactionStrategy, Lsm, LsmOptions, StorageEngine};

fn open(dir: &Path, compaction: CompactionStrategy) -> Arc<dyn StorageEngine> {
    let options = LsmOptions {
        compaction,
        memtable_size_bytes: 64 * 1024,
        ..LsmOptions::default()
    };
    match Lsm::open(dir, options) {
        Ok(engine) => Arc::new(engine),
        Err(e) => panic!("open LSM in {}: {e}", dir.display()),
    }
}

mod leveled {
    use distkv_engine::conformance::Capabilities;
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::open(dir, distkv_engine::CompactionStrategy::Leveled),
        Capabilities::durable()
    );
}

mod size_tiered {
    use distkv_engine::conformance::Capabilities;
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::open(dir, distkv_engine::CompactionStrategy::SizeTiered),
        Capabilities::durable()
    );
}

mod simple {
    use distkv_engine::conformance::Capabilities;
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::open(dir, distkv_engine::CompactionStrategy::Simple),
        Capabilities::durable()
    );
}
