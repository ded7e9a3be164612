//! The workload traces the policies are simulated on: short tasks, a heavy tail, bursts,
//! and a staged DAG of up to a million tasks.

use crate::bench::rng::Rng;

/// One task: when it may first be ready (arrival), how long it runs, its stage (DAG).
#[derive(Clone)]
pub(super) struct Task {
    pub(super) arrival: f64,
    pub(super) seconds: f64,
    pub(super) stage: u32,
}

/// A workload: tasks, and for a DAG each task's dependencies (CSR: `deps[offsets[i]..offsets[i+1]]`).
pub(super) struct Trace {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) tasks: Vec<Task>,
    pub(super) offsets: Vec<u32>,
    pub(super) deps: Vec<u32>,
    /// Workers of the fixed-pool policy (sized to the trace's mean load).
    pub(super) fixed_workers: u32,
}

impl Trace {
    pub(super) fn deps_of(&self, i: usize) -> &[u32] {
        if self.offsets.is_empty() {
            return &[];
        }
        &self.deps[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

pub(super) const SLOTS: u32 = 4;

pub(super) fn fixed_size(tasks: &[Task], span: f64) -> u32 {
    let work: f64 = tasks.iter().map(|t| t.seconds).sum();
    ((work / span / f64::from(SLOTS)).ceil() as u32).max(1)
}

pub(super) fn short_trace(rng: &mut Rng) -> Trace {
    // 20,000 tasks of 1–10 s arriving as a Poisson stream over ~30 minutes.
    let mut t = 0.0;
    let tasks: Vec<Task> = (0..20_000)
        .map(|_| {
            t += rng.exponential(0.09);
            Task {
                arrival: t,
                seconds: rng.uniform(1.0, 10.0),
                stage: 0,
            }
        })
        .collect();
    let span = t;
    Trace {
        name: "short",
        about: "20,000 tasks of 1-10 s, Poisson arrivals over 30 min",
        fixed_workers: fixed_size(&tasks, span),
        tasks,
        offsets: Vec::new(),
        deps: Vec::new(),
    }
}

pub(super) fn heavy_tail_trace(rng: &mut Rng) -> Trace {
    // 5,000 tasks over an hour, Pareto durations (α = 1.3, from 5 s, capped at 2 h).
    let mut t = 0.0;
    let tasks: Vec<Task> = (0..5_000)
        .map(|_| {
            t += rng.exponential(0.72);
            Task {
                arrival: t,
                seconds: rng.pareto(5.0, 1.3).min(7200.0),
                stage: 0,
            }
        })
        .collect();
    let span = t;
    Trace {
        name: "heavy-tail",
        about: "5,000 tasks over 1 h, Pareto(5 s, 1.3) durations capped at 2 h",
        fixed_workers: fixed_size(&tasks, span),
        tasks,
        offsets: Vec::new(),
        deps: Vec::new(),
    }
}

pub(super) fn burst_trace(rng: &mut Rng) -> Trace {
    // A trickle (1 task/s, 5-30 s) for 2 h, and two crunches of 10,000 tasks of 30-120 s
    // submitted at once at 30 and 90 minutes.
    let mut tasks = Vec::new();
    let mut t = 0.0;
    while t < 7200.0 {
        t += rng.exponential(1.0);
        tasks.push(Task {
            arrival: t,
            seconds: rng.uniform(5.0, 30.0),
            stage: 0,
        });
    }
    for at in [1800.0, 5400.0] {
        for _ in 0..10_000 {
            tasks.push(Task {
                arrival: at,
                seconds: rng.uniform(30.0, 120.0),
                stage: 0,
            });
        }
    }
    tasks.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Trace {
        name: "burst",
        about: "1 task/s for 2 h plus two 10,000-task crunches (30-120 s) at 30 and 90 min",
        fixed_workers: fixed_size(&tasks, 7200.0),
        tasks,
        offsets: Vec::new(),
        deps: Vec::new(),
    }
}

pub(super) const DAG_STAGES: usize = 10;

pub(super) fn dag_trace(rng: &mut Rng, n: usize) -> Trace {
    // 10 stages; each task after the first stage depends on 2 random tasks of the stage
    // before. Durations: most 2-20 s, one in five log-uniform up to 10 minutes.
    let per_stage = (n / DAG_STAGES).max(1);
    let mut tasks = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n + 1);
    let mut deps = Vec::with_capacity(2 * n);
    offsets.push(0u32);
    for i in 0..n {
        let stage = (i / per_stage).min(DAG_STAGES - 1);
        let seconds = if rng.next_f64() < 0.2 {
            rng.log_uniform(20.0, 600.0)
        } else {
            rng.uniform(2.0, 20.0)
        };
        tasks.push(Task {
            arrival: 0.0,
            seconds,
            stage: stage as u32,
        });
        if stage > 0 {
            let base = (stage - 1) * per_stage;
            for _ in 0..2 {
                deps.push((base + rng.below(per_stage)) as u32);
            }
        }
        offsets.push(deps.len() as u32);
    }
    Trace {
        name: "dag",
        about: "1,000,000-task DAG: 10 stages, each task depends on 2 of the stage before; 80% 2-20 s, 20% up to 10 min",
        fixed_workers: 1000,
        tasks,
        offsets,
        deps,
    }
}
