//! One conformance suite for every [`StorageEngine`]: the contract of the
//! [crate docs](crate), checked by behaviour.
//!
//! An engine is tested through a factory that opens it in a given directory (the same
//! directory again for the reopen test) and a [`Capabilities`] saying what it promises.
//! Each case panics with a message that starts with `[conformance:<case>]`.
//!
//! Generate one `#[test]` per case with the macro (in a test module or `tests/` file):
//!
//! ```text
//! distkv_engine::storage_conformance_tests!(
//!     |dir: &std::path::Path| -> std::sync::Arc<dyn distkv_engine::StorageEngine> {
//!         std::sync::Arc::new(MyEngine::open(dir).unwrap())
//!     },
//!     distkv_engine::conformance::Capabilities::durable()
//! );
//! ```
//!
//! or run every case from one test with [`run_all`]. Cases work in fresh scratch
//! directories under the system's temporary directory, removed afterwards.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Error, KeyRange, StorageEngine, WriteBatch};

/// What an engine promises beyond the common contract.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Data written before `close` is there again when the factory reopens the same
    /// directory. Engines that keep nothing on disk say `false`, and the reopen case
    /// checks nothing for them.
    pub durable: bool,
    /// Size of the value written by the large-value case (4 MiB by default).
    pub large_value_bytes: usize,
}

impl Capabilities {
    /// An engine that keeps its data across a close and reopen.
    pub fn durable() -> Self {
        Capabilities {
            durable: true,
            large_value_bytes: 4 << 20,
        }
    }

    /// An engine whose data is gone when it is closed.
    pub fn volatile() -> Self {
        Capabilities {
            durable: false,
            ..Self::durable()
        }
    }
}

/// Opens the engine under test in a directory (which exists, and may hold the files of an
/// earlier, closed instance).
pub type Factory<'a> = &'a dyn Fn(&Path) -> Arc<dyn StorageEngine>;

/// The names of every case, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "ordering",
    "overwrite",
    "delete",
    "batches",
    "scan_bounds",
    "scan_limits_and_paging",
    "empty_values",
    "large_values",
    "reopen_durability",
    "concurrent_readers_and_writers",
    "close",
];

/// Runs every case on the engine the factory opens.
pub fn run_all(factory: Factory<'_>, caps: Capabilities) {
    for case in CASES {
        run_case(case, factory, caps);
    }
}

/// Runs one case by name (see [`CASES`]). Panics on an unknown name.
pub fn run_case(case: &str, factory: Factory<'_>, caps: Capabilities) {
    let dir = ScratchDir::new(case);
    let h = Harness {
        case: CASES
            .iter()
            .find(|c| **c == case)
            .copied()
            .unwrap_or("unknown"),
        dir: &dir.0,
        factory,
        caps,
    };
    match case {
        "ordering" => ordering(&h),
        "overwrite" => overwrite(&h),
        "delete" => delete(&h),
        "batches" => batches(&h),
        "scan_bounds" => scan_bounds(&h),
        "scan_limits_and_paging" => scan_limits_and_paging(&h),
        "empty_values" => empty_values(&h),
        "large_values" => large_values(&h),
        "reopen_durability" => reopen_durability(&h),
        "concurrent_readers_and_writers" => concurrent_readers_and_writers(&h),
        "close" => close(&h),
        other => panic!("[conformance] unknown case {other:?}; the cases are {CASES:?}"),
    }
}

/// Generates one `#[test]` per conformance case, for the engine opened by `$factory` (an
/// expression usable as `&dyn Fn(&Path) -> Arc<dyn StorageEngine>`) with capabilities
/// `$caps`. See the [module docs](crate::conformance).
#[macro_export]
macro_rules! storage_conformance_tests {
    ($factory:expr, $caps:expr) => {
        $crate::storage_conformance_tests!(@cases $factory, $caps;
            ordering overwrite delete batches scan_bounds scan_limits_and_paging empty_values
            large_values reopen_durability concurrent_readers_and_writers close);
    };
    (@cases $factory:expr, $caps:expr; $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(stringify!($case), &$factory, $caps);
            }
        )*
    };
}

