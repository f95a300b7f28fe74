//! Gossip messages on the wire: the protobuf form of [`GossipMessage`] and the checked
//! decoding of what a peer sent. Every count and string is bounded before anything is
//! kept; a message over a bound is refused whole, naming the field and the bound.

use distkv_proto::v1::{
    gossip_message::Kind, GossipAck, GossipAck2, GossipDigest, GossipDigestEntry,
    GossipMessage as WireMessage, GossipNodeState, LayoutMember, LayoutMessage,
};

use super::gossip::{DigestEntry, GossipMessage, NodeState, ReplicationFingerprint};
use super::{Layout, Member, MemberState};

/// The wire form of a layout.
pub fn encode_layout(layout: &Layout) -> LayoutMessage {
    LayoutMessage {
        version: layout.version(),
        virtual_nodes: layout.virtual_nodes(),
        members: layout
            .members()
            .iter()
            .map(|m| LayoutMember {
                id: m.id.clone(),
                address: m.address.clone(),
                state: m.state.to_string(),
            })
            .collect(),
    }
}

/// Decodes a peer's layout: at most `max_members` members, bounded strings, known
/// states, unique ids.
pub fn decode_layout(message: LayoutMessage, max_members: usize) -> Result<Layout, String> {
    if message.members.len() > max_members {
        return Err(format!(
            "the layout has {} members, the limit is {max_members}",
            message.members.len()
        ));
    }
    let members = message
        .members
        .into_iter()
        .map(|m| {
            check_id("layout member id", &m.id)?;
            check_str("layout member address", &m.address)?;
            let state = match m.state.as_str() {
                "joining" => MemberState::Joining,
                "normal" => MemberState::Normal,
                "leaving" => MemberState::Leaving,
                "left" => MemberState::Left,
                other => {
                    return Err(format!(
                        "layout member {:?} has the unknown state {other:?}",
                        m.id
                    ))
                }
            };
            Ok(Member {
                id: m.id,
                address: m.address,
                state,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Layout::new(message.version, message.virtual_nodes, members).map_err(|e| e.to_string())
}

/// Longest node id, address, cluster name, partitioner name or build string accepted in
/// a gossip message, in bytes.
pub const MAX_GOSSIP_STRING_BYTES: usize = 512;

/// Bounds for decoding a peer's gossip message.
#[derive(Clone, Copy, Debug)]
pub struct WireLimits {
    /// Most digest entries (or requests) in one message.
    pub max_entries: usize,
    /// Most full states in one message.
    pub max_states: usize,
}

/// The wire form of `message`.
pub fn encode(message: &GossipMessage) -> WireMessage {
    let (cluster_name, kind) = match message {
        GossipMessage::Digest {
            cluster_name,
            entries,
        } => (
            cluster_name,
            Kind::Digest(GossipDigest {
                entries: entries.iter().map(encode_entry).collect(),
            }),
        ),
        GossipMessage::DigestAck {
            cluster_name,
            states,
            requests,
        } => (
            cluster_name,
            Kind::Ack(GossipAck {
                states: states.iter().map(encode_state).collect(),
                requests: requests.iter().map(encode_entry).collect(),
            }),
        ),
        GossipMessage::DigestAck2 {
            cluster_name,
            states,
        } => (
            cluster_name,
            Kind::Ack2(GossipAck2 {
                states: states.iter().map(encode_state).collect(),
            }),
        ),
        GossipMessage::Refused {
            cluster_name,
            reason,
        } => (cluster_name, Kind::Refused(reason.clone())),
    };
    WireMessage {
        cluster_name: cluster_name.clone(),
        kind: Some(kind),
    }
}

fn encode_entry(e: &DigestEntry) -> GossipDigestEntry {
    GossipDigestEntry {
        id: e.id.clone(),
        generation: e.generation,
        heartbeat: e.heartbeat,
    }
}

fn encode_state(s: &NodeState) -> GossipNodeState {
    GossipNodeState {
        id: s.id.clone(),
        generation: s.generation,
        heartbeat: s.heartbeat,
        address: s.address.clone(),
        cluster_name: s.cluster_name.clone(),
        layout_version: s.layout_version,
        layout_digest: s.layout_digest,
        replicas: s.replication.replicas,
        partitioner: s.replication.partitioner.clone(),
        virtual_nodes: s.replication.virtual_nodes,
        ring: s.replication.ring,
        load_bytes: s.load_bytes,
        build: s.build.clone(),
    }
}

/// Decodes a peer's message, refusing (with the reason) one that breaks a bound: more
/// entries or states than `limits`, a string over [`MAX_GOSSIP_STRING_BYTES`], an empty
/// node id, or no message at all.
pub fn decode(message: WireMessage, limits: WireLimits) -> Result<GossipMessage, String> {
    check_str("cluster_name", &message.cluster_name)?;
    let cluster_name = message.cluster_name;
    match message.kind {
        None => Err("the gossip message is empty (no digest, ack, ack2 or refusal)".into()),
        Some(Kind::Digest(d)) => Ok(GossipMessage::Digest {
            cluster_name,
            entries: decode_entries("digest entries", d.entries, limits.max_entries)?,
        }),
        Some(Kind::Ack(a)) => Ok(GossipMessage::DigestAck {
            cluster_name,
            states: decode_states(a.states, limits.max_states)?,
            requests: decode_entries("ack requests", a.requests, limits.max_entries)?,
        }),
        Some(Kind::Ack2(a)) => Ok(GossipMessage::DigestAck2 {
            cluster_name,
            states: decode_states(a.states, limits.max_states)?,
        }),
        Some(Kind::Refused(reason)) => {
            // A refusal is only logged: keep a readable prefix of an oversized one.
            let mut reason = reason;
            if reason.len() > 4 * MAX_GOSSIP_STRING_BYTES {
                let mut cut = 4 * MAX_GOSSIP_STRING_BYTES;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push_str("...");
            }
            Ok(GossipMessage::Refused {
                cluster_name,
                reason,
            })
        }
    }
}

fn check_str(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_GOSSIP_STRING_BYTES {
        return Err(format!(
            "gossip field {field} is {} bytes, the limit is {MAX_GOSSIP_STRING_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("gossip field {field} holds an empty node id"));
    }
    check_str(field, id)
}

fn decode_entries(
    field: &str,
    entries: Vec<GossipDigestEntry>,
    max: usize,
) -> Result<Vec<DigestEntry>, String> {
    if entries.len() > max {
        return Err(format!(
            "gossip {field}: {} entries, the limit is {max}",
            entries.len()
        ));
    }
    entries
        .into_iter()
        .map(|e| {
            check_id(field, &e.id)?;
            Ok(DigestEntry {
                id: e.id,
                generation: e.generation,
                heartbeat: e.heartbeat,
            })
        })
        .collect()
}

fn decode_states(states: Vec<GossipNodeState>, max: usize) -> Result<Vec<NodeState>, String> {
    if states.len() > max {
        return Err(format!(
            "gossip states: {} states, the limit is {max}",
            states.len()
        ));
    }
    states
        .into_iter()
        .map(|s| {
            check_id("state id", &s.id)?;
            for (field, value) in [
                ("state address", &s.address),
                ("state cluster_name", &s.cluster_name),
                ("state partitioner", &s.partitioner),
                ("state build", &s.build),
            ] {
                check_str(field, value)?;
            }
            if s.address.is_empty() {
                return Err(format!("the gossip state of {:?} has no address", s.id));
            }
            Ok(NodeState {
                id: s.id,
                generation: s.generation,
                heartbeat: s.heartbeat,
                address: s.address,
                cluster_name: s.cluster_name,
                layout_version: s.layout_version,
                layout_digest: s.layout_digest,
                replication: ReplicationFingerprint {
                    replicas: s.replicas,
                    partitioner: s.partitioner,
                    virtual_nodes: s.virtual_nodes,
                    ring: s.ring,
                },
                load_bytes: s.load_bytes,
                build: s.build,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WireLimits = WireLimits {
        max_entries: 4,
        max_states: 2,
    };

    fn state(id: &str) -> NodeState {
        NodeState {
            id: id.into(),
            generation: 7,
            heartbeat: 9,
            address: format!("{id}:1"),
            cluster_name: "c".into(),
            layout_version: 3,
            layout_digest: 0xabc,
            replication: ReplicationFingerprint {
                replicas: 3,
                partitioner: "p".into(),
                virtual_nodes: 16,
                ring: 5,
            },
            load_bytes: 11,
            build: "b".into(),
        }
    }

    fn entry(id: &str) -> DigestEntry {
        DigestEntry {
            id: id.into(),
            generation: 1,
            heartbeat: 2,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            GossipMessage::Digest {
                cluster_name: "c".into(),
                entries: vec![entry("a"), entry("b")],
            },
            GossipMessage::DigestAck {
                cluster_name: "c".into(),
                states: vec![state("a")],
                requests: vec![entry("b")],
            },
            GossipMessage::DigestAck2 {
                cluster_name: "c".into(),
                states: vec![state("a"), state("b")],
            },
            GossipMessage::Refused {
                cluster_name: "other".into(),
                reason: "wrong cluster".into(),
            },
        ];
        for m in messages {
            assert_eq!(decode(encode(&m), LIMITS).unwrap(), m);
        }
    }

    #[test]
    fn layouts_round_trip_and_bad_ones_are_refused() {
        let layout = Layout::new(
            4,
            16,
            vec![
                Member {
                    id: "b".into(),
                    address: "b:1".into(),
                    state: MemberState::Left,
                },
                Member {
                    id: "a".into(),
                    address: "a:1".into(),
                    state: MemberState::Normal,
                },
            ],
        )
        .unwrap();
        let back = decode_layout(encode_layout(&layout), 8).unwrap();
        assert_eq!(back, layout);
        assert_eq!(back.digest(), layout.digest());
        assert!(decode_layout(encode_layout(&layout), 1)
            .unwrap_err()
            .contains("2 members, the limit is 1"));
        let mut bad = encode_layout(&layout);
        bad.members[0].state = "zombie".into();
        assert!(decode_layout(bad, 8).unwrap_err().contains("zombie"));
        let mut twice = encode_layout(&layout);
        twice.members[1].id = "a".into();
        assert!(decode_layout(twice, 8).unwrap_err().contains("twice"));
    }

    #[test]
    fn oversized_or_malformed_messages_are_refused_naming_the_bound() {
        let many = GossipMessage::Digest {
            cluster_name: "c".into(),
            entries: (0..5).map(|i| entry(&format!("n{i}"))).collect(),
        };
        let err = decode(encode(&many), LIMITS).unwrap_err();
        assert!(err.contains("5 entries, the limit is 4"), "{err}");

        let states = GossipMessage::DigestAck2 {
            cluster_name: "c".into(),
            states: vec![state("a"), state("b"), state("c")],
        };
        let err = decode(encode(&states), LIMITS).unwrap_err();
        assert!(err.contains("3 states, the limit is 2"), "{err}");

        let mut long = state("a");
        long.build = "x".repeat(MAX_GOSSIP_STRING_BYTES + 1);
        let err = decode(
            encode(&GossipMessage::DigestAck2 {
                cluster_name: "c".into(),
                states: vec![long],
            }),
            LIMITS,
        )
        .unwrap_err();
        assert!(err.contains("state build"), "{err}");

        let err = decode(
            encode(&GossipMessage::Digest {
                cluster_name: "c".into(),
                entries: vec![entry("")],
            }),
            LIMITS,
        )
        .unwrap_err();
        assert!(err.contains("empty node id"), "{err}");

        let mut nowhere = state("a");
        nowhere.address.clear();
        let err = decode(
            encode(&GossipMessage::DigestAck2 {
                cluster_name: "c".into(),
                states: vec![nowhere],
            }),
            LIMITS,
        )
        .unwrap_err();
        assert!(err.contains("no address"), "{err}");

        let empty = WireMessage {
            cluster_name: "c".into(),
            kind: None,
        };
        assert!(decode(empty, LIMITS).unwrap_err().contains("empty"));

        // A huge refusal reason is cut, not refused: it is only logged.
        let refusal = GossipMessage::Refused {
            cluster_name: "c".into(),
            reason: "é".repeat(10 * MAX_GOSSIP_STRING_BYTES),
        };
        match decode(encode(&refusal), LIMITS).unwrap() {
            GossipMessage::Refused { reason, .. } => {
                assert!(reason.len() <= 4 * MAX_GOSSIP_STRING_BYTES + 3);
                assert!(reason.ends_with("..."));
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
