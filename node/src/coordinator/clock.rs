//! The dot clock: write counters issued by this node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Issues write counters for this node: strictly increasing, and at least the current
/// time in microseconds, so counters keep growing across restarts.
pub(crate) struct DotClock {
    last: AtomicU64,
}

impl DotClock {
    pub(crate) fn new() -> Self {
        DotClock {
            last: AtomicU64::new(0),
        }
    }

    /// A fresh counter greater than every earlier one and than `at_least`; `None` once
    /// no such counter exists (the clock never saturates or wraps: a counter that is not
    /// fresh would be covered by its own context and the write hidden).
    pub(crate) fn next(&self, at_least: u64) -> Option<u64> {
        let now = now_micros();
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(1)?.max(now).max(at_least.checked_add(1)?);
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(next),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// This node's clock in microseconds since the Unix epoch (0 if it is before).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_and_never_wrap() {
        let clock = DotClock::new();
        let a = clock.next(0).unwrap();
        let b = clock.next(0).unwrap();
        assert!(b > a && a >= now_micros() - 60_000_000);
        assert_eq!(
            clock.next(b + 10).unwrap(),
            b + 11,
            "past a context's counter"
        );
        assert_eq!(
            clock.next(u64::MAX),
            None,
            "no counter is fresh past u64::MAX"
        );
        assert_eq!(clock.next(u64::MAX - 1), Some(u64::MAX));
        assert_eq!(clock.next(0), None, "exhausted: refused, not wrapped to 0");
    }
}
