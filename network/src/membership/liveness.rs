//! Liveness, kept apart from the layout: a phi accrual failure detector per member and a
//! table of members' liveness. Sans-IO: every function takes `now`; nothing sleeps or
//! reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Whether a member answers, as the failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Answers.
    Alive,
    /// Missed a contact or its heartbeats are late; requests still go to it.
    Suspect,
    /// Considered down: writes to it become hints.
    Dead,
}

impl Liveness {
    fn rank(self) -> u8 {
        match self {
            Liveness::Alive => 0,
            Liveness::Suspect => 1,
            Liveness::Dead => 2,
        }
    }

    fn worst(self, other: Liveness) -> Liveness {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
        })
    }
}

/// A member's liveness at the time of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessView {
    /// The member's liveness.
    pub liveness: Liveness,
    /// Time since the member was last heard from, at the time of the query; `None` if
    /// never.
    pub last_heard: Option<Duration>,
    /// The detector's suspicion level at the time of the query (0 when never heard).
    pub phi: f64,
}

/// Phi accrual failure detector over a window of heartbeat intervals (sans-IO).
///
/// `phi(now)` is `-log10` of the probability that a heartbeat interval is at least as
/// long as the silence since the last heartbeat, under a normal distribution fitted to
/// the recent intervals (standard deviation at least `min_std_dev`). Until the first
/// interval is known the detector assumes intervals of `first_interval` with a standard
/// deviation of a quarter of it. Heartbeats closer together than half of
/// `first_interval` (the expected heartbeat period) count as one sample, so feeding every
/// peer call as a heartbeat does not shrink the expected interval; they still move
/// `last_heard`.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    window: usize,
    min_std_dev: Duration,
    first_interval: Duration,
    intervals: VecDeque<f64>,
    last_heard: Option<Instant>,
    last_sampled: Option<Instant>,
}

impl PhiDetector {
    /// A detector that keeps the last `window` intervals (at least one).
    pub fn new(window: usize, min_std_dev: Duration, first_interval: Duration) -> Self {
        let window = window.max(1);
        PhiDetector {
            window,
            min_std_dev,
            first_interval,
            intervals: VecDeque::with_capacity(window.min(1024)),
            last_heard: None,
            last_sampled: None,
        }
    }

    /// Records a heartbeat (any sign of life) at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        self.last_heard = Some(self.last_heard.map_or(now, |t| t.max(now)));
        match self.last_sampled {
            None => self.last_sampled = Some(now),
            Some(sampled) => {
                let interval = now.saturating_duration_since(sampled);
                if interval >= self.first_interval / 2 {
                    if self.intervals.len() == self.window {
                        self.intervals.pop_front();
                    }
                    self.intervals.push_back(interval.as_secs_f64());
                    self.last_sampled = Some(now);
                }
            }
        }
    }

    /// When the last heartbeat arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// Suspicion level at `now`: 0 when never heard, growing with silence (about 1 per
    /// tenfold drop in the probability that the member is still alive).
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last_heard else {
            return 0.0;
        };
        let silence = now.saturating_duration_since(last).as_secs_f64();
        let (mean, std_dev) = if self.intervals.is_empty() {
            let first = self.first_interval.as_secs_f64();
            (first, first / 4.0)
        } else {
            let n = self.intervals.len() as f64;
            let mean = self.intervals.iter().sum::<f64>() / n;
            let var = self
                .intervals
                .iter()
                .map(|x| (x - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        };
        let std_dev = std_dev.max(self.min_std_dev.as_secs_f64()).max(1e-6);
        let y = (silence - mean) / std_dev;
        // Logistic approximation of the normal CDF (as in Akka and Cassandra):
        // P(interval > t) ~= 1 / (1 + exp(y * (1.5976 + 0.070566 y^2))).
        let z = y * (1.5976 + 0.070566 * y * y);
        // phi = log10(1 + exp(z)), computed without overflow for large z.
        let phi = if z > 30.0 {
            z / std::f64::consts::LN_10
        } else {
            z.exp().ln_1p() / std::f64::consts::LN_10
        };
        phi.max(0.0)
    }
}

/// Settings of the failure detector.
#[derive(Clone, Debug)]
pub struct DetectorSettings {
    /// Phi at or above which a member is suspect.
    pub phi_suspect: f64,
    /// Phi at or above which a member is dead.
    pub phi_dead: f64,
    /// Heartbeat intervals kept per member.
    pub window: usize,
    /// Floor of the intervals' standard deviation (keeps regular heartbeats from making
    /// the detector hair-triggered).
    pub min_std_dev: Duration,
    /// Expected heartbeat interval before any is measured (the probe period).
    pub first_interval: Duration,
    /// Consecutive failed contacts that make a member dead even before phi says so (at
    /// least 1).
    pub dead_after_failures: u32,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            phi_suspect: 5.0,
            phi_dead: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(100),
            first_interval: Duration::from_secs(1),
            dead_after_failures: 3,
        }
    }
}

