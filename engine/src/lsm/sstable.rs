//! Immutable sorted tables (`NNNNNN.sst`).
//!
//! Layout: data blocks, a Bloom filter block, an index block, and a 48-byte footer.
//! Every block ends with `[kind u8][crc32 u32]` (kind 0 = raw, 1 = zstd with the raw
//! length in front), the CRC covering the stored bytes and the kind. The index holds the
//! last key, offset and length of each data block. The footer is
//! `[bloom off u64][bloom len u64][index off u64][index len u64][version u32][crc u32][magic u64]`.
//! Format 1 tables hold a `bloomfilter` crate filter (SipHash); format 2, written now,
//! a [`KeyFilter`] (one XXH3 hash per key). Both are read.
//! A table holds at most one version of each key, in key order.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bloomfilter::Bloom;
use memmap2::Mmap;

use super::cache::BlockCache;
use super::codec::{self, Cursor, Entry, Value};
use super::filter::KeyFilter;
use super::manifest::FileMeta;
use super::merge::EntryIter;
use crate::{Error, Result};

const MAGIC: u64 = 0x4453_4b56_5353_5431; // "DSKVSST1"
/// The format written: 2, with a [`KeyFilter`]. Format 1 (a `bloomfilter` crate filter)
/// is still read.
const FORMAT_VERSION: u32 = 2;
const FORMAT_SIP_BLOOM: u32 = 1;
const FOOTER_LEN: usize = 48;
const TRAILER_LEN: usize = 5;
const KIND_RAW: u8 = 0;
const KIND_ZSTD: u8 = 1;
/// Largest decompressed block accepted when reading (guards against absurd lengths).
const MAX_BLOCK: usize = 64 << 20;

thread_local! {
    /// zstd contexts are costly to create; each thread keeps one of each.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(raw),
            None => zstd::bulk::compress(raw, level),
        }
    })
}

fn zstd_decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(data, capacity),
            None => zstd::bulk::decompress(data, capacity),
        }
    })
}

/// Path of SSTable `id` in `dir`.
pub(crate) fn table_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:06}.sst"))
}

/// Settings a table is written with.
#[derive(Clone, Copy)]
pub(crate) struct TableSettings {
    pub block_size: usize,
    pub compression_level: i32,
    pub bloom_fpr: f64,
}

/// Writes one SSTable. Entries must be added in strictly increasing key order.
pub(crate) struct TableBuilder {
    out: BufWriter<File>,
    path: PathBuf,
    id: u64,
    settings: TableSettings,
    block: Vec<u8>,
    block_last_key: Vec<u8>,
    index: Vec<u8>,
    index_count: u32,
    /// Every key added, concatenated, and where each ends (for the Bloom filter).
    key_bytes: Vec<u8>,
    key_ends: Vec<usize>,
    offset: u64,
    smallest: Option<Vec<u8>>,
    min_seq: u64,
    max_seq: u64,
}

impl TableBuilder {
    pub fn create(dir: &Path, id: u64, settings: TableSettings) -> Result<Self> {
        let path = table_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(TableBuilder {
            out: BufWriter::with_capacity(256 << 10, file),
            path,
            id,
            settings,
            block: Vec::with_capacity(settings.block_size + 512),
            block_last_key: Vec::new(),
            index: Vec::new(),
            index_count: 0,
            key_bytes: Vec::new(),
            key_ends: Vec::new(),
            offset: 0,
            smallest: None,
            min_seq: u64::MAX,
            max_seq: 0,
        })
    }

