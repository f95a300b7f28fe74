//! The owner of the node's background tasks (hint replay, liveness probes, placement
//! updates): it starts them, and stops and joins them all at shutdown.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Background tasks of one node. The number of tasks is fixed by the code that starts
/// them (one per subsystem), not by load.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Mutex<JoinSet<&'static str>>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with no task yet.
    pub fn new() -> Self {
        Supervisor {
            stop: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Runs `round` every `interval` (a round that overruns delays the next one) until
    /// shutdown. A round in progress at shutdown is abandoned at its next `.await`.
    pub fn every<F, Fut>(&self, name: &'static str, interval: Duration, mut round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                round().await;
            }
        });
    }

    /// Runs `task` until it ends or the node shuts down, whichever comes first.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stop.subscribe();
        self.tasks.lock().spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            name
        });
    }

    /// Stops every task and waits (at most `deadline`) for them to end; returns the
    /// names of those that had not ended by then (they are aborted).
    pub async fn shutdown(&self, deadline: Duration) -> Vec<&'static str> {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        let drained = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            return Vec::new();
        }
        tasks.abort_all();
        let mut late = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(name) = done {
                late.push(name);
            }
        }
        tracing::warn!(tasks = ?late, "background tasks did not stop in time");
        late
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn periodic_tasks_run_until_shutdown_and_then_never_again() {
        let sup = Supervisor::new();
        let rounds = Arc::new(AtomicUsize::new(0));
        let r = rounds.clone();
        sup.every("count", Duration::from_secs(1), move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        sup.spawn("forever", std::future::pending());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            4,
            "rounds at 0, 1, 2 and 3 s"
        );
        assert_eq!(sup.running(), 2);
        assert!(sup.shutdown(Duration::from_secs(5)).await.is_empty());
        assert_eq!(sup.running(), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4, "no round after shutdown");
    }
}