/// A fresh directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(case: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "distkv-conformance-{}-{case}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!(
                "[conformance:{case}] cannot create scratch directory {}: {e}",
                dir.display()
            );
        }
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness<'a> {
    case: &'static str,
    dir: &'a Path,
    factory: Factory<'a>,
    caps: Capabilities,
}

impl Harness<'_> {
    fn open(&self) -> Arc<dyn StorageEngine> {
        (self.factory)(self.dir)
    }

    fn ok<T>(&self, what: &str, result: crate::Result<T>) -> T {
        must(self.case, what, result)
    }

    fn write(&self, e: &dyn StorageEngine, batch: WriteBatch) {
        self.ok("write", e.write(batch));
    }

    fn put(&self, e: &dyn StorageEngine, key: &[u8], value: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.write(e, b);
    }

    fn get(&self, e: &dyn StorageEngine, key: &[u8]) -> Option<Vec<u8>> {
        self.ok("get", e.get(key))
    }

    fn scan(
        &self,
        e: &dyn StorageEngine,
        range: &KeyRange,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.ok("scan", e.scan(range, limit))
    }

    fn keys(&self, e: &dyn StorageEngine, range: &KeyRange) -> Vec<Vec<u8>> {
        self.scan(e, range, usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

fn must<T>(case: &str, what: &str, result: crate::Result<T>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("[conformance:{case}] {what} failed: {e}"),
    }
}

fn ordering(h: &Harness) {
    let e = h.open();
    let mut sorted: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xFF],
        vec![0x01],
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0x7F],
        vec![0x80],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
    ];
    // Written in a scrambled order, over several batches.
    for chunk in [[11, 0, 7], [3, 9, 1], [5, 10, 2], [8, 4, 6]] {
        let mut b = WriteBatch::new();
        for i in chunk {
            b.put(sorted[i].clone(), vec![i as u8]);
        }
        h.write(&*e, b);
    }
    sorted.sort();
    let got = h.keys(&*e, &KeyRange::all());
    assert_eq!(
        got, sorted,
        "[conformance:ordering] a full scan must return keys in bytewise (unsigned) order"
    );
    for key in &sorted {
        assert!(
            h.get(&*e, key).is_some(),
            "[conformance:ordering] get({key:02x?}) lost a written key"
        );
    }
}

fn overwrite(h: &Harness) {
    let e = h.open();
    h.put(&*e, b"k", b"first");
    h.put(&*e, b"k", b"second, longer value");
    assert_eq!(
        h.get(&*e, b"k"),
        Some(b"second, longer value".to_vec()),
        "[conformance:overwrite] get must return the latest value"
    );
    h.put(&*e, b"k", b"3");
    let all = h.scan(&*e, &KeyRange::all(), 10);
    assert_eq!(
        all,
        vec![(b"k".to_vec(), b"3".to_vec())],
        "[conformance:overwrite] a scan must show one entry per key, with its latest value"
    );
}

fn delete(h: &Harness) {
    let e = h.open();
    h.put(&*e, b"a", b"1");
    h.put(&*e, b"b", b"2");
    let mut b = WriteBatch::new();
    b.delete(b"a".to_vec()).delete(b"never-written".to_vec());
    h.write(&*e, b);
    assert_eq!(
        h.get(&*e, b"a"),
        None,
        "[conformance:delete] a deleted key must be absent"
    );
    assert_eq!(
        h.keys(&*e, &KeyRange::all()),
        vec![b"b".to_vec()],
        "[conformance:delete] a scan must skip deleted keys"
    );
    h.put(&*e, b"a", b"again");
    assert_eq!(
        h.get(&*e, b"a"),
        Some(b"again".to_vec()),
        "[conformance:delete] a key written after its delete must be back"
    );
}

