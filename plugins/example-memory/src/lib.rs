//! Example DistKV storage plugin: an in-memory ordered map. Data lives as long as the
//! process; nothing is written to disk, so it claims no durability.
//!
//! Options (a JSON object):
//! * `data_dir` (string): accepted and ignored (the node always passes it);
//! * `panic_on` (string, for tests of the host only): the name of one operation (`open`,
//!   `get`, `write`, `scan`, `flush`, `stats`, `close`) that panics instead of running,
//!   to show that a panic becomes an error at the boundary.
//!
//! Any other option is refused.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use distkv_plugin_api::{Backend, BackendError, Entry, Op, Options};

/// Operations that `panic_on` may name.
const OPERATIONS: [&str; 7] = ["open", "get", "write", "scan", "flush", "stats", "close"];

/// An in-memory ordered map behind a lock.
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    panic_on: Option<String>,
}

impl MemoryBackend {
    fn maybe_panic(&self, operation: &str) {
        if self.panic_on.as_deref() == Some(operation) {
            panic!("example-memory: injected panic in {operation} (option panic_on)");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock only means another call panicked (an injected panic); the map is
        // still consistent because writes never panic half-way through a batch.
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backend for MemoryBackend {
    const NAME: &'static str = "example-memory";

    fn open(options: &Options) -> Result<Self, BackendError> {
        let mut panic_on = None;
        for (name, value) in options {
            match name.as_str() {
                "data_dir" => {}
                "panic_on" => match value.as_str() {
                    Some(op) if OPERATIONS.contains(&op) => panic_on = Some(op.to_string()),
                    _ => {
                        return Err(BackendError::failed(format!(
                            "option panic_on must be one of {OPERATIONS:?}, got {value}"
                        )))
                    }
                },
                other => {
                    return Err(BackendError::failed(format!(
                        "unknown option {other:?} (example-memory accepts data_dir and panic_on)"
                    )))
                }
            }
        }
        if panic_on.as_deref() == Some("open") {
            panic!("example-memory: injected panic in open (option panic_on)");
        }
        Ok(MemoryBackend {
            map: RwLock::new(BTreeMap::new()),
            panic_on,
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.maybe_panic("get");
        Ok(self.read().get(key).cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), BackendError> {
        self.maybe_panic("write");
        let mut map = self
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    map.insert(key, value);
                }
                Op::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        self.maybe_panic("scan");
        let map = self.read();
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.maybe_panic("flush");
        Ok(())
    }

    fn stats(&self) -> BTreeMap<String, String> {
        self.maybe_panic("stats");
        let map = self.read();
        let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        BTreeMap::from([
            ("keys".to_string(), map.len().to_string()),
            ("bytes".to_string(), bytes.to_string()),
        ])
    }

    fn close(&self) -> Result<(), BackendError> {
        self.maybe_panic("close");
        Ok(())
    }
}

distkv_plugin_api::export_plugin!(MemoryBackend);

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> Options {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn stores_orders_and_deletes() {
        let b = MemoryBackend::open(&options(r#"{"data_dir": "/ignored"}"#)).unwrap();
        b.write(vec![
            Op::Put {
                key: b"b".to_vec(),
                value: b"2".to_vec(),
            },
            Op::Put {
                key: b"a".to_vec(),
                value: Vec::new(),
            },
            Op::Put {
                key: b"c".to_vec(),
                value: b"3".to_vec(),
            },
            Op::Delete { key: b"c".to_vec() },
        ])
        .unwrap();
        assert_eq!(b.get(b"a").unwrap(), Some(Vec::new()));
        assert_eq!(b.get(b"c").unwrap(), None);
        let all = b.scan(Bound::Unbounded, Bound::Unbounded, 10).unwrap();
        assert_eq!(
            all,
            vec![(b"a".to_vec(), Vec::new()), (b"b".to_vec(), b"2".to_vec())]
        );
        assert_eq!(b.stats()["keys"], "2");
    }

    #[test]
    fn refuses_unknown_and_bad_options() {
        let err = MemoryBackend::open(&options(r#"{"colour": 1}"#))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("unknown option \"colour\""),
            "{err}"
        );
        let err = MemoryBackend::open(&options(r#"{"panic_on": "fly"}"#))
            .err()
            .unwrap();
        assert!(err.to_string().contains("panic_on must be one of"), "{err}");
    }

    #[test]
    #[should_panic(expected = "injected panic in get")]
    fn panic_on_injects_a_panic() {
        let b = MemoryBackend::open(&options(r#"{"panic_on": "get"}"#)).unwrap();
        let _ = b.get(b"k");
    }
}
