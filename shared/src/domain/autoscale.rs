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

/// What the autoscaler knows about one pool at a tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolDemand {
    /// Ages (seconds) of the queued tasks, oldest first (queue order).
    pub queued_ages: Vec<f64>,
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
    pub absorbed: usize,
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
        let slots = (demand.live_workers + demand.starting_workers) * per_worker;
        let mut weight = 0.0;
        let mut absorbed = 0;
        for (i, age) in demand.queued_ages.iter().enumerate() {
            let reached = if slots == 0 {
                f64::INFINITY
            } else {
                (i as u64 / u64::from(slots)) as f64 * demand.mean_task_seconds.max(0.0)
            };
            if reached <= demand.startup_seconds {
                absorbed += 1;
                continue;
            }
            weight += self.weight(*age, demand.startup_seconds);
        }
        let mut new_workers = (weight / f64::from(per_worker) - 1e-9).ceil().max(0.0) as u32;
        if slots == 0 && !demand.queued_ages.is_empty() {
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
            queued_ages: vec![age; queued],
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
    fn slots_per_worker_divide_the_weight_and_round_up() {
        let r = ReuseTargeting {
            half_life_seconds: 0.0,
        };
        let t = r.target(&demand(10, 0.0, 0, 4, 60.0, 30.0));
        assert_eq!(t.new_workers, 3, "10 slots of work at 4 a worker: {t:?}");
    }
}
