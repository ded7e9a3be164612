//! The worker loop: receive task messages, claim tasks with a conditional write, run
//! several at once within the worker's CPU and memory, keep their leases and message
//! visibility alive, record each attempt, and exit after an idle time (or drain and exit
//! on SIGTERM: no running task is interrupted by a scale-down).
//!
//! | file | what it holds |
//! |---|---|
//! | `options` | flags, and what the worker offers by default |
//! | `slots` | the pure scheduler: what fits now, what to claim ahead, how much to ask for |
//! | `receiver` | the task that long-polls SQS for as many tasks as there is room for |
//! | `attempt` | one attempt: claim, wait for its slot, run the process, record the end |
//! | `fence` | stopping an attempt whose lease was not renewed in time |
//! | `leases` | heartbeats and message visibility for what the worker holds |
//! | `messages` | taking deliveries in, handing on what finds no room, deleting a message (one task or a pack) once all its tasks are accounted for |
//! | `announce` | this worker in the pools' worker records, and its placement slot |

mod announce;
mod attempt;
mod chain;
mod claim;
mod environment;
mod fence;
mod leases;
mod messages;
mod options;
mod pools;
mod receiver;
pub mod slots;

use crate::forecast::{ClaimLatency, Forecast};
use announce::Announce;
use attempt::Started;
use batchplane::domain::tiers::Tier;
use batchplane::domain::TaskRecord;
use batchplane::queue::{Delivery, Queues, TaskMessage};
use batchplane::store::{now_ms, Store};
pub use environment::task_environment;
use messages::{Messages, Receipt};
pub use options::Options;
use slots::Slots;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Cancelled,
    LeaseLost,
    /// The lease was not renewed in time (see [`batchplane::domain::lease`]): stopped
    /// before anyone may take it over.
    Fenced,
}

/// An attempt this worker holds the lease of: started, or claimed ahead and waiting for
/// room. Keyed by [`Running::key`]: job, task and attempt, so a worker that takes over
/// its own lapsed task keeps hold of the older attempt until it is gone.
struct Running {
    task: TaskRecord,
    /// When its lease ends (ms), as of the last renewal; the attempt fences itself by it.
    lease: watch::Sender<i64>,
    /// What it reserves of the worker once started.
    need: Tier,
    kill: watch::Sender<Option<Kill>>,
    /// When the worker started it (its duration feeds the autoscaler and the forecast).
    since: Instant,
    /// Claimed ahead of a free slot: the attempt waits for this before it starts its
    /// process. Its resources count once it is started.
    gate: Option<oneshot::Sender<()>>,
}

impl Running {
    fn key(&self) -> String {
        attempt_key(&self.task)
    }

    fn launched(&self) -> bool {
        self.gate.is_none()
    }

    /// Let a task claimed ahead start its process now.
    fn launch(&mut self) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.send(());
        }
        self.since = Instant::now();
    }
}

/// What a running attempt tells the worker loop.
enum Progress {
    /// The process has ended: its CPU and memory are free for the next task.
    SlotFree { key: String },
    /// The attempt is over. Its message is done with only if the result was
    /// `recorded`: otherwise it must come back (after the lease lapses) so the task is
    /// not left RUNNING with nobody to finish it. `next`: the chained N_TO_N successor
    /// child to take on (see [`chain`]).
    Done {
        receipt: Receipt,
        recorded: bool,
        next: Option<TaskMessage>,
    },
}

/// Messages deleted in one request (SQS's most).
const DELETE_BATCH: usize = 10;
/// The longest a recorded attempt's message waits for others to be deleted with.
const DELETE_WAIT: Duration = Duration::from_millis(500);

/// What every attempt of this worker needs.
struct Ctx {
    store: Store,
    jobs: crate::templates::JobCache,
    worker_id: String,
    lease: Duration,
    log_dir: PathBuf,
    api_url: Option<String>,
    exe: PathBuf,
    max_attempts: u32,
    memory: crate::memory::Mechanism,
    isolation: crate::isolation::Isolation,
    /// Ships attempts' output to CloudWatch Logs (`None`: --task-logs off).
    logs: Option<Arc<crate::logs::LogShipper>>,
    /// Whether this worker runs inside its pools' image (`--in-image`).
    in_image: bool,
    /// Whether a succeeded array child's N_TO_N successor child runs next, here.
    chain_successors: bool,
    /// What this worker has room for at most.
    capacity: Tier,
    /// Containers by key, as read from the store.
    containers: std::sync::Mutex<HashMap<String, batchplane::domain::containers::Container>>,
}