    pub fn add(&mut self, e: &Entry) -> Result<()> {
        if self.smallest.is_none() {
            self.smallest = Some(e.key.clone());
        }
        codec::encode_entry(&mut self.block, e);
        self.block_last_key.clear();
        self.block_last_key.extend_from_slice(&e.key);
        self.key_bytes.extend_from_slice(&e.key);
        self.key_ends.push(self.key_bytes.len());
        self.min_seq = self.min_seq.min(e.seq);
        self.max_seq = self.max_seq.max(e.seq);
        if self.block.len() >= self.settings.block_size {
            self.finish_block()?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }

    /// Bytes written so far plus the open block.
    pub fn estimated_size(&self) -> u64 {
        self.offset + self.block.len() as u64
    }

    fn write_block(&mut self, raw: &[u8], compress: bool) -> Result<(u64, u64)> {
        let mut stored = Vec::new();
        let mut kind = KIND_RAW;
        if compress && self.settings.compression_level != 0 {
            let c = zstd_compress(raw, self.settings.compression_level)
                .map_err(|e| Error::io(&self.path, e))?;
            if c.len() + 4 < raw.len() {
                codec::put_u32(&mut stored, raw.len() as u32);
                stored.extend_from_slice(&c);
                kind = KIND_ZSTD;
            }
        }
        if kind == KIND_RAW {
            stored.extend_from_slice(raw);
        }
        stored.push(kind);
        let crc = crc32fast::hash(&stored);
        codec::put_u32(&mut stored, crc);
        self.out
            .write_all(&stored)
            .map_err(|e| Error::io(&self.path, e))?;
        let at = self.offset;
        self.offset += stored.len() as u64;
        Ok((at, stored.len() as u64))
    }

    fn finish_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.block);
        let (off, len) = self.write_block(&raw, true)?;
        self.block = raw;
        self.block.clear();
        codec::put_bytes(&mut self.index, &self.block_last_key);
        codec::put_u64(&mut self.index, off);
        codec::put_u64(&mut self.index, len);
        self.index_count += 1;
        Ok(())
    }

    /// Writes the filter, index and footer, fsyncs, and returns the file's metadata.
    pub fn finish(mut self) -> Result<FileMeta> {
        self.finish_block()?;
        let mut bloom = KeyFilter::with_rate(self.key_ends.len(), self.settings.bloom_fpr);
        let mut start = 0;
        for &end in &self.key_ends {
            bloom.insert(&self.key_bytes[start..end]);
            start = end;
        }
        let (bloom_off, bloom_len) = self.write_block(&bloom.to_bytes(), false)?;
        let mut index = Vec::with_capacity(self.index.len() + 4);
        codec::put_u32(&mut index, self.index_count);
        index.extend_from_slice(&self.index);
        let (index_off, index_len) = self.write_block(&index, false)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        for v in [bloom_off, bloom_len, index_off, index_len] {
            codec::put_u64(&mut footer, v);
        }
        codec::put_u32(&mut footer, FORMAT_VERSION);
        let crc = crc32fast::hash(&footer);
        codec::put_u32(&mut footer, crc);
        codec::put_u64(&mut footer, MAGIC);
        self.out
            .write_all(&footer)
            .map_err(|e| Error::io(&self.path, e))?;
        let size = self.offset + FOOTER_LEN as u64;
        let entries = self.key_ends.len() as u64;
        let largest = match self.key_ends.len() {
            0 => Vec::new(),
            1 => self.key_bytes.clone(),
            n => self.key_bytes[self.key_ends[n - 2]..].to_vec(),
        };
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(FileMeta {
            id: self.id,
            size,
            smallest: self.smallest.unwrap_or_default(),
            largest,
            min_seq: if self.min_seq == u64::MAX {
                0
            } else {
                self.min_seq
            },
            max_seq: self.max_seq,
            entries,
        })
    }
}

/// The key filter of a table, by format.
pub(crate) enum Filter {
    /// Format 1.
    SipBloom(Bloom<[u8]>),
    /// Format 2.
    Xxh3(KeyFilter),
}

impl Filter {
    /// False when `key` is certainly not in the table.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        match self {
            Filter::SipBloom(b) => b.check(key),
            Filter::Xxh3(f) => f.may_contain(key),
        }
    }
}

pub(crate) struct IndexEntry {
    pub last_key: Vec<u8>,
    pub offset: u64,
    pub len: u64,
}

/// An open, immutable SSTable read through a memory map.
pub(crate) struct Table {
    pub id: u64,
    path: PathBuf,
    mmap: Mmap,
    index: Vec<IndexEntry>,
    bloom: Filter,
    /// Size of the serialised Bloom filter, for statistics.
    pub bloom_bytes: u64,
    /// One bit per data block: set once a raw block's checksum was checked in the map.
    raw_checked: Box<[AtomicU64]>,
}

impl Table {
    /// Opens table `id`, checking the footer, index and filter checksums.
    pub fn open(dir: &Path, id: u64) -> Result<Table> {
        let path = table_path(dir, id);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: SSTables are immutable once written and renamed into the manifest; the
        // engine never writes to or truncates a live table, so the mapped bytes do not
        // change under us. Every read is bounds- and checksum-checked.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (index, bloom, bloom_bytes) = parse_table(&path, &mmap)?;
        let raw_checked = (0..index.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Table {
            id,
            path,
            mmap,
            index,
            bloom,
            bloom_bytes,
            raw_checked,
        })
    }

