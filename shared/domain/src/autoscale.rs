//! How many workers a pool should have: worker reuse targeting.
//!
//! A new worker costs its start-up time before it runs anything, so for short tasks it
//! is often faster to let the workers already there absorb the queue. Reuse targeting
//! weighs each queued task by how long it has waited, with an exponential decay of
//! patience whose half-life is tunable per team:
//!
//! ```text
//! reached_i = (i / S) · d                   when existing slots would start queued task i
//!                                            (i = its place in the queue, S = slots of live
//!                                            and starting workers, d = mean task duration)
//! w_i       = 0                              if reached_i ≤ s (existing workers get to it
//!                                            before a new one could start, s = start-up)
//!           = 1 − 2^(−(a_i + s) / h)         otherwise (a_i = its age, h = half-life)
//! new workers = ⌈ Σ w_i / slots per worker ⌉
//! ```
//!
//! With `h → 0` every task existing workers cannot reach in time gets a slot of its own
//! (Spark-style dynamic allocation); with `h → ∞` nothing new starts while workers exist
//! (a fixed pool). In between, a task that has waited one half-life counts half a slot
//! more than a fresh one. A pool with a backlog and no worker at all always gets at least
//! one; a pool with no backlog gets none (idle workers drain and exit by themselves).
//!
//! The backlog comes as cohorts (a count of tasks that joined it together, and their
//! age), oldest first: SQS does not tell the age of each message, and the autoscaler
//! tracks cohorts from tick to tick (see [`Backlog::update`]). The sum over a cohort is
//! exact: with `S > 0` task `i` is reached in time iff `i < (⌊s/d⌋ + 1) · S`.

use serde::{Deserialize, Serialize};

/// The tunables of reuse targeting for one team (namespace).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReuseTargeting {
    /// Seconds after which a waiting task's claim to a new worker is half its full weight.
    pub half_life_seconds: f64,
}

impl Default for ReuseTargeting {
    fn default() -> Self {
        ReuseTargeting {
            half_life_seconds: 60.0,
        }
    }
}

/// Tasks that joined a pool's backlog together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub count: u64,
    /// When the first of them was seen queued (ms since the epoch).
    pub since_ms: i64,
}

/// A pool's backlog as cohorts, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    pub cohorts: Vec<Cohort>,
}

impl Backlog {
    pub fn total(&self) -> u64 {
        self.cohorts.iter().map(|c| c.count).sum()
    }

    /// Carry the backlog to a tick that sees `queued` tasks at `now_ms`. The queue is
    /// taken as first in, first out: a shrinking backlog loses its oldest cohorts first,
    /// a growing one gains a fresh cohort for the difference. Ages are therefore a
    /// lower bound for tasks that overtook older ones, never invented.
    pub fn update(&mut self, queued: u64, now_ms: i64) {
        let total = self.total();
        if queued >= total {
            if queued > total {
                self.cohorts.push(Cohort {
                    count: queued - total,
                    since_ms: now_ms,
                });
            }
            return;
        }
        let mut gone = total - queued;
        while gone > 0 {
            let first = &mut self.cohorts[0];
            if first.count > gone {
                first.count -= gone;
                break;
            }
            gone -= first.count;
            self.cohorts.remove(0);
        }
    }

    /// Keep at most `max` cohorts: the two adjacent cohorts closest in time merge, and
    /// take the younger one's time (ages stay a lower bound).
    pub fn compact(&mut self, max: usize) {
        while self.cohorts.len() > max.max(1) {
            let i = (1..self.cohorts.len())
                .min_by_key(|&i| self.cohorts[i].since_ms - self.cohorts[i - 1].since_ms)
                .unwrap_or(1);
            let older = self.cohorts.remove(i - 1);
            self.cohorts[i - 1].count += older.count;
        }
    }

    /// The cohorts with their ages at `now_ms`, for [`PoolDemand::queued`].
    pub fn ages(&self, now_ms: i64) -> Vec<Queued> {
        self.cohorts
            .iter()
            .map(|c| Queued {
                count: c.count,
                age_seconds: (now_ms - c.since_ms).max(0) as f64 / 1000.0,
            })
            .collect()
    }
}

/// `count` queued tasks of one age.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub count: u64,
    pub age_seconds: f64,
}

