//! Options of the LSM engine, as embedded in the node's TOML config under `[storage.lsm]`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which compaction strategy decides what to merge. It can be changed on an existing data
/// directory: every strategy accepts any shape of tree and converges to its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompactionStrategy {
    /// L0 plus levels L1.. of non-overlapping files, each `level_size_ratio` times larger
    /// than the one above. Low space and read amplification; the default.
    #[default]
    Leveled,
    /// Cassandra-style size-tiered compaction: files of similar size are merged once
    /// `min_threshold` of them exist. Low write amplification, more space and reads.
    SizeTiered,
    /// Merge everything into one sorted run once L0 holds `file_threshold` files.
    Simple,
}

/// When the write-ahead log is fsynced relative to acknowledging a write.
///
/// Every policy puts the batch in the WAL file (the kernel page cache) before `write` returns, so
/// a crash of the *process* (`kill -9`) never loses an acknowledged write. The policies
/// differ on a crash of the *machine* (power loss, kernel panic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// fsync before acknowledging: an acknowledged write survives a power loss. Concurrent
    /// writers share one fsync (group commit), so the cost is one fsync per group rather
    /// than per write. The default, because a database user expects an acknowledged write
    /// to be durable, and group commit makes it affordable.
    #[default]
    Always,
    /// Like `always`, but the group leader waits `batch_window_us` for more writers
    /// before the fsync: fewer fsyncs under load, a little more latency.
    Batch,
    /// Acknowledge once in the WAL file (page cache); a background thread fsyncs every `sync_interval_ms`.
    /// A power loss can lose that window of acknowledged writes.
    Interval,
    /// Never fsync the WAL on its own (only on `flush`, `close` and memtable rotation).
    /// For benchmarks and data that can be rebuilt from replicas.
    Never,
}

