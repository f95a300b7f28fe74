//! A stored (or replicated) record: what `Record::decode` (and the replica writer's
//! `decode_stored`) reads back from the engine. A record that decodes re-encodes to
//! bytes that decode the same, and merging it is a join (idempotent).
#![no_main]
use distkv_node::version::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        let again = Record::decode(&r.encode()).expect("re-encoded record decodes");
        assert_eq!(again, r);
        let mut once = Record::default();
        once.merge(&r);
        let mut twice = once.clone();
        twice.merge(&r);
        assert_eq!(once, twice, "merge is idempotent");
        assert_eq!(once.siblings.len(), Record::default().siblings_after_merge(&r));
        let _ = r.context().to_context();
    }
});
