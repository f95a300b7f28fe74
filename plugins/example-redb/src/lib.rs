//! Example DistKV storage plugin: a persistent ordered store on the
//! [redb](https://www.redb.org) embedded database. Every batch is one redb write
//! transaction, committed durably (fsynced) before `write` returns; a scan reads one
//! read transaction, so it sees a consistent snapshot.
//!
//! Options (a JSON object):
//! * `path` (string): the database file, created if absent;
//! * `data_dir` (string, added by the node): used when `path` is absent; the database is
//!   then the file `example-redb.redb` in that directory (created if absent).
//!
//! Any other option is refused.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use distkv_plugin_api::{Backend, BackendError, Entry, Op, Options};
use redb::{Database, ReadableTableMetadata, TableDefinition};

/// The one table holding every key.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("distkv");

/// File name of the database inside `data_dir`.
pub const FILE_NAME: &str = "example-redb.redb";

/// A redb database file holding one ordered table.
pub struct RedbBackend {
    /// `None` once closed (dropping the database releases its file lock).
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

/// Turns any redb error into a message naming the operation and the file.
fn fail<'a, E: std::fmt::Display>(
    operation: &'a str,
    path: &'a Path,
) -> impl FnOnce(E) -> BackendError + 'a {
    move |e| BackendError::failed(format!("redb {operation} on {}: {e}", path.display()))
}

fn string_option<'a>(options: &'a Options, name: &str) -> Result<Option<&'a str>, BackendError> {
    match options.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(other) => Err(BackendError::failed(format!(
            "option {name} must be a non-empty string, got {other}"
        ))),
    }
}

impl RedbBackend {
    /// The database file the options name: `path`, else `data_dir`/[`FILE_NAME`].
    pub fn database_path(options: &Options) -> Result<PathBuf, BackendError> {
        if let Some(unknown) = options
            .keys()
            .find(|k| !["path", "data_dir"].contains(&k.as_str()))
        {
            return Err(BackendError::failed(format!(
                "unknown option {unknown:?} (example-redb accepts path and data_dir)"
            )));
        }
        match (
            string_option(options, "path")?,
            string_option(options, "data_dir")?,
        ) {
            (Some(path), _) => Ok(PathBuf::from(path)),
            (None, Some(dir)) => Ok(Path::new(dir).join(FILE_NAME)),
            (None, None) => Err(BackendError::failed(
                "no database location: set option path (a file) or data_dir (a directory)",
            )),
        }
    }

    fn with_db<T>(
        &self,
        body: impl FnOnce(&Database) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let guard = self
            .db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_ref() {
            Some(db) => body(db),
            None => Err(BackendError::Closed),
        }
    }
}

impl Backend for RedbBackend {
    const NAME: &'static str = "example-redb";

    fn open(options: &Options) -> Result<Self, BackendError> {
        let path = Self::database_path(options)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::failed(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(&path).map_err(fail("open", &path))?;
        // Create the table, so that readers always find it.
        let txn = db.begin_write().map_err(fail("begin write", &path))?;
        txn.open_table(TABLE).map_err(fail("open table", &path))?;
        txn.commit().map_err(fail("commit", &path))?;
        Ok(RedbBackend {
            db: RwLock::new(Some(db)),
            path,
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(fail("begin read", &self.path))?;
            let table = txn
                .open_table(TABLE)
                .map_err(fail("open table", &self.path))?;
            let value = table.get(key).map_err(fail("get", &self.path))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(fail("begin write", &self.path))?;
            {
                let mut table = txn
                    .open_table(TABLE)
                    .map_err(fail("open table", &self.path))?;
                for op in &ops {
                    match op {
                        Op::Put { key, value } => {
                            table
                                .insert(key.as_slice(), value.as_slice())
                                .map_err(fail("insert", &self.path))?;
                        }
                        Op::Delete { key } => {
                            table
                                .remove(key.as_slice())
                                .map_err(fail("remove", &self.path))?;
                        }
                    }
                }
            }
            // Dropping an uncommitted transaction aborts it: an error above writes nothing.
            txn.commit().map_err(fail("commit", &self.path))
        })
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(fail("begin read", &self.path))?;
            let table = txn
                .open_table(TABLE)
                .map_err(fail("open table", &self.path))?;
            let mut entries = Vec::new();
            for item in table
                .range::<&[u8]>((start, end))
                .map_err(fail("range", &self.path))?
                .take(limit)
            {
                let (k, v) = item.map_err(fail("range", &self.path))?;
                entries.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(entries)
        })
    }

    fn stats(&self) -> BTreeMap<String, String> {
        let mut stats = BTreeMap::new();
        let keys = self.with_db(|db| {
            let txn = db.begin_read().map_err(fail("begin read", &self.path))?;
            let table = txn
                .open_table(TABLE)
                .map_err(fail("open table", &self.path))?;
            table.len().map_err(fail("len", &self.path))
        });
        match keys {
            Ok(n) => stats.insert("keys".to_string(), n.to_string()),
            Err(e) => stats.insert("error".to_string(), e.to_string()),
        };
        if let Ok(meta) = std::fs::metadata(&self.path) {
            stats.insert("file_bytes".to_string(), meta.len().to_string());
        }
        stats.insert("path".to_string(), self.path.display().to_string());
        stats
    }

    fn close(&self) -> Result<(), BackendError> {
        // Every commit is already durable; dropping the database releases the file.
        self.db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        Ok(())
    }
}

distkv_plugin_api::export_plugin!(RedbBackend);

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: serde_json::Value) -> Options {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(serde_json::json!({ "data_dir": dir.path() }));
        let b = RedbBackend::open(&opts).unwrap();
        b.write(vec![
            Op::Put {
                key: vec![0xFF],
                value: b"last".to_vec(),
            },
            Op::Put {
                key: vec![0x00],
                value: Vec::new(),
            },
            Op::Put {
                key: b"gone".to_vec(),
                value: b"x".to_vec(),
            },
            Op::Delete {
                key: b"gone".to_vec(),
            },
        ])
        .unwrap();
        b.close().unwrap();
        assert!(matches!(b.get(b"x"), Err(BackendError::Closed)));
        drop(b);
        let b = RedbBackend::open(&opts).unwrap();
        let all = b.scan(Bound::Unbounded, Bound::Unbounded, 10).unwrap();
        assert_eq!(
            all,
            vec![(vec![0x00], Vec::new()), (vec![0xFF], b"last".to_vec())]
        );
        assert_eq!(b.stats()["keys"], "2");
        assert!(dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn path_option_wins_over_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/custom.redb");
        let opts = options(serde_json::json!({ "path": file, "data_dir": dir.path() }));
        let b = RedbBackend::open(&opts).unwrap();
        b.write(vec![Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }])
        .unwrap();
        assert!(file.exists());
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        let err = RedbBackend::open(&options(serde_json::json!({})))
            .err()
            .unwrap();
        assert!(err.to_string().contains("set option path"), "{err}");
        let err = RedbBackend::open(&options(serde_json::json!({ "path": 3 })))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("option path must be a non-empty string"),
            "{err}"
        );
        let err = RedbBackend::open(&options(serde_json::json!({ "path": "x", "cache": 1 })))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("unknown option \"cache\""),
            "{err}"
        );
    }
}
