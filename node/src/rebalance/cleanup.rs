//! Cleanup: which ranges' records a node may drop because it no longer replicates them
//! (a join moved them to the new node). Plain code over a placement snapshot; the
//! driver ([`super::Joiner::cleanup`]) checks that every member holds the same layout
//! before it deletes anything.
//!
//! Dropping is safe only when no coordinator can still count this node toward W for
//! those keys: no layout change is in flight (during one, the old replica set still
//! takes writes and serves reads), and every member holds this layout (a coordinator
//! with an older one would still write here). The driver refuses otherwise, so an
//! operator runs it once the change is done, as with Cassandra's `nodetool cleanup`.

use crate::placement::{Partitioner, PlacementSnapshot, TokenRange};

/// The ranges of the current ring whose records `local` holds and does not replicate;
/// refused while a change is in flight or when `local` is not a member of the ring (its
/// layout may be stale: nothing is dropped on its word).
pub fn plan_cleanup<P: Partitioner>(
    snapshot: &PlacementSnapshot<P>,
    local: &str,
    replicas: usize,
) -> Result<Vec<TokenRange>, String> {
    if snapshot.pending_ring().is_some() {
        return Err(format!(
            "a layout change is in flight (layout version {}): run cleanup once the join or \
             decommission is done",
            snapshot.version()
        ));
    }
    let ring = snapshot.ring();
    if ring.ranges_of(local, replicas).is_empty() {
        return Err(format!(
            "this node replicates no range in layout version {}: it is not a normal member, \
             so it drops nothing",
            snapshot.version()
        ));
    }
    Ok(ring
        .ranges()
        .into_iter()
        .filter(|r| {
            !ring
                .replicas_of_range(*r, replicas)
                .iter()
                .any(|n| n.id == local)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use distkv_network::{Layout, Member, MemberState};

    use super::*;
    use crate::placement::HashRing;

    fn layout(version: u64, members: &[(&str, MemberState)]) -> Layout {
        Layout::new(
            version,
            16,
            members
                .iter()
                .map(|(id, state)| Member {
                    id: id.to_string(),
                    address: id.to_string(),
                    state: *state,
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn cleanup_drops_exactly_the_ranges_a_node_does_not_replicate_and_waits_for_changes() {
        use MemberState::*;
        let four = layout(
            3,
            &[("a", Normal), ("b", Normal), ("c", Normal), ("d", Normal)],
        );
        let snapshot = PlacementSnapshot::<HashRing>::of_layout(&four);
        for id in ["a", "b", "c", "d"] {
            let drop = plan_cleanup(&snapshot, id, 3).unwrap();
            let keep = snapshot.ring().ranges_of(id, 3);
            assert!(
                !drop.is_empty(),
                "with 4 nodes and N=3 {id} drops some ranges"
            );
            assert!(drop.iter().all(|r| !keep.contains(r)));
            assert_eq!(
                drop.len() + keep.len(),
                snapshot.ring().ranges().len(),
                "every range is kept or dropped by {id}"
            );
        }
        // Three nodes, N=3: every node replicates everything.
        let three = layout(1, &[("a", Normal), ("b", Normal), ("c", Normal)]);
        let snapshot = PlacementSnapshot::<HashRing>::of_layout(&three);
        assert!(plan_cleanup(&snapshot, "a", 3).unwrap().is_empty());
        // A join in flight, or a node not in the ring: refused.
        let joining = layout(
            2,
            &[("a", Normal), ("b", Normal), ("c", Normal), ("d", Joining)],
        );
        let snapshot = PlacementSnapshot::<HashRing>::of_layout(&joining);
        let err = plan_cleanup(&snapshot, "a", 3).unwrap_err();
        assert!(err.contains("in flight"), "{err}");
        let snapshot = PlacementSnapshot::<HashRing>::of_layout(&three);
        let err = plan_cleanup(&snapshot, "z", 3).unwrap_err();
        assert!(err.contains("not a normal member"), "{err}");
    }
}
