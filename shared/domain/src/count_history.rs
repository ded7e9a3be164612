//! A job's task counts over its whole life. The fanout keeps a job's counts as one delta
//! item per stream batch, stamped with when the batch was counted, and folds old ones
//! into a base; the fold keeps what it folds here too, as deltas by time bucket. So the
//! history costs no write a task: the live batch items are its recent end, this its
//! past, and the two together say how many tasks were in each state at any time.
//!
//! Buckets start at [`FIRST_BUCKET_MS`] and double (merging neighbours) whenever a
//! history would hold more than [`MAX_BUCKETS`], so a week-long job's history is the
//! same few kilobytes as an hour-long one's.

use crate::state::{TaskCounts, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FIRST_BUCKET_MS: i64 = 5_000;
pub const MAX_BUCKETS: usize = 240;

/// Count deltas by time bucket: bucket `b` holds what changed in
/// `[b·bucket_ms, (b+1)·bucket_ms)` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountHistory {
    pub bucket_ms: i64,
    pub buckets: BTreeMap<i64, TaskCounts>,
}

impl Default for CountHistory {
    fn default() -> Self {
        CountHistory {
            bucket_ms: FIRST_BUCKET_MS,
            buckets: BTreeMap::new(),
        }
    }
}

/// How many tasks were in each state at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountsAt {
    /// The end of the bucket (ms since the epoch): the counts are as of then.
    pub at: i64,
    pub counts: BTreeMap<TaskState, u64>,
}

impl CountHistory {
    /// Add the deltas counted at `at_ms`.
    pub fn add(&mut self, at_ms: i64, deltas: &TaskCounts) {
        if deltas.is_empty() {
            return;
        }
        let b = at_ms.div_euclid(self.bucket_ms);
        self.buckets.entry(b).or_default().merge(deltas);
        self.fit(MAX_BUCKETS);
    }

    /// Add another history's deltas.
    pub fn merge(&mut self, other: &CountHistory) {
        for (b, d) in &other.buckets {
            self.add(b * other.bucket_ms, d);
        }
    }

    /// Every delta summed: the counts the history comes to.
    pub fn total(&self) -> TaskCounts {
        let mut t = TaskCounts::default();
        for d in self.buckets.values() {
            t.merge(d);
        }
        t
    }

    /// Double the buckets until there are at most `most` of them.
    pub fn fit(&mut self, most: usize) {
        let most = most.max(1);
        while self.buckets.len() > most {
            self.bucket_ms *= 2;
            let mut wider: BTreeMap<i64, TaskCounts> = BTreeMap::new();
            for (b, d) in std::mem::take(&mut self.buckets) {
                wider.entry(b.div_euclid(2)).or_default().merge(&d);
            }
            self.buckets = wider;
        }
    }

    /// The counts as of the end of each bucket, running sums of the deltas, in at most
    /// `most` points.
    pub fn cumulative(&self, most: usize) -> Vec<CountsAt> {
        let mut h = self.clone();
        h.fit(most);
        let mut running = TaskCounts::default();
        h.buckets
            .iter()
            .map(|(b, d)| {
                running.merge(d);
                CountsAt {
                    at: (b + 1) * h.bucket_ms,
                    counts: TaskState::ALL
                        .iter()
                        .filter(|st| running.get(**st) > 0)
                        .map(|st| (*st, running.get(*st)))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn moved(from: Option<TaskState>, to: TaskState, n: i64) -> TaskCounts {
        let mut c = TaskCounts::default();
        if let Some(f) = from {
            c.add(f, -n);
        }
        c.add(to, n);
        c
    }

    #[test]
    fn the_running_sums_say_how_many_were_in_each_state_when() {
        let mut h = CountHistory::default();
        h.add(1_000, &moved(None, Pending, 10));
        h.add(6_000, &moved(Some(Pending), Running, 4));
        h.add(7_000, &moved(Some(Running), Succeeded, 1));
        h.add(12_000, &moved(Some(Running), Succeeded, 3));
        let points = h.cumulative(100);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].at, 5_000);
        assert_eq!(points[0].counts, BTreeMap::from([(Pending, 10)]));
        assert_eq!(
            points[1].counts,
            BTreeMap::from([(Pending, 6), (Running, 3), (Succeeded, 1)])
        );
        assert_eq!(
            points[2].counts,
            BTreeMap::from([(Pending, 6), (Succeeded, 4)])
        );
        let total = h.total();
        assert_eq!(
            (total.get(Pending), total.get(Running), total.get(Succeeded)),
            (6, 0, 4)
        );
    }

    #[test]
    fn a_long_history_widens_its_buckets_and_keeps_every_delta() {
        let mut h = CountHistory::default();
        // A week, a task created each minute and finished the next.
        let week = 7 * 24 * 3600 * 1000;
        let mut at = 0;
        while at < week {
            h.add(at, &moved(None, Pending, 1));
            h.add(at + 60_000, &moved(Some(Pending), Succeeded, 1));
            at += 60_000;
        }
        assert!(h.buckets.len() <= MAX_BUCKETS);
        assert!(h.bucket_ms >= week / MAX_BUCKETS as i64);
        let total = h.total();
        assert_eq!(total.get(Succeeded), (week / 60_000) as u64);
        assert_eq!(total.get(Pending), 0);
        let points = h.cumulative(50);
        assert!(points.len() <= 50);
        assert_eq!(
            points.last().map(|p| p.counts.clone()),
            Some(BTreeMap::from([(Succeeded, (week / 60_000) as u64)]))
        );
        assert!(points.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn merging_histories_of_other_bucket_widths_adds_their_deltas() {
        let mut old = CountHistory::default();
        old.add(0, &moved(None, Pending, 3));
        old.fit(0);
        let mut recent = CountHistory::default();
        recent.add(40_000, &moved(Some(Pending), Running, 2));
        recent.merge(&old);
        assert_eq!(recent.total().get(Pending), 1);
        assert_eq!(recent.total().get(Running), 2);
        let json = serde_json::to_string(&recent).unwrap();
        assert_eq!(serde_json::from_str::<CountHistory>(&json).unwrap(), recent);
    }
}
