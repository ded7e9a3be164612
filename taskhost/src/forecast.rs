//! When this worker's busy slots are likely to free, learned from the attempts it has run.
//!
//! A worker running short tasks back to back loses time twice per task if it waits for a
//! slot to free before acting: the round trip to SQS for the next message, and the claim
//! write. With a forecast it does both a little ahead: it asks SQS for messages only for
//! the slots about to free (so a full worker does not hoard work that an idle worker
//! elsewhere could start now: the tail of a job stays even), and, while the tasks it runs
//! are steady in length, it claims the next task just before a slot frees, so the slot
//! starts it at once.

use std::time::Duration;

/// A moving average of attempt lengths and of their deviation from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forecast {
    mean_ms: Option<f64>,
    deviation_ms: f64,
}

/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.2;

impl Forecast {
    /// Take in the length of an attempt that ran to its end.
    pub fn observe(&mut self, ran: Duration) {
        let x = ran.as_secs_f64() * 1000.0;
        match self.mean_ms {
            None => self.mean_ms = Some(x),
            Some(m) => {
                self.deviation_ms += ALPHA * ((x - m).abs() - self.deviation_ms);
                self.mean_ms = Some(m + ALPHA * (x - m));
            }
        }
    }

    /// The expected length of an attempt, once one has been seen.
    pub fn mean(&self) -> Option<Duration> {
        self.mean_ms
            .map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0))
    }

    /// Whether attempts are alike enough in length (deviation within a tenth of the
    /// mean) to act on a task's expected end: claiming a task ahead binds it to this
    /// worker, so it is done only when the slot will very likely free in time.
    pub fn steady(&self) -> bool {
        self.mean_ms
            .is_some_and(|m| m > 0.0 && self.deviation_ms <= 0.1 * m)
    }

    /// Time left until a task that has run for `elapsed` is expected to end: zero when it
    /// is due or overdue, `None` before any attempt has been seen.
    pub fn remaining(&self, elapsed: Duration) -> Option<Duration> {
        self.mean().map(|m| m.saturating_sub(elapsed))
    }

    /// How many of the tasks that have run for `elapsed` are expected to end within
    /// `horizon` (an overdue task counts: it may end any moment).
    pub fn ending_within(
        &self,
        elapsed: impl IntoIterator<Item = Duration>,
        horizon: Duration,
    ) -> Option<usize> {
        self.mean()?;
        Some(
            elapsed
                .into_iter()
                .filter(|e| self.remaining(*e).is_some_and(|r| r <= horizon))
                .count(),
        )
    }

    /// How long until the next task in `elapsed` comes within `horizon` of its expected
    /// end (`None`: no history, or every task is already that close).
    pub fn next_within(
        &self,
        elapsed: impl IntoIterator<Item = Duration>,
        horizon: Duration,
    ) -> Option<Duration> {
        elapsed
            .into_iter()
            .filter_map(|e| self.remaining(e))
            .filter(|r| *r > horizon)
            .map(|r| r - horizon)
            .min()
    }
}

/// A moving average of how long a claim write takes, and the lead a claim needs to be
/// done by the time the slot frees: one and a half times that, 10 to 250 ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimLatency {
    mean_ms: Option<f64>,
}

impl ClaimLatency {
    pub fn observe(&mut self, took: Duration) {
        let x = took.as_secs_f64() * 1000.0;
        self.mean_ms = Some(match self.mean_ms {
            None => x,
            Some(m) => m + ALPHA * (x - m),
        });
    }

    pub fn lead(&self) -> Duration {
        let ms = (self.mean_ms.unwrap_or(30.0) * 1.5).clamp(10.0, 250.0);
        Duration::from_secs_f64(ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn knows_nothing_before_the_first_attempt() {
        let f = Forecast::default();
        assert_eq!(f.mean(), None);
        assert!(!f.steady());
        assert_eq!(f.ending_within([ms(900)], ms(200)), None);
        assert_eq!(f.next_within([ms(900)], ms(200)), None);
    }

    #[test]
    fn steady_tasks_are_forecast_and_counted_near_their_end() {
        let mut f = Forecast::default();
        for n in [1000, 1040, 990, 1010, 1020] {
            f.observe(ms(n));
        }
        assert!(f.steady(), "{f:?}");
        let mean = f
            .mean()
            .expect("a forecast after five attempts")
            .as_millis();
        assert!((995..=1025).contains(&mean), "mean {mean}");
        // Running for 100 ms, 850 ms, 990 ms and overdue at 1500 ms.
        let running = [ms(100), ms(850), ms(990), ms(1500)];
        assert_eq!(f.ending_within(running, ms(200)), Some(3));
        assert_eq!(f.ending_within(running, ms(50)), Some(2));
        // The 100 ms one comes within 200 ms of its end about 700 ms from now.
        let next = f
            .next_within(running, ms(200))
            .expect("one task is still more than 200 ms from its end")
            .as_millis();
        assert!((690..=730).contains(&next), "next {next}");
    }

    #[test]
    fn mixed_lengths_are_not_steady() {
        let mut f = Forecast::default();
        for n in [100, 10_000, 150, 9_000, 120, 12_000] {
            f.observe(ms(n));
        }
        assert!(!f.steady(), "{f:?}");
        // It still forecasts, for asking SQS ahead.
        assert!(f.mean().is_some());
    }

    #[test]
    fn a_change_of_workload_is_followed() {
        let mut f = Forecast::default();
        for _ in 0..20 {
            f.observe(ms(1000));
        }
        for _ in 0..30 {
            f.observe(ms(5000));
        }
        let mean = f
            .mean()
            .expect("a forecast after fifty attempts")
            .as_millis();
        assert!((4900..=5000).contains(&mean), "mean {mean}");
        assert!(f.steady());
    }

    #[test]
    fn claim_lead_follows_the_claim_time_within_bounds() {
        let mut c = ClaimLatency::default();
        assert_eq!(c.lead(), ms(45));
        for _ in 0..30 {
            c.observe(ms(40));
        }
        let lead = c.lead().as_millis();
        assert!((58..=61).contains(&lead), "lead {lead}");
        for _ in 0..30 {
            c.observe(ms(2000));
        }
        assert_eq!(c.lead(), ms(250));
        let mut fast = ClaimLatency::default();
        fast.observe(ms(1));
        assert_eq!(fast.lead(), ms(10));
    }
}
