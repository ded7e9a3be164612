//! Backoff for the retries Batchplane makes itself, above the SDK's own (unprocessed
//! batch entries, a result write held to its lease, a stream batch's sends): full
//! jitter (a random wait between zero and an exponentially growing cap), so many
//! callers throttled at once do not come back at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    cap: Duration,
    max: Duration,
    deadline: Option<Instant>,
    tries: u32,
}

impl Backoff {
    /// Waits whose cap starts at `first` and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            cap: first,
            max,
            deadline: None,
            tries: 0,
        }
    }

    /// The same, giving up (`next` answers `None`) once a wait would end after `deadline`.
    pub fn until(mut self, deadline: Instant) -> Backoff {
        self.deadline = Some(deadline);
        self
    }

    /// How many waits were handed out.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// The next wait, or `None` when it would pass the deadline.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.cap.mul_f64(fastrand::f64());
        self.cap = (self.cap * 2).min(self.max);
        if self.deadline.is_some_and(|d| Instant::now() + wait > d) {
            return None;
        }
        self.tries += 1;
        Some(wait)
    }

    /// Sleep the next wait; `false` (without sleeping) when it would pass the deadline.
    pub async fn wait(&mut self) -> bool {
        match self.next_wait() {
            Some(w) => {
                tokio::time::sleep(w).await;
                true
            }
            None => false,
        }
    }

    /// Start over from the first cap (progress was made).
    pub fn reset(&mut self, first: Duration) {
        self.cap = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_a_doubling_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let caps = [10, 20, 40, 80, 80, 80];
        for cap in caps {
            let w = b
                .next_wait()
                .unwrap_or_else(|| panic!("no deadline was set"));
            assert!(w <= Duration::from_millis(cap), "{w:?} over {cap} ms");
        }
        assert_eq!(b.tries(), 6);
    }

    #[test]
    fn a_deadline_ends_the_waits() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10))
            .until(Instant::now() + Duration::from_millis(1));
        // A wait of up to 10 s almost surely passes a 1 ms deadline; a handful of draws
        // without one is as good as impossible.
        assert!((0..20).any(|_| b.next_wait().is_none()));
    }
}
