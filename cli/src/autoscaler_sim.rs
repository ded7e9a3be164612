//! `batchplane bench-autoscaler`: the autoscaling policies in a discrete-event simulation,
//! driven by the real decision functions — reuse targeting
//! ([`ReuseTargeting::target`] over the [`Backlog`] cohorts the autoscaler tracks), workers
//! per node ([`WorkerShape::per_node`] on a launch config from the shipped price table)
//! and empty-node scale-down ([`surplus_nodes`]).
//!
//! Workload traces: many 1–10 s tasks; heavy-tailed durations; bursts like a pre-launch
//! crunch; a 1,000,000-task DAG. Policies: one task per worker, a fixed pool, Spark-style
//! dynamic allocation (enough workers for every queued and running task, capped) and
//! reuse targeting at several half-lives. Per trace and policy: makespan, p50/p95 queue
//! wait, worker-hours, node-hours, dollars and utilisation; and for the DAG the critical
//! path with stage barriers against eager release. A benchmark of the policies, not of
//! the code: deterministic for a seed, no AWS involved.

use crate::rng::Rng;
use batchplane::domain::autoscale::{Backlog, PoolDemand, ReuseTargeting};
use batchplane::domain::launch::{surplus_nodes, LaunchConfig, NodeView, Purchase, WorkerShape};
use batchplane::domain::prices::PriceTable;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Traces to run: short, heavy-tail, burst, dag (the 1,000,000-task DAG).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short,heavy-tail,burst,dag"
    )]
    traces: Vec<String>,
    /// Tasks in the DAG trace.
    #[arg(long, default_value_t = 1_000_000)]
    dag_tasks: usize,
    /// Seconds between autoscaler ticks.
    #[arg(long, default_value_t = 60.0)]
    tick_seconds: f64,
    /// A worker's start-up once its node is up (pod scheduling, image, taskhost).
    #[arg(long, default_value_t = 20.0)]
    worker_start_seconds: f64,
    /// A node's boot time (EC2 launch to joining the cluster).
    #[arg(long, default_value_t = 60.0)]
    node_boot_seconds: f64,
    /// Idle time after which a worker exits (scaling policies).
    #[arg(long, default_value_t = 60.0)]
    worker_idle_seconds: f64,
    /// The most task slots any policy may have at once (workers × slots per worker), so
    /// one-slot and four-slot workers are capped alike.
    #[arg(long, default_value_t = 8000)]
    max_slots: u32,
    /// Node instance type (from the price table), on-demand.
    #[arg(long, default_value = "m6i.8xlarge")]
    instance_type: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "bench-results/autoscaler.json")]
    out: PathBuf,
}

/// One task: when it may first be ready (arrival), how long it runs, its stage (DAG).
#[derive(Clone)]
struct Task {
    arrival: f64,
    seconds: f64,
    stage: u32,
}

/// A workload: tasks, and for a DAG each task's dependencies (CSR: `deps[offsets[i]..offsets[i+1]]`).
struct Trace {
    name: &'static str,
    about: &'static str,
    tasks: Vec<Task>,
    offsets: Vec<u32>,
    deps: Vec<u32>,
    /// Workers of the fixed-pool policy (sized to the trace's mean load).
    fixed_workers: u32,
}

