//! What a replica accepts from a peer. Peers are checked with the same limits as
//! clients (a peer can be buggy, or not a peer at all): key and value sizes, sibling
//! counts, version-vector sizes and counters no node could have issued. Plain functions
//! over data, so each refusal is tested without a network.

use crate::api::NodeSettings;
use crate::coordinator::MAX_NODE_ID_BYTES;
use crate::version::{DecodeError, Record};

use super::keys::TOKEN_BYTES;
use super::Origin;

/// How many times `limits.max_siblings` (and `replication.max_vector_entries`) a repair
/// record may hold. Repairs are never refused for their sibling count (they were
/// acknowledged elsewhere), but siblings of replicas that each took writes while apart
/// add up, so a repair may legitimately exceed the limit; this hard cap only stops a
/// hostile or broken peer from making a node decode and store an unbounded record.
pub const REPAIR_HEADROOM: usize = 16;

/// The limits a replica checks what peers send against (see [`NodeSettings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// `limits.max_key_bytes`.
    pub max_key_bytes: usize,
    /// `limits.max_value_bytes`, per sibling.
    pub max_value_bytes: usize,
    /// `limits.max_siblings`: the most siblings a client-origin record may carry (the
    /// writer also refuses a client write that would grow a key past it).
    pub max_siblings: usize,
    /// `replication.max_vector_entries`: the most actors in a client-origin record's
    /// causal context.
    pub max_vector_entries: usize,
    /// Longest actor (node id).
    pub max_actor_bytes: usize,
    /// `limits.max_clock_skew` in microseconds: a counter further ahead of this node's
    /// clock was issued by no node.
    pub max_ahead_micros: u64,
}

impl PeerLimits {
    /// The limits of `settings`.
    pub fn from_settings(settings: &NodeSettings) -> Self {
        PeerLimits {
            max_key_bytes: settings.max_key_bytes,
            max_value_bytes: settings.max_value_bytes,
            max_siblings: settings.max_siblings.max(1),
            max_vector_entries: settings.max_vector_entries.max(1),
            max_actor_bytes: MAX_NODE_ID_BYTES,
            max_ahead_micros: u64::try_from(settings.max_clock_skew.as_micros())
                .unwrap_or(u64::MAX),
        }
    }

    /// The most siblings a record of `origin` may carry.
    pub fn siblings_cap(&self, origin: Origin) -> usize {
        match origin {
            Origin::Client => self.max_siblings,
            Origin::Repair => self.max_siblings.saturating_mul(REPAIR_HEADROOM),
        }
    }

    /// The most actors a record of `origin` may name in its `seen` vector.
    pub fn actors_cap(&self, origin: Origin) -> usize {
        match origin {
            Origin::Client => self.max_vector_entries,
            Origin::Repair => self.max_vector_entries.saturating_mul(REPAIR_HEADROOM),
        }
    }
}

fn cap_name(origin: Origin, base: &str) -> String {
    match origin {
        Origin::Client => format!("{base}, for a client write"),
        Origin::Repair => format!("{base} × {REPAIR_HEADROOM}, for a repair"),
    }
}

/// Checks a user key from a peer: non-empty and within `limits.max_key_bytes`.
pub fn check_key(key: &[u8], limits: &PeerLimits) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty: keys are 1 byte or longer".into());
    }
    if key.len() > limits.max_key_bytes {
        return Err(format!(
            "key is {} bytes, over limits.max_key_bytes = {}",
            key.len(),
            limits.max_key_bytes
        ));
    }
    Ok(())
}

/// Checks a range-pull cursor: a stored key (token prefix and user key) or empty.
pub fn check_cursor(after: &[u8], limits: &PeerLimits) -> Result<(), String> {
    let max = TOKEN_BYTES + limits.max_key_bytes;
    if after.len() > max {
        return Err(format!(
            "range cursor is {} bytes; a cursor is a stored key of at most {max} bytes ({TOKEN_BYTES}-byte token + limits.max_key_bytes)",
            after.len()
        ));
    }
    Ok(())
}

/// Decodes a record a peer sent as `origin`, refusing before decoding one that holds
/// more siblings or actors than `origin` allows (see [`PeerLimits::siblings_cap`]).
pub fn decode_record(bytes: &[u8], origin: Origin, limits: &PeerLimits) -> Result<Record, String> {
    let siblings = limits.siblings_cap(origin);
    let actors = limits.actors_cap(origin);
    Record::decode_bounded(bytes, siblings, actors).map_err(|e: DecodeError| {
        format!(
            "{e} (at most {siblings} siblings, {}, and {actors} actors, {})",
            cap_name(origin, "limits.max_siblings"),
            cap_name(origin, "replication.max_vector_entries")
        )
    })
}

