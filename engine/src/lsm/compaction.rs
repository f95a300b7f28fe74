//! Compaction decisions: a strategy looks at a [`Version`] and returns the next
//! [`CompactionTask`], or `None`. The engine executes tasks; strategies do no I/O and
//! can be driven with synthetic versions.
//!
//! Invariants every strategy keeps (the read path relies on them): files of L1 and below
//! never overlap within a level; data in L(n) is newer than data in L(n+1); L0 is newer
//! than every deeper level. Any strategy accepts any valid version, so the strategy of a
//! data directory can be switched.

use std::sync::Arc;

use super::manifest::{FileMeta, Version};
use super::options::{CompactionStrategy, LsmOptions};

/// What the engine should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionTask {
    /// Input files: (level, file id).
    pub inputs: Vec<(usize, u64)>,
    /// Level the output goes to.
    pub output_level: usize,
    /// Move the single input file to `output_level` without rewriting it.
    pub trivial_move: bool,
    /// Split the output into files of about `target_file_size_bytes`; otherwise one file.
    pub split_output: bool,
}

/// A compaction strategy.
pub trait CompactionPolicy: Send + Sync {
    /// The next task, or `None` when the tree is in shape.
    fn pick(&self, version: &Version) -> Option<CompactionTask>;
}

/// The policy for `options.compaction`.
pub fn policy_for(options: &LsmOptions) -> Box<dyn CompactionPolicy> {
    match options.compaction {
        CompactionStrategy::Leveled => Box::new(Leveled {
            l0_trigger: options.l0_compaction_files,
            level1_bytes: options.level1_max_bytes,
            ratio: options.level_size_ratio,
            max_levels: options.max_levels,
            compress_from_level: options.compress_from_level,
        }),
        CompactionStrategy::SizeTiered => Box::new(SizeTiered {
            min_threshold: options.min_threshold,
            max_threshold: options.max_threshold,
            bucket_low: options.bucket_low,
            bucket_high: options.bucket_high,
        }),
        CompactionStrategy::Simple => Box::new(Simple {
            file_threshold: options.file_threshold,
        }),
    }
}

fn key_span<'a>(files: impl Iterator<Item = &'a Arc<FileMeta>>) -> Option<(&'a [u8], &'a [u8])> {
    files.fold(None, |acc, f| match acc {
        None => Some((f.smallest.as_slice(), f.largest.as_slice())),
        Some((a, b)) => Some((a.min(f.smallest.as_slice()), b.max(f.largest.as_slice()))),
    })
}

/// If files sit below L1 (left there by the leveled strategy), one task merging every
/// level >= 1 into L1 as a single sorted run; deeper data is older, so this is safe.
fn collapse_deep_levels(v: &Version) -> Option<CompactionTask> {
    let deep: Vec<(usize, u64)> = v
        .levels
        .iter()
        .enumerate()
        .skip(2)
        .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f.id)))
        .collect();
    if deep.is_empty() {
        return None;
    }
    let mut inputs: Vec<(usize, u64)> = v
        .levels
        .get(1)
        .into_iter()
        .flatten()
        .map(|f| (1, f.id))
        .collect();
    inputs.extend(deep);
    Some(CompactionTask {
        inputs,
        output_level: 1,
        trivial_move: false,
        split_output: true,
    })
}

/// Leveled compaction (LevelDB/RocksDB style).
pub struct Leveled {
    /// L0 files that trigger L0 -> L1.
    pub l0_trigger: usize,
    /// Target bytes of L1.
    pub level1_bytes: u64,
    /// Size ratio between adjacent levels.
    pub ratio: u64,
    /// Levels including L0.
    pub max_levels: usize,
    /// First level whose tables are compressed: a file is never moved into it from
    /// above without being rewritten, or raw tables would stay in compressed levels.
    pub compress_from_level: usize,
}

impl Leveled {
    fn target(&self, level: usize) -> u64 {
        (1..level).fold(self.level1_bytes, |t, _| t.saturating_mul(self.ratio))
    }
}

