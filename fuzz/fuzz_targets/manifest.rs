//! The MANIFEST: framed edit records split as recovery does, and one edit's payload.
#![no_main]
use distkv_engine::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::manifest_edit(data);
    let _ = fuzzing::log(data);
});
