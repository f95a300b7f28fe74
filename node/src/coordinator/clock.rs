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

    /// A fresh counter greater than every earlier one and than `at_least`.
    pub(crate) fn next(&self, at_least: u64) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = (cur + 1).max(now).max(at_least.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }
}