impl CompactionPolicy for Leveled {
    fn pick(&self, v: &Version) -> Option<CompactionTask> {
        let levels = self.max_levels.min(v.levels.len());
        // Files below the configured depth (max_levels lowered): push them up into the
        // last level by merging.
        if v.levels.iter().skip(levels).any(|l| !l.is_empty()) {
            let inputs = v
                .files()
                .filter(|(l, _)| *l + 1 >= levels)
                .map(|(l, f)| (l, f.id))
                .collect();
            return Some(CompactionTask {
                inputs,
                output_level: levels - 1,
                trivial_move: false,
                split_output: true,
            });
        }
        let mut best: Option<(f64, usize)> = None;
        for level in 0..levels - 1 {
            let score = if level == 0 {
                v.levels[0].len() as f64 / self.l0_trigger as f64
            } else {
                v.level_bytes(level) as f64 / self.target(level) as f64
            };
            if score >= 1.0 && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, level));
            }
        }
        let (_, level) = best?;
        let picked: Vec<&Arc<FileMeta>> = if level == 0 {
            v.levels[0].iter().collect()
        } else {
            // The oldest file of the level: approximates round-robin through the key space.
            v.levels[level]
                .iter()
                .min_by_key(|f| f.id)
                .into_iter()
                .collect()
        };
        let (lo, hi) = key_span(picked.iter().copied())?;
        let below: Vec<&Arc<FileMeta>> = v.levels[level + 1]
            .iter()
            .filter(|f| f.overlaps(lo, hi))
            .collect();
        let mut inputs: Vec<(usize, u64)> = picked.iter().map(|f| (level, f.id)).collect();
        if below.is_empty() && picked.len() == 1 && level + 1 != self.compress_from_level {
            return Some(CompactionTask {
                inputs,
                output_level: level + 1,
                trivial_move: true,
                split_output: false,
            });
        }
        inputs.extend(below.iter().map(|f| (level + 1, f.id)));
        Some(CompactionTask {
            inputs,
            output_level: level + 1,
            trivial_move: false,
            split_output: true,
        })
    }
}

/// Size-tiered compaction (Cassandra STCS) over L0, whose files are the tiers.
pub struct SizeTiered {
    /// Files in a bucket before it is merged.
    pub min_threshold: usize,
    /// Most files merged at once.
    pub max_threshold: usize,
    /// Lower size bound of a bucket, as a fraction of its average.
    pub bucket_low: f64,
    /// Upper size bound of a bucket, as a fraction of its average.
    pub bucket_high: f64,
}

impl CompactionPolicy for SizeTiered {
    fn pick(&self, v: &Version) -> Option<CompactionTask> {
        if let Some(t) = collapse_deep_levels(v) {
            return Some(t);
        }
        let mut files: Vec<&Arc<FileMeta>> = v.levels.first()?.iter().collect();
        files.sort_by_key(|f| (f.size, f.id));
        let mut buckets: Vec<(Vec<&Arc<FileMeta>>, f64)> = Vec::new();
        for f in files {
            let size = f.size as f64;
            match buckets.last_mut() {
                Some((members, avg))
                    if size >= *avg * self.bucket_low && size <= *avg * self.bucket_high =>
                {
                    members.push(f);
                    *avg += (size - *avg) / members.len() as f64;
                }
                _ => buckets.push((vec![f], size)),
            }
        }
        let (members, _) = buckets
            .into_iter()
            .filter(|(m, _)| m.len() >= self.min_threshold)
            .max_by(|(a, avg_a), (b, avg_b)| a.len().cmp(&b.len()).then(avg_b.total_cmp(avg_a)))?;
        let inputs = members
            .iter()
            .take(self.max_threshold)
            .map(|f| (0, f.id))
            .collect();
        Some(CompactionTask {
            inputs,
            output_level: 0,
            trivial_move: false,
            split_output: false,
        })
    }
}

/// Simple compaction: once L0 holds `file_threshold` files, merge everything into L1.
pub struct Simple {
    /// L0 files that trigger the merge.
    pub file_threshold: usize,
}