/// Checks a decoded record of `key` from a peer against `limits` at this node's time
/// `now_micros`: the key, the count of siblings and actors, each value's size, each
/// actor's name, and that no counter lies further ahead of the clock than any node could
/// have issued (a crafted counter would hide every later write of the key here).
pub fn check_record(
    key: &[u8],
    record: &Record,
    origin: Origin,
    limits: &PeerLimits,
    now_micros: u64,
) -> Result<(), String> {
    check_key(key, limits)?;
    let siblings = limits.siblings_cap(origin);
    if record.siblings.len() > siblings {
        return Err(format!(
            "record holds {} siblings, over {siblings} ({})",
            record.siblings.len(),
            cap_name(origin, "limits.max_siblings")
        ));
    }
    let actors = limits.actors_cap(origin);
    if record.seen.len() > actors {
        return Err(format!(
            "record's version vector names {} actors, over {actors} ({})",
            record.seen.len(),
            cap_name(origin, "replication.max_vector_entries")
        ));
    }
    let horizon = now_micros.saturating_add(limits.max_ahead_micros);
    let check_actor = |actor: &str, counter: u64| -> Result<(), String> {
        if actor.is_empty() || actor.len() > limits.max_actor_bytes {
            return Err(format!(
                "record names a node id of {} bytes; node ids are 1 to {} bytes",
                actor.len(),
                limits.max_actor_bytes
            ));
        }
        if counter > horizon {
            return Err(format!(
                "record claims counter {counter} for node {actor:?}, ahead of this node's clock ({now_micros}) by more than limits.max_clock_skew: no node issued it"
            ));
        }
        Ok(())
    };
    for (actor, counter) in record.seen.iter() {
        check_actor(actor, counter)?;
    }
    for s in &record.siblings {
        check_actor(&s.dot.actor, s.dot.counter)?;
        if let Some(v) = &s.value {
            if v.len() > limits.max_value_bytes {
                return Err(format!(
                    "record holds a value of {} bytes, over limits.max_value_bytes = {}",
                    v.len(),
                    limits.max_value_bytes
                ));
            }
        }
    }
    Ok(())
}

