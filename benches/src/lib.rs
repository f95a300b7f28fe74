//! Shared pieces of the DistKV benchmarks: key and value generators, and the engine
//! adapters the `engine-compare` binary drives.

use std::path::Path;

use distkv_engine::{KeyRange, Lsm, LsmOptions, StorageEngine, WriteBatch};

/// Key of logical index `i`: 16 ASCII bytes. Written keys use even indexes, so the odd
/// index between two written keys is a never-written key that sorts between them.
pub fn key(i: u64) -> [u8; 16] {
    // The 16 hex digits of `i`, most significant first (the same bytes as
    // `format!("{i:016x}")`, without the formatting machinery in the timed loops).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = [0u8; 16];
    for (n, b) in k.iter_mut().enumerate() {
        *b = HEX[((i >> (60 - 4 * n)) & 0xf) as usize];
    }
    k
}

/// A 100-byte value for `i` and `round`: 50 pseudo-random bytes, then 50 repeated bytes
/// (about half compressible).
pub fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(100);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ round.wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ 0x1234_5678;
    while v.len() < 50 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(50);
    v.resize(100, b'v');
    v
}

/// The operations the comparison needs from an engine. Shared by reader threads.
pub trait BenchEngine: Sync {
    /// Name in the report.
    fn name(&self) -> String;
    /// One put.
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
    /// One get.
    fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>>;
    /// Seek to `start` and read up to `n` entries; returns how many were read.
    fn seek_next(&self, start: &[u8], n: usize) -> anyhow::Result<usize>;
    /// Reads every entry with `lo <= key < hi`; returns (entries, key + value bytes).
    fn scan_range(&self, lo: &[u8], hi: &[u8]) -> anyhow::Result<(u64, u64)>;
    /// Writes the memtable out and waits for background flushes and compactions to
    /// finish (as far as the engine lets one know).
    fn settle(&self) -> anyhow::Result<()>;
    /// A one-line summary of engine internals worth seeing in a benchmark log.
    fn describe(&self) -> String {
        String::new()
    }
    /// Engine-reported read amplification, if it has one.
    fn read_amplification(&self) -> Option<f64> {
        None
    }
    /// Bytes the engine has written to files without `write(2)` (through a memory
    /// map), which `/proc/self/io` does not count; added to it for write amplification.
    fn mapped_bytes_written(&self) -> u64 {
        0
    }
}

/// DistKV's LSM engine.
pub struct DistkvLsm {
    /// The engine.
    pub db: Lsm,
    label: String,
}

impl DistkvLsm {
    /// Opens the engine in `dir`.
    pub fn open(dir: &Path, options: LsmOptions, label: &str) -> anyhow::Result<Self> {
        Ok(DistkvLsm {
            db: Lsm::open(dir, options)?,
            label: label.to_string(),
        })
    }

    /// A numeric statistic.
    pub fn stat(&self, name: &str) -> f64 {
        match self.db.stats().get(name) {
            Some(distkv_engine::StatValue::U64(v)) => *v as f64,
            Some(distkv_engine::StatValue::F64(v)) => *v,
            _ => f64::NAN,
        }
    }
}

impl BenchEngine for DistkvLsm {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        Ok(self.db.write(b)?)
    }
    fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }
    fn seek_next(&self, start: &[u8], n: usize) -> anyhow::Result<usize> {
        let r = KeyRange {
            start: std::ops::Bound::Included(start.to_vec()),
            end: std::ops::Bound::Unbounded,
        };
        Ok(self.db.scan(&r, n)?.len())
    }
    fn scan_range(&self, lo: &[u8], hi: &[u8]) -> anyhow::Result<(u64, u64)> {
        // In pages of 1024, as the node's range streaming reads.
        let (mut n, mut bytes) = (0, 0);
        let mut r = KeyRange::between(lo, hi);
        loop {
            let page = self.db.scan(&r, 1024)?;
            for (k, v) in &page {
                n += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            match page.last() {
                Some((k, _)) if page.len() == 1024 => r = r.after(k),
                _ => return Ok((n, bytes)),
            }
        }
    }
    fn settle(&self) -> anyhow::Result<()> {
        self.db.flush_memtable()?;
        Ok(self.db.compact()?)
    }
    fn read_amplification(&self) -> Option<f64> {
        Some(self.stat("read_amplification"))
    }
    fn mapped_bytes_written(&self) -> u64 {
        // The WAL is written through a shared map of its file.
        match self.db.stats().get("bytes.wal_written") {
            Some(distkv_engine::StatValue::U64(v)) => *v,
            _ => 0,
        }
    }
    fn describe(&self) -> String {
        [
            "write_stalls",
            "write_slowdowns",
            "compactions",
            "level.0.files",
            "level.1.files",
            "level.2.files",
        ]
        .iter()
        .map(|n| format!("{n}={}", self.stat(n)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// fjall 3, the reference engine, with one keyspace.
pub struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    /// Opens fjall in `dir` with a block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> anyhow::Result<Self> {
        let db = fjall::Database::builder(dir)
            .cache_size(cache_bytes)
            .open()?;
        let ks = db.keyspace("bench", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, ks })
    }
}

impl BenchEngine for Fjall {
    fn name(&self) -> String {
        "fjall".into()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(self.ks.insert(key, value)?)
    }
    fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.ks.get(key)?.map(|v| v.to_vec()))
    }
    fn seek_next(&self, start: &[u8], n: usize) -> anyhow::Result<usize> {
        // Owned copies, as DistKV's `StorageEngine::scan` returns (and as `get` above
        // copies): the node needs owned keys and values from either engine.
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(n);
        for g in self.ks.range(start..).take(n) {
            let (k, v) = g.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out.len())
    }
    fn scan_range(&self, lo: &[u8], hi: &[u8]) -> anyhow::Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        // Owned copies in pages of 1024, as DistKV returns them (see `seek_next`).
        let mut page: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(1024);
        for g in self.ks.range(lo..hi) {
            let (k, v) = g.into_inner()?;
            n += 1;
            bytes += (k.len() + v.len()) as u64;
            page.push((k.to_vec(), v.to_vec()));
            if page.len() == 1024 {
                page.clear();
            }
        }
        Ok((n, bytes))
    }
    fn settle(&self) -> anyhow::Result<()> {
        self.db.persist(fjall::PersistMode::Buffer)?;
        // Like DistKV's settle: the memtable written out; the caller then waits until
        // the process stops writing (compactions done).
        self.ks.rotate_memtable_and_wait()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_the_hex_digits_of_their_index() {
        for i in [0, 1, 0xf, 0x10, 0xabcdef, 1 << 40, u64::MAX - 1, u64::MAX] {
            assert_eq!(
                super::key(i).as_slice(),
                format!("{i:016x}").as_bytes(),
                "{i}"
            );
        }
        assert!(super::key(2) < super::key(3) && super::key(3) < super::key(4));
    }
}
