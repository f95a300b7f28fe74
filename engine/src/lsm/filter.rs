//! The per-table Bloom filter of SSTable format 2: one 64-bit XXH3 hash per key, from
//! which every probe position is derived (double hashing), so a lookup costs one hash
//! of the key rather than one keyed SipHash per pair of probes as the `bloomfilter`
//! crate of format 1 does.
//!
//! Encoding: `[probes u8][bits u64][bit array, bits / 8 rounded up]`, little-endian.

use super::codec::{self, Cursor};

/// Most probes a filter may ask for (more is never useful and could be a corrupt byte
/// asking for a slow lookup).
const MAX_PROBES: u8 = 30;

/// A Bloom filter over byte keys.
pub(crate) struct KeyFilter {
    probes: u8,
    bits: u64,
    array: Vec<u8>,
}

fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The `i`-th bit position of a key with hash `h` in a filter of `bits` bits.
#[inline]
fn position(h: u64, i: u64, bits: u64) -> u64 {
    // Double hashing (Kirsch-Mitzenmacher): h1 + i * h2, with h2 odd; mapped onto
    // 0..bits by a multiply-shift rather than a division.
    let h2 = h.rotate_left(32) | 1;
    let x = h.wrapping_add(i.wrapping_mul(h2));
    ((u128::from(x) * u128::from(bits)) >> 64) as u64
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys at false-positive rate `fpr` (0 < fpr < 1).
    pub fn with_rate(keys: usize, fpr: f64) -> KeyFilter {
        let ln2 = std::f64::consts::LN_2;
        let bits_per_key = (-fpr.ln() / (ln2 * ln2)).max(1.0);
        let bits = ((keys.max(1) as f64 * bits_per_key).ceil() as u64).max(64);
        let probes = (bits_per_key * ln2)
            .round()
            .clamp(1.0, f64::from(MAX_PROBES)) as u8;
        KeyFilter {
            probes,
            bits,
            array: vec![0; bits.div_ceil(8) as usize],
        }
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: &[u8]) {
        let h = key_hash(key);
        for i in 0..u64::from(self.probes) {
            let p = position(h, i, self.bits);
            self.array[(p / 8) as usize] |= 1 << (p % 8);
        }
    }

    /// False when `key` was certainly never inserted.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let h = key_hash(key);
        (0..u64::from(self.probes)).all(|i| {
            let p = position(h, i, self.bits);
            self.array
                .get((p / 8) as usize)
                .is_some_and(|b| b & (1 << (p % 8)) != 0)
        })
    }

    /// The encoded filter.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.array.len());
        out.push(self.probes);
        codec::put_u64(&mut out, self.bits);
        out.extend_from_slice(&self.array);
        out
    }

    /// Decodes a filter written by [`KeyFilter::to_bytes`]; `None` if the bytes are not
    /// one (wrong length, no probes, too many probes).
    pub fn from_bytes(data: &[u8]) -> Option<KeyFilter> {
        let mut c = Cursor::new(data);
        let probes = c.u8()?;
        let bits = c.u64()?;
        if probes == 0 || probes > MAX_PROBES || bits == 0 {
            return None;
        }
        let len = usize::try_from(bits.div_ceil(8)).ok()?;
        let array = c.bytes(len)?.to_vec();
        if !c.is_empty() {
            return None;
        }
        Some(KeyFilter {
            probes,
            bits,
            array,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_false_negatives_and_about_the_asked_false_positive_rate() {
        for fpr in [0.001, 0.01, 0.1] {
            let n = 20_000u32;
            let mut f = KeyFilter::with_rate(n as usize, fpr);
            for i in 0..n {
                f.insert(format!("key{i:08}").as_bytes());
            }
            let f = KeyFilter::from_bytes(&f.to_bytes()).unwrap();
            assert!((0..n).all(|i| f.may_contain(format!("key{i:08}").as_bytes())));
            let probes = 100_000u32;
            let fp = (0..probes)
                .filter(|i| f.may_contain(format!("absent{i:08}").as_bytes()))
                .count() as f64
                / f64::from(probes);
            assert!(fp < fpr * 1.5 + 0.0005, "asked {fpr}, measured {fp}");
        }
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let good = KeyFilter::with_rate(100, 0.01).to_bytes();
        assert!(KeyFilter::from_bytes(&good).is_some());
        assert!(KeyFilter::from_bytes(&good[..good.len() - 1]).is_none());
        assert!(KeyFilter::from_bytes(&[good.as_slice(), &[0]].concat()).is_none());
        let mut no_probes = good.clone();
        no_probes[0] = 0;
        assert!(KeyFilter::from_bytes(&no_probes).is_none());
        let mut many = good.clone();
        many[0] = MAX_PROBES + 1;
        assert!(KeyFilter::from_bytes(&many).is_none());
        let mut huge = good;
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(KeyFilter::from_bytes(&huge).is_none());
        assert!(KeyFilter::from_bytes(&[]).is_none());
    }

    proptest! {
        /// Encoding then decoding gives a filter that answers exactly as the original,
        /// and decoding arbitrary bytes never panics.
        #[test]
        fn round_trips_and_decodes_any_bytes_safely(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..64),
            others in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..64),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut f = KeyFilter::with_rate(keys.len(), 0.05);
            for k in &keys {
                f.insert(k);
            }
            let g = KeyFilter::from_bytes(&f.to_bytes()).unwrap();
            for k in keys.iter().chain(&others) {
                prop_assert_eq!(f.may_contain(k), g.may_contain(k));
            }
            for k in &keys {
                prop_assert!(g.may_contain(k));
            }
            if let Some(j) = KeyFilter::from_bytes(&junk) {
                let _ = j.may_contain(b"x");
            }
        }
    }
}