    /// Data block `i`. A raw (uncompressed) block is read in place from the memory map
    /// (unless the cache is asked to hold raw blocks too), its checksum checked the
    /// first time this open table reads it, as a block entering the cache is checked
    /// once; a compressed one comes from the cache or is checked, decompressed and
    /// cached.
    fn data_block(&self, i: usize, cache: &BlockCache) -> Result<Block> {
        let ie = &self.index[i];
        if !cache.caches_raw_blocks() {
            let (word, bit) = (&self.raw_checked[i / 64], 1u64 << (i % 64));
            let checked = word.load(Ordering::Relaxed) & bit != 0;
            let mapped = mapped_raw_block(&self.path, &self.mmap, ie.offset, ie.len, checked)?;
            if let Some(range) = mapped {
                if !checked {
                    word.fetch_or(bit, Ordering::Relaxed);
                }
                return Ok(Block::Mapped(range));
            }
        }
        if let Some(b) = cache.get(self.id, ie.offset) {
            return Ok(Block::Cached(b));
        }
        let b = Arc::new(read_block(&self.path, &self.mmap, ie.offset, ie.len)?);
        cache.insert(self.id, ie.offset, b.clone());
        Ok(Block::Cached(b))
    }

    /// The bytes of `block`, a block of this table.
    fn bytes<'a>(&'a self, block: &'a Block) -> &'a [u8] {
        match block {
            Block::Cached(b) => b,
            Block::Mapped(r) => &self.mmap[r.clone()],
        }
    }

    /// False when the Bloom filter proves `key` absent.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.bloom.may_contain(key)
    }

    /// Index of the first block whose last key is >= `key`.
    fn block_for(&self, key: &[u8]) -> usize {
        self.index
            .partition_point(|ie| ie.last_key.as_slice() < key)
    }

    fn corrupt_entry(&self, i: usize) -> Error {
        Error::Corruption {
            path: self.path.clone(),
            offset: self.index[i].offset,
            detail: "malformed entry in data block".into(),
        }
    }

    /// The sequence number and value stored for `key`, if any (the Bloom filter is not
    /// consulted here).
    pub fn get(&self, key: &[u8], cache: &BlockCache) -> Result<Option<(u64, Value)>> {
        let i = self.block_for(key);
        if i >= self.index.len() {
            return Ok(None);
        }
        let block = self.data_block(i, cache)?;
        let block = self.bytes(&block);
        let mut c = Cursor::new(block);
        while !c.is_empty() {
            let at = c.pos();
            let k = codec::skip_entry_key(&mut c).ok_or_else(|| self.corrupt_entry(i))?;
            match k.cmp(key) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Equal => {
                    let mut c = Cursor::new(&block[at..]);
                    return codec::decode_entry_value(&mut c)
                        .map(Some)
                        .ok_or_else(|| self.corrupt_entry(i));
                }
            }
        }
        Ok(None)
    }

    /// Iterates the entries at or after `start`.
    pub fn iter(self: &Arc<Self>, start: Bound<Vec<u8>>, cache: Arc<BlockCache>) -> TableIter {
        let block = match &start {
            Bound::Included(k) | Bound::Excluded(k) => self.block_for(k),
            Bound::Unbounded => 0,
        };
        TableIter {
            table: self.clone(),
            cache,
            block,
            data: None,
            pos: 0,
            start,
        }
    }
}

/// A data block being read: decompressed in the cache, or in place in the table's map.
pub(crate) enum Block {
    Cached(Arc<Vec<u8>>),
    /// The byte range of a raw block's entries in the table's memory map (checksum
    /// already checked).
    Mapped(std::ops::Range<usize>),
}

/// A forward iterator over one table.
pub(crate) struct TableIter {
    table: Arc<Table>,
    cache: Arc<BlockCache>,
    block: usize,
    data: Option<Block>,
    pos: usize,
    start: Bound<Vec<u8>>,
}

