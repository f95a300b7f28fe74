//! How user keys are laid out in the storage engine.
//!
//! A stored key is the key's 8-byte big-endian ring token followed by the user key.
//! The engine orders keys as bytes, so the keys of one token range are one contiguous
//! run on disk: streaming or comparing a range scans only that range.

use std::ops::Bound;

use distkv_engine::KeyRange;

use crate::placement::TokenRange;

/// Bytes of the token prefix.
pub const TOKEN_BYTES: usize = 8;

/// The stored form of `key`, whose token is `token`.
pub fn encode(token: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TOKEN_BYTES + key.len());
    out.extend_from_slice(&token.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits a stored key into its token and user key; `None` if it is too short to be
/// one (a key this node did not write).
pub fn decode(stored: &[u8]) -> Option<(u64, &[u8])> {
    if stored.len() <= TOKEN_BYTES {
        return None;
    }
    let (token, key) = stored.split_at(TOKEN_BYTES);
    let token = u64::from_be_bytes(token.try_into().ok()?);
    Some((token, key))
}

/// The stored-key ranges that hold exactly the keys whose tokens lie in `range`, in
/// storage order (one, or two for a range that wraps past `u64::MAX`).
pub fn storage_ranges(range: TokenRange) -> Vec<KeyRange> {
    range
        .intervals()
        .into_iter()
        .map(|(lo, hi)| {
            let start = lo.to_be_bytes().to_vec();
            match hi.checked_add(1) {
                Some(end) => KeyRange::between(start, end.to_be_bytes().to_vec()),
                None => KeyRange {
                    start: Bound::Included(start),
                    end: Bound::Unbounded,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_round_trip_and_short_keys_are_not_ours() {
        let stored = encode(0x0102_0304_0506_0708, b"user");
        assert_eq!(&stored[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode(&stored), Some((0x0102_0304_0506_0708, &b"user"[..])));
        assert_eq!(
            decode(b"12345678"),
            None,
            "an empty user key is never stored"
        );
        assert_eq!(decode(b"abc"), None);
    }

    proptest! {
        /// A stored key falls in the storage ranges of a token range exactly when its
        /// token falls in the token range.
        #[test]
        fn storage_ranges_hold_exactly_the_range(
            start in any::<u64>(),
            end in any::<u64>(),
            token in any::<u64>(),
            key in prop::collection::vec(any::<u8>(), 1..16),
            edge in 0u8..4,
        ) {
            // Bias towards the edges, where off-by-one errors live.
            let token = match edge {
                0 => start,
                1 => end,
                2 => end.wrapping_add(1),
                _ => token,
            };
            let range = TokenRange { start, end };
            let stored = encode(token, &key);
            let inside = storage_ranges(range).iter().filter(|r| r.contains(&stored)).count();
            prop_assert_eq!(inside, usize::from(range.contains(token)));
        }
    }
}
