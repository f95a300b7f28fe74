//! Damaged files are reported as `Error::Corruption` naming the file and an offset:
//! never wrong data, never a panic. Torn tails (a crash mid-append) are not corruption.

use std::path::{Path, PathBuf};

use distkv_engine::{Error, KeyRange, Lsm, LsmOptions, StorageEngine, SyncPolicy, WriteBatch};

fn opts() -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Never,
        memtable_size_bytes: 1 << 20,
        compression_level: 0,
        ..LsmOptions::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value{i:05}").repeat(4).into_bytes()
}

fn write_keys(db: &Lsm, range: std::ops::Range<u32>) {
    for i in range {
        let mut b = WriteBatch::new();
        b.put(key(i), value(i));
        db.write(b).unwrap();
    }
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, offset: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[offset] ^= 0x5a;
    std::fs::write(path, data).unwrap();
}

fn assert_corruption_in<T: std::fmt::Debug>(r: Result<T, Error>, file: &Path) -> u64 {
    match r {
        Err(Error::Corruption {
            path,
            offset,
            detail,
        }) => {
            assert_eq!(path, file, "corruption names the wrong file ({detail})");
            offset
        }
        other => panic!("expected corruption in {}, got {other:?}", file.display()),
    }
}

#[test]
fn flipped_byte_in_an_sstable_data_block_is_reported_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        write_keys(&db, 0..2000);
        db.flush_memtable().unwrap();
        db.close().unwrap();
    }
    let sst = files_with(dir.path(), "sst").pop().unwrap();
    flip(&sst, 5000);
    let db = Lsm::open(dir.path(), opts()).unwrap();
    let mut corrupt = 0;
    for i in 0..2000 {
        match db.get(&key(i)) {
            Ok(v) => assert_eq!(v, Some(value(i)), "wrong data for key {i}"),
            Err(e) => {
                assert_corruption_in(Err::<(), _>(e), &sst);
                corrupt += 1;
            }
        }
    }
    assert!(corrupt > 0, "the flipped block was never detected");
    assert_corruption_in(db.scan(&KeyRange::all(), usize::MAX), &sst);
}

#[test]
fn flipped_byte_in_an_sstable_footer_or_index_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        write_keys(&db, 0..500);
        db.flush_memtable().unwrap();
    }
    let sst = files_with(dir.path(), "sst").pop().unwrap();
    let len = std::fs::metadata(&sst).unwrap().len() as usize;
    flip(&sst, len - 20);
    assert_corruption_in(Lsm::open(dir.path(), opts()), &sst);
}

#[test]
fn flipped_byte_in_the_middle_of_the_wal_is_corruption_not_truncation() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        write_keys(&db, 0..100);
        db.close().unwrap();
    }
    let wal = files_with(dir.path(), "wal").pop().unwrap();
    let record_len = std::fs::metadata(&wal).unwrap().len() as usize / 100;
    flip(&wal, record_len * 10 + 20);
    let offset = assert_corruption_in(Lsm::open(dir.path(), opts()), &wal);
    assert_eq!(offset, (record_len * 10) as u64);
}

#[test]
fn torn_wal_tail_is_truncated_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        write_keys(&db, 0..100);
        db.close().unwrap();
    }
    let wal = files_with(dir.path(), "wal").pop().unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let db = Lsm::open(dir.path(), opts()).unwrap();
    for i in 0..99 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(value(i)));
    }
    assert_eq!(db.get(&key(99)).unwrap(), None);
}

#[test]
fn flipped_byte_in_the_manifest_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        for round in 0..3 {
            write_keys(&db, round * 100..(round + 1) * 100);
            db.flush_memtable().unwrap();
        }
        db.close().unwrap();
    }
    let manifest = dir.path().join("MANIFEST");
    flip(&manifest, 12);
    let offset = assert_corruption_in(Lsm::open(dir.path(), opts()), &manifest);
    assert_eq!(offset, 0);
}

#[test]
fn torn_manifest_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Lsm::open(dir.path(), opts()).unwrap();
        write_keys(&db, 0..100);
        db.flush_memtable().unwrap();
        db.close().unwrap();
    }
    let manifest = dir.path().join("MANIFEST");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&manifest)
        .unwrap();
    std::io::Write::write_all(&mut f, &[9, 9, 9, 9, 200, 0, 0, 0, 1]).unwrap();
    drop(f);
    let db = Lsm::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get(&key(42)).unwrap(), Some(value(42)));
}