impl CompactionPolicy for Simple {
    fn pick(&self, v: &Version) -> Option<CompactionTask> {
        if let Some(t) = collapse_deep_levels(v) {
            return Some(t);
        }
        if v.levels.first()?.len() < self.file_threshold {
            return None;
        }
        let inputs = v.files().map(|(l, f)| (l, f.id)).collect();
        Some(CompactionTask {
            inputs,
            output_level: 1,
            trivial_move: false,
            split_output: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::manifest::Edit;

    fn f(id: u64, a: &str, b: &str, size: u64) -> FileMeta {
        FileMeta {
            id,
            size,
            smallest: a.into(),
            largest: b.into(),
            min_seq: id,
            max_seq: id,
            entries: 1,
        }
    }

    fn version(files: Vec<(usize, FileMeta)>) -> Version {
        Version::empty(7).apply(&Edit {
            added: files,
            ..Edit::default()
        })
    }

    fn leveled() -> Leveled {
        Leveled {
            l0_trigger: 4,
            level1_bytes: 1000,
            ratio: 10,
            max_levels: 7,
            compress_from_level: 0,
        }
    }

    #[test]
    fn leveled_compacts_l0_with_overlapping_l1_files() {
        let v = version(vec![
            (0, f(1, "a", "c", 10)),
            (0, f(2, "b", "d", 10)),
            (0, f(3, "b", "c", 10)),
            (0, f(4, "a", "b", 10)),
            (1, f(5, "c", "e", 10)),
            (1, f(6, "x", "z", 10)),
        ]);
        let t = leveled().pick(&v).unwrap();
        assert_eq!(t.output_level, 1);
        assert!(!t.trivial_move);
        assert!(t.inputs.contains(&(1, 5)) && !t.inputs.contains(&(1, 6)));
        assert_eq!(t.inputs.len(), 5);
        assert_eq!(
            leveled().pick(&version(vec![(0, f(1, "a", "c", 10))])),
            None
        );
    }

    #[test]
    fn leveled_moves_a_file_without_overlap_down_trivially() {
        let v = version(vec![
            (1, f(1, "a", "c", 600)),
            (1, f(2, "d", "f", 600)),
            (2, f(3, "x", "z", 10)),
        ]);
        let t = leveled().pick(&v).unwrap();
        assert_eq!(
            t,
            CompactionTask {
                inputs: vec![(1, 1)],
                output_level: 2,
                trivial_move: true,
                split_output: false
            }
        );
    }

    #[test]
    fn leveled_rewrites_a_file_moving_into_the_first_compressed_level() {
        let v = version(vec![
            (1, f(1, "a", "c", 600)),
            (1, f(2, "d", "f", 600)),
            (2, f(3, "x", "z", 10)),
        ]);
        let p = Leveled {
            compress_from_level: 2,
            ..leveled()
        };
        let t = p.pick(&v).unwrap();
        assert_eq!(
            t,
            CompactionTask {
                inputs: vec![(1, 1)],
                output_level: 2,
                trivial_move: false,
                split_output: true
            }
        );
        let deeper = Leveled {
            compress_from_level: 1,
            ..leveled()
        };
        assert!(deeper.pick(&v).unwrap().trivial_move);
    }

    #[test]
    fn size_tiered_merges_a_bucket_of_similar_sizes() {
        let p = SizeTiered {
            min_threshold: 4,
            max_threshold: 32,
            bucket_low: 0.5,
            bucket_high: 1.5,
        };
        let mut files: Vec<_> = (1..=4).map(|i| (0, f(i, "a", "z", 100 + i))).collect();
        files.push((0, f(9, "a", "z", 10_000)));
        let t = p.pick(&version(files.clone())).unwrap();
        let mut ids: Vec<_> = t.inputs.iter().map(|(_, id)| *id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert_eq!(t.output_level, 0);
        files.pop();
        files.pop();
        assert_eq!(p.pick(&version(files)), None);
    }

    #[test]
    fn simple_merges_everything_at_the_threshold() {
        let p = Simple { file_threshold: 3 };
        let mut files: Vec<_> = (1..=2).map(|i| (0, f(i, "a", "z", 10))).collect();
        files.push((1, f(7, "a", "z", 10)));
        assert_eq!(p.pick(&version(files.clone())), None);
        files.push((0, f(3, "a", "z", 10)));
        assert_eq!(p.pick(&version(files)).unwrap().inputs.len(), 4);
    }

    #[test]
    fn tiered_strategies_collapse_levels_left_by_leveled() {
        let v = version(vec![(1, f(1, "a", "c", 10)), (3, f(2, "a", "z", 10))]);
        let t = Simple { file_threshold: 8 }.pick(&v).unwrap();
        assert_eq!((t.inputs.len(), t.output_level), (2, 1));
    }
}
