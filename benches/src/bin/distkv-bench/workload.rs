//! What the load generator asks for: the operation mix of a workload, the key chosen for
//! each operation (zipfian or uniform over the key space) and the key names.

use rand::Rng;

/// Skew of the zipfian distribution, as in YCSB.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// One request kind, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `Get` of an existing key.
    Read,
    /// Read-modify-write of an existing key: `Get`, then `Put` with the read's context.
    Update,
    /// Blind `Put` of a key never written before.
    Insert,
}

impl Op {
    /// Every kind, in report order.
    pub const ALL: [Op; 3] = [Op::Read, Op::Update, Op::Insert];

    /// Lower-case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
        }
    }

    /// Position in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The YCSB core workloads this tool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 50% read, 50% update.
    A,
    /// 95% read, 5% update.
    B,
    /// 100% read.
    C,
    /// 100% insert of new keys.
    Insert,
}

impl Workload {
    /// Share of reads, in per mille; the rest are updates (or inserts for `Insert`).
    fn read_per_mille(self) -> u32 {
        match self {
            Workload::A => 500,
            Workload::B => 950,
            Workload::C => 1000,
            Workload::Insert => 0,
        }
    }

    /// Draws the next operation.
    pub fn next_op<R: Rng + ?Sized>(self, rng: &mut R) -> Op {
        if self == Workload::Insert {
            return Op::Insert;
        }
        if rng.random_range(0..1000) < self.read_per_mille() {
            Op::Read
        } else {
            Op::Update
        }
    }

    /// Whether the workload reads or updates existing keys (and so wants them loaded).
    pub fn uses_existing_keys(self) -> bool {
        self != Workload::Insert
    }
}

/// How keys of the key space are picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// YCSB's zipfian with theta 0.99: key 0 is the most popular, then key 1, ...
    Zipfian,
    /// Every key equally likely.
    Uniform,
}

/// Draws key indexes in `0..n`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Zipfian over `0..n`.
    Zipfian(Zipfian),
    /// Uniform over `0..n`.
    Uniform(u64),
}

impl KeyChooser {
    /// A chooser over `0..n` (`n >= 1`).
    pub fn new(distribution: Distribution, n: u64) -> KeyChooser {
        match distribution {
            Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(n, ZIPFIAN_THETA)),
            Distribution::Uniform => KeyChooser::Uniform(n.max(1)),
        }
    }

    /// The next key index.
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Zipfian(z) => z.next(rng),
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
        }
    }
}

/// The zipfian generator of Gray et al., "Quickly Generating Billion-Record Synthetic
/// Databases" (SIGMOD 1994), as used by YCSB's `ZipfianGenerator`: item `i` (0-based) is
/// drawn with probability proportional to `1 / (i + 1)^theta`. Items 0 and 1 are exact;
/// the rest use the paper's closed-form approximation of the inverse CDF.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
    /// `1 + 0.5^theta`: the cumulative weight of items 0 and 1.
    threshold_two: f64,
}

impl Zipfian {
    /// A generator over `0..items` (`items >= 1`) with skew `theta` in `(0, 1)`.
    /// Computing `zeta(items)` is `O(items)`: about a second for a hundred million keys.
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 1, "zipfian over an empty key space");
        assert!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta must be in (0, 1)"
        );
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items <= 2 {
            // Unused: every draw falls in the two exact cases.
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            items,
            theta,
            zetan,
            alpha,
            eta,
            threshold_two: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// Probability of item `i` under the exact zipfian law (for tests and reports).
    pub fn probability(&self, i: u64) -> f64 {
        1.0 / ((i + 1) as f64).powf(self.theta) / self.zetan
    }

    /// The next item, in `0..items`.
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.threshold_two {
            return 1.min(self.items - 1);
        }
        let v = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.items - 1)
    }
}

/// `sum_{i=1..n} 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Names of the keys a run touches.
#[derive(Clone, Debug)]
pub struct KeyNames {
    prefix: String,
    run_id: u64,
}

impl KeyNames {
    /// Keys under `prefix`; `run_id` makes inserted keys unique to this run.
    pub fn new(prefix: &str, run_id: u64) -> KeyNames {
        KeyNames {
            prefix: prefix.to_string(),
            run_id,
        }
    }

    /// Key `i` of the key space (read, updated, preloaded): `PREFIX:IIIIIIIIII`.
    pub fn existing(&self, i: u64) -> Vec<u8> {
        format!("{}:{i:010}", self.prefix).into_bytes()
    }

