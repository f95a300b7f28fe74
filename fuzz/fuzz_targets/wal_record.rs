//! A write-ahead log file: framed records (CRC, length) split as recovery does, each
//! payload decoded as a write batch; and the bytes as one batch payload.
#![no_main]
use distkv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::log(data);
    let _ = fuzzing::wal_batch(data);
});
