//! The decoders of bytes the engine reads from disk, each callable on arbitrary bytes:
//! for the fuzz targets in `fuzz/` and the robustness tests below. A decoder may refuse
//! any input (that is the point); it must never panic, loop, or allocate far more than
//! its input.

use std::path::Path;

use super::codec::{self, Cursor};
use super::manifest::Edit;
use super::sstable::{parse_table, read_block};
use super::wal::{decode_batch, MIN_PAYLOAD};

/// Decodes `payload` as the payload of one WAL record (a write batch); returns the
/// number of operations, or `None` when it does not decode.
pub fn wal_batch(payload: &[u8]) -> Option<usize> {
    decode_batch(payload).map(|b| b.ops.len())
}

/// Splits `data` into CRC-framed records as WAL and manifest recovery do, and decodes
/// each as a WAL batch and as a manifest edit; returns how many records passed their
/// checksum, or `None` when the log is corrupt (a bad record followed by good ones).
pub fn log(data: &[u8]) -> Option<usize> {
    let path = Path::new("fuzz.log");
    let wal = codec::read_log(path, data, MIN_PAYLOAD).ok();
    for (_, payload) in wal.iter().flat_map(|c| &c.records) {
        let _ = decode_batch(payload);
    }
    let manifest = codec::read_log(path, data, 0).ok()?;
    for (_, payload) in &manifest.records {
        let _ = Edit::decode(payload);
    }
    Some(manifest.records.len())
}

/// Decodes `payload` as one manifest edit; returns the files it adds and deletes, or
/// `None` when it does not decode.
pub fn manifest_edit(payload: &[u8]) -> Option<usize> {
    Edit::decode(payload).map(|e| e.added.len() + e.deleted.len())
}

/// Reads `data` as a whole SSTable file: footer, Bloom filter, index, then every data
/// block and every entry in it; returns the entries read, or `None` at the first
/// corruption found.
pub fn sstable(data: &[u8]) -> Option<usize> {
    let path = Path::new("fuzz.sst");
    let (index, bloom, _) = parse_table(path, data).ok()?;
    let mut entries = 0;
    for ie in &index {
        let _ = bloom.may_contain(&ie.last_key);
        let block = read_block(path, data, ie.offset, ie.len).ok()?;
        entries += data_block(&block)?;
    }
    Some(entries)
}

/// Decodes `block` as the contents of one (decompressed) SSTable data block; returns
/// the entries, or `None` when one does not decode.
pub fn data_block(block: &[u8]) -> Option<usize> {
    let mut c = Cursor::new(block);
    let mut n = 0;
    while !c.is_empty() {
        let at = c.pos();
        codec::skip_entry_key(&mut c)?;
        let mut again = Cursor::new(&block[at..]);
        codec::decode_entry(&mut again)?;
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::codec::{Entry, Value};
    use crate::lsm::manifest::FileMeta;
    use crate::lsm::sstable::{table_path, TableBuilder, TableSettings};
    use crate::lsm::wal::encode_batch;
    use crate::WriteOp;
    use proptest::prelude::*;

    /// Few cases: these run in every `cargo test`; the fuzz targets go further.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 64,
            ..ProptestConfig::default()
        }
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..max)
    }

    /// Mutations of a valid encoding: byte flips, a truncation and an insertion.
    fn mutate(mut data: Vec<u8>, flips: &[(usize, u8)], cut: usize, insert: &[u8]) -> Vec<u8> {
        if data.is_empty() {
            return insert.to_vec();
        }
        for &(at, x) in flips {
            let i = at % data.len();
            data[i] ^= x;
        }
        let at = cut % (data.len() + 1);
        let mut out = data[..at].to_vec();
        out.extend_from_slice(insert);
        out.extend_from_slice(&data[at..]);
        if cut.is_multiple_of(3) {
            out.truncate(at);
        }
        out
    }

    fn ops() -> impl Strategy<Value = Vec<WriteOp>> {
        prop::collection::vec(
            (bytes(8), prop::option::of(bytes(8))).prop_map(|(key, v)| match v {
                Some(value) => WriteOp::Put { key, value },
                None => WriteOp::Delete { key },
            }),
            0..6,
        )
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let file = (0usize..7, any::<u64>(), bytes(6), bytes(6)).prop_map(|(l, id, a, b)| {
            (
                l,
                FileMeta {
                    id,
                    size: id / 3,
                    smallest: a,
                    largest: b,
                    min_seq: 1,
                    max_seq: id,
                    entries: 2,
                },
            )
        });
        (
            prop::collection::vec(file, 0..3),
            prop::collection::vec((0usize..7, any::<u64>()), 0..3),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(added, deleted, n)| Edit {
                added,
                deleted,
                log_number: n,
                next_file: n.map(|n| n / 2),
                last_seq: None,
            })
    }

    fn table_bytes(level: i32, n: u32) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let settings = TableSettings {
            block_size: 64,
            compression_level: level,
            bloom_fpr: 0.01,
        };
        let mut b = TableBuilder::create(dir.path(), 1, settings).unwrap();
        for i in 0..n {
            b.add(&Entry {
                key: format!("k{i:04}").into_bytes(),
                seq: u64::from(i),
                value: if i % 5 == 4 {
                    Value::Tombstone { deleted_at: 9 }
                } else {
                    Value::Put(vec![b'v'; (i % 13) as usize])
                },
            })
            .unwrap();
        }
        b.finish().unwrap();
        std::fs::read(table_path(dir.path(), 1)).unwrap()
    }

    #[test]
    fn a_valid_table_reads_whole() {
        for level in [0, 3] {
            assert_eq!(sstable(&table_bytes(level, 50)), Some(50));
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic(data in bytes(256)) {
            let _ = wal_batch(&data);
            let _ = log(&data);
            let _ = manifest_edit(&data);
            let _ = sstable(&data);
            let _ = data_block(&data);
        }

        #[test]
        fn wal_batches_round_trip_and_mutations_never_panic(
            base in any::<u64>(), ops in ops(),
            flips in prop::collection::vec((any::<usize>(), 1u8..), 0..4),
            cut in any::<usize>(), insert in bytes(6),
        ) {
            let mut framed = Vec::new();
            encode_batch(&mut framed, base, &ops);
            let payload = &framed[codec::RECORD_HEADER..];
            let back = decode_batch(payload).expect("a batch decodes");
            prop_assert_eq!(back.base_seq, base);
            prop_assert_eq!(back.ops, ops);
            prop_assert_eq!(log(&framed), Some(1));
            let bad = mutate(framed, &flips, cut, &insert);
            let _ = log(&bad);
            let _ = wal_batch(&bad);
        }

        #[test]
        fn manifest_edits_round_trip_and_mutations_never_panic(
            e in edit(),
            flips in prop::collection::vec((any::<usize>(), 1u8..), 0..4),
            cut in any::<usize>(), insert in bytes(6),
        ) {
            let encoded = e.encode();
            prop_assert_eq!(Edit::decode(&encoded), Some(e));
            let _ = manifest_edit(&mutate(encoded, &flips, cut, &insert));
        }

        #[test]
        fn mutated_tables_never_panic(
            level in prop::sample::select(vec![0, 3]),
            flips in prop::collection::vec((any::<usize>(), 1u8..), 1..4),
            cut in any::<usize>(), insert in bytes(4),
        ) {
            let bad = mutate(table_bytes(level, 20), &flips, cut, &insert);
            // Checksums catch what the flips damaged; either way, no panic.
            let _ = sstable(&bad);
        }
    }
}