    /// The `i`-th key inserted by this run: `PREFIX:ins:RUN:IIIIIIIIII`, never an
    /// existing key, so an insert is a write of a new key even against a loaded cluster.
    pub fn inserted(&self, i: u64) -> Vec<u8> {
        format!("{}:ins:{:x}:{i:010}", self.prefix, self.run_id).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn histogram(z: &Zipfian, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0u64; z.items as usize];
        for _ in 0..draws {
            let i = z.next(&mut rng);
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_most_frequent_key_gets_its_expected_share() {
        let z = Zipfian::new(1000, ZIPFIAN_THETA);
        let draws = 200_000;
        let counts = histogram(&z, draws, 7);
        // Key 0 is the most frequent, then key 1, each close to 1/zeta(n) and
        // 2^-theta/zeta(n) (about 13.4% and 6.7% for n = 1000).
        let max = counts.iter().copied().max().unwrap();
        assert_eq!(counts[0], max, "key 0 must be the hottest");
        for (i, &count) in counts.iter().enumerate().take(2) {
            let share = count as f64 / draws as f64;
            let expected = z.probability(i as u64);
            assert!(
                (share - expected).abs() < 0.05 * expected,
                "key {i}: share {share:.4}, expected {expected:.4}"
            );
        }
        assert!((z.probability(0) - 0.134).abs() < 0.005);
    }

    #[test]
    fn zipfian_is_skewed_but_covers_the_key_space() {
        let n = 1000u64;
        let z = Zipfian::new(n, ZIPFIAN_THETA);
        let draws = 200_000;
        let counts = histogram(&z, draws, 11);
        // The 10 hottest keys take about a third of the draws (exact law: 33.6%);
        // the approximation for ranks >= 2 stays within a few points of it.
        let top10: u64 = counts[..10].iter().sum();
        let expected: f64 = (0..10).map(|i| z.probability(i)).sum();
        let share = top10 as f64 / draws as f64;
        assert!(
            (share - expected).abs() < 0.1 * expected,
            "top-10 share {share:.3}, expected {expected:.3}"
        );
        // The cold half of the key space still gets draws (about 9% of them).
        let cold: u64 = counts[(n as usize / 2)..].iter().sum();
        let cold_share = cold as f64 / draws as f64;
        assert!(
            cold_share > 0.04 && cold_share < 0.15,
            "cold half {cold_share:.3}"
        );
        // Popularity decreases with the rank, on average over buckets of 100 keys.
        let buckets: Vec<u64> = counts.chunks(100).map(|c| c.iter().sum()).collect();
        assert!(buckets.windows(2).all(|w| w[0] >= w[1]), "{buckets:?}");
    }

    #[test]
    fn zipfian_stays_in_range_for_tiny_and_large_spaces() {
        let mut rng = SmallRng::seed_from_u64(3);
        for n in [1u64, 2, 3, 10, 1_000_000] {
            let z = Zipfian::new(n, ZIPFIAN_THETA);
            for _ in 0..20_000 {
                assert!(z.next(&mut rng) < n, "n = {n}");
            }
        }
    }

    #[test]
    fn uniform_is_flat() {
        let chooser = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    fn read_share(w: Workload) -> (f64, f64, f64) {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut counts = [0u64; 3];
        let draws = 100_000;
        for _ in 0..draws {
            counts[w.next_op(&mut rng).index()] += 1;
        }
        let d = draws as f64;
        (
            counts[0] as f64 / d,
            counts[1] as f64 / d,
            counts[2] as f64 / d,
        )
    }

    #[test]
    fn workload_mix_ratios() {
        let (r, u, i) = read_share(Workload::A);
        assert!((r - 0.5).abs() < 0.01 && (u - 0.5).abs() < 0.01 && i == 0.0);
        let (r, u, i) = read_share(Workload::B);
        assert!((r - 0.95).abs() < 0.005 && (u - 0.05).abs() < 0.005 && i == 0.0);
        assert_eq!(read_share(Workload::C), (1.0, 0.0, 0.0));
        assert_eq!(read_share(Workload::Insert), (0.0, 0.0, 1.0));
    }

    #[test]
    fn key_names_do_not_collide() {
        let k = KeyNames::new("bench", 0xabc);
        assert_eq!(k.existing(42), b"bench:0000000042".to_vec());
        assert_eq!(k.inserted(42), b"bench:ins:abc:0000000042".to_vec());
        assert_ne!(k.existing(1), k.inserted(1));
    }
}
