//! Quorum counting, as plain code: which acknowledgements satisfy a request.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::api::Consistency;
use crate::error::NodeError;

/// Counts the answers of the replicas of one request against one or more replica sets
/// (two while a layout change is in flight): the request succeeds once *every* set has
/// `needed` successful answers.
///
/// Replicas are named by their index in the request's replica list; `sets[i]` has bit
/// `j` set when replica `i` belongs to set `j` (at most 8 sets).
#[derive(Clone, Debug)]
pub struct QuorumTracker {
    member_of: Vec<u8>,
    set_sizes: Vec<usize>,
    acks: Vec<usize>,
    failures: Vec<usize>,
    needed: usize,
}

impl QuorumTracker {
    /// A tracker for replicas whose set memberships are `member_of`, over `sets` sets.
    pub fn new(member_of: Vec<u8>, sets: usize, needed: usize) -> Self {
        let sets = sets.clamp(1, 8);
        let mut set_sizes = vec![0; sets];
        for m in &member_of {
            for (j, size) in set_sizes.iter_mut().enumerate() {
                if m & (1 << j) != 0 {
                    *size += 1;
                }
            }
        }
        QuorumTracker {
            member_of,
            set_sizes,
            acks: vec![0; sets],
            failures: vec![0; sets],
            needed,
        }
    }

    /// A tracker for `replicas` replicas that form one set.
    pub fn single(replicas: usize, needed: usize) -> Self {
        QuorumTracker::new(vec![1; replicas], 1, needed)
    }

    /// Replica `i` answered successfully.
    pub fn ack(&mut self, i: usize) {
        self.count(i, true);
    }

    /// Replica `i` failed.
    pub fn fail(&mut self, i: usize) {
        self.count(i, false);
    }

    fn count(&mut self, i: usize, ok: bool) {
        let Some(&m) = self.member_of.get(i) else {
            return;
        };
        let counts = if ok {
            &mut self.acks
        } else {
            &mut self.failures
        };
        for (j, c) in counts.iter_mut().enumerate() {
            if m & (1 << j) != 0 {
                *c += 1;
            }
        }
    }

    /// Every set has its quorum.
    pub fn reached(&self) -> bool {
        self.acks.iter().all(|&a| a >= self.needed)
    }

    /// Failures counted in the set with the most of them.
    pub fn failures(&self) -> usize {
        self.failures.iter().copied().max().unwrap_or(0)
    }

    /// Replicas of the smallest set.
    pub fn smallest_set(&self) -> usize {
        self.set_sizes.iter().copied().min().unwrap_or(0)
    }

    /// Acknowledgements of the set furthest from its quorum (for error messages).
    pub fn acks(&self) -> usize {
        self.acks.iter().copied().min().unwrap_or(0)
    }
}

/// The number of answers a request needs at `consistency` from a set of `available`
/// replicas, or why it cannot be served.
pub fn required(
    consistency: Consistency,
    default: usize,
    replicas: usize,
    available: usize,
) -> Result<usize, NodeError> {
    let needed = match consistency {
        Consistency::Default => default,
        Consistency::One => 1,
        Consistency::Quorum => replicas / 2 + 1,
        Consistency::All => replicas,
    };
    if needed > available {
        return Err(NodeError::NotEnoughReplicas { needed, available });
    }
    Ok(needed)
}

/// Polls replica calls until the tracker's quorum is reached, every call answered
/// (so that a failure reports every acknowledgement), or `timeout` passed. Returns the successful answers (by replica index) and
/// one line per failure, the deadline included; calls still pending stay in `pending`.
pub async fn collect<T, E, F>(
    pending: &mut FuturesUnordered<F>,
    tracker: &mut QuorumTracker,
    timeout: Duration,
    name: impl Fn(usize) -> String,
) -> (Vec<(usize, T)>, Vec<String>)
where
    F: Future<Output = (usize, Result<T, E>)>,
    E: std::fmt::Display,
{
    let (answers, errors, late) = collect_errors(pending, tracker, timeout).await;
    let mut failures: Vec<String> = errors
        .iter()
        .map(|(i, e)| format!("{}: {e}", name(*i)))
        .collect();
    failures.extend(late);
    (answers, failures)
}

/// [`collect`], returning the failures as they are (by replica index) and, apart, the
/// line saying the deadline passed, if it did.
pub async fn collect_errors<T, E, F>(
    pending: &mut FuturesUnordered<F>,
    tracker: &mut QuorumTracker,
    timeout: Duration,
) -> (Vec<(usize, T)>, Vec<(usize, E)>, Option<String>)
where
    F: Future<Output = (usize, Result<T, E>)>,
{
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    let run = async {
        while !tracker.reached() {
            match pending.next().await {
                Some((i, Ok(answer))) => {
                    tracker.ack(i);
                    answers.push((i, answer));
                }
                Some((i, Err(e))) => {
                    tracker.fail(i);
                    failures.push((i, e));
                }
                None => break,
            }
        }
    };
    let late = tokio::time::timeout(timeout, run)
        .await
        .is_err()
        .then(|| format!("deadline of {timeout:?} passed"));
    (answers, failures, late)
}

/// The error of a request whose quorum was not reached.
pub fn not_reached(got: usize, needed: usize, failures: &[String]) -> NodeError {
    let detail = if failures.is_empty() {
        String::new()
    } else {
        format!("; {}", failures.join("; "))
    };
    NodeError::QuorumNotReached {
        got,
        needed,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_counts_acks_and_failures() {
        let mut t = QuorumTracker::single(3, 2);
        assert!(!t.reached());
        t.fail(0);
        t.ack(1);
        assert!(!t.reached());
        t.fail(2);
        assert!(!t.reached());
        assert_eq!((t.acks(), t.failures(), t.smallest_set()), (1, 2, 3));

        let mut t = QuorumTracker::single(3, 2);
        t.ack(2);
        t.ack(0);
        assert!(t.reached());
    }

    #[test]
    fn during_a_change_each_set_needs_its_own_quorum() {
        // Replicas a, b, c are the old owners; b, c, d the new ones (a leaves, d joins).
        let member_of = vec![0b01, 0b11, 0b11, 0b10];
        let mut t = QuorumTracker::new(member_of.clone(), 2, 2);
        t.ack(0);
        t.ack(3);
        assert!(
            !t.reached(),
            "one ack in each set is not a quorum of either"
        );
        t.ack(1);
        assert!(t.reached(), "b counts for both sets");

        // Old set has its quorum, new set does not: not reached.
        let mut t = QuorumTracker::new(member_of, 2, 2);
        t.ack(0);
        t.ack(1);
        assert!(!t.reached());
        t.fail(3);
        t.fail(2);
        assert!(!t.reached());
        assert_eq!(t.acks(), 1, "the new set has one ack (b)");
        assert_eq!(t.failures(), 2, "the new set lost c and d");
        assert_eq!(t.smallest_set(), 3);
    }

    #[test]
    fn consistency_levels_ask_for_the_right_counts() {
        assert_eq!(required(Consistency::Default, 2, 3, 3).unwrap(), 2);
        assert_eq!(required(Consistency::One, 2, 3, 3).unwrap(), 1);
        assert_eq!(required(Consistency::Quorum, 1, 5, 5).unwrap(), 3);
        assert_eq!(required(Consistency::All, 1, 3, 3).unwrap(), 3);
        let err = required(Consistency::All, 1, 3, 2).unwrap_err().to_string();
        assert!(
            err.contains("needs 3 replicas but the key has only 2"),
            "{err}"
        );
    }
}