/// What the autoscaler knows about one pool at a tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolDemand {
    /// The queued tasks, oldest first (queue order), in cohorts of one age.
    pub queued: Vec<Queued>,
    /// Workers running now and workers still starting.
    pub live_workers: u32,
    pub starting_workers: u32,
    /// Tasks one worker runs at once.
    pub slots_per_worker: u32,
    /// Mean duration of the pool's recent tasks, seconds (a default when none ran yet).
    pub mean_task_seconds: f64,
    /// How long a new worker takes to become ready, seconds.
    pub startup_seconds: f64,
}

/// The decision for one pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTarget {
    /// Workers to add now.
    pub new_workers: u32,
    /// Σ w_i: the slots' worth of queued work that should not wait for existing workers.
    pub weight: f64,
    /// Queued tasks existing workers will reach before a new worker could start.
    pub absorbed: u64,
}

impl ReuseTargeting {
    /// The weight of a task of age `age` that existing workers will not reach in time.
    pub fn weight(&self, age_seconds: f64, startup_seconds: f64) -> f64 {
        let t = (age_seconds.max(0.0) + startup_seconds.max(0.0)).max(0.0);
        if self.half_life_seconds <= 0.0 {
            return 1.0;
        }
        if !self.half_life_seconds.is_finite() {
            return 0.0;
        }
        1.0 - (-t / self.half_life_seconds).exp2()
    }