impl EntryIter for TableIter {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(data) = self.data.as_ref().map(|b| self.table.bytes(b)) else {
                if self.block >= self.table.index.len() {
                    return Ok(None);
                }
                self.data = Some(self.table.data_block(self.block, &self.cache)?);
                self.pos = 0;
                continue;
            };
            let Some(rest) = data.get(self.pos..).filter(|r| !r.is_empty()) else {
                self.data = None;
                self.block += 1;
                continue;
            };
            let mut c = Cursor::new(rest);
            if !matches!(self.start, Bound::Unbounded) {
                // Seeking: step over the keys before the start without decoding them.
                let k = codec::skip_entry_key(&mut c)
                    .ok_or_else(|| self.table.corrupt_entry(self.block))?;
                let before_start = match &self.start {
                    Bound::Included(s) => k < s.as_slice(),
                    Bound::Excluded(s) => k <= s.as_slice(),
                    Bound::Unbounded => false,
                };
                if before_start {
                    self.pos += c.pos();
                    continue;
                }
                self.start = Bound::Unbounded;
                c = Cursor::new(rest);
            }
            let e =
                codec::decode_entry(&mut c).ok_or_else(|| self.table.corrupt_entry(self.block))?;
            self.pos += c.pos();
            return Ok(Some(e));
        }
    }
}

/// The index, Bloom filter and filter size of the table whose bytes are `data`, checking
/// the footer, index and filter checksums; every error names `path`.
pub(crate) fn parse_table(path: &Path, data: &[u8]) -> Result<(Vec<IndexEntry>, Filter, u64)> {
    let corrupt = |offset: usize, detail: &str| Error::Corruption {
        path: path.to_path_buf(),
        offset: offset as u64,
        detail: detail.to_string(),
    };
    if data.len() < FOOTER_LEN {
        return Err(corrupt(0, "file shorter than an SSTable footer"));
    }
    let foot_at = data.len() - FOOTER_LEN;
    let footer = &data[foot_at..];
    let mut c = Cursor::new(footer);
    let (bloom_off, bloom_len, index_off, index_len) = (
        c.u64().unwrap_or(0),
        c.u64().unwrap_or(0),
        c.u64().unwrap_or(0),
        c.u64().unwrap_or(0),
    );
    let version = c.u32().unwrap_or(0);
    let crc = c.u32().unwrap_or(0);
    let magic = c.u64().unwrap_or(0);
    if magic != MAGIC {
        return Err(corrupt(foot_at + 40, "bad SSTable magic"));
    }
    if crc32fast::hash(&footer[..36]) != crc {
        return Err(corrupt(foot_at, "SSTable footer checksum mismatch"));
    }
    if version != FORMAT_VERSION && version != FORMAT_SIP_BLOOM {
        return Err(corrupt(
            foot_at + 32,
            &format!("unsupported SSTable format version {version}"),
        ));
    }
    let bloom_raw = read_block(path, data, bloom_off, bloom_len)?;
    let bloom_bytes = bloom_raw.len() as u64;
    let bloom = if version == FORMAT_SIP_BLOOM {
        Filter::SipBloom(Bloom::from_bytes(bloom_raw).map_err(|e| corrupt(bloom_off as usize, e))?)
    } else {
        Filter::Xxh3(
            KeyFilter::from_bytes(&bloom_raw)
                .ok_or_else(|| corrupt(bloom_off as usize, "malformed key filter"))?,
        )
    };
    let index_raw = read_block(path, data, index_off, index_len)?;
    let mut c = Cursor::new(&index_raw);
    let n = c
        .u32()
        .ok_or_else(|| corrupt(index_off as usize, "truncated index"))?;
    // Each entry takes at least 20 bytes: a count past that is caught below, and
    // must not reserve memory first.
    let mut index = Vec::with_capacity((n as usize).min(index_raw.len() / 20));
    for _ in 0..n {
        let entry = (|| {
            Some(IndexEntry {
                last_key: c.len_prefixed()?.to_vec(),
                offset: c.u64()?,
                len: c.u64()?,
            })
        })()
        .ok_or_else(|| corrupt(index_off as usize, "malformed index block"))?;
        index.push(entry);
    }
    Ok((index, bloom, bloom_bytes))
}

/// When the block at `offset` is raw: the range of its entries in `mmap`, after
/// checking its bounds and (unless `checked` says it was checked before) its checksum.
/// `None` for a compressed block (nothing checked).
fn mapped_raw_block(
    path: &Path,
    mmap: &[u8],
    offset: u64,
    len: u64,
    checked: bool,
) -> Result<Option<std::ops::Range<usize>>> {
    let start = offset as usize;
    let end = start.checked_add(len as usize);
    let kind = match end {
        Some(end) if len >= TRAILER_LEN as u64 && end <= mmap.len().saturating_sub(FOOTER_LEN) => {
            mmap[end - TRAILER_LEN]
        }
        // Out of bounds: read_block reports it.
        _ => return Ok(None),
    };
    if kind != KIND_RAW {
        return Ok(None);
    }
    let end = start + len as usize;
    if checked {
        return Ok(Some(start..end - TRAILER_LEN));
    }
    let body = &mmap[start..end - 4];
    let crc = u32::from_le_bytes([mmap[end - 4], mmap[end - 3], mmap[end - 2], mmap[end - 1]]);
    if crc32fast::hash(body) != crc {
        return Err(Error::Corruption {
            path: path.to_path_buf(),
            offset,
            detail: "block checksum mismatch".into(),
        });
    }
    Ok(Some(start..end - TRAILER_LEN))
}

