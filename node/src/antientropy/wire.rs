//! The anti-entropy messages on the wire: [`Request`] and [`Response`] to and from the
//! `AntiEntropy` peer call's protobuf messages. Decoding checks what the protobuf
//! cannot (a question present, a resume key within the key limit, counts within the
//! serving limits) and names the field it refuses; the meaning of the values (levels,
//! indexes, intervals) is checked by [`super::answer`] and [`super::Exchange`].

use distkv_proto::v1::{
    anti_entropy_request, anti_entropy_response, AntiEntropyRequest, AntiEntropyResponse,
    KeyHashEntry, KeyHashesAnswer, KeyHashesQuestion, NodeSummary, NotReadyAnswer,
    TreeHashesAnswer, TreeHashesQuestion,
};

use super::exchange::{KeyHash, Request, Response};
use super::tree::{Position, Summary};

/// Most entries (indexes, summaries or key hashes) one message may carry; more is
/// refused before anything else is looked at. Far above what the default limits ask
/// ([`super::ExchangeLimits`]: 256 indexes, 1024 keys).
pub const MAX_WIRE_ENTRIES: usize = 16 * 1024;

/// The protobuf message of a request.
pub fn request_to_wire(request: &Request) -> AntiEntropyRequest {
    use anti_entropy_request::Question;
    let question = match request {
        Request::Hashes { level, indexes } => Question::Hashes(TreeHashesQuestion {
            level: *level,
            indexes: indexes.clone(),
        }),
        Request::Keys { lo, hi, after, max } => Question::Keys(KeyHashesQuestion {
            lo: *lo,
            hi: *hi,
            has_after: after.is_some(),
            after_token: after.as_ref().map_or(0, |p| p.token),
            after_key: after
                .as_ref()
                .map(|p| p.key.clone().into())
                .unwrap_or_default(),
            max: *max,
        }),
    };
    AntiEntropyRequest {
        question: Some(question),
    }
}

/// The request a peer sent, or why it is refused (naming the field). `max_key_bytes`
/// bounds the resume key.
pub fn request_from_wire(
    wire: AntiEntropyRequest,
    max_key_bytes: usize,
) -> Result<Request, String> {
    use anti_entropy_request::Question;
    match wire.question {
        None => Err("AntiEntropyRequest.question is missing (a peer of another version?)".into()),
        Some(Question::Hashes(q)) => {
            if q.indexes.len() > MAX_WIRE_ENTRIES {
                return Err(format!(
                    "TreeHashesQuestion.indexes holds {} indexes, over {MAX_WIRE_ENTRIES}",
                    q.indexes.len()
                ));
            }
            Ok(Request::Hashes {
                level: q.level,
                indexes: q.indexes,
            })
        }
        Some(Question::Keys(q)) => {
            if q.after_key.len() > max_key_bytes {
                return Err(format!(
                    "KeyHashesQuestion.after_key is {} bytes, over limits.max_key_bytes = {max_key_bytes}",
                    q.after_key.len()
                ));
            }
            if !q.has_after && (q.after_token != 0 || !q.after_key.is_empty()) {
                return Err(
                    "KeyHashesQuestion.after_token/after_key are set without has_after".into(),
                );
            }
            Ok(Request::Keys {
                lo: q.lo,
                hi: q.hi,
                after: q.has_after.then(|| Position {
                    token: q.after_token,
                    key: q.after_key.to_vec(),
                }),
                max: q.max,
            })
        }
    }
}

/// The protobuf message of a response.
pub fn response_to_wire(response: &Response) -> AntiEntropyResponse {
    use anti_entropy_response::Answer;
    let answer = match response {
        Response::Hashes(summaries) => Answer::Hashes(TreeHashesAnswer {
            summaries: summaries
                .iter()
                .map(|s| NodeSummary {
                    hash: s.hash,
                    keys: s.keys,
                })
                .collect(),
        }),
        Response::Keys { entries, more } => Answer::Keys(KeyHashesAnswer {
            entries: entries
                .iter()
                .map(|e| KeyHashEntry {
                    token: e.token,
                    key: e.key.clone().into(),
                    hash: e.hash,
                })
                .collect(),
            more: *more,
        }),
        Response::NotReady => Answer::NotReady(NotReadyAnswer {}),
    };
    AntiEntropyResponse {
        answer: Some(answer),
    }
}