impl Ctx {
    /// The container a task's pool runs in (`None`: the deployment's worker image, or
    /// a key the store cannot answer for now: the attempt then says nothing of it).
    async fn container_of(
        &self,
        task: &TaskRecord,
    ) -> Option<batchplane::domain::containers::Container> {
        let key = batchplane::domain::tiers::WorkerPool::parse(task.pool_name())?.container?;
        if let Some(c) = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(c.clone());
        }
        match self.store.container(&key).await {
            Ok(Some(c)) => {
                self.containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, c.clone());
                Some(c)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, key, "reading a task's container");
                None
            }
        }
    }
}

/// A delivered task the worker holds until there is room for it (a pack's tasks are
/// held one by one, sharing their message).
struct Held {
    receipt: Receipt,
    message: TaskMessage,
    since: Instant,
}

/// An attempt's key among what the worker holds: job, task and attempt.
fn attempt_key(t: &TaskRecord) -> String {
    format!("{}/{}#{}", t.job_id, t.task_id, t.attempt)
}

/// What a message's task reserves of a worker.
fn need(m: &TaskMessage) -> Tier {
    Tier {
        cpu_milli: m.cpu_milli,
        memory_mib: m.memory_mib,
        gpu: m.gpu,
    }
}

/// The worker loop's state: its slots, the tasks it holds and the messages it keeps.
struct Worker {
    slots: Slots,
    running: HashMap<String, Running>,
    held: VecDeque<Held>,
    /// The messages of what is held or running, until each is deleted or left to come back.
    messages: Messages,
    /// What the last task received asks of a worker: the next ones are likely alike.
    last_need: Option<Tier>,
    /// Tasks claimed ahead of a free slot, in the order claimed.
    waiting: VecDeque<String>,
    to_delete: Vec<(String, String)>,
    /// When the oldest message in `to_delete` was put there.
    to_delete_since: Option<Instant>,
    deletes: Vec<tokio::task::JoinHandle<()>>,
    last_busy: Instant,
    draining: bool,
    forecast: Forecast,
    claim_latency: ClaimLatency,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    let store = Store::new(clients.dynamodb, config.table.clone());
    let queues = Arc::new(Queues::new(clients.sqs, config.queue_prefix.clone()));
    let pools = pools::pools_served(&opts, &store, &queues).await;
    let mut urls = Vec::new();
    for q in &pools {
        urls.push(queues.url(q).await?);
    }
    let worker_id = opts.worker_id();
    let capacity = opts.capacity();
    let (memory, why_not_cgroup) = crate::memory::detect(opts.memory_enforcement);
    let isolation = crate::isolation::Isolation::detect(opts.task_uids.0, &opts.uid_lock_dir);
    if let crate::isolation::Isolation::None { why } = &isolation {
        tracing::warn!(why = %why, "tasks run without isolation: as this taskhost's user, able to see each other");
    }
    let ctx = Arc::new(Ctx {
        jobs: crate::templates::JobCache::new(store.clone()),
        store,
        worker_id: worker_id.clone(),
        lease: config.lease,
        log_dir: std::path::absolute(&opts.log_dir)?,
        api_url: opts.api_url.clone(),
        max_attempts: config.max_attempts,
        exe: std::env::current_exe()?,
        memory: memory.clone(),
        isolation,
        logs: match opts.task_logs {
            options::TaskLogs::Off => None,
            options::TaskLogs::Cloudwatch => Some(crate::logs::LogShipper::new(
                batchplane::aws::logs_client(&config.endpoints).await,
            )),
        },
        in_image: opts.in_image,
        chain_successors: opts.chain_successors,
        capacity,
        containers: Default::default(),
    });
    tracing::info!(worker_id, pools = ?pools, cpus = capacity.cpu(), memory_mib = capacity.memory_mib, gpus = capacity.gpu,
        memory_enforcement = memory.name(), why_not_cgroup = why_not_cgroup.as_deref().unwrap_or(""), "taskhost started");

    let me = Announce {
        reservation: opts.reservation.clone().zip(opts.slot),
        reservation_lease: config.reservation_lease,
        pools,
        worker_id: worker_id.clone(),
        capacity,
        lease: config.lease,
        tasks_done: Default::default(),
        busy_ms: Default::default(),
        messages_in: Default::default(),
        tasks_in: Default::default(),
        startup_ms: opts.launched_at.map(|at| (now_ms() - at).max(0)),
    };
    let placed = me.refresh(&ctx.store, 0).await;
    if !placed {
        tracing::warn!(
            worker_id,
            "this worker's placement is not live: it will run nothing"
        );
    }

