//! A client's causal context (`Put`/`Delete` `context` bytes): decoded with the node's
//! limits; whatever decodes must re-encode to a context that decodes the same.
#![no_main]
use distkv_node::version::{ContextLimits, VersionVector};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = ContextLimits {
        max_bytes: 64 * 1024,
        max_actor_bytes: 255,
        max_ahead_micros: 3_600_000_000,
    };
    if let Ok(vv) = VersionVector::from_client_context(data, &limits, NOW) {
        let again = VersionVector::from_context(&vv.to_context()).expect("re-encoded context decodes");
        assert_eq!(again, vv);
    }
    let _ = VersionVector::from_context(data);
});