/// Options of [`crate::Lsm`]. Every field has a default (see [`LsmOptions::default`]);
/// unknown fields are refused when deserialising, so a typo in the config is an error.
/// [`crate::Lsm::open`] validates the values and names the offending option.
///
/// In the node's configuration:
///
/// ```toml
/// [storage.lsm]
/// compaction = "size-tiered"   # "leveled" (default) | "size-tiered" | "simple"
/// sync = "batch"               # "always" (default) | "batch" | "interval" | "never"
/// memtable_size_bytes = 67108864
/// bloom_fpr = 0.005
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LsmOptions {
    /// Compaction strategy (default `leveled`).
    pub compaction: CompactionStrategy,
    /// WAL sync policy (default `always`).
    pub sync: SyncPolicy,
    /// Period of the background fsync for `sync = "interval"` (default 100 ms).
    pub sync_interval_ms: u64,
    /// How long a group-commit leader waits for more writers with `sync = "batch"`
    /// (default 200 µs).
    pub batch_window_us: u64,
    /// Size at which the active memtable is frozen and flushed (default 32 MiB). Memory
    /// for memtables is bounded by `(1 + max_immutable_memtables) x` this.
    pub memtable_size_bytes: u64,
    /// Frozen memtables waiting for flush before writers block (default 2).
    pub max_immutable_memtables: usize,
    /// Uncompressed size of an SSTable data block (default 4096).
    pub block_size_bytes: u64,
    /// Uncompressed size of a data block in compressed tables (default 2048; the smaller
    /// of this and `block_size_bytes` is used). A point read that misses the block cache
    /// decompresses one whole block, so its cost follows this size: 2 KiB blocks halve
    /// that work against 4 KiB ones for about 4% more disk and twice the index entries.
    pub compressed_block_size_bytes: u64,
    /// zstd level of data blocks: 1..=22 the usual levels, -7..=-1 zstd's fast levels,
    /// 0 no compression (default -1: on this engine's flushes it compresses as well as
    /// level 1 with about 37% fewer instructions, which the writer feels on few cores).
    pub compression_level: i32,
    /// Leveled: tables written to levels above this one (L0 up to
    /// `compress_from_level - 1`) keep their data blocks uncompressed; deeper levels use
    /// `compression_level` (default 2: L0 and L1 raw, L2 and deeper compressed, as fjall
    /// does). A read of a raw block costs a checksum (see `cache_raw_blocks`) where a
    /// block-cache miss in a compressed table costs a zstd decompression (about 8x the
    /// instructions for a 4 KiB block); the price is disk space for the two smallest
    /// levels. 0 compresses every
    /// level. Size-tiered and simple compaction compress every table.
    pub compress_from_level: usize,
    /// Target false-positive rate of the per-table Bloom filter (default 0.01).
    pub bloom_fpr: f64,
    /// Capacity of the decompressed block cache (default 64 MiB; 0 disables it).
    pub block_cache_bytes: u64,
    /// Whether the block cache also holds raw (uncompressed) blocks, those of L0 and L1
    /// with `compress_from_level = 2` (default false: they are read in place from the
    /// table's memory map, the operating system's page cache, with their checksum
    /// checked the first time the open table reads each block, and the block cache holds
    /// only decompressed blocks of the compressed levels). A raw block read in place
    /// costs a checksum of the block once; a cached one a cache lookup, but a miss costs the checksum plus a copy and an insert
    /// that evicts a decompressed block, whose next read costs a decompression. True
    /// pays when the whole tree fits in the cache.
    pub cache_raw_blocks: bool,
    /// Size at which compaction output is split into a new file (default 8 MiB).
    pub target_file_size_bytes: u64,
    /// Leveled: number of L0 files that triggers an L0 -> L1 compaction (default 4).
    pub l0_compaction_files: usize,
    /// L0 files (with compaction pending) at which each write is delayed (default 20).
    pub l0_slowdown_files: usize,
    /// L0 files (with compaction pending) at which writes block (default 36).
    pub l0_stop_files: usize,
    /// Leveled: target size of L1 (default 128 MiB: about what `l0_compaction_files`
    /// flushed memtables hold, so an L0 -> L1 compaction does not rewrite a much larger
    /// L1 each time).
    pub level1_max_bytes: u64,
    /// Leveled: each level is this many times larger than the previous (default 10).
    pub level_size_ratio: u64,
    /// Leveled: number of levels including L0 (default 7).
    pub max_levels: usize,
    /// Size-tiered: files in a bucket before it is merged (default 4).
    pub min_threshold: usize,
    /// Size-tiered: most files merged at once (default 32).
    pub max_threshold: usize,
    /// Size-tiered: a file joins a bucket if its size is >= `bucket_low` x the bucket's
    /// average (default 0.5) ...
    pub bucket_low: f64,
    /// ... and <= `bucket_high` x the average (default 1.5).
    pub bucket_high: f64,
    /// Simple: L0 files that trigger a merge of everything (default 8).
    pub file_threshold: usize,
    /// A tombstone is dropped by a bottom-level compaction only once it is this old
    /// (default 0: the node keeps its own Dynamo tombstones as values, with their own
    /// grace period, so an engine-level delete can go as soon as nothing older remains).
    pub tombstone_ttl_secs: u64,
}

impl Default for LsmOptions {
    fn default() -> Self {
        LsmOptions {
            compaction: CompactionStrategy::Leveled,
            sync: SyncPolicy::Always,
            sync_interval_ms: 100,
            batch_window_us: 200,
            memtable_size_bytes: 32 << 20,
            max_immutable_memtables: 2,
            block_size_bytes: 4096,
            compressed_block_size_bytes: 2048,
            compression_level: -1,
            compress_from_level: 2,
            bloom_fpr: 0.01,
            block_cache_bytes: 64 << 20,
            cache_raw_blocks: false,
            target_file_size_bytes: 8 << 20,
            l0_compaction_files: 4,
            l0_slowdown_files: 20,
            l0_stop_files: 36,
            level1_max_bytes: 128 << 20,
            level_size_ratio: 10,
            max_levels: 7,
            min_threshold: 4,
            max_threshold: 32,
            bucket_low: 0.5,
            bucket_high: 1.5,
            file_threshold: 8,
            tombstone_ttl_secs: 0,
        }
    }
}

fn invalid(option: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option: option.to_string(),
        reason: reason.into(),
    }
}