    // The receiver asks SQS for as many tasks as the worker has room for (`want`).
    let (want_tx, want_rx) = watch::channel(0i32);
    let (deliveries_tx, deliveries_rx) = mpsc::channel::<Vec<Delivery>>(4);
    let (urls_tx, urls_rx) = watch::channel(urls);
    let watcher = pools::watch_pools(opts.clone(), ctx.store.clone(), queues.clone(), urls_tx);
    let receiver = receiver::spawn(
        queues.clone(),
        urls_rx,
        Duration::from_secs(opts.poll_wait_seconds),
        config.lease,
        want_rx,
        deliveries_tx,
    );

    let mut w = Worker {
        slots: Slots::new(capacity),
        running: HashMap::new(),
        held: VecDeque::new(),
        messages: Messages::default(),
        last_need: None,
        waiting: VecDeque::new(),
        to_delete: Vec::new(),
        to_delete_since: None,
        deletes: Vec::new(),
        last_busy: Instant::now(),
        draining: !placed,
        forecast: Forecast::default(),
        claim_latency: ClaimLatency::default(),
    };
    let channels = Channels {
        want: want_tx,
        deliveries: deliveries_rx,
    };
    w.serve(&opts, &ctx, &queues, &me, channels, config.lease)
        .await?;
    receiver.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    ctx.memory.release();
    me.forget(&ctx.store).await;
    for d in w.deletes {
        let _ = d.await;
    }
    if let Some(path) = &opts.metrics_file {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&batchplane::aws::accounting::snapshot())?,
        )?;
    }
    Ok(())
}

/// The worker loop's side of the receiver.
struct Channels {
    /// How many tasks the worker wants now (-1: it took the last delivery).
    want: watch::Sender<i32>,
    deliveries: mpsc::Receiver<Vec<Delivery>>,
}

impl Worker {
    /// The loop: start what fits, claim ahead, give back what waited too long, say how
    /// many messages to fetch, then wait for the next thing to happen. Returns when the
    /// worker has drained or been idle long enough.
    async fn serve(
        &mut self,
        opts: &Options,
        ctx: &Arc<Ctx>,
        queues: &Arc<Queues>,
        me: &Announce,
        mut channels: Channels,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let worker_id = &ctx.worker_id;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Progress>();
        let idle = Duration::from_secs(opts.idle_timeout_seconds);
        let hold = Duration::from_millis(opts.hold_ms);
        let mut heartbeat = tokio::time::interval(lease / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            self.launch_waiting();
            self.start_held(ctx, &done_tx, queues).await;
            if opts.claim_ahead {
                self.claim_ahead(ctx, &done_tx, queues).await;
            }
            self.give_back_stale(hold, queues).await;
            let delete_due = self.flush_deletes(queues, false);
            if self.done(idle) {
                if !self.draining {
                    tracing::info!(worker_id, "idle; exiting");
                }
                self.flush_deletes(queues, true);
                return Ok(());
            }
            let (want, wake) = self.plan(opts);
            channels.want.send_if_modified(|current| {
                let changed = *current != want;
                *current = want;
                changed
            });

            tokio::select! {
                Some(first) = done_rx.recv() => {
                    let mut next = Some(first);
                    while let Some(p) = next {
                        self.on_progress(p, me);
                        next = done_rx.try_recv().ok();
                    }
                }
                Some(batch) = channels.deliveries.recv() => {
                    me.received(&batch);
                    let wanted = usize::try_from(*channels.want.borrow()).unwrap_or(0)
                        + self.turnover(Duration::from_millis(opts.prefetch_horizon_ms));
                    self.on_deliveries(batch, wanted, queues).await;
                    // Tell the receiver we took these (it waits for a change).
                    channels.want.send_modify(|w| *w = -1);
                }
                _ = tokio::time::sleep(hold.max(Duration::from_millis(10))), if !self.held.is_empty() => {}
                _ = tokio::time::sleep(wake.unwrap_or_default().max(Duration::from_millis(1))), if wake.is_some() => {}
                _ = tokio::time::sleep(delete_due.unwrap_or_default()), if delete_due.is_some() => {}
                _ = heartbeat.tick() => {
                    leases::keep_alive(ctx, &self.running, &self.messages, queues).await;
                    if !me.refresh(&ctx.store, self.running.len() as u32).await && !self.draining {
                        tracing::warn!(worker_id, "this worker's placement was reclaimed: draining");
                        self.draining = true;
                    }
                }
                _ = sigterm.recv() => {
                    tracing::info!(worker_id, running = self.running.len(), "SIGTERM: draining");
                    self.drain(queues).await;
                }
            }
        }
    }

