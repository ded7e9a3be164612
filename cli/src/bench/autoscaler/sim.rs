//! The discrete-event simulation: workers started by a policy, placed on nodes, running
//! a trace's tasks as they are released; its accounts of time, waits and dollars.

use batchplane::domain::autoscale::{Backlog, PoolDemand, ReuseTargeting};
use batchplane::domain::launch::{surplus_nodes, LaunchConfig, NodeView, Purchase, WorkerShape};
use batchplane::domain::prices::PriceTable;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Policy {
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
    pub(super) fn name(&self) -> String {
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
pub(super) enum Release {
    /// As soon as a task's own dependencies succeeded.
    Eager,
    /// When the whole stage before it has finished.
    Barrier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
    Arrive(u32),
    Finish(u32, u32),
    WorkerReady(u32),
    WorkerIdle(u32, u64),
    Tick,
}

/// f64 seconds as an orderable key.
pub(super) fn key(t: f64) -> u64 {
    (t * 1000.0).round().max(0.0) as u64
}

pub(super) struct Worker {
    pub(super) node: u32,
    pub(super) slots: u32,
    pub(super) free: u32,
    pub(super) requested: f64,
    pub(super) ready: bool,
    /// Bumped whenever it becomes busy, so a stale idle check is ignored.
    pub(super) idle_epoch: u64,
    pub(super) exited: bool,
    /// One-task workers: exit after one task.
    pub(super) single: bool,
}

pub(super) struct NodeState {
    pub(super) launched: f64,
    pub(super) ready_at: f64,
    pub(super) workers: u32,
    pub(super) empty_since: Option<f64>,
    pub(super) terminated: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub(super) trace: String,
    pub(super) policy: String,
    pub(super) release: String,
    pub(super) tasks: usize,
    /// Tasks that ran (all of them, or the simulation is wrong).
    pub(super) completed: usize,
    pub(super) makespan_seconds: f64,
    pub(super) wait_p50_seconds: f64,
    pub(super) wait_p95_seconds: f64,
    pub(super) worker_hours: f64,
    pub(super) node_hours: f64,
    pub(super) dollars: f64,
    pub(super) utilisation: f64,
    pub(super) peak_workers: u32,
    pub(super) simulated_in_seconds: f64,
}

pub(super) struct Sim<'a> {
    pub(super) trace: &'a Trace,
    pub(super) args: &'a SimArgs,
    pub(super) policy: Policy,
    pub(super) release: Release,
    pub(super) config: LaunchConfig,
    pub(super) clock: f64,
    pub(super) events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pub(super) seq: u64,
    pub(super) queue: VecDeque<u32>,
    pub(super) ready_at: Vec<f64>,
    pub(super) waits: Vec<f32>,
    pub(super) remaining_deps: Vec<u8>,
    pub(super) dependents_offsets: Vec<u32>,
    pub(super) dependents: Vec<u32>,
    pub(super) stage_left: Vec<usize>,
    pub(super) stage_tasks: Vec<Vec<u32>>,
    pub(super) workers: Vec<Worker>,
    pub(super) with_room: Vec<u32>,
    pub(super) nodes: Vec<NodeState>,
    pub(super) live_workers: u32,
    pub(super) starting_workers: u32,
    pub(super) running_tasks: u64,
    pub(super) done: usize,
    pub(super) busy_seconds: f64,
    pub(super) backlog: Backlog,
    pub(super) finished_seconds: f64,
    pub(super) finished_count: u64,
    pub(super) startup_total: f64,
    pub(super) startup_count: u64,
    pub(super) last_finish: f64,
    pub(super) peak_workers: u32,
    pub(super) worker_seconds: f64,
}

impl<'a> Sim<'a> {
    pub(super) fn new(
        trace: &'a Trace,
        args: &'a SimArgs,
        policy: Policy,
        release: Release,
    ) -> Sim<'a> {
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

    pub(super) fn at(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((key(t), self.seq, ev)));
    }

    pub(super) fn shape(&self) -> WorkerShape {
        let slots = self.slots();
        WorkerShape {
            cpu_milli: 1000 * u64::from(slots),
            memory_mib: 4096 * u64::from(slots),
            gpus: 0,
        }
    }

    pub(super) fn slots(&self) -> u32 {
        if self.policy == Policy::OnePerTask {
            1
        } else {
            SLOTS
        }
    }

    pub(super) fn run(mut self) -> SimResult {
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

    pub(super) fn handle(&mut self, ev: Ev) {
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
    pub(super) fn dispatch(&mut self) {
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

    pub(super) fn finish(&mut self, i: u32, w: u32) {
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

    pub(super) fn maybe_idle(&mut self, w: u32) {
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

    pub(super) fn exit_worker(&mut self, w: u32, at: f64) {
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
    pub(super) fn add_workers(&mut self, n: u32, now: f64, warm: bool) {
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

    pub(super) fn place_worker(
        &mut self,
        node: u32,
        now: f64,
        ready: f64,
        slots: u32,
        single: bool,
    ) {
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
    pub(super) fn tick(&mut self) {
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
