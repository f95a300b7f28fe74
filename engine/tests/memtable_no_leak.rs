//! crossbeam-skiplist 0.1.3 leaks every node `SkipMap::range` visits (crossbeam issue
//! #1178). The memtable avoids `range`; this test counts live heap bytes around an engine
//! that is written, scanned many times and dropped, and fails if the nodes stay behind.
//! It lives alone in its file because the counting allocator is process-wide; its tests
//! share one lock so they never measure each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use distkv_engine::{KeyRange, Lsm, LsmOptions, StorageEngine, SyncPolicy, WriteBatch};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn exercise(dir: &std::path::Path) {
    let opts = LsmOptions {
        sync: SyncPolicy::Never,
        memtable_size_bytes: 64 << 20,
        ..LsmOptions::default()
    };
    let db = Lsm::open(dir, opts).unwrap();
    for i in 0..5000u32 {
        let mut b = WriteBatch::new();
        b.put(format!("key{i:06}"), vec![7u8; 100]);
        db.write(b).unwrap();
    }
    for i in 0..100u32 {
        let start = format!("key{:06}", i * 37);
        let got = db
            .scan(
                &KeyRange {
                    start: std::ops::Bound::Included(start.into_bytes()),
                    end: std::ops::Bound::Unbounded,
                },
                2000,
            )
            .unwrap();
        assert!(!got.is_empty());
    }
    assert_eq!(db.scan(&KeyRange::all(), usize::MAX).unwrap().len(), 5000);
    db.close().unwrap();
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn flush_epoch_garbage() {
    for _ in 0..8 {
        crossbeam_epoch::pin().flush();
    }
}

#[test]
fn memtable_nodes_visited_by_a_scan_are_freed_once_overwritten() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    distkv_engine::test_hooks::memtable_scan_then_overwrite(100);
    flush_epoch_garbage();
    let before = LIVE.load(Ordering::SeqCst);
    distkv_engine::test_hooks::memtable_scan_then_overwrite(5000);
    flush_epoch_garbage();
    let grown = LIVE.load(Ordering::SeqCst) - before;
    assert!(
        grown < 100 << 10,
        "{grown} bytes still live: memtable nodes visited by a scan leak"
    );
}

#[test]
fn memtable_scans_free_every_node_when_the_engine_is_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let warm = tempfile::tempdir().unwrap();
    let cold = tempfile::tempdir().unwrap();
    // A first run allocates the process's lazily initialised statics.
    exercise(warm.path());
    let before = LIVE.load(Ordering::SeqCst);
    exercise(cold.path());
    let after = LIVE.load(Ordering::SeqCst);
    let grown = after - before;
    assert!(
        grown < 200 << 10,
        "{grown} bytes still live after the engine was dropped: memtable nodes leak"
    );
}