/// Decodes and checks one record a peer sent (see [`decode_record`], [`check_record`]).
pub fn accept_record(
    key: &[u8],
    bytes: &[u8],
    origin: Origin,
    limits: &PeerLimits,
    now_micros: u64,
) -> Result<Record, String> {
    check_key(key, limits)?;
    let record = decode_record(bytes, origin, limits)?;
    check_record(key, &record, origin, limits, now_micros)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Dot, Sibling, VersionVector};

    const NOW: u64 = 1_700_000_000_000_000;

    fn limits() -> PeerLimits {
        PeerLimits {
            max_key_bytes: 16,
            max_value_bytes: 32,
            max_siblings: 4,
            max_vector_entries: 3,
            max_actor_bytes: 8,
            max_ahead_micros: 1_000,
        }
    }

    fn sibling(actor: &str, counter: u64, len: usize) -> Sibling {
        Sibling {
            dot: Dot {
                actor: actor.into(),
                counter,
            },
            timestamp_ms: counter / 1000,
            value: Some(vec![b'v'; len]),
        }
    }

    fn record(siblings: usize, actors: usize) -> Record {
        let mut seen = VersionVector::new();
        for i in 0..actors {
            seen.add(&Dot {
                actor: format!("s{i}"),
                counter: NOW - 10,
            });
        }
        Record {
            seen,
            siblings: (0..siblings)
                .map(|i| sibling(&format!("n{i}"), NOW - 1, 4))
                .collect(),
        }
    }

    fn accept(key: &[u8], r: &Record, origin: Origin) -> Result<Record, String> {
        accept_record(key, &r.encode(), origin, &limits(), NOW)
    }

    #[test]
    fn a_well_formed_record_is_accepted_either_way() {
        let r = record(1, 3);
        assert_eq!(accept(b"k", &r, Origin::Client).unwrap(), r);
        assert_eq!(accept(b"k", &r, Origin::Repair).unwrap(), r);
    }

    #[test]
    fn empty_and_oversized_keys_are_refused() {
        let r = record(1, 0);
        let err = accept(b"", &r, Origin::Repair).unwrap_err();
        assert!(err.contains("key is empty"), "{err}");
        let err = accept(&[b'k'; 17], &r, Origin::Repair).unwrap_err();
        assert!(
            err.contains("17 bytes") && err.contains("limits.max_key_bytes = 16"),
            "{err}"
        );
        assert!(check_key(&[b'k'; 16], &limits()).is_ok());
        let err = check_cursor(&[0; 8 + 17], &limits()).unwrap_err();
        assert!(err.contains("cursor is 25 bytes"), "{err}");
        assert!(check_cursor(&[0; 8 + 16], &limits()).is_ok());
        assert!(check_cursor(b"", &limits()).is_ok());
    }

    #[test]
    fn oversized_values_are_refused() {
        let mut r = record(1, 0);
        r.siblings[0].value = Some(vec![0; 33]);
        let err = accept(b"k", &r, Origin::Repair).unwrap_err();
        assert!(
            err.contains("33 bytes") && err.contains("limits.max_value_bytes = 32"),
            "{err}"
        );
        r.siblings[0].value = None; // a tombstone has no value to bound
        assert!(accept(b"k", &r, Origin::Client).is_ok());
    }

    #[test]
    fn client_records_over_the_sibling_limit_are_refused() {
        let err = accept(b"k", &record(5, 0), Origin::Client).unwrap_err();
        assert!(
            err.contains("5 siblings") && err.contains("limits.max_siblings"),
            "{err}"
        );
        assert!(accept(b"k", &record(4, 0), Origin::Client).is_ok());
    }

    #[test]
    fn repairs_over_the_limit_are_stored_up_to_the_hard_cap() {
        // Over max_siblings, under max_siblings × REPAIR_HEADROOM: a repair is taken.
        assert!(accept(b"k", &record(5, 0), Origin::Repair).is_ok());
        let cap = 4 * REPAIR_HEADROOM;
        assert!(accept(b"k", &record(cap, 0), Origin::Repair).is_ok());
        let err = accept(b"k", &record(cap + 1, 0), Origin::Repair).unwrap_err();
        assert!(
            err.contains(&format!("{} siblings", cap + 1))
                && err.contains(&format!("limits.max_siblings × {REPAIR_HEADROOM}")),
            "{err}"
        );
    }

    #[test]
    fn a_huge_sibling_count_is_refused_before_it_is_decoded() {
        // The count says 200,000 siblings but the bytes hold none: a bounded decode
        // refuses at the count, an unbounded one would have read on (and failed late).
        let mut bytes = vec![1u8, 0];
        let mut n = 200_000u64;
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
        let err = accept_record(b"k", &bytes, Origin::Repair, &limits(), NOW).unwrap_err();
        assert!(err.contains("200000 siblings"), "{err}");
    }

    #[test]
    fn oversized_version_vectors_are_refused() {
        let err = accept(b"k", &record(1, 4), Origin::Client).unwrap_err();
        assert!(
            err.contains("4 actors") && err.contains("replication.max_vector_entries"),
            "{err}"
        );
        assert!(accept(b"k", &record(1, 4), Origin::Repair).is_ok());
        let err = accept(b"k", &record(1, 3 * REPAIR_HEADROOM + 1), Origin::Repair).unwrap_err();
        assert!(err.contains("actors"), "{err}");
    }

    #[test]
    fn long_or_empty_node_ids_are_refused() {
        let mut r = record(1, 0);
        r.siblings[0].dot.actor = "a-long-node-id".into();
        let err = accept(b"k", &r, Origin::Repair).unwrap_err();
        assert!(err.contains("node id of 14 bytes"), "{err}");
        r.siblings[0].dot.actor = String::new();
        assert!(accept(b"k", &r, Origin::Repair).is_err());
    }

    #[test]
    fn counters_no_node_issued_are_refused() {
        let mut r = record(1, 0);
        r.siblings[0].dot.counter = NOW + 1_001;
        let err = accept(b"k", &r, Origin::Repair).unwrap_err();
        assert!(
            err.contains("limits.max_clock_skew") && err.contains("no node issued it"),
            "{err}"
        );
        let mut r = record(1, 0);
        r.seen.add(&Dot {
            actor: "n9".into(),
            counter: u64::MAX,
        });
        let err = accept(b"k", &r, Origin::Client).unwrap_err();
        assert!(err.contains(&u64::MAX.to_string()), "{err}");
        let mut r = record(1, 0);
        r.siblings[0].dot.counter = NOW + 1_000;
        assert!(accept(b"k", &r, Origin::Client).is_ok(), "within the skew");
    }

    #[test]
    fn garbage_is_refused_with_the_decoder_s_reason() {
        let err = accept_record(b"k", b"\x07junk", Origin::Repair, &limits(), NOW).unwrap_err();
        assert!(err.contains("unknown record format 7"), "{err}");
    }

    mod robustness {
        use super::*;
        use crate::replica::origin_from_wire;
        use crate::version::ContextLimits;
        use distkv_proto::v1::{peer_request, PeerRequest};
        use proptest::prelude::*;

        /// Decodes `bytes` as a peer envelope and runs every record in it through the
        /// checks a replica applies (the handler's conversion), as the fuzz target does.
        fn peer_envelope(bytes: &[u8]) {
            let Ok(request) = <PeerRequest as prost::Message>::decode(bytes) else {
                return;
            };
            match request.body {
                Some(peer_request::Body::Merge(m)) => {
                    for e in &m.entries {
                        let origin = origin_from_wire(e.origin);
                        let _ = accept_record(&e.key, &e.record, origin, &limits(), NOW);
                    }
                }
                Some(peer_request::Body::Replicate(r)) => {
                    for kr in &r.records {
                        let _ = accept_record(&kr.key, &kr.record, Origin::Repair, &limits(), NOW);
                    }
                }
                Some(peer_request::Body::Read(r)) => {
                    for k in &r.keys {
                        let _ = check_key(k, &limits());
                    }
                }
                Some(peer_request::Body::RangePull(r)) => {
                    let _ = check_cursor(&r.after, &limits());
                }
                _ => {}
            }
        }

        fn arb_record() -> impl Strategy<Value = Record> {
            let sibling = (
                0usize..3,
                0u64..4,
                prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            )
                .prop_map(|(a, c, v)| Sibling {
                    dot: Dot {
                        actor: format!("n{a}"),
                        counter: NOW - c,
                    },
                    timestamp_ms: c,
                    value: v,
                });
            (
                prop::collection::vec(sibling, 0..6),
                prop::collection::vec((0usize..5, 0u64..9), 0..5),
            )
                .prop_map(|(siblings, seen)| {
                    let mut vv = VersionVector::new();
                    for (a, c) in seen {
                        vv.add(&Dot {
                            actor: format!("s{a}"),
                            counter: NOW - c,
                        });
                    }
                    Record { seen: vv, siblings }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_peer_envelopes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                peer_envelope(&bytes);
            }

            #[test]
            fn records_round_trip_and_mutations_never_panic(
                r in arb_record(),
                flips in prop::collection::vec((any::<usize>(), 1u8..), 0..4),
                cut in any::<usize>(),
            ) {
                let encoded = r.encode();
                prop_assert_eq!(Record::decode(&encoded).unwrap(), r.clone());
                // Within the caps the bounded decode is the plain one.
                prop_assert_eq!(decode_record(&encoded, Origin::Repair, &limits()).unwrap(), r.clone());
                let mut bad = encoded;
                for (at, x) in flips {
                    let i = at % bad.len();
                    bad[i] ^= x;
                }
                bad.truncate(cut % (bad.len() + 1));
                let _ = Record::decode(&bad);
                for origin in [Origin::Client, Origin::Repair] {
                    let _ = accept_record(b"k", &bad, origin, &limits(), NOW);
                }
            }

            #[test]
            fn client_contexts_round_trip_and_mutations_never_panic(
                r in arb_record(),
                flips in prop::collection::vec((any::<usize>(), 1u8..), 0..4),
                cut in any::<usize>(),
            ) {
                let ctx_limits = ContextLimits { max_bytes: 4096, max_actor_bytes: 8, max_ahead_micros: 1_000 };
                let ctx = r.context();
                let encoded = ctx.to_context();
                prop_assert_eq!(VersionVector::from_client_context(&encoded, &ctx_limits, NOW).unwrap(), ctx);
                let mut bad = encoded;
                for (at, x) in flips {
                    let i = at % bad.len();
                    bad[i] ^= x;
                }
                bad.truncate(cut % (bad.len() + 1));
                let _ = VersionVector::from_client_context(&bad, &ctx_limits, NOW);
            }
        }
    }
}
