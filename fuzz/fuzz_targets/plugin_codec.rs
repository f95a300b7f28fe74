//! The plugin ABI's buffers (batches, scan pages, stats) as the host and a plugin
//! decode them; what decodes re-encodes to the same bytes.
#![no_main]
use distkv_plugin_api::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ops) = codec::decode_batch(data) {
        assert_eq!(codec::encode_batch(&ops), data);
    }
    if let Ok(page) = codec::decode_page(data) {
        assert_eq!(codec::encode_page(&page), data);
    }
    if let Ok(stats) = codec::decode_stats(data) {
        let again = codec::encode_stats(stats.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        assert_eq!(again, data);
    }
});
