//! The contents of one decompressed SSTable data block (entries back to back).
#![no_main]
use distkv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::data_block(data);
});
