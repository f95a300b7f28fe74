//! A whole SSTable file: footer, Bloom filter, index, every data block (raw or zstd)
//! and every entry. Corruption must be an error, never a panic or a huge allocation.
#![no_main]
use distkv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::sstable(data);
});
