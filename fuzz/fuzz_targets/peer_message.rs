//! A peer envelope as the Peer service receives it: protobuf decode of `PeerRequest`,
//! then the replica handler's conversion and checks of every record, key and cursor.
#![no_main]
use distkv_node::replica::checks::{accept_record, check_cursor, check_key, PeerLimits};
use distkv_node::replica::{origin_from_wire, Origin};
use distkv_proto::v1::{peer_request::Body, PeerRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NOW: u64 = 1_700_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = PeerLimits {
        max_key_bytes: 64 * 1024,
        max_value_bytes: 16 << 20,
        max_siblings: 64,
        max_vector_entries: 64,
        max_actor_bytes: 255,
        max_ahead_micros: 3_600_000_000,
    };
    let Ok(request) = PeerRequest::decode(data) else {
        return;
    };
    match request.body {
        Some(Body::Merge(m)) => {
            for e in &m.entries {
                let origin = origin_from_wire(e.origin);
                let _ = accept_record(&e.key, &e.record, origin, &limits, NOW);
            }
        }
        Some(Body::Replicate(r)) => {
            for kr in &r.records {
                let _ = accept_record(&kr.key, &kr.record, Origin::Repair, &limits, NOW);
            }
        }
        Some(Body::Read(r)) => {
            for k in &r.keys {
                let _ = check_key(k, &limits);
            }
        }
        Some(Body::RangePull(r)) => {
            let _ = check_cursor(&r.after, &limits);
        }
        Some(Body::Ping(_)) | None => {}
    }
});