    /// Tasks claimed ahead start first, in the order claimed, as room frees.
    fn launch_waiting(&mut self) {
        let needs = self
            .waiting
            .iter()
            .map(|k| self.running.get(k).map_or(Tier::ZERO, |r| r.need));
        let n = self.slots.fitting_now(needs);
        for key in self.waiting.drain(..n) {
            if let Some(r) = self.running.get_mut(&key) {
                r.launch();
                self.slots.take(r.need);
                self.last_busy = Instant::now();
            }
        }
    }

    /// Start the held tasks that fit now; their claims go out together.
    async fn start_held(
        &mut self,
        ctx: &Arc<Ctx>,
        done: &mpsc::UnboundedSender<Progress>,
        queues: &Queues,
    ) {
        let n = self
            .slots
            .fitting_now(self.held.iter().map(|h| need(&h.message)));
        let startable: Vec<Held> = self.held.drain(..n).collect();
        let outcomes = futures::future::join_all(
            startable
                .iter()
                .map(|h| attempt::start(ctx, &h.receipt, &h.message, done, queues, true)),
        )
        .await;
        for (outcome, h) in outcomes.into_iter().zip(&startable) {
            match outcome {
                Started::Running(r, took) => {
                    self.claim_latency.observe(took);
                    self.slots.take(r.need);
                    self.running.insert(r.key(), *r);
                    self.last_busy = Instant::now();
                }
                Started::Drop => self.handled(&h.receipt),
                Started::Later => self.messages.later(&h.receipt),
                Started::Chain(next) => self.carry_on(&h.receipt, next),
            }
        }
    }

    /// Claim ahead: for each slot about to free (within a claim's time) that no task
    /// claimed ahead already waits for, claim the next held task that will fit there,
    /// while this worker's tasks are steady in length.
    async fn claim_ahead(
        &mut self,
        ctx: &Arc<Ctx>,
        done: &mpsc::UnboundedSender<Progress>,
        queues: &Queues,
    ) {
        if self.draining || !self.forecast.steady() || self.held.is_empty() {
            return;
        }
        let lead = self.claim_latency.lead();
        let ending: Vec<Tier> = self
            .running
            .values()
            .filter(|r| {
                r.launched()
                    && self
                        .forecast
                        .remaining(r.since.elapsed())
                        .is_some_and(|left| left <= lead)
            })
            .map(|r| r.need)
            .collect();
        let wanted = ending.len().saturating_sub(self.waiting.len());
        let promised = self
            .waiting
            .iter()
            .filter_map(|k| self.running.get(k))
            .map(|r| r.need);
        let n = self.slots.fitting_ahead(
            ending.iter().copied(),
            promised,
            self.held.iter().map(|h| need(&h.message)),
            wanted,
        );
        let ahead: Vec<Held> = self.held.drain(..n).collect();
        let outcomes = futures::future::join_all(
            ahead
                .iter()
                .map(|h| attempt::start(ctx, &h.receipt, &h.message, done, queues, false)),
        )
        .await;
        for (outcome, h) in outcomes.into_iter().zip(&ahead) {
            match outcome {
                Started::Running(r, took) => {
                    self.claim_latency.observe(took);
                    let key = r.key();
                    self.waiting.push_back(key.clone());
                    self.running.insert(key, *r);
                }
                Started::Drop => self.handled(&h.receipt),
                Started::Later => self.messages.later(&h.receipt),
                Started::Chain(next) => self.carry_on(&h.receipt, next),
            }
        }
    }