fn batches(h: &Harness) {
    let e = h.open();
    h.put(&*e, b"b", b"old");
    let mut b = WriteBatch::new();
    b.put(b"a".to_vec(), b"1".to_vec())
        .put(b"a".to_vec(), b"2".to_vec())
        .delete(b"b".to_vec())
        .put(b"b".to_vec(), b"3".to_vec())
        .put(b"c".to_vec(), b"x".to_vec())
        .delete(b"c".to_vec());
    h.write(&*e, b);
    assert_eq!(
        h.get(&*e, b"a"),
        Some(b"2".to_vec()),
        "[conformance:batches] within a batch, the later put must win"
    );
    assert_eq!(
        h.get(&*e, b"b"),
        Some(b"3".to_vec()),
        "[conformance:batches] a put after a delete in one batch must win"
    );
    assert_eq!(
        h.get(&*e, b"c"),
        None,
        "[conformance:batches] a delete after a put in one batch must win"
    );
    h.write(&*e, WriteBatch::new());
    assert_eq!(
        h.keys(&*e, &KeyRange::all()).len(),
        2,
        "[conformance:batches] an empty batch must change nothing"
    );
}

fn scan_bounds(h: &Harness) {
    let e = h.open();
    let keys: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![b'k', b'0' + i / 10, b'0' + i % 10])
        .collect();
    let mut b = WriteBatch::new();
    for k in &keys {
        b.put(k.clone(), k.clone());
    }
    h.write(&*e, b);
    let k = |i: usize| keys[i].clone();
    let cases: Vec<(KeyRange, std::ops::Range<usize>)> = vec![
        (KeyRange::all(), 0..20),
        (
            KeyRange {
                start: Bound::Included(k(5)),
                end: Bound::Included(k(9)),
            },
            5..10,
        ),
        (
            KeyRange {
                start: Bound::Excluded(k(5)),
                end: Bound::Excluded(k(9)),
            },
            6..9,
        ),
        (
            KeyRange {
                start: Bound::Included(k(5)),
                end: Bound::Excluded(k(9)),
            },
            5..9,
        ),
        (
            KeyRange {
                start: Bound::Excluded(k(5)),
                end: Bound::Included(k(9)),
            },
            6..10,
        ),
        (
            KeyRange {
                start: Bound::Unbounded,
                end: Bound::Excluded(k(3)),
            },
            0..3,
        ),
        (
            KeyRange {
                start: Bound::Included(k(17)),
                end: Bound::Unbounded,
            },
            17..20,
        ),
        (
            KeyRange {
                start: Bound::Included(b"k05x".to_vec()),
                end: Bound::Included(b"k07x".to_vec()),
            },
            6..8,
        ),
        (KeyRange::prefix(b"k1"), 10..20),
        (
            KeyRange {
                start: Bound::Included(k(9)),
                end: Bound::Included(k(9)),
            },
            9..10,
        ),
        (
            KeyRange {
                start: Bound::Included(k(9)),
                end: Bound::Excluded(k(9)),
            },
            0..0,
        ),
        (
            KeyRange {
                start: Bound::Included(k(12)),
                end: Bound::Included(k(4)),
            },
            0..0,
        ),
        (
            KeyRange {
                start: Bound::Included(b"z".to_vec()),
                end: Bound::Unbounded,
            },
            0..0,
        ),
    ];
    for (range, expected) in cases {
        let got = h.scan(&*e, &range, 100);
        let want: Vec<(Vec<u8>, Vec<u8>)> = keys[expected]
            .iter()
            .map(|k| (k.clone(), k.clone()))
            .collect();
        assert_eq!(
            got, want,
            "[conformance:scan_bounds] wrong entries for range {range:?}"
        );
    }
}

