//! The storage conformance suite on both example plugins, loaded through the plugin host
//! from the cdylibs the workspace builds.

use std::path::Path;
use std::sync::Arc;

use distkv_backends::PluginEngine;
use distkv_engine::StorageEngine;

/// Loads `package`'s library with options `{"data_dir": dir}`, as the node does.
fn load(package: &str, dir: &Path) -> Arc<dyn StorageEngine> {
    let library = distkv_tests::plugin_library(package);
    let options = serde_json::json!({ "data_dir": dir }).to_string();
    match PluginEngine::load(&library, &options) {
        Ok(engine) => Arc::new(engine),
        Err(e) => panic!("{e}"),
    }
}

mod example_memory {
    use distkv_engine::conformance::Capabilities;
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::load("distkv-example-memory", dir),
        Capabilities::volatile()
    );
}

mod example_redb {
    use distkv_engine::conformance::Capabilities;
    distkv_engine::storage_conformance_tests!(
        |dir: &std::path::Path| super::load("distkv-example-redb", dir),
        Capabilities::durable()
    );
}