/// Reads, checks and decompresses the block at `offset`.
pub(crate) fn read_block(path: &Path, mmap: &[u8], offset: u64, len: u64) -> Result<Vec<u8>> {
    let corrupt = |detail: &str| Error::Corruption {
        path: path.to_path_buf(),
        offset,
        detail: detail.to_string(),
    };
    let start = offset as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or_else(|| corrupt("block length overflows"))?;
    if len < TRAILER_LEN as u64 || end > mmap.len().saturating_sub(FOOTER_LEN) {
        return Err(corrupt("block lies outside the file"));
    }
    let block = &mmap[start..end];
    let (body, crc_bytes) = block.split_at(block.len() - 4);
    let crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("short trailer"))?);
    if crc32fast::hash(body) != crc {
        return Err(corrupt("block checksum mismatch"));
    }
    let (data, kind) = body.split_at(body.len() - 1);
    match kind[0] {
        KIND_RAW => Ok(data.to_vec()),
        KIND_ZSTD => {
            let mut c = Cursor::new(data);
            let raw_len =
                c.u32()
                    .ok_or_else(|| corrupt("truncated compressed block"))? as usize;
            if raw_len > MAX_BLOCK {
                return Err(corrupt("compressed block claims an absurd size"));
            }
            zstd_decompress(&data[4..], raw_len)
                .map_err(|_| corrupt("zstd block does not decompress"))
        }
        _ => Err(corrupt("unknown block compression kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_tombstone(v: &Value) -> bool {
        matches!(v, Value::Tombstone { .. })
    }

    fn settings(level: i32) -> TableSettings {
        TableSettings {
            block_size: 256,
            compression_level: level,
            bloom_fpr: 0.01,
        }
    }

    fn build(dir: &Path, level: i32, n: u32) -> FileMeta {
        let mut b = TableBuilder::create(dir, 7, settings(level)).unwrap();
        for i in 0..n {
            let value = if i % 10 == 3 {
                Value::Tombstone { deleted_at: 5 }
            } else {
                Value::Put(format!("value-{i}-{}", "x".repeat(20)).into_bytes())
            };
            b.add(&Entry {
                key: format!("k{i:05}").into_bytes(),
                seq: u64::from(i),
                value,
            })
            .unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn point_reads_iteration_and_bloom_work_with_and_without_compression() {
        for level in [0, 3, -1] {
            let dir = tempfile::tempdir().unwrap();
            let meta = build(dir.path(), level, 500);
            assert_eq!(
                (
                    meta.entries,
                    meta.smallest.as_slice(),
                    meta.largest.as_slice()
                ),
                (500, &b"k00000"[..], &b"k00499"[..])
            );
            let t = Arc::new(Table::open(dir.path(), 7).unwrap());
            let cache = Arc::new(BlockCache::new(1 << 20));
            let (_, value) = t.get(b"k00042", &cache).unwrap().unwrap();
            assert_eq!(
                value,
                Value::Put(format!("value-42-{}", "x".repeat(20)).into_bytes())
            );
            assert!(is_tombstone(&t.get(b"k00043", &cache).unwrap().unwrap().1));
            assert!(t.get(b"k00042a", &cache).unwrap().is_none());
            assert!(t.get(b"zzz", &cache).unwrap().is_none());
            assert!(t.may_contain(b"k00001"));
            let absent = (0..1000)
                .filter(|i| t.may_contain(format!("nope{i}").as_bytes()))
                .count();
            assert!(absent < 60, "bloom false positives {absent}");
            let mut it = t.iter(Bound::Excluded(b"k00100".to_vec()), cache.clone());
            assert_eq!(it.next_entry().unwrap().unwrap().key, b"k00101");
            let mut n = 1;
            while it.next_entry().unwrap().is_some() {
                n += 1;
            }
            assert_eq!(n, 399);
        }
    }

    /// Rewrites table 7 of `dir` (built by `build`) as format 1 would have written it:
    /// the same data and index blocks, a `bloomfilter` crate filter, version 1.
    fn rewrite_as_format_1(dir: &Path, n: u32) {
        let path = table_path(dir, 7);
        let file = std::fs::read(&path).unwrap();
        let mut c = Cursor::new(&file[file.len() - FOOTER_LEN..]);
        let (bloom_off, _, index_off, index_len) = (
            c.u64().unwrap(),
            c.u64().unwrap(),
            c.u64().unwrap(),
            c.u64().unwrap(),
        );
        let mut bloom =
            Bloom::<[u8]>::new_for_fp_rate_with_seed(n as usize, 0.01, &[7; 32]).unwrap();
        for i in 0..n {
            bloom.set(format!("k{i:05}").as_bytes());
        }
        let mut out = file[..bloom_off as usize].to_vec();
        let mut block = bloom.to_bytes();
        block.push(KIND_RAW);
        let crc = crc32fast::hash(&block);
        codec::put_u32(&mut block, crc);
        let new_bloom_off = out.len() as u64;
        out.extend_from_slice(&block);
        let new_index_off = out.len() as u64;
        out.extend_from_slice(&file[index_off as usize..(index_off + index_len) as usize]);
        let mut footer = Vec::new();
        for v in [new_bloom_off, block.len() as u64, new_index_off, index_len] {
            codec::put_u64(&mut footer, v);
        }
        codec::put_u32(&mut footer, FORMAT_SIP_BLOOM);
        let crc = crc32fast::hash(&footer);
        codec::put_u32(&mut footer, crc);
        codec::put_u64(&mut footer, MAGIC);
        out.extend_from_slice(&footer);
        std::fs::write(&path, out).unwrap();
    }

    #[test]
    fn format_1_tables_with_sip_bloom_filters_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 3, 300);
        rewrite_as_format_1(dir.path(), 300);
        let t = Arc::new(Table::open(dir.path(), 7).unwrap());
        assert!(matches!(t.bloom, Filter::SipBloom(_)));
        let cache = Arc::new(BlockCache::new(1 << 20));
        for i in (0..300).filter(|i| i % 10 != 3) {
            let k = format!("k{i:05}");
            assert!(t.may_contain(k.as_bytes()));
            let (_, value) = t.get(k.as_bytes(), &cache).unwrap().unwrap();
            assert_eq!(
                value,
                Value::Put(format!("value-{i}-{}", "x".repeat(20)).into_bytes())
            );
        }
        let absent = (0..1000)
            .filter(|i| t.may_contain(format!("nope{i}").as_bytes()))
            .count();
        assert!(absent < 60, "bloom false positives {absent}");
        let mut it = t.iter(Bound::Unbounded, cache);
        let mut n = 0;
        while it.next_entry().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 300);
        // And a format the reader does not know is refused, naming the file.
        let path = table_path(dir.path(), 7);
        let mut bytes = std::fs::read(&path).unwrap();
        let foot = bytes.len() - FOOTER_LEN;
        bytes[foot + 32..foot + 36].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[foot..foot + 36]);
        bytes[foot + 36..foot + 40].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Table::open(dir.path(), 7),
            Err(Error::Corruption { path: p, .. }) if p == path
        ));
    }

    #[test]
    fn flipped_bytes_are_corruption_never_wrong_data() {
        // zstd blocks (through the cache) and raw blocks (read in place from the map).
        for level in [3, 0] {
            flipped_bytes_check(level);
        }
    }

    fn flipped_bytes_check(level: i32) {
        let dir = tempfile::tempdir().unwrap();
        let meta = build(dir.path(), level, 300);
        let path = table_path(dir.path(), 7);
        let clean = std::fs::read(&path).unwrap();
        for at in (0..meta.size as usize).step_by(37) {
            let mut bad = clean.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let cache = Arc::new(BlockCache::new(0));
            let outcome = Table::open(dir.path(), 7).map(Arc::new).and_then(|t| {
                let mut it = t.iter(Bound::Unbounded, cache.clone());
                let mut n = 0;
                while let Some(e) = it.next_entry()? {
                    assert!(e.key.starts_with(b"k"));
                    n += 1;
                }
                Ok(n)
            });
            match outcome {
                Err(Error::Corruption { path: p, .. }) => assert_eq!(p, path),
                Ok(n) => assert_eq!(n, 300, "flip at {at} went unnoticed and changed data"),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
}