/// What the node learned from one contact attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// The member answered.
    Answered,
    /// The member did not answer (unreachable, timed out, or answered with an error).
    Failed,
}

#[derive(Clone, Debug)]
struct Tracked {
    detector: PhiDetector,
    liveness: Liveness,
    failures: u32,
}

/// Liveness of every member (sans-IO): feed it contacts and ticks with `now`, it returns
/// the transitions.
///
/// Rules: an answer is a heartbeat and makes the member alive; a failed contact makes an
/// alive member suspect at once and any member dead after `dead_after_failures`
/// consecutive failures; a tick makes a member suspect when its phi reaches
/// `phi_suspect` and dead when it reaches `phi_dead` (ticks only worsen liveness; only an
/// answer makes a member alive again). A member never heard from stays alive until a
/// contact with it fails.
#[derive(Clone, Debug)]
pub struct LivenessTable {
    settings: DetectorSettings,
    members: BTreeMap<String, Tracked>,
}

impl LivenessTable {
    /// An empty table.
    pub fn new(settings: DetectorSettings) -> Self {
        LivenessTable {
            settings,
            members: BTreeMap::new(),
        }
    }

    fn tracked(&mut self, id: &str) -> &mut Tracked {
        let s = &self.settings;
        self.members
            .entry(id.to_string())
            .or_insert_with(|| Tracked {
                detector: PhiDetector::new(s.window, s.min_std_dev, s.first_interval),
                liveness: Liveness::Alive,
                failures: 0,
            })
    }

    /// Records the outcome of one contact with `id` at `now`; returns `(from, to)` when
    /// the member's liveness changed.
    pub fn record(
        &mut self,
        id: &str,
        contact: Contact,
        now: Instant,
    ) -> Option<(Liveness, Liveness)> {
        let dead_after = self.settings.dead_after_failures.max(1);
        let t = self.tracked(id);
        let from = t.liveness;
        match contact {
            Contact::Answered => {
                t.detector.heartbeat(now);
                t.failures = 0;
                t.liveness = Liveness::Alive;
            }
            Contact::Failed => {
                t.failures = t.failures.saturating_add(1);
                let by_count = if t.failures >= dead_after {
                    Liveness::Dead
                } else {
                    Liveness::Suspect
                };
                t.liveness = t.liveness.worst(by_count);
            }
        }
        (from != t.liveness).then_some((from, t.liveness))
    }