    /// Delete the messages of recorded attempts, ten a request: once ten are waiting,
    /// once the oldest has waited [`DELETE_WAIT`], or (`now`) at once. Deleting is
    /// bookkeeping: it is kept off the path that starts the next task, and a message
    /// whose delete waits a moment stays invisible meanwhile. Returns how long until
    /// the waiting ones are due.
    fn flush_deletes(&mut self, queues: &Arc<Queues>, now: bool) -> Option<Duration> {
        if self.to_delete.is_empty() {
            self.to_delete_since = None;
            return None;
        }
        let since = *self.to_delete_since.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        if !now && self.to_delete.len() < DELETE_BATCH && waited < DELETE_WAIT {
            return Some(DELETE_WAIT - waited);
        }
        self.to_delete_since = None;
        let (queues, batch) = (queues.clone(), std::mem::take(&mut self.to_delete));
        self.deletes.push(tokio::spawn(async move {
            for (url, receipts) in leases::by_queue(batch) {
                if let Err(e) = queues.delete(&url, &receipts).await {
                    tracing::warn!(error = %e, "delete failed; the messages will come back and be dropped then");
                }
            }
        }));
        self.deletes.retain(|h| !h.is_finished());
        None
    }

    /// Whether the worker is done: nothing held or running, and draining or idle for
    /// `idle` (never, when `idle` is zero).
    fn done(&mut self, idle: Duration) -> bool {
        if !self.running.is_empty() || !self.held.is_empty() {
            self.last_busy = Instant::now();
            return false;
        }
        self.draining || (!idle.is_zero() && self.last_busy.elapsed() >= idle)
    }

    /// How many tasks to ask for, and when to wake next without an event: when a
    /// running task comes near its expected end, to fetch its successor or claim it ahead.
    fn plan(&self, opts: &Options) -> (i32, Option<Duration>) {
        let horizon = Duration::from_millis(opts.prefetch_horizon_ms);
        let launched_for: Vec<Duration> = self
            .running
            .values()
            .filter(|r| r.launched())
            .map(|r| r.since.elapsed())
            .collect();
        // Once this worker's tasks are steady in length, it holds messages only for the
        // slots expected to free soon, so work it cannot start yet stays in the queue
        // for a worker that can.
        let prefetch = if self.forecast.steady() {
            self.forecast
                .ending_within(launched_for.iter().copied(), horizon)
                .unwrap_or(opts.prefetch)
                .saturating_sub(self.waiting.len())
                .min(opts.prefetch)
        } else if self.forecast.mean().is_none() {
            // Full before any of its tasks has ended: nothing says a slot frees soon,
            // and what it held would wait here while workers elsewhere may have room
            // (a pack it handed back for being over would come straight back).
            0
        } else {
            opts.prefetch
        };
        // Room in tasks like the last one received (and one while anything is free: the
        // next may be smaller), or in vCPUs before any.
        let room = match self.last_need {
            Some(like) => self
                .slots
                .room_for(like)
                .max(usize::from(self.slots.free_vcpus() > 0)),
            None => self.slots.free_vcpus(),
        };
        let want = slots::tasks_wanted(self.draining, room, self.held.len(), prefetch);
        let wake = if self.draining || !self.forecast.steady() {
            None
        } else {
            let fetch = self
                .forecast
                .next_within(launched_for.iter().copied(), horizon);
            let claim = if opts.claim_ahead && !self.held.is_empty() {
                self.forecast
                    .next_within(launched_for.iter().copied(), self.claim_latency.lead())
            } else {
                None
            };
            fetch.into_iter().chain(claim).min()
        };
        (want as i32, wake)
    }

    /// Tasks this worker expects to start within `horizon` as its running tasks' slots
    /// turn over at their forecast length (none while it has no steady forecast): what
    /// a pack brings beyond its room is kept when it will start that soon.
    fn turnover(&self, horizon: Duration) -> usize {
        match self.forecast.mean() {
            Some(mean) if self.forecast.steady() && !mean.is_zero() => {
                (self.running.len() as f64 * horizon.as_secs_f64() / mean.as_secs_f64()) as usize
            }
            _ => 0,
        }
    }

    fn on_progress(&mut self, p: Progress, me: &Announce) {
        match p {
            Progress::SlotFree { key } => {
                let Some(r) = self.running.remove(&key) else {
                    return;
                };
                if r.launched() {
                    me.task_ended(r.since.elapsed());
                    self.forecast.observe(r.since.elapsed());
                    self.slots.give_back(r.need);
                } else {
                    // Cancelled (or lost) while waiting for its slot.
                    self.waiting.retain(|k| k != &key);
                }
            }
            Progress::Done {
                receipt,
                recorded,
                next,
            } => match recorded {
                true => match next {
                    // Said in the record: the message carries the successor child.
                    Some(m) => self.carry_on(&receipt, m),
                    None => self.handled(&receipt),
                },
                false => self.messages.later(&receipt),
            },
        }
    }
}
