//! The conformance suite passes a reference engine and catches typical engine bugs: each
//! seeded fault must make the case that covers it fail with its `[conformance:<case>]`
//! message.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use distkv_engine::conformance::{self, Capabilities};
use distkv_engine::{EngineStats, Error, KeyRange, Result, StorageEngine, WriteBatch, WriteOp};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    ExcludedStartIncluded,
    EmptyValueIsAbsent,
    FirstOpInBatchWins,
    CloseIgnored,
    ForgetsOnReopen,
    IgnoresLimit,
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// What "disk" holds for each directory: saved on close, read on open.
static DISKS: Mutex<Option<HashMap<PathBuf, Map>>> = Mutex::new(None);

struct Reference {
    map: RwLock<Map>,
    dir: PathBuf,
    closed: AtomicBool,
    fault: Fault,
}

impl Reference {
    fn open(dir: &Path, fault: Fault) -> Arc<dyn StorageEngine> {
        let saved = DISKS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .get(dir)
            .cloned();
        let map = if fault == Fault::ForgetsOnReopen {
            Map::new()
        } else {
            saved.unwrap_or_default()
        };
        Arc::new(Reference {
            map: RwLock::new(map),
            dir: dir.to_path_buf(),
            closed: AtomicBool::new(false),
            fault,
        })
    }

    fn check(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) && self.fault != Fault::CloseIgnored {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl StorageEngine for Reference {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        let value = self.map.read().unwrap().get(key).cloned();
        Ok(value.filter(|v| !(self.fault == Fault::EmptyValueIsAbsent && v.is_empty())))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.check()?;
        let mut ops = batch.into_ops();
        if self.fault == Fault::FirstOpInBatchWins {
            ops.reverse();
        }
        let mut map = self.map.write().unwrap();
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    map.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        let limit = if self.fault == Fault::IgnoresLimit {
            usize::MAX
        } else {
            limit
        };
        let mut range = range.clone();
        if let (Fault::ExcludedStartIncluded, Bound::Excluded(k)) = (self.fault, &range.start) {
            range.start = Bound::Included(k.clone());
        }
        let map = self.map.read().unwrap();
        Ok(map
            .iter()
            .filter(|(k, _)| range.contains(k))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<()> {
        self.check()
    }

    fn stats(&self) -> EngineStats {
        EngineStats::new("reference")
    }

    fn close(&self) -> Result<()> {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let map = self.map.read().unwrap().clone();
            DISKS
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .insert(self.dir.clone(), map);
        }
        Ok(())
    }
}

fn run(case: &str, fault: Fault) {
    conformance::run_case(
        case,
        &|dir: &Path| Reference::open(dir, fault),
        Capabilities::durable(),
    );
}

#[test]
fn reference_engine_passes_every_case() {
    conformance::run_all(
        &|dir: &Path| Reference::open(dir, Fault::None),
        Capabilities::durable(),
    );
}

#[test]
#[should_panic(expected = "[conformance:scan_bounds]")]
fn catches_an_excluded_start_treated_as_included() {
    run("scan_bounds", Fault::ExcludedStartIncluded);
}

#[test]
#[should_panic(expected = "[conformance:scan_limits_and_paging]")]
fn catches_paging_that_repeats_the_last_key() {
    run("scan_limits_and_paging", Fault::ExcludedStartIncluded);
}

#[test]
#[should_panic(expected = "[conformance:scan_limits_and_paging]")]
fn catches_an_ignored_limit() {
    run("scan_limits_and_paging", Fault::IgnoresLimit);
}

#[test]
#[should_panic(expected = "[conformance:empty_values]")]
fn catches_an_empty_value_read_as_absent() {
    run("empty_values", Fault::EmptyValueIsAbsent);
}

#[test]
#[should_panic(expected = "[conformance:batches]")]
fn catches_a_batch_where_the_first_operation_wins() {
    run("batches", Fault::FirstOpInBatchWins);
}

#[test]
#[should_panic(expected = "[conformance:close]")]
fn catches_calls_that_succeed_after_close() {
    run("close", Fault::CloseIgnored);
}

#[test]
#[should_panic(expected = "[conformance:reopen_durability]")]
fn catches_data_lost_on_reopen() {
    run("reopen_durability", Fault::ForgetsOnReopen);
}

#[test]
fn volatile_engines_skip_the_reopen_check() {
    conformance::run_case(
        "reopen_durability",
        &|dir: &Path| Reference::open(dir, Fault::ForgetsOnReopen),
        Capabilities::volatile(),
    );
}

#[test]
#[should_panic(expected = "unknown case")]
fn an_unknown_case_name_is_refused() {
    run("no_such_case", Fault::None);
}