    /// Workers to add to a pool (see the module doc for the formula).
    pub fn target(&self, demand: &PoolDemand) -> WorkerTarget {
        let per_worker = demand.slots_per_worker.max(1);
        let slots =
            u64::from(demand.live_workers + demand.starting_workers) * u64::from(per_worker);
        let d = demand.mean_task_seconds.max(0.0);
        let s = demand.startup_seconds.max(0.0);
        // Queue positions below this are reached by existing slots before a new worker
        // could start: floor(i / S) · d ≤ s.
        let reach: u64 = if slots == 0 {
            0
        } else if d == 0.0 {
            u64::MAX
        } else {
            ((s / d).floor() as u64)
                .saturating_add(1)
                .saturating_mul(slots)
        };
        let mut weight = 0.0;
        let mut absorbed: u64 = 0;
        let mut position: u64 = 0;
        let mut queued: u64 = 0;
        for q in &demand.queued {
            let reached = reach.saturating_sub(position).min(q.count);
            absorbed += reached;
            weight += (q.count - reached) as f64 * self.weight(q.age_seconds, s);
            position = position.saturating_add(q.count);
            queued += q.count;
        }
        let mut new_workers = (weight / f64::from(per_worker) - 1e-9)
            .ceil()
            .clamp(0.0, f64::from(u32::MAX)) as u32;
        if slots == 0 && queued > 0 {
            new_workers = new_workers.max(1);
        }
        WorkerTarget {
            new_workers,
            weight,
            absorbed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(queued: usize, age: f64, live: u32, slots: u32, d: f64, s: f64) -> PoolDemand {
        PoolDemand {
            queued: vec![Queued {
                count: queued as u64,
                age_seconds: age,
            }],
            live_workers: live,
            starting_workers: 0,
            slots_per_worker: slots,
            mean_task_seconds: d,
            startup_seconds: s,
        }
    }

    #[test]
    fn the_weight_halves_its_distance_to_one_every_half_life() {
        let r = ReuseTargeting {
            half_life_seconds: 60.0,
        };
        assert!((r.weight(0.0, 0.0) - 0.0).abs() < 1e-12);
        assert!((r.weight(60.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((r.weight(120.0, 0.0) - 0.75).abs() < 1e-12);
        // Start-up counts as waiting: a new worker would not help before it.
        assert!((r.weight(30.0, 30.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn no_backlog_means_no_new_workers_and_an_empty_pool_gets_one() {
        let r = ReuseTargeting::default();
        assert_eq!(r.target(&demand(0, 0.0, 3, 4, 5.0, 60.0)).new_workers, 0);
        assert_eq!(r.target(&demand(0, 0.0, 0, 4, 5.0, 60.0)).new_workers, 0);
        let t = r.target(&demand(1, 0.0, 0, 4, 5.0, 60.0));
        assert_eq!(t.new_workers, 1, "{t:?}");
    }

    #[test]
    fn short_tasks_wait_for_the_workers_already_there() {
        // 10 workers × 4 slots, 1-second tasks, 60-second start-up: 400 queued tasks are
        // all reached within 10 s by the existing 40 slots.
        let r = ReuseTargeting::default();
        let t = r.target(&demand(400, 5.0, 10, 4, 1.0, 60.0));
        assert_eq!((t.new_workers, t.absorbed), (0, 400), "{t:?}");
        // 10-minute tasks: only the first 40 are reached soon; the rest ask for workers.
        let t = r.target(&demand(400, 5.0, 10, 4, 600.0, 60.0));
        assert_eq!(t.absorbed, 40);
        assert!(t.new_workers > 0, "{t:?}");
    }

    #[test]
    fn the_half_life_moves_between_a_fixed_pool_and_dynamic_allocation() {
        let queued = demand(100, 0.0, 1, 1, 600.0, 60.0);
        let eager = ReuseTargeting {
            half_life_seconds: 0.0,
        }
        .target(&queued);
        let patient = ReuseTargeting {
            half_life_seconds: f64::INFINITY,
        }
        .target(&queued);
        let middle = ReuseTargeting {
            half_life_seconds: 60.0,
        }
        .target(&queued);
        // The one existing slot reaches only task 0 in time.
        assert_eq!(
            eager.new_workers, 99,
            "Spark-like: a slot per unreached task"
        );
        assert_eq!(
            patient.new_workers, 0,
            "fixed pool: wait for the worker there"
        );
        // Fresh tasks weigh 1 − 2^(−60/60) = 0.5 each.
        assert_eq!(middle.new_workers, 50, "{middle:?}");
        // The same queue one half-life later asks for more.
        let older = ReuseTargeting {
            half_life_seconds: 60.0,
        }
        .target(&demand(100, 60.0, 1, 1, 600.0, 60.0));
        assert_eq!(older.new_workers, 75, "{older:?}");
    }

    #[test]
    fn cohorts_sum_like_single_tasks() {
        // The same 30 tasks as three cohorts or one task at a time give the same answer.
        let r = ReuseTargeting::default();
        let cohorts = [(10, 90.0), (15, 30.0), (5, 0.0)];
        let mut grouped = demand(0, 0.0, 2, 2, 40.0, 60.0);
        let mut single = grouped.clone();
        for (n, age) in cohorts {
            grouped.queued.push(Queued {
                count: n,
                age_seconds: age,
            });
            for _ in 0..n {
                single.queued.push(Queued {
                    count: 1,
                    age_seconds: age,
                });
            }
        }
        let (a, b) = (r.target(&grouped), r.target(&single));
        assert_eq!(a.new_workers, b.new_workers);
        assert_eq!(a.absorbed, b.absorbed);
        assert!((a.weight - b.weight).abs() < 1e-9);
        // 4 slots, 40-second tasks, 60-second start-up: positions 0..8 are reached.
        assert_eq!(a.absorbed, 8);
    }

    #[test]
    fn the_backlog_keeps_its_oldest_cohorts_until_the_queue_shrinks() {
        let mut b = Backlog::default();
        b.update(10, 0);
        b.update(25, 60_000);
        assert_eq!(b.total(), 25);
        let ages = b.ages(120_000);
        assert_eq!(
            ages,
            [
                Queued {
                    count: 10,
                    age_seconds: 120.0
                },
                Queued {
                    count: 15,
                    age_seconds: 60.0
                }
            ]
        );
        // 12 tasks left the queue: the oldest cohort went, 2 of the next.
        b.update(13, 180_000);
        assert_eq!(
            b.cohorts,
            [Cohort {
                count: 13,
                since_ms: 60_000
            }]
        );
        b.update(0, 240_000);
        assert!(b.cohorts.is_empty());
        // Compacting merges the closest neighbours into the younger one.
        for (i, t) in [0, 10_000, 11_000, 50_000].into_iter().enumerate() {
            b.update(b.total() + i as u64 + 1, t);
        }
        b.compact(3);
        let kept: Vec<(u64, i64)> = b.cohorts.iter().map(|c| (c.count, c.since_ms)).collect();
        assert_eq!(kept, [(1, 0), (5, 11_000), (4, 50_000)]);
    }

    #[test]
    fn slots_per_worker_divide_the_weight_and_round_up() {
        let r = ReuseTargeting {
            half_life_seconds: 0.0,
        };
        let t = r.target(&demand(10, 0.0, 0, 4, 60.0, 30.0));
        assert_eq!(t.new_workers, 3, "10 slots of work at 4 a worker: {t:?}");
    }
}