fn scan_limits_and_paging(h: &Harness) {
    let e = h.open();
    let mut b = WriteBatch::new();
    for i in 0..25u32 {
        b.put(i.to_be_bytes().to_vec(), vec![i as u8]);
    }
    h.write(&*e, b);
    assert!(
        h.scan(&*e, &KeyRange::all(), 0).is_empty(),
        "[conformance:scan_limits_and_paging] limit 0 must return nothing"
    );
    let first = h.keys_limited(&*e, 7);
    let want: Vec<Vec<u8>> = (0..7u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(
        first, want,
        "[conformance:scan_limits_and_paging] limit 7 must return the 7 smallest keys"
    );
    let range = KeyRange {
        start: Bound::Included(3u32.to_be_bytes().to_vec()),
        end: Bound::Excluded(22u32.to_be_bytes().to_vec()),
    };
    let mut paged: Vec<Vec<u8>> = Vec::new();
    let mut next = range.clone();
    loop {
        let page = h.scan(&*e, &next, 4);
        assert!(
            page.len() <= 4,
            "[conformance:scan_limits_and_paging] a page of limit 4 returned {} entries",
            page.len()
        );
        let Some((last, _)) = page.last() else { break };
        if let (Some(previous), Some((first, _))) = (paged.last(), page.first()) {
            assert!(
                first > previous,
                "[conformance:scan_limits_and_paging] a page started at or before the last key of the previous page (KeyRange::after must exclude it)"
            );
        }
        next = range.after(last);
        paged.extend(page.into_iter().map(|(k, _)| k));
    }
    let want: Vec<Vec<u8>> = (3..22u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(paged, want, "[conformance:scan_limits_and_paging] paging with KeyRange::after must visit every key of the range once, in order");
}

impl Harness<'_> {
    fn keys_limited(&self, e: &dyn StorageEngine, limit: usize) -> Vec<Vec<u8>> {
        self.scan(e, &KeyRange::all(), limit)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

fn empty_values(h: &Harness) {
    let e = h.open();
    h.put(&*e, b"empty", b"");
    assert_eq!(
        h.get(&*e, b"empty"),
        Some(Vec::new()),
        "[conformance:empty_values] an empty value must be returned as Some(empty), not as absent"
    );
    assert_eq!(
        h.get(&*e, b"absent"),
        None,
        "[conformance:empty_values] an absent key must be None"
    );
    let all = h.scan(&*e, &KeyRange::all(), 10);
    assert_eq!(
        all,
        vec![(b"empty".to_vec(), Vec::new())],
        "[conformance:empty_values] a scan must include keys with empty values"
    );
}

fn large_values(h: &Harness) {
    let e = h.open();
    let value: Vec<u8> = (0..h.caps.large_value_bytes)
        .map(|i| (i % 251) as u8)
        .collect();
    h.put(&*e, b"big", &value);
    h.put(&*e, b"small", b"s");
    let got = h.get(&*e, b"big");
    assert!(
        got.as_deref() == Some(&value[..]),
        "[conformance:large_values] a {}-byte value must come back intact",
        value.len()
    );
    let scanned = h.scan(&*e, &KeyRange::all(), 10);
    assert!(
        scanned.len() == 2 && scanned[0].1 == value && scanned[1].1 == b"s",
        "[conformance:large_values] a scan must return the large value intact, followed by the small one"
    );
}

fn reopen_durability(h: &Harness) {
    if !h.caps.durable {
        return;
    }
    let expected: Vec<(Vec<u8>, Vec<u8>)> = {
        let e = h.open();
        let mut b = WriteBatch::new();
        for i in 0..50u32 {
            b.put(i.to_be_bytes().to_vec(), format!("v{i}").into_bytes());
        }
        h.write(&*e, b);
        let mut b = WriteBatch::new();
        b.delete(7u32.to_be_bytes().to_vec())
            .put(8u32.to_be_bytes().to_vec(), Vec::new());
        h.write(&*e, b);
        h.put(&*e, &[0xFF, 0xFF], b"last");
        h.ok("flush", e.flush());
        let all = h.scan(&*e, &KeyRange::all(), usize::MAX);
        h.ok("close", e.close());
        all
    };
    assert_eq!(
        expected.len(),
        50,
        "[conformance:reopen_durability] setup wrote 50 live keys"
    );
    let e = h.open();
    let got = h.scan(&*e, &KeyRange::all(), usize::MAX);
    assert!(got == expected, "[conformance:reopen_durability] after close and reopen the engine holds {} entries, expected the {} written before close (or their values differ)", got.len(), expected.len());
    h.put(&*e, b"after-reopen", b"1");
    assert_eq!(
        h.get(&*e, b"after-reopen"),
        Some(b"1".to_vec()),
        "[conformance:reopen_durability] a reopened engine must accept writes"
    );
}

fn concurrent_readers_and_writers(h: &Harness) {
    const WRITERS: u32 = 2;
    const READERS: u32 = 2;
    const ROUNDS: u32 = 150;
    let e = h.open();
    let case = h.case;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let e = Arc::clone(&e);
            s.spawn(move || {
                for i in 0..ROUNDS {
                    // `a` and `b` change together: a reader must never see them differ.
                    let mut b = WriteBatch::new();
                    b.put(format!("pair/{w}/a"), i.to_be_bytes().to_vec())
                        .put(format!("pair/{w}/b"), i.to_be_bytes().to_vec())
                        .put(format!("log/{w}/{i:05}"), vec![w as u8]);
                    must(case, "write", e.write(b));
                }
            });
        }
        for _ in 0..READERS {
            let e = Arc::clone(&e);
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    let pairs = must(case, "scan", e.scan(&KeyRange::prefix(b"pair/"), 100));
                    for chunk in pairs.chunks(2) {
                        if let [(ka, va), (kb, vb)] = chunk {
                            assert!(
                                va == vb,
                                "[conformance:concurrent_readers_and_writers] a scan saw half a batch: {} and {} differ",
                                String::from_utf8_lossy(ka),
                                String::from_utf8_lossy(kb)
                            );
                        } else {
                            panic!("[conformance:concurrent_readers_and_writers] a scan saw half a batch (an odd number of pair keys)");
                        }
                    }
                    must(case, "get", e.get(b"pair/0/a"));
                }
            });
        }
    });
    for w in 0..WRITERS {
        let last = (ROUNDS - 1).to_be_bytes().to_vec();
        assert_eq!(
            h.get(&*e, format!("pair/{w}/a").as_bytes()),
            Some(last.clone()),
            "[conformance:concurrent_readers_and_writers] the last write of writer {w} is missing"
        );
        let logged = h
            .keys(&*e, &KeyRange::prefix(format!("log/{w}/").as_bytes()))
            .len();
        assert_eq!(logged, ROUNDS as usize, "[conformance:concurrent_readers_and_writers] writer {w} wrote {ROUNDS} batches, {logged} are visible");
    }
}

fn close(h: &Harness) {
    let e = h.open();
    h.put(&*e, b"k", b"v");
    h.ok("flush", e.flush());
    assert!(
        !e.stats().engine.is_empty(),
        "[conformance:close] stats of an open engine must name the engine"
    );
    h.ok("close", e.close());
    let closed = |what: &str, is_closed: bool| {
        assert!(
            is_closed,
            "[conformance:close] {what} after close must fail with Error::Closed"
        );
    };
    closed("get", matches!(e.get(b"k"), Err(Error::Closed)));
    let mut b = WriteBatch::new();
    b.put(b"k2".to_vec(), b"v".to_vec());
    closed("write", matches!(e.write(b), Err(Error::Closed)));
    closed(
        "scan",
        matches!(e.scan(&KeyRange::all(), 10), Err(Error::Closed)),
    );
    closed("flush", matches!(e.flush(), Err(Error::Closed)));
    assert!(
        e.close().is_ok(),
        "[conformance:close] closing twice must not be an error"
    );
}