/// The response a peer sent, or why it is refused (naming the field). The exchange
/// checks the rest (counts, order, intervals).
pub fn response_from_wire(
    wire: AntiEntropyResponse,
    max_key_bytes: usize,
) -> Result<Response, String> {
    use anti_entropy_response::Answer;
    match wire.answer {
        None => Err("AntiEntropyResponse.answer is missing (a peer of another version?)".into()),
        Some(Answer::NotReady(_)) => Ok(Response::NotReady),
        Some(Answer::Hashes(a)) => {
            if a.summaries.len() > MAX_WIRE_ENTRIES {
                return Err(format!(
                    "TreeHashesAnswer.summaries holds {} entries, over {MAX_WIRE_ENTRIES}",
                    a.summaries.len()
                ));
            }
            Ok(Response::Hashes(
                a.summaries
                    .into_iter()
                    .map(|s| Summary {
                        hash: s.hash,
                        keys: s.keys,
                    })
                    .collect(),
            ))
        }
        Some(Answer::Keys(a)) => {
            if a.entries.len() > MAX_WIRE_ENTRIES {
                return Err(format!(
                    "KeyHashesAnswer.entries holds {} entries, over {MAX_WIRE_ENTRIES}",
                    a.entries.len()
                ));
            }
            let mut entries = Vec::with_capacity(a.entries.len());
            for (i, e) in a.entries.into_iter().enumerate() {
                if e.key.is_empty() || e.key.len() > max_key_bytes {
                    return Err(format!(
                        "KeyHashesAnswer.entries[{i}].key is {} bytes; keys are 1 to {max_key_bytes} bytes (limits.max_key_bytes)",
                        e.key.len()
                    ));
                }
                entries.push(KeyHash {
                    token: e.token,
                    key: e.key.to_vec(),
                    hash: e.hash,
                });
            }
            Ok(Response::Keys {
                entries,
                more: a.more,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u32>(), proptest::collection::vec(any::<u64>(), 0..20))
                .prop_map(|(level, indexes)| Request::Hashes { level, indexes }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..8))),
                any::<u32>()
            )
                .prop_map(|(lo, hi, after, max)| Request::Keys {
                    lo,
                    hi,
                    after: after.map(|(token, key)| Position { token, key }),
                    max
                }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::NotReady),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20).prop_map(|s| {
                Response::Hashes(
                    s.into_iter()
                        .map(|(hash, keys)| Summary { hash, keys })
                        .collect(),
                )
            }),
            (
                proptest::collection::vec(
                    (
                        any::<u64>(),
                        proptest::collection::vec(any::<u8>(), 1..8),
                        any::<u64>()
                    ),
                    0..20
                ),
                any::<bool>()
            )
                .prop_map(|(e, more)| Response::Keys {
                    entries: e
                        .into_iter()
                        .map(|(token, key, hash)| KeyHash { token, key, hash })
                        .collect(),
                    more
                }),
        ]
    }

    proptest! {
        #[test]
        fn requests_and_responses_round_trip(req in arb_request(), resp in arb_response()) {
            let wire = prost::Message::encode_to_vec(&request_to_wire(&req));
            let back: AntiEntropyRequest = prost::Message::decode(wire.as_slice()).unwrap();
            prop_assert_eq!(request_from_wire(back, 64).unwrap(), req);
            let wire = prost::Message::encode_to_vec(&response_to_wire(&resp));
            let back: AntiEntropyResponse = prost::Message::decode(wire.as_slice()).unwrap();
            prop_assert_eq!(response_from_wire(back, 64).unwrap(), resp);
        }
    }

    #[test]
    fn malformed_messages_are_refused_naming_the_field() {
        let err = request_from_wire(AntiEntropyRequest { question: None }, 64).unwrap_err();
        assert!(err.contains("AntiEntropyRequest.question"), "{err}");
        let long = request_to_wire(&Request::Keys {
            lo: 0,
            hi: 1,
            after: Some(Position {
                token: 0,
                key: vec![0; 65],
            }),
            max: 1,
        });
        let err = request_from_wire(long, 64).unwrap_err();
        assert!(
            err.contains("after_key") && err.contains("65 bytes"),
            "{err}"
        );
        let many = request_to_wire(&Request::Hashes {
            level: 1,
            indexes: vec![0; MAX_WIRE_ENTRIES + 1],
        });
        assert!(request_from_wire(many, 64)
            .unwrap_err()
            .contains("TreeHashesQuestion.indexes"));
        let err = response_from_wire(AntiEntropyResponse { answer: None }, 64).unwrap_err();
        assert!(err.contains("AntiEntropyResponse.answer"), "{err}");
        let empty_key = response_to_wire(&Response::Keys {
            entries: vec![KeyHash {
                token: 1,
                key: vec![],
                hash: 2,
            }],
            more: false,
        });
        let err = response_from_wire(empty_key, 64).unwrap_err();
        assert!(err.contains("entries[0].key"), "{err}");
    }
}