impl LsmOptions {
    /// Checks every value; the error names the first invalid option.
    pub fn validate(&self) -> Result<()> {
        if self.sync == SyncPolicy::Interval && self.sync_interval_ms == 0 {
            return Err(invalid(
                "sync_interval_ms",
                "must be at least 1 with sync = \"interval\"",
            ));
        }
        if self.batch_window_us > 1_000_000 {
            return Err(invalid("batch_window_us", "must be at most 1000000 (1 s)"));
        }
        if self.memtable_size_bytes < 4096 {
            return Err(invalid("memtable_size_bytes", "must be at least 4096"));
        }
        if self.max_immutable_memtables == 0 {
            return Err(invalid("max_immutable_memtables", "must be at least 1"));
        }
        if !(256..=(1 << 20)).contains(&self.block_size_bytes) {
            return Err(invalid(
                "block_size_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if !(256..=(1 << 20)).contains(&self.compressed_block_size_bytes) {
            return Err(invalid(
                "compressed_block_size_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(invalid(
                "compression_level",
                "must be between -7 (fastest) and 22; 0 turns compression off",
            ));
        }
        if !(self.bloom_fpr > 0.0 && self.bloom_fpr < 1.0) {
            return Err(invalid("bloom_fpr", "must be strictly between 0 and 1"));
        }
        if self.target_file_size_bytes < self.block_size_bytes {
            return Err(invalid(
                "target_file_size_bytes",
                "must be at least block_size_bytes",
            ));
        }
        if self.l0_compaction_files == 0 {
            return Err(invalid("l0_compaction_files", "must be at least 1"));
        }
        if self.l0_slowdown_files == 0 {
            return Err(invalid("l0_slowdown_files", "must be at least 1"));
        }
        if self.l0_stop_files < self.l0_slowdown_files {
            return Err(invalid(
                "l0_stop_files",
                "must be at least l0_slowdown_files",
            ));
        }
        if self.level1_max_bytes == 0 {
            return Err(invalid("level1_max_bytes", "must be positive"));
        }
        if self.level_size_ratio < 2 {
            return Err(invalid("level_size_ratio", "must be at least 2"));
        }
        if !(2..=16).contains(&self.max_levels) {
            return Err(invalid("max_levels", "must be between 2 and 16"));
        }
        if self.min_threshold < 2 {
            return Err(invalid("min_threshold", "must be at least 2"));
        }
        if self.max_threshold < self.min_threshold {
            return Err(invalid("max_threshold", "must be at least min_threshold"));
        }
        if !(self.bucket_low > 0.0 && self.bucket_low <= 1.0) {
            return Err(invalid("bucket_low", "must be in (0, 1]"));
        }
        if !(self.bucket_high >= 1.0 && self.bucket_high.is_finite()) {
            return Err(invalid("bucket_high", "must be a finite number >= 1"));
        }
        if self.file_threshold < 2 {
            return Err(invalid("file_threshold", "must be at least 2"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_uses_kebab_case_enums_and_snake_case_fields() {
        let o: LsmOptions = toml::from_str(
            "compaction = \"size-tiered\"\nsync = \"interval\"\nsync_interval_ms = 50\n",
        )
        .unwrap();
        assert_eq!(o.compaction, CompactionStrategy::SizeTiered);
        assert_eq!(o.sync, SyncPolicy::Interval);
        assert_eq!(o.sync_interval_ms, 50);
        assert_eq!(o.block_size_bytes, 4096);
        o.validate().unwrap();
    }

    #[test]
    fn compressed_block_size_is_checked() {
        let o = LsmOptions {
            compressed_block_size_bytes: 100,
            ..LsmOptions::default()
        };
        assert!(matches!(
            o.validate(),
            Err(Error::InvalidOption { option, .. }) if option == "compressed_block_size_bytes"
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<LsmOptions>("memtable_sise_bytes = 1").is_err());
    }

    #[test]
    fn validation_names_the_option() {
        let o = LsmOptions {
            bloom_fpr: 1.5,
            ..LsmOptions::default()
        };
        match o.validate() {
            Err(Error::InvalidOption { option, .. }) => assert_eq!(option, "bloom_fpr"),
            other => panic!("unexpected {other:?}"),
        }
        LsmOptions::default().validate().unwrap();
    }

    #[test]
    fn compression_level_accepts_zstd_fast_levels() {
        for (level, ok) in [
            (-8, false),
            (-7, true),
            (-1, true),
            (0, true),
            (22, true),
            (23, false),
        ] {
            let o = LsmOptions {
                compression_level: level,
                ..LsmOptions::default()
            };
            assert_eq!(o.validate().is_ok(), ok, "level {level}");
        }
    }
}
