//! The node's files: its data directory (lock and format version), the storage engine
//! named by the configuration, and the hint store.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use distkv_backends::{options_with_data_dir, MemoryEngine, MemoryOptions, PluginEngine};
use distkv_engine::{Lsm, StorageEngine};

use super::StartupError;
use crate::config::{Config, EngineKind};
use crate::handoff::HintStore;

/// Opens the storage engine named by the configuration.
pub fn open_storage(config: &Config) -> Result<(Arc<dyn StorageEngine>, String), StartupError> {
    let dir = &config.data_dir;
    match config.storage.engine {
        EngineKind::Lsm => {
            let path = dir.join("lsm");
            let engine = Lsm::open(&path, config.storage.lsm.clone()).map_err(|e| {
                StartupError(format!(
                    "cannot open the LSM engine in {}: {e}",
                    path.display()
                ))
            })?;
            Ok((Arc::new(engine), "lsm".to_string()))
        }
        EngineKind::Memory => {
            let path = dir.join("memory");
            let engine = MemoryEngine::open(&path, config.storage.memory.clone()).map_err(|e| {
                StartupError(format!(
                    "cannot open the memory engine in {}: {e}",
                    path.display()
                ))
            })?;
            Ok((Arc::new(engine), "memory".to_string()))
        }
        EngineKind::Plugin => {
            let Some(path) = &config.storage.plugin.path else {
                return Err(StartupError(
                    "storage.engine = \"plugin\" needs storage.plugin.path".to_string(),
                ));
            };
            let options = serde_json::to_value(&config.storage.plugin.options)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| {
                    StartupError("storage.plugin.options must be a table of options".to_string())
                })?;
            let dir = dir.join("plugin");
            std::fs::create_dir_all(&dir).map_err(|e| {
                StartupError(format!(
                    "cannot create the plugin data directory {}: {e}",
                    dir.display()
                ))
            })?;
            let json = options_with_data_dir(&options, &dir);
            let engine =
                PluginEngine::load(path, &json).map_err(|e| StartupError(e.to_string()))?;
            let name = format!("plugin:{}", engine.name());
            Ok((Arc::new(engine), name))
        }
    }
}

/// Takes the exclusive lock of the data directory (`data_dir/LOCK`, the engines' own
/// lock file convention), or says which directory is in use. The lock is released when
/// the returned file is dropped or the process dies, `kill -9` included.
pub(super) fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartupError> {
    distkv_engine::lock_dir(dir).map_err(|e| match e {
        distkv_engine::Error::Locked { .. } => StartupError(format!(
            "data directory {} is in use by another distkv-server (its LOCK file is held): stop that node or choose another --data-dir",
            dir.display()
        )),
        other => StartupError(format!("cannot lock data directory {}: {other}", dir.display())),
    })
}

/// Opens the hint store under `data_dir/hints`.
pub(super) fn open_hints(config: &Config) -> Result<Option<Arc<HintStore>>, StartupError> {
    if !config.replication.hinted_handoff {
        return Ok(None);
    }
    let path = config.data_dir.join("hints");
    let engine = MemoryEngine::open(&path, MemoryOptions { sync: true }).map_err(|e| {
        StartupError(format!(
            "cannot open the hint store in {}: {e}",
            path.display()
        ))
    })?;
    let store = HintStore::open(Arc::new(engine)).map_err(|e| {
        StartupError(format!(
            "cannot read the hint store in {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(Arc::new(store)))
}

/// The on-disk format this build reads and writes. Format 2 stores each key behind its
/// 8-byte ring token, so a token range is one contiguous run of keys.
pub const DATA_FORMAT: u32 = 2;

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "distkv data format ";

/// Checks that the data directory holds data of this build's format, or no data yet (then
/// records the format). Call it with the directory locked, before opening any engine.
pub fn check_data_format(dir: &Path) -> Result<(), StartupError> {
    let file = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| {
                    StartupError(format!(
                        "{} does not say which data format the directory holds (expected \"{FORMAT_PREFIX}{DATA_FORMAT}\"): it was damaged or not written by DistKV; restore it or start this node with an empty --data-dir",
                        file.display()
                    ))
                })?;
            if found != DATA_FORMAT {
                return Err(wrong_format(dir, found));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_data = ["lsm", "memory", "plugin", "hints"].iter().any(|sub| {
                std::fs::read_dir(dir.join(sub)).is_ok_and(|mut entries| entries.next().is_some())
            });
            if holds_data {
                return Err(wrong_format(dir, 1));
            }
            write_format(dir)
        }
        Err(e) => Err(StartupError(format!(
            "cannot read {}: {e}; check the permissions of the data directory",
            file.display()
        ))),
    }
}

fn wrong_format(dir: &Path, found: u32) -> StartupError {
    let written_by = if found < DATA_FORMAT {
        "an older DistKV"
    } else {
        "a newer DistKV"
    };
    StartupError(format!(
        "data directory {} holds data in format {found} (written by {written_by}); this distkv-server reads format {DATA_FORMAT} only: move the directory aside and start this node with an empty --data-dir (read repair refills it from its replicas), or run the DistKV version that wrote it",
        dir.display()
    ))
}

fn write_format(dir: &Path) -> Result<(), StartupError> {
    let fail = |e: std::io::Error| {
        StartupError(format!(
            "cannot record the data format in {}: {e}; check that the data directory is writable",
            dir.display()
        ))
    };
    let tmp = dir.join("FORMAT.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(format!("{FORMAT_PREFIX}{DATA_FORMAT}\n").as_bytes())
        .map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, dir.join(FORMAT_FILE)).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_format_and_an_old_one_is_refused() {
        let fresh = tempfile::tempdir().unwrap();
        check_data_format(fresh.path()).unwrap();
        let text = std::fs::read_to_string(fresh.path().join("FORMAT")).unwrap();
        assert_eq!(text, format!("distkv data format {DATA_FORMAT}\n"));
        check_data_format(fresh.path()).expect("the same format opens again");

        // Data without a FORMAT file was written before formats were recorded.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("lsm")).unwrap();
        std::fs::write(old.path().join("lsm/000001.sst"), b"x").unwrap();
        let err = check_data_format(old.path()).unwrap_err().0;
        assert!(
            err.contains("format 1") && err.contains("empty --data-dir"),
            "{err}"
        );
        assert!(
            !old.path().join("FORMAT").exists(),
            "a refused directory is left alone"
        );

        let newer = tempfile::tempdir().unwrap();
        std::fs::write(newer.path().join("FORMAT"), "distkv data format 9\n").unwrap();
        let err = check_data_format(newer.path()).unwrap_err().0;
        assert!(err.contains("format 9") && err.contains("newer"), "{err}");

        let garbled = tempfile::tempdir().unwrap();
        std::fs::write(garbled.path().join("FORMAT"), "hello").unwrap();
        let err = check_data_format(garbled.path()).unwrap_err().0;
        assert!(err.contains("does not say which data format"), "{err}");
    }
}
