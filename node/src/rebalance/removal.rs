//! Re-replication after a removal. A dead node taken out of the layout (`remove-node`)
//! leaves each range it replicated one copy short until anti-entropy copies it from the
//! surviving replicas to the node that gains it. Each node notes the removal when it
//! applies the layout, starts an anti-entropy pass at once (rather than one
//! `antientropy.interval` later), and reports in `status` how many of its ranges have
//! compared clean on every live replica since: when all have, this node holds every
//! copy it should.
//!
//! Plain code over layouts and per-range anti-entropy numbers; the shell that watches
//! the layout is in `assembly`.

use std::sync::Arc;

use distkv_network::{Layout, MemberState};

use crate::antientropy::driver::RangeStats;
use crate::placement::TokenRange;

/// A removal this node follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The removed node.
    pub node: String,
    /// The layout version that removed it.
    pub layout_version: u64,
    /// When this node applied it (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

/// How far the re-replication after a removal is on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalProgress {
    /// The removal.
    pub removal: Removal,
    /// This node's ranges that compared clean on every live replica since the removal.
    pub ranges_clean: usize,
    /// This node's ranges.
    pub ranges_total: usize,
}

/// The last removal this node applied, shared by the shell that notes it and `status`.
pub struct Rereplication {
    last: parking_lot::Mutex<Option<Removal>>,
    /// This node's ranges in the current placement.
    ranges: Arc<dyn Fn() -> Vec<TokenRange> + Send + Sync>,
}

impl Rereplication {
    /// A tracker whose node replicates `ranges()` (read at each `status`).
    pub fn new(ranges: Arc<dyn Fn() -> Vec<TokenRange> + Send + Sync>) -> Self {
        Rereplication {
            last: parking_lot::Mutex::new(None),
            ranges,
        }
    }

    /// Notes `removal` (a later one replaces an earlier one).
    pub fn note(&self, removal: Removal) {
        *self.last.lock() = Some(removal);
    }

    /// The progress of the last removal since the process started, from the
    /// anti-entropy numbers per range; `None` if there was none.
    pub fn progress(&self, stats: &[(TokenRange, RangeStats)]) -> Option<RemovalProgress> {
        let removal = self.last.lock().clone()?;
        Some(progress(&removal, &(self.ranges)(), stats))
    }
}

/// The nodes that the change from `old` to `new` removed: members that were not
/// leaving in `old` (so no decommission streamed their ranges away) and left in `new`.
pub fn removed_by(old: &Layout, new: &Layout) -> Vec<String> {
    new.members()
        .iter()
        .filter(|m| m.state == MemberState::Left)
        .filter(|m| {
            old.member(&m.id)
                .is_some_and(|o| matches!(o.state, MemberState::Normal | MemberState::Joining))
        })
        .map(|m| m.id.clone())
        .collect()
}

/// The progress of `removal` on a node that replicates `ranges`, from its anti-entropy
/// numbers per range (`stats`): a range counts once a pass found it equal on every live
/// replica after the removal.
pub fn progress(
    removal: &Removal,
    ranges: &[TokenRange],
    stats: &[(TokenRange, RangeStats)],
) -> RemovalProgress {
    let clean = ranges
        .iter()
        .filter(|r| {
            stats
                .iter()
                .any(|(s, st)| s == *r && st.last_clean_ms.is_some_and(|at| at >= removal.at_ms))
        })
        .count();
    RemovalProgress {
        removal: removal.clone(),
        ranges_clean: clean,
        ranges_total: ranges.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distkv_network::Member;

    fn layout(version: u64, states: &[(&str, MemberState)]) -> Layout {
        let members = states
            .iter()
            .map(|(id, state)| Member {
                id: id.to_string(),
                address: format!("{id}:1"),
                state: *state,
            })
            .collect();
        Layout::new(version, 8, members).unwrap()
    }

    #[test]
    fn a_removal_is_a_member_that_left_without_leaving_first() {
        use MemberState::*;
        let before = layout(4, &[("a", Normal), ("b", Normal), ("c", Leaving)]);
        let removed = layout(5, &[("a", Normal), ("b", Left), ("c", Leaving)]);
        assert_eq!(removed_by(&before, &removed), vec!["b".to_string()]);
        // A decommission's last step is not a removal (its ranges were streamed away).
        let decommissioned = layout(5, &[("a", Normal), ("b", Normal), ("c", Left)]);
        assert!(removed_by(&before, &decommissioned).is_empty());
        // A member that left long ago is not removed again.
        assert!(removed_by(&removed, &removed).is_empty());
    }

    #[test]
    fn a_range_counts_once_it_compared_clean_after_the_removal() {
        let removal = Removal {
            node: "b".into(),
            layout_version: 5,
            at_ms: 1_000,
        };
        let r = |start: u64| TokenRange {
            start,
            end: start + 10,
        };
        let clean_at = |ms: Option<u64>| RangeStats {
            last_clean_ms: ms,
            ..RangeStats::default()
        };
        let stats = vec![
            (r(0), clean_at(Some(1_500))),
            (r(10), clean_at(Some(900))),
            (r(20), clean_at(None)),
            (r(90), clean_at(Some(2_000))),
        ];
        let p = progress(&removal, &[r(0), r(10), r(20), r(30)], &stats);
        assert_eq!((p.ranges_clean, p.ranges_total), (1, 4));
        assert_eq!(p.removal, removal);
    }
}