    /// Re-evaluates every member's phi at `now`; returns the transitions, by id.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, Liveness, Liveness)> {
        let (suspect, dead) = (self.settings.phi_suspect, self.settings.phi_dead);
        let mut changes = Vec::new();
        for (id, t) in &mut self.members {
            if t.detector.last_heard().is_none() {
                continue;
            }
            let phi = t.detector.phi(now);
            let by_phi = if phi >= dead {
                Liveness::Dead
            } else if phi >= suspect {
                Liveness::Suspect
            } else {
                Liveness::Alive
            };
            let from = t.liveness;
            t.liveness = from.worst(by_phi);
            if from != t.liveness {
                changes.push((id.clone(), from, t.liveness));
            }
        }
        changes
    }

    /// The member's liveness as of `now`; an unknown id is alive, never heard, phi 0.
    pub fn view(&self, id: &str, now: Instant) -> LivenessView {
        match self.members.get(id) {
            None => LivenessView {
                liveness: Liveness::Alive,
                last_heard: None,
                phi: 0.0,
            },
            Some(t) => LivenessView {
                liveness: t.liveness,
                last_heard: t
                    .detector
                    .last_heard()
                    .map(|at| now.saturating_duration_since(at)),
                phi: t.detector.phi(now),
            },
        }
    }

    /// Drops what is known about `id` (it left the layout).
    pub fn forget(&mut self, id: &str) {
        self.members.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn phi_rises_with_silence_and_falls_after_heartbeats() {
        let t0 = Instant::now();
        let mut d = PhiDetector::new(10, 100 * MS, 1000 * MS);
        assert_eq!(d.phi(t0 + 5000 * MS), 0.0, "never heard: no suspicion");
        for i in 0..10 {
            d.heartbeat(t0 + i * 1000 * MS);
        }
        let last = t0 + 9000 * MS;
        assert_eq!(d.last_heard(), Some(last));
        let mut previous = d.phi(last);
        assert!(previous < 0.1, "just heard: {previous}");
        for silence_ms in [900u32, 1100, 1300, 1600, 2000, 5000] {
            let phi = d.phi(last + silence_ms * MS);
            assert!(phi > previous, "{silence_ms} ms: {phi} <= {previous}");
            previous = phi;
        }
        // Regular 1 s heartbeats, std dev floored at 100 ms: 1.3 s of silence (3 std devs)
        // is not yet suspect at phi 5, 1.5 s is.
        assert!(d.phi(last + 1300 * MS) < 5.0);
        assert!(d.phi(last + 1500 * MS) > 5.0);
        assert!(d.phi(last + 5000 * MS).is_finite());
        d.heartbeat(last + 1000 * MS);
        assert!(d.phi(last + 1100 * MS) < 1.0);
    }

    #[test]
    fn close_heartbeats_count_as_one_sample() {
        let t0 = Instant::now();
        let mut busy = PhiDetector::new(10, 100 * MS, 1000 * MS);
        let mut quiet = PhiDetector::new(10, 100 * MS, 1000 * MS);
        for i in 0..5u32 {
            quiet.heartbeat(t0 + i * 1000 * MS);
            for j in 0..10u32 {
                busy.heartbeat(t0 + i * 1000 * MS + j * MS);
            }
        }
        // The busy detector's expected interval stayed a second (had every call counted,
        // its mean would be ~80 ms and 0.7 s of quiet would give phi ~2).
        let at = t0 + 4700 * MS;
        assert!(busy.phi(at) < 0.01, "{}", busy.phi(at));
        let late = t0 + 5500 * MS;
        assert!(busy.phi(late) <= quiet.phi(late));
        assert!(busy.phi(late) > 0.8 * quiet.phi(late));
    }

    #[test]
    fn the_first_interval_stands_in_until_one_is_measured() {
        let t0 = Instant::now();
        let mut d = PhiDetector::new(10, 10 * MS, 2000 * MS);
        d.heartbeat(t0);
        assert!(d.phi(t0 + 1500 * MS) < 1.0);
        // Mean 2 s, std dev 0.5 s: 4 s of silence is 4 std devs late, 6 s is 8.
        let at_4s = d.phi(t0 + 4000 * MS);
        assert!(at_4s > 4.0 && at_4s < 5.0, "{at_4s}");
        assert!(d.phi(t0 + 6000 * MS) > 8.0);
    }

    fn settings() -> DetectorSettings {
        DetectorSettings::default()
    }

    #[test]
    fn failed_contacts_make_suspect_then_dead_and_an_answer_alive() {
        let t0 = Instant::now();
        let mut table = LivenessTable::new(settings());
        assert_eq!(table.record("b", Contact::Answered, t0), None);
        assert_eq!(
            table.record("b", Contact::Failed, t0 + 1000 * MS),
            Some((Liveness::Alive, Liveness::Suspect))
        );
        assert_eq!(table.record("b", Contact::Failed, t0 + 1100 * MS), None);
        assert_eq!(
            table.record("b", Contact::Failed, t0 + 1200 * MS),
            Some((Liveness::Suspect, Liveness::Dead))
        );
        assert_eq!(table.record("b", Contact::Failed, t0 + 1300 * MS), None);
        assert_eq!(
            table.record("b", Contact::Answered, t0 + 1400 * MS),
            Some((Liveness::Dead, Liveness::Alive))
        );
        // The count starts over after an answer.
        table.record("b", Contact::Failed, t0 + 1500 * MS);
        table.record("b", Contact::Failed, t0 + 1600 * MS);
        assert_eq!(table.view("b", t0 + 1600 * MS).liveness, Liveness::Suspect);
    }

    #[test]
    fn ticks_follow_phi_and_never_heal() {
        let t0 = Instant::now();
        let mut table = LivenessTable::new(settings());
        for i in 0..5u32 {
            table.record("b", Contact::Answered, t0 + i * 1000 * MS);
        }
        let last = t0 + 4000 * MS;
        assert!(table.tick(last + 1000 * MS).is_empty());
        let suspect_at = (1..100)
            .map(|k| last + k * 100 * MS)
            .find(|&at| table.view("b", at).phi >= 5.0)
            .unwrap();
        assert_eq!(
            table.tick(suspect_at),
            vec![("b".to_string(), Liveness::Alive, Liveness::Suspect)]
        );
        assert!(table.tick(suspect_at).is_empty(), "reported once");
        let dead_at = suspect_at + 10_000 * MS;
        assert_eq!(
            table.tick(dead_at),
            vec![("b".to_string(), Liveness::Suspect, Liveness::Dead)]
        );
        let view = table.view("b", dead_at);
        assert_eq!(view.last_heard, Some(dead_at - last));
        assert!(view.phi >= 8.0);
        assert_eq!(
            table.record("b", Contact::Answered, dead_at),
            Some((Liveness::Dead, Liveness::Alive))
        );
        assert!(table.tick(dead_at + 100 * MS).is_empty());
    }

    #[test]
    fn a_member_never_heard_from_stays_alive_until_a_contact_fails() {
        let t0 = Instant::now();
        let mut table = LivenessTable::new(settings());
        assert_eq!(
            table.view("x", t0),
            LivenessView {
                liveness: Liveness::Alive,
                last_heard: None,
                phi: 0.0
            }
        );
        table.record("x", Contact::Failed, t0);
        table.forget("x");
        assert_eq!(table.view("x", t0).liveness, Liveness::Alive, "forgotten");
        table.record("y", Contact::Failed, t0);
        assert!(table.tick(t0 + 3_600_000 * MS).is_empty());
        assert_eq!(table.view("y", t0).liveness, Liveness::Suspect);
        assert_eq!(Liveness::Suspect.to_string(), "suspect");
    }
}