impl Trace {
    fn deps_of(&self, i: usize) -> &[u32] {
        if self.offsets.is_empty() {
            return &[];
        }
        &self.deps[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

const SLOTS: u32 = 4;

fn fixed_size(tasks: &[Task], span: f64) -> u32 {
    let work: f64 = tasks.iter().map(|t| t.seconds).sum();
    ((work / span / f64::from(SLOTS)).ceil() as u32).max(1)
}

fn short_trace(rng: &mut Rng) -> Trace {
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

fn heavy_tail_trace(rng: &mut Rng) -> Trace {
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

fn burst_trace(rng: &mut Rng) -> Trace {
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

const DAG_STAGES: usize = 10;

fn dag_trace(rng: &mut Rng, n: usize) -> Trace {
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    /// A worker per task (one slot), exiting after it.
    OnePerTask,
    /// A fixed number of warm workers.
    Fixed(u32),
    /// Spark dynamic allocation: workers for every queued and running task.
    Dynamic,
    /// Worker reuse targeting with a half-life (seconds).
    Reuse(f64),
}

impl Policy {
    fn name(&self) -> String {
        match self {
            Policy::OnePerTask => "one-task-per-worker".into(),
            Policy::Fixed(n) => format!("fixed pool ({n})"),
            Policy::Dynamic => "spark dynamic".into(),
            Policy::Reuse(h) => format!("reuse h={h}s"),
        }
    }
}

/// When dependents are released.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Release {
    /// As soon as a task's own dependencies succeeded.
    Eager,
    /// When the whole stage before it has finished.
    Barrier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(u32),
    Finish(u32, u32),
    WorkerReady(u32),
    WorkerIdle(u32, u64),
    Tick,
}

/// f64 seconds as an orderable key.
fn key(t: f64) -> u64 {
    (t * 1000.0).round().max(0.0) as u64
}

struct Worker {
    node: u32,
    slots: u32,
    free: u32,
    requested: f64,
    ready: bool,
    /// Bumped whenever it becomes busy, so a stale idle check is ignored.
    idle_epoch: u64,
    exited: bool,
    /// One-task workers: exit after one task.
    single: bool,
}

struct NodeState {
    launched: f64,
    ready_at: f64,
    workers: u32,
    empty_since: Option<f64>,
    terminated: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    trace: String,
    policy: String,
    release: String,
    tasks: usize,
    /// Tasks that ran (all of them, or the simulation is wrong).
    completed: usize,
    makespan_seconds: f64,
    wait_p50_seconds: f64,
    wait_p95_seconds: f64,
    worker_hours: f64,
    node_hours: f64,
    dollars: f64,
    utilisation: f64,
    peak_workers: u32,
    simulated_in_seconds: f64,
}

struct Sim<'a> {
    trace: &'a Trace,
    args: &'a SimArgs,
    policy: Policy,
    release: Release,
    config: LaunchConfig,
    clock: f64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    queue: VecDeque<u32>,
    ready_at: Vec<f64>,
    waits: Vec<f32>,
    remaining_deps: Vec<u8>,
    dependents_offsets: Vec<u32>,
    dependents: Vec<u32>,
    stage_left: Vec<usize>,
    stage_tasks: Vec<Vec<u32>>,
    workers: Vec<Worker>,
    with_room: Vec<u32>,
    nodes: Vec<NodeState>,
    live_workers: u32,
    starting_workers: u32,
    running_tasks: u64,
    done: usize,
    busy_seconds: f64,
    backlog: Backlog,
    finished_seconds: f64,
    finished_count: u64,
    startup_total: f64,
    startup_count: u64,
    last_finish: f64,
    peak_workers: u32,
    worker_seconds: f64,
}

impl<'a> Sim<'a> {
    fn new(trace: &'a Trace, args: &'a SimArgs, policy: Policy, release: Release) -> Sim<'a> {
        let config = PriceTable::shipped()
            .launch_config(&args.instance_type, "us-east-1a", Purchase::OnDemand)
            .expect("the instance type is in the price table (checked by run)");
        let n = trace.tasks.len();
        // Reverse edges (dependents) for release.
        let mut counts = vec![0u32; n + 1];
        let mut remaining_deps = vec![0u8; n];
        for (i, rd) in remaining_deps.iter_mut().enumerate() {
            let d = trace.deps_of(i);
            *rd = d.len() as u8;
            for &p in d {
                counts[p as usize + 1] += 1;
            }
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut dependents = vec![0u32; trace.deps.len()];
        for i in 0..n {
            for &p in trace.deps_of(i) {
                dependents[fill[p as usize] as usize] = i as u32;
                fill[p as usize] += 1;
            }
        }
        let stages = trace.tasks.iter().map(|t| t.stage).max().unwrap_or(0) as usize + 1;
        let mut stage_left = vec![0usize; stages];
        let mut stage_tasks = vec![Vec::new(); stages];
        for (i, t) in trace.tasks.iter().enumerate() {
            stage_left[t.stage as usize] += 1;
            if release == Release::Barrier && t.stage > 0 {
                stage_tasks[t.stage as usize].push(i as u32);
            }
        }
        Sim {
            trace,
            args,
            policy,
            release,
            config,
            clock: 0.0,
            events: BinaryHeap::new(),
            seq: 0,
            queue: VecDeque::new(),
            ready_at: vec![0.0; n],
            waits: Vec::with_capacity(n),
            remaining_deps,
            dependents_offsets: counts,
            dependents,
            stage_left,
            stage_tasks,
            workers: Vec::new(),
            with_room: Vec::new(),
            nodes: Vec::new(),
            live_workers: 0,
            starting_workers: 0,
            running_tasks: 0,
            done: 0,
            busy_seconds: 0.0,
            backlog: Backlog::default(),
            finished_seconds: 0.0,
            finished_count: 0,
            startup_total: 0.0,
            startup_count: 0,
            last_finish: 0.0,
            peak_workers: 0,
            worker_seconds: 0.0,
        }
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((key(t), self.seq, ev)));
    }

    fn shape(&self) -> WorkerShape {
        let slots = self.slots();
        WorkerShape {
            cpu_milli: 1000 * u64::from(slots),
            memory_mib: 4096 * u64::from(slots),
            gpus: 0,
        }
    }

    fn slots(&self) -> u32 {
        if self.policy == Policy::OnePerTask {
            1
        } else {
            SLOTS
        }
    }

    fn run(mut self) -> SimResult {
        let started = Instant::now();
        for (i, t) in self.trace.tasks.iter().enumerate() {
            if self.remaining_deps[i] == 0 && (self.release == Release::Eager || t.stage == 0) {
                self.at(t.arrival, Ev::Arrive(i as u32));
            }
        }
        if let Policy::Fixed(n) = self.policy {
            // A warm pool: nodes and workers up before the first task.
            self.add_workers(n, 0.0, true);
        } else {
            self.at(0.0, Ev::Tick);
        }
        while let Some(Reverse((k, _, ev))) = self.events.pop() {
            self.clock = k as f64 / 1000.0;
            self.handle(ev);
        }
        // Whatever is still up (the fixed pool) is paid until the last task ends.
        let end = self.last_finish;
        for w in 0..self.workers.len() {
            if !self.workers[w].exited {
                self.exit_worker(w as u32, end);
            }
        }
        let mut node_seconds = 0.0;
        for n in &self.nodes {
            node_seconds += n.terminated.unwrap_or(end).max(n.launched) - n.launched;
        }
        let waits = &mut self.waits;
        let pct = |v: &mut Vec<f32>, p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let k = ((v.len() - 1) as f64 * p).round() as usize;
            let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
            f64::from(*x)
        };
        let p50 = pct(waits, 0.5);
        let p95 = pct(waits, 0.95);
        let first = self
            .trace
            .tasks
            .iter()
            .map(|t| t.arrival)
            .fold(f64::INFINITY, f64::min);
        let node_hours = node_seconds / 3600.0;
        let worker_hours = self.worker_seconds / 3600.0;
        SimResult {
            trace: self.trace.name.to_string(),
            policy: self.policy.name(),
            release: match self.release {
                Release::Eager => "eager".into(),
                Release::Barrier => "barrier".into(),
            },
            tasks: self.trace.tasks.len(),
            completed: self.done,
            makespan_seconds: self.last_finish - first,
            wait_p50_seconds: p50,
            wait_p95_seconds: p95,
            worker_hours,
            node_hours,
            dollars: node_hours * self.config.price_per_hour,
            utilisation: self.busy_seconds
                / (self.worker_seconds * f64::from(self.slots())).max(1e-9),
            peak_workers: self.peak_workers,
            simulated_in_seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.clock;
        match ev {
            Ev::Arrive(i) => {
                self.ready_at[i as usize] = now;
                self.queue.push_back(i);
                self.dispatch();
            }
            Ev::Finish(i, w) => self.finish(i, w),
            Ev::WorkerReady(w) => {
                let worker = &mut self.workers[w as usize];
                worker.ready = true;
                self.startup_total += now - worker.requested;
                self.startup_count += 1;
                self.starting_workers -= 1;
                self.live_workers += 1;
                self.with_room.push(w);
                self.dispatch();
                self.maybe_idle(w);
            }
            Ev::WorkerIdle(w, epoch) => {
                let worker = &self.workers[w as usize];
                if !worker.exited && worker.idle_epoch == epoch && worker.free == worker.slots {
                    self.exit_worker(w, now);
                }
            }
            Ev::Tick => self.tick(),
        }
    }

    /// Start queued tasks on free slots, oldest first.
    fn dispatch(&mut self) {
        let now = self.clock;
        while !self.queue.is_empty() {
            let Some(&w) = self.with_room.last() else {
                return;
            };
            let worker = &mut self.workers[w as usize];
            if worker.exited || !worker.ready || worker.free == 0 {
                self.with_room.pop();
                continue;
            }
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            worker.free -= 1;
            worker.idle_epoch += 1;
            if worker.free == 0 {
                self.with_room.pop();
            }
            self.running_tasks += 1;
            self.waits.push((now - self.ready_at[i as usize]) as f32);
            let secs = self.trace.tasks[i as usize].seconds;
            self.at(now + secs, Ev::Finish(i, w));
        }
    }

    fn finish(&mut self, i: u32, w: u32) {
        let now = self.clock;
        let secs = self.trace.tasks[i as usize].seconds;
        self.busy_seconds += secs;
        self.finished_seconds += secs;
        self.finished_count += 1;
        self.running_tasks -= 1;
        self.done += 1;
        self.last_finish = self.last_finish.max(now);
        // Release dependents.
        let (a, b) = (
            self.dependents_offsets[i as usize] as usize,
            self.dependents_offsets[i as usize + 1] as usize,
        );
        for j in a..b {
            let d = self.dependents[j] as usize;
            self.remaining_deps[d] -= 1;
            if self.remaining_deps[d] == 0 && self.release == Release::Eager {
                self.ready_at[d] = now;
                self.queue.push_back(d as u32);
            }
        }
        let stage = self.trace.tasks[i as usize].stage as usize;
        self.stage_left[stage] -= 1;
        if self.release == Release::Barrier
            && self.stage_left[stage] == 0
            && stage + 1 < self.stage_left.len()
        {
            for d in std::mem::take(&mut self.stage_tasks[stage + 1]) {
                self.ready_at[d as usize] = now;
                self.queue.push_back(d);
            }
        }
        let worker = &mut self.workers[w as usize];
        worker.free += 1;
        if worker.single {
            self.exit_worker(w, now);
        } else {
            if worker.free == 1 {
                self.with_room.push(w);
            }
            self.dispatch();
            self.maybe_idle(w);
        }
        if self.done == self.trace.tasks.len() && matches!(self.policy, Policy::Fixed(_)) {
            // The fixed pool is done: nothing else will happen.
            self.events.clear();
        }
    }

    fn maybe_idle(&mut self, w: u32) {
        let idle = match self.policy {
            Policy::Fixed(_) => return,
            _ => self.args.worker_idle_seconds,
        };
        let worker = &self.workers[w as usize];
        if worker.free == worker.slots && !worker.exited {
            let epoch = worker.idle_epoch;
            self.at(self.clock + idle, Ev::WorkerIdle(w, epoch));
        }
    }

    fn exit_worker(&mut self, w: u32, at: f64) {
        let worker = &mut self.workers[w as usize];
        if worker.exited {
            return;
        }
        worker.exited = true;
        self.worker_seconds += at - worker.requested;
        if worker.ready {
            self.live_workers -= 1;
        } else {
            self.starting_workers -= 1;
        }
        let node = &mut self.nodes[worker.node as usize];
        node.workers -= 1;
        if node.workers == 0 {
            node.empty_since = Some(at);
        }
    }

    /// Request `n` workers at `now`: on nodes with room, else on new nodes.
    fn add_workers(&mut self, n: u32, now: f64, warm: bool) {
        let per_node = self.shape().per_node(&self.config).max(1) as u32;
        let single = self.policy == Policy::OnePerTask;
        let slots = self.slots();
        let mut left = n;
        // Nodes with room, newest first (they are the ones not being drained).
        let mut idx = self.nodes.len();
        while left > 0 && idx > 0 {
            idx -= 1;
            let node = &self.nodes[idx];
            if node.terminated.is_some() || node.workers >= per_node {
                continue;
            }
            while left > 0 && self.nodes[idx].workers < per_node {
                let ready = self.nodes[idx].ready_at.max(now)
                    + if warm {
                        0.0
                    } else {
                        self.args.worker_start_seconds
                    };
                self.place_worker(idx as u32, now, ready, slots, single);
                left -= 1;
            }
        }
        while left > 0 {
            let boot = if warm {
                0.0
            } else {
                self.args.node_boot_seconds
            };
            self.nodes.push(NodeState {
                launched: now,
                ready_at: now + boot,
                workers: 0,
                empty_since: None,
                terminated: None,
            });
            let idx = self.nodes.len() - 1;
            while left > 0 && self.nodes[idx].workers < per_node {
                let ready = now
                    + boot
                    + if warm {
                        0.0
                    } else {
                        self.args.worker_start_seconds
                    };
                self.place_worker(idx as u32, now, ready, slots, single);
                left -= 1;
            }
        }
        self.peak_workers = self
            .peak_workers
            .max(self.live_workers + self.starting_workers);
    }

    fn place_worker(&mut self, node: u32, now: f64, ready: f64, slots: u32, single: bool) {
        self.nodes[node as usize].workers += 1;
        self.nodes[node as usize].empty_since = None;
        self.workers.push(Worker {
            node,
            slots,
            free: slots,
            requested: now,
            ready: false,
            idle_epoch: 0,
            exited: false,
            single,
        });
        self.starting_workers += 1;
        let w = self.workers.len() as u32 - 1;
        self.at(ready, Ev::WorkerReady(w));
    }

    /// One autoscaler tick: the policy's new workers, then empty nodes retired.
    fn tick(&mut self) {
        let now = self.clock;
        let queued = self.queue.len() as u64;
        self.backlog.update(queued, (now * 1000.0) as i64);
        self.backlog.compact(32);
        let have = self.live_workers + self.starting_workers;
        let room = (self.args.max_slots / self.slots()).saturating_sub(have);
        let want = match self.policy {
            Policy::Fixed(_) => 0,
            Policy::OnePerTask => (queued as u32).saturating_sub(self.starting_workers),
            Policy::Dynamic => {
                let target = (queued + self.running_tasks).div_ceil(u64::from(SLOTS)) as u32;
                target.saturating_sub(have)
            }
            Policy::Reuse(h) => {
                let demand = PoolDemand {
                    queued: self.backlog.ages((now * 1000.0) as i64),
                    live_workers: self.live_workers,
                    starting_workers: self.starting_workers,
                    slots_per_worker: SLOTS,
                    mean_task_seconds: if self.finished_count > 0 {
                        self.finished_seconds / self.finished_count as f64
                    } else {
                        30.0
                    },
                    startup_seconds: if self.startup_count > 0 {
                        self.startup_total / self.startup_count as f64
                    } else {
                        self.args.node_boot_seconds + self.args.worker_start_seconds
                    },
                };
                ReuseTargeting {
                    half_life_seconds: h,
                }
                .target(&demand)
                .new_workers
            }
        };
        let n = want.min(room);
        if n > 0 {
            self.add_workers(n, now, false);
        }
        // Empty nodes the pool does not need go after one idle tick.
        let per_node = self.shape().per_node(&self.config).max(1);
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.terminated.is_none())
            .map(|(i, n)| NodeView {
                id: i.to_string(),
                holds: per_node,
                busy: n.workers > 0,
                price_per_hour: self.config.price_per_hour,
            })
            .collect();
        let workers = u64::from(self.live_workers + self.starting_workers);
        for id in surplus_nodes(&views, workers) {
            let Ok(i) = id.parse::<usize>() else { continue };
            let node = &mut self.nodes[i];
            if node
                .empty_since
                .is_some_and(|t| now - t >= self.args.tick_seconds)
            {
                node.terminated = Some(now);
            }
        }
        let active = self.done < self.trace.tasks.len()
            || self.live_workers + self.starting_workers > 0
            || self.nodes.iter().any(|n| n.terminated.is_none());
        if active {
            self.at(now + self.args.tick_seconds, Ev::Tick);
        }
    }
}

/// The critical path of a DAG with unlimited workers: eager release (a task starts when
/// its own dependencies end) against stage barriers (a stage starts when the stage
/// before has ended).
fn critical_paths(trace: &Trace) -> (f64, f64) {
    let n = trace.tasks.len();
    let mut end = vec![0.0f64; n];
    let mut stage_max = [0.0f64; DAG_STAGES];
    // Tasks are numbered stage by stage, so dependencies come first.
    for i in 0..n {
        let start = trace
            .deps_of(i)
            .iter()
            .map(|&d| end[d as usize])
            .fold(0.0, f64::max);
        end[i] = start + trace.tasks[i].seconds;
        let s = trace.tasks[i].stage as usize;
        stage_max[s] = stage_max[s].max(trace.tasks[i].seconds);
    }
    let eager = end.iter().copied().fold(0.0, f64::max);
    let barrier = stage_max.iter().sum();
    (eager, barrier)
}

#[derive(Serialize)]
struct Report {
    settings: serde_json::Value,
    traces: Vec<serde_json::Value>,
    results: Vec<SimResult>,
    dag_critical_path: Option<serde_json::Value>,
}

pub fn run(args: &SimArgs) -> anyhow::Result<u8> {
    let Some(instance) = PriceTable::shipped().get(&args.instance_type) else {
        anyhow::bail!(
            "--instance-type {}: not in the price table",
            args.instance_type
        );
    };
    let mut rng = Rng::new(args.seed);
    let mut traces = Vec::new();
    for t in &args.traces {
        traces.push(match t.as_str() {
            "short" => short_trace(&mut rng),
            "heavy-tail" => heavy_tail_trace(&mut rng),
            "burst" => burst_trace(&mut rng),
            "dag" => dag_trace(&mut rng, args.dag_tasks),
            other => {
                anyhow::bail!("--traces: {other:?} is not one of short, heavy-tail, burst, dag")
            }
        });
    }
    println!(
        "nodes: {} on-demand ${}/h (price table {}), {} workers of {SLOTS} slots a node; worker start {} s, node boot {} s, tick {} s",
        instance.name,
        instance.on_demand_per_hour,
        PriceTable::shipped().as_of,
        WorkerShape {
            cpu_milli: 1000 * u64::from(SLOTS),
            memory_mib: 4096 * u64::from(SLOTS),
            gpus: 0
        }
        .per_node(
            &PriceTable::shipped()
                .launch_config(&instance.name, "us-east-1a", Purchase::OnDemand)
                .expect("in the table")
        ),
        args.worker_start_seconds,
        args.node_boot_seconds,
        args.tick_seconds
    );
    println!(
        "{:<10} {:<22} {:>7} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>6} {:>7} {:>7}",
        "trace",
        "policy",
        "release",
        "makespan",
        "wait p50",
        "wait p95",
        "worker-h",
        "node-h",
        "$",
        "util",
        "peak",
        "sim s"
    );
    let mut results = Vec::new();
    let mut dag_cp = None;
    for trace in &traces {
        let policies = [
            Policy::OnePerTask,
            Policy::Fixed(trace.fixed_workers.min(args.max_slots / SLOTS)),
            Policy::Dynamic,
            Policy::Reuse(10.0),
            Policy::Reuse(60.0),
            Policy::Reuse(300.0),
        ];
        let mut runs: Vec<(Policy, Release)> =
            policies.iter().map(|p| (*p, Release::Eager)).collect();
        if trace.name == "dag" {
            runs.push((Policy::Reuse(60.0), Release::Barrier));
            let (eager, barrier) = critical_paths(trace);
            println!(
                "dag critical path with unlimited workers: eager release {eager:.0} s, stage barriers {barrier:.0} s ({:.2}x)",
                barrier / eager
            );
            dag_cp = Some(
                serde_json::json!({"eager_seconds": eager, "barrier_seconds": barrier, "ratio": barrier / eager}),
            );
        }
        for (policy, release) in runs {
            let r = Sim::new(trace, args, policy, release).run();
            anyhow::ensure!(
                r.completed == r.tasks,
                "{} under {}: {} of {} tasks ran",
                r.trace,
                r.policy,
                r.completed,
                r.tasks
            );
            println!(
                "{:<10} {:<22} {:>7} {:>9.0}s {:>8.1}s {:>8.1}s {:>10.1} {:>9.1} {:>9.2} {:>5.0}% {:>7} {:>7.1}",
                r.trace,
                r.policy,
                r.release,
                r.makespan_seconds,
                r.wait_p50_seconds,
                r.wait_p95_seconds,
                r.worker_hours,
                r.node_hours,
                r.dollars,
                r.utilisation * 100.0,
                r.peak_workers,
                r.simulated_in_seconds
            );
            results.push(r);
        }
    }
    let report = Report {
        settings: serde_json::json!({
            "tick_seconds": args.tick_seconds,
            "worker_start_seconds": args.worker_start_seconds,
            "node_boot_seconds": args.node_boot_seconds,
            "worker_idle_seconds": args.worker_idle_seconds,
            "max_slots": args.max_slots,
            "instance_type": args.instance_type,
            "price_per_hour": instance.on_demand_per_hour,
            "price_table_as_of": PriceTable::shipped().as_of,
            "slots_per_worker": SLOTS,
            "seed": args.seed,
        }),
        traces: traces
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "about": t.about, "tasks": t.tasks.len(), "fixed_workers": t.fixed_workers}))
            .collect(),
        results,
        dag_critical_path: dag_cp,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimArgs,
    }

    fn args() -> SimArgs {
        Cli::parse_from(["sim"]).args
    }

    #[test]
    fn every_task_runs_once_and_the_accounts_add_up() {
        let a = args();
        let mut rng = Rng::new(3);
        let trace = dag_trace(&mut rng, 2_000);
        for policy in [
            Policy::OnePerTask,
            Policy::Fixed(20),
            Policy::Dynamic,
            Policy::Reuse(60.0),
        ] {
            for release in [Release::Eager, Release::Barrier] {
                let r = Sim::new(&trace, &a, policy, release).run();
                assert_eq!(r.completed, 2_000, "{r:?}");
                assert_eq!(r.completed, r.tasks);
                assert!(r.makespan_seconds > 0.0, "{r:?}");
                assert!(r.utilisation > 0.0 && r.utilisation <= 1.0 + 1e-9, "{r:?}");
                assert!(r.node_hours > 0.0 && r.worker_hours > 0.0, "{r:?}");
                assert!(r.peak_workers <= a.max_slots, "{r:?}");
            }
        }
    }

    #[test]
    fn barriers_never_shorten_the_critical_path() {
        let mut rng = Rng::new(5);
        let trace = dag_trace(&mut rng, 5_000);
        let (eager, barrier) = critical_paths(&trace);
        assert!(barrier >= eager, "{eager} {barrier}");
    }

    #[test]
    fn a_longer_half_life_starts_fewer_workers_for_short_tasks() {
        let a = args();
        let mut rng = Rng::new(9);
        let trace = short_trace(&mut rng);
        let eager = Sim::new(&trace, &a, Policy::Reuse(10.0), Release::Eager).run();
        let patient = Sim::new(&trace, &a, Policy::Reuse(300.0), Release::Eager).run();
        assert!(
            patient.worker_hours <= eager.worker_hours,
            "{eager:?} {patient:?}"
        );
    }
}
