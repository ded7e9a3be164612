//! The worker loop: receive task messages, claim tasks with a conditional write, run
//! several at once within the worker's CPU and memory, keep their leases and message
//! visibility alive, record each attempt, and exit after an idle time (or drain and exit
//! on SIGTERM: no running task is interrupted by a scale-down).

use crate::forecast::{ClaimLatency, Forecast};
use crate::shim::Report;
use batchplane::domain::retry::{AttemptEnd, RetryAction};
use batchplane::domain::tiers::{
    after_oom, budgeted_attempts, OomOutcome, WorkerPool, OOM_ON_LARGEST_TIER, OUT_OF_MEMORY,
};
use batchplane::domain::{AttemptRecord, TaskRecord, TaskState};
use batchplane::queue::{Delivery, Queues, TaskMessage};
use batchplane::store::{now_ms, Claim, Escalation, Heartbeat, Store};
use clap::Parser;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "taskhost",
    about = "Run Batchplane tasks from a queue as unix processes"
)]
pub struct Options {
    /// The Batchplane queues (job queues) to take tasks from, comma-separated. Where a
    /// queue is a registered job queue, higher priority is served first.
    #[arg(long, env = "BATCHPLANE_QUEUE", default_value = "default")]
    pub queue: String,
    /// This worker's id in attempts and leases (default: host name and pid).
    #[arg(long, env = "BATCHPLANE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// vCPUs this worker offers its tasks (default: the machine's).
    #[arg(long, env = "BATCHPLANE_WORKER_CPUS")]
    pub cpus: Option<f64>,
    /// Memory this worker offers its tasks, in MiB (default: the machine's).
    #[arg(long, env = "BATCHPLANE_WORKER_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    /// GPUs this worker offers its tasks (default: those NVML sees, else none).
    #[arg(long, env = "BATCHPLANE_WORKER_GPUS")]
    pub gpus: Option<u32>,
    /// Serve the pools of this tier shape, `CPU:MEMORY_MIB[:GPU]` (e.g. `2:8192`), of
    /// each queue, instead of the queues' own pools. Without --cpus/--memory-mib the
    /// worker offers one such slot.
    #[arg(long, env = "BATCHPLANE_WORKER_TIER", value_parser = parse_tier)]
    pub tier: Option<batchplane::domain::tiers::Tier>,
    /// How tasks are held to their memory: a cgroup where the host allows one (auto),
    /// or always rlimit + RSS polling.
    #[arg(
        long,
        env = "BATCHPLANE_MEMORY_ENFORCEMENT",
        value_enum,
        default_value = "auto"
    )]
    pub memory_enforcement: crate::memory::Preference,
    /// Exit after this many seconds with nothing to run (0: never).
    #[arg(long, env = "BATCHPLANE_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub idle_timeout_seconds: u64,
    /// Where each attempt's stdout and stderr are written.
    #[arg(
        long,
        env = "BATCHPLANE_LOG_DIR",
        default_value = "/tmp/batchplane/logs"
    )]
    pub log_dir: PathBuf,
    /// The API URL handed to tasks (so a task can add tasks to its own job).
    #[arg(long, env = "BATCHPLANE_API_URL")]
    pub api_url: Option<String>,
    /// Write this process's AWS request counts here as JSON on exit (benchmarks).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Long-poll wait for an empty queue, in seconds.
    #[arg(long, default_value_t = 2)]
    pub poll_wait_seconds: u64,
    /// Messages to hold beyond free capacity, at most, so a freed slot starts its next
    /// task without a round trip to SQS. Held messages stay invisible to other workers.
    /// Once the worker has seen its tasks' lengths it holds one only for each slot
    /// expected to free within `--prefetch-horizon-ms`.
    #[arg(long, env = "BATCHPLANE_PREFETCH", default_value_t = 4)]
    pub prefetch: usize,
    /// How far ahead of a slot's expected end its next message is fetched. Short: a
    /// message a full worker holds is one an idle worker elsewhere cannot start.
    #[arg(long, env = "BATCHPLANE_PREFETCH_HORIZON_MS", default_value_t = 300)]
    pub prefetch_horizon_ms: u64,
    /// Claim the next task just before a slot frees, when the tasks this worker runs are
    /// steady in length, so the slot starts it without waiting for the claim write.
    #[arg(long, env = "BATCHPLANE_CLAIM_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub claim_ahead: bool,
    /// A held message that has not found room this long goes back to the queue, so a
    /// free worker elsewhere can take it. Longer than most short tasks, so a full
    /// worker's next task is usually already in hand when a slot frees.
    #[arg(long, env = "BATCHPLANE_HOLD_MS", default_value_t = 5000)]
    pub hold_ms: u64,
    /// The placement reservation this worker was launched under (`<cluster>.<request>`):
    /// the worker renews its slot's lease each heartbeat and releases it on exit, so
    /// its team's quota is held exactly while it lives.
    #[arg(long, env = "BATCHPLANE_RESERVATION_ID", requires = "slot")]
    pub reservation: Option<String>,
    /// This worker's slot in the reservation.
    #[arg(long, env = "BATCHPLANE_RESERVATION_SLOT")]
    pub slot: Option<u32>,
    /// When the launcher asked for this worker (ms since the epoch): the worker reports
    /// its start-up time, which the autoscaler weighs against queued work.
    #[arg(long, env = "BATCHPLANE_LAUNCHED_AT")]
    pub launched_at: Option<i64>,
}

fn parse_tier(text: &str) -> Result<batchplane::domain::tiers::Tier, String> {
    batchplane::domain::tiers::Tier::parse_shape(text)
}

/// GPUs NVML sees here (none where it does not load).
fn machine_gpus() -> u32 {
    nvml_wrapper::Nvml::init()
        .ok()
        .and_then(|n| n.device_count().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Cancelled,
    LeaseLost,
}

struct Running {
    task: TaskRecord,
    queue_url: String,
    receipt: String,
    cpu_milli: u32,
    memory_mib: u64,
    gpu: u32,
    kill: watch::Sender<Option<Kill>>,
    /// When the worker started it (its duration feeds the autoscaler and the forecast).
    since: Instant,
    /// Claimed ahead of a free slot: the attempt waits for this before it starts its
    /// process. Its resources count once it is started.
    gate: Option<oneshot::Sender<()>>,
}

impl Running {
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
    /// The attempt is over. `receipt` is the message to delete, present only when the
    /// result was recorded: otherwise the message must come back (after the lease
    /// lapses) so the task is not left RUNNING with nobody to finish it.
    Done { receipt: Option<(String, String)> },
}

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
}

fn machine_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

fn task_key(m: &TaskMessage) -> String {
    format!("{}/{}", m.job_id, m.task_id)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    let store = Store::new(clients.dynamodb, config.table.clone());
    let queues = Arc::new(Queues::new(clients.sqs, config.queue_prefix.clone()));
    let names: Vec<String> = opts
        .queue
        .split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(String::from)
        .collect();
    let names: Vec<String> = crate::templates::by_priority(&store, names)
        .await
        .into_iter()
        .map(|q| batchplane::domain::tiers::WorkerPool::new(q, opts.tier).name())
        .collect();
    let mut urls = Vec::new();
    for q in &names {
        urls.push(queues.url(q).await?);
    }
    let worker_id = opts.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    });
    let cpu_total = (opts.cpus.unwrap_or_else(|| match opts.tier {
        Some(t) => t.cpu(),
        None => std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0),
    }) * 1000.0)
        .round() as u32;
    let mem_total = opts
        .memory_mib
        .unwrap_or_else(|| opts.tier.map_or_else(machine_memory_mib, |t| t.memory_mib));
    let gpu_total = opts
        .gpus
        .unwrap_or_else(|| opts.tier.map_or_else(machine_gpus, |t| t.gpu));
    let (memory, why_not_cgroup) = crate::memory::detect(opts.memory_enforcement);
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
    });
    tracing::info!(worker_id, pools = ?names, cpus = f64::from(cpu_total) / 1000.0, memory_mib = mem_total, gpus = gpu_total,
        memory_enforcement = memory.name(), why_not_cgroup = why_not_cgroup.as_deref().unwrap_or(""), "taskhost started");

    let me = Announce {
        reservation: opts.reservation.clone().zip(opts.slot),
        reservation_lease: config.reservation_lease,
        pools: names.clone(),
        worker_id: worker_id.clone(),
        cpu_milli: cpu_total,
        memory_mib: mem_total,
        gpu: gpu_total,
        lease: config.lease,
        tasks_done: Default::default(),
        busy_ms: Default::default(),
        startup_ms: opts.launched_at.map(|at| (now_ms() - at).max(0)),
    };
    let placed = me.refresh(&ctx.store, 0).await;
    if !placed {
        tracing::warn!(
            worker_id,
            "this worker's placement is not live: it will run nothing"
        );
    }

    // The receiver asks SQS for as many messages as the worker has room for (`want`).
    let (want_tx, mut want_rx) = watch::channel(0i32);
    let (deliveries_tx, mut deliveries_rx) = mpsc::channel::<Vec<Delivery>>(4);
    let receiver = {
        let queues = queues.clone();
        let urls = urls.clone();
        let wait = Duration::from_secs(opts.poll_wait_seconds);
        let visibility = config.lease;
        tokio::spawn(async move {
            loop {
                let want = *want_rx.borrow_and_update();
                if want <= 0 {
                    if want_rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                match crate::templates::receive_in_order(&queues, &urls, want, wait, visibility)
                    .await
                {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => {
                        if deliveries_tx.send(d).await.is_err() {
                            return;
                        }
                        // Wait for the worker to account for these before asking again.
                        if want_rx.changed().await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    };

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Progress>();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut held: VecDeque<(Delivery, TaskMessage, Instant)> = VecDeque::new();
    let mut to_delete: Vec<(String, String)> = Vec::new();
    let mut deletes: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let (mut cpu_used, mut mem_used, mut gpu_used) = (0u32, 0u64, 0u32);
    let mut last_busy = Instant::now();
    let idle = Duration::from_secs(opts.idle_timeout_seconds);
    let mut heartbeat = tokio::time::interval(config.lease / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut draining = !placed;
    let mut forecast = Forecast::default();
    let mut claim_latency = ClaimLatency::default();
    let horizon = Duration::from_millis(opts.prefetch_horizon_ms);
    // Tasks claimed ahead of a free slot, in the order claimed.
    let mut waiting: VecDeque<String> = VecDeque::new();

    loop {
        // Tasks claimed ahead start first, in the order claimed, as room frees.
        while let Some(key) = waiting.front().cloned() {
            let Some(r) = running.get_mut(&key) else {
                waiting.pop_front();
                continue;
            };
            if cpu_used + r.cpu_milli > cpu_total
                || mem_used + r.memory_mib > mem_total
                || gpu_used + r.gpu > gpu_total
            {
                break;
            }
            r.launch();
            cpu_used += r.cpu_milli;
            mem_used += r.memory_mib;
            gpu_used += r.gpu;
            waiting.pop_front();
            last_busy = Instant::now();
        }
        // Start held tasks that fit now; their claims go out together.
        let mut startable = Vec::new();
        let (mut cpu_plan, mut mem_plan, mut gpu_plan) = (cpu_used, mem_used, gpu_used);
        while let Some((_, m, _)) = held.front() {
            if cpu_plan + m.cpu_milli > cpu_total
                || mem_plan + m.memory_mib > mem_total
                || gpu_plan + m.gpu > gpu_total
            {
                break;
            }
            let Some((d, m, _)) = held.pop_front() else {
                break;
            };
            cpu_plan += m.cpu_milli;
            mem_plan += m.memory_mib;
            gpu_plan += m.gpu;
            startable.push((d, m));
        }
        let outcomes = futures::future::join_all(
            startable
                .iter()
                .map(|(d, m)| start(&ctx, d, m, &done_tx, &queues, true)),
        )
        .await;
        for ((_, m), outcome) in startable.iter().zip(outcomes) {
            match outcome {
                Started::Running(r, took) => {
                    claim_latency.observe(took);
                    cpu_used += r.cpu_milli;
                    mem_used += r.memory_mib;
                    gpu_used += r.gpu;
                    running.insert(task_key(m), *r);
                    last_busy = Instant::now();
                }
                Started::Drop(receipt) => to_delete.push(receipt),
                Started::Later => {}
            }
        }
        // Claim ahead: for each slot about to free (within a claim's time) that no task
        // claimed ahead is already waiting for, claim the next held task that will fit.
        if opts.claim_ahead && !draining && forecast.steady() && !held.is_empty() {
            let lead = claim_latency.lead();
            let ending: Vec<&Running> = running
                .values()
                .filter(|r| {
                    r.launched()
                        && forecast
                            .remaining(r.since.elapsed())
                            .is_some_and(|left| left <= lead)
                })
                .collect();
            let mut wanted = ending.len().saturating_sub(waiting.len());
            let promised = |f: &dyn Fn(&Running) -> i64| -> i64 {
                waiting
                    .iter()
                    .filter_map(|k| running.get(k))
                    .map(f)
                    .sum::<i64>()
            };
            let mut room = [
                i64::from(cpu_total) - i64::from(cpu_used)
                    + ending.iter().map(|r| i64::from(r.cpu_milli)).sum::<i64>()
                    - promised(&|r| i64::from(r.cpu_milli)),
                mem_total as i64 - mem_used as i64
                    + ending.iter().map(|r| r.memory_mib as i64).sum::<i64>()
                    - promised(&|r| r.memory_mib as i64),
                i64::from(gpu_total) - i64::from(gpu_used)
                    + ending.iter().map(|r| i64::from(r.gpu)).sum::<i64>()
                    - promised(&|r| i64::from(r.gpu)),
            ];
            let mut ahead = Vec::new();
            while wanted > 0 {
                let Some((_, m, _)) = held.front() else {
                    break;
                };
                let need = [
                    i64::from(m.cpu_milli),
                    m.memory_mib as i64,
                    i64::from(m.gpu),
                ];
                if need.iter().zip(&room).any(|(n, r)| n > r) {
                    break;
                }
                let Some((d, m, _)) = held.pop_front() else {
                    break;
                };
                for (r, n) in room.iter_mut().zip(need) {
                    *r -= n;
                }
                wanted -= 1;
                ahead.push((d, m));
            }
            let outcomes = futures::future::join_all(
                ahead
                    .iter()
                    .map(|(d, m)| start(&ctx, d, m, &done_tx, &queues, false)),
            )
            .await;
            for ((_, m), outcome) in ahead.iter().zip(outcomes) {
                match outcome {
                    Started::Running(r, took) => {
                        claim_latency.observe(took);
                        let key = task_key(m);
                        waiting.push_back(key.clone());
                        running.insert(key, *r);
                    }
                    Started::Drop(receipt) => to_delete.push(receipt),
                    Started::Later => {}
                }
            }
        }
        // Held too long without room: back to the queue for another worker.
        let hold = Duration::from_millis(opts.hold_ms);
        let mut give_back = Vec::new();
        while let Some((_, _, since)) = held.front() {
            if since.elapsed() < hold {
                break;
            }
            if let Some((d, _, _)) = held.pop_front() {
                give_back.push((d.queue_url, d.receipt_handle));
            }
        }
        if !give_back.is_empty() {
            extend_all(&queues, give_back, Duration::ZERO).await;
        }
        if !to_delete.is_empty() {
            // Deleting is bookkeeping: keep it off the path that starts the next task.
            let (queues, batch) = (queues.clone(), std::mem::take(&mut to_delete));
            deletes.push(tokio::spawn(async move {
                for (url, receipts) in by_queue(batch) {
                    if let Err(e) = queues.delete(&url, &receipts).await {
                        tracing::warn!(error = %e, "delete failed; the messages will come back and be dropped then");
                    }
                }
            }));
            deletes.retain(|h| !h.is_finished());
        }
        if running.is_empty() && held.is_empty() {
            if draining {
                break;
            }
            if !idle.is_zero() && last_busy.elapsed() >= idle {
                tracing::info!(worker_id, "idle; exiting");
                break;
            }
        } else {
            last_busy = Instant::now();
        }
        // Room for more? Ask for roughly one message per free vCPU, plus the prefetch.
        let free_slots = if cpu_used >= cpu_total || mem_used >= mem_total {
            0
        } else {
            ((cpu_total - cpu_used) / 1000).max(1) as usize
        };
        // A worker with room asks for exactly that; a full one holds `prefetch` for the
        // next free slot. Asking for more than the room would hoard work other
        // workers could start now.
        // Once this worker's tasks are steady in length, it holds messages only for the
        // slots expected to free soon, so work it cannot start yet stays in the queue
        // for a worker that can.
        let launched_for: Vec<Duration> = running
            .values()
            .filter(|r| r.launched())
            .map(|r| r.since.elapsed())
            .collect();
        let prefetch = if forecast.steady() {
            forecast
                .ending_within(launched_for.iter().copied(), horizon)
                .unwrap_or(opts.prefetch)
                .saturating_sub(waiting.len())
                .min(opts.prefetch)
        } else {
            opts.prefetch
        };
        let want = if draining {
            0
        } else if free_slots > 0 {
            free_slots.saturating_sub(held.len()).min(10) as i32
        } else {
            prefetch.saturating_sub(held.len()).min(10) as i32
        };
        // Wake when a running task comes near its expected end: to fetch its successor,
        // or to claim it ahead.
        let wake = if draining || !forecast.steady() {
            None
        } else {
            let fetch = forecast.next_within(launched_for.iter().copied(), horizon);
            let claim = if opts.claim_ahead && !held.is_empty() {
                forecast.next_within(launched_for.iter().copied(), claim_latency.lead())
            } else {
                None
            };
            fetch.into_iter().chain(claim).min()
        };
        want_tx.send_if_modified(|w| {
            let changed = *w != want;
            *w = want;
            changed
        });

        tokio::select! {
            Some(first) = done_rx.recv() => {
                let mut next = Some(first);
                while let Some(p) = next {
                    match p {
                        Progress::SlotFree { key } => {
                            if let Some(r) = running.remove(&key) {
                                if r.launched() {
                                    me.task_ended(r.since.elapsed());
                                    forecast.observe(r.since.elapsed());
                                    cpu_used -= r.cpu_milli;
                                    mem_used -= r.memory_mib;
                                    gpu_used -= r.gpu;
                                } else {
                                    // Cancelled (or lost) while waiting for its slot.
                                    waiting.retain(|k| k != &key);
                                }
                            }
                        }
                        Progress::Done { receipt } => to_delete.extend(receipt),
                    }
                    next = done_rx.try_recv().ok();
                }
            }
            Some(batch) = deliveries_rx.recv() => {
                for d in batch {
                    let Some(m) = d.message.clone() else {
                        tracing::warn!(body = %d.body, "unreadable message dropped");
                        to_delete.push((d.queue_url.clone(), d.receipt_handle.clone()));
                        continue;
                    };
                    if m.cpu_milli > cpu_total || m.memory_mib > mem_total || m.gpu > gpu_total {
                        tracing::warn!(job_id = %m.job_id, task_id = %m.task_id, cpu_milli = m.cpu_milli, memory_mib = m.memory_mib, gpu = m.gpu,
                            "task is larger than this worker; leaving it for a bigger one");
                        let _ = queues.extend(&d.queue_url, std::slice::from_ref(&d.receipt_handle), Duration::from_secs(5)).await;
                        continue;
                    }
                    held.push_back((d, m, Instant::now()));
                }
                // Tell the receiver we took these (it waits for a change).
                want_tx.send_modify(|w| *w = -1);
            }
            _ = tokio::time::sleep(Duration::from_millis(opts.hold_ms.max(10))), if !held.is_empty() => {}
            _ = tokio::time::sleep(wake.unwrap_or_default().max(Duration::from_millis(1))), if wake.is_some() => {}
            _ = heartbeat.tick() => {
                keep_alive(&ctx, &running, &held, &queues).await;
                if !me.refresh(&ctx.store, running.len() as u32).await && !draining {
                    tracing::warn!(worker_id, "this worker's placement was reclaimed: draining");
                    draining = true;
                }
            }
            _ = sigterm.recv() => {
                tracing::info!(worker_id, running = running.len(), "SIGTERM: draining");
                draining = true;
                let receipts: Vec<(String, String)> = held.drain(..).map(|(d, _, _)| (d.queue_url, d.receipt_handle)).collect();
                extend_all(&queues, receipts, Duration::ZERO).await;
            }
        }
    }
    receiver.abort();
    ctx.memory.release();
    me.forget(&ctx.store).await;
    for d in deletes {
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

/// This worker in the pools' worker records (what `explain` reads).
struct Announce {
    /// The placement slot this worker holds, if it was placed.
    reservation: Option<(String, u32)>,
    reservation_lease: Duration,
    pools: Vec<String>,
    worker_id: String,
    cpu_milli: u32,
    memory_mib: u64,
    gpu: u32,
    lease: Duration,
    /// Tasks this worker finished and the time they ran, in total.
    tasks_done: std::sync::atomic::AtomicU64,
    busy_ms: std::sync::atomic::AtomicU64,
    /// From its launch (`BATCHPLANE_LAUNCHED_AT`) to taking work, when it was launched.
    startup_ms: Option<i64>,
}

impl Announce {
    fn task_ended(&self, ran: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.tasks_done.fetch_add(1, Relaxed);
        self.busy_ms.fetch_add(ran.as_millis() as u64, Relaxed);
    }

    /// Record this worker again and renew its placement; false once the placement is
    /// gone (released or swept), when the worker should drain and exit. Its requests
    /// are the fleet's upkeep in the request counts, not any task's.
    async fn refresh(&self, store: &Store, running: u32) -> bool {
        batchplane::aws::accounting::upkeep(self.record(store, running)).await
    }

    async fn record(&self, store: &Store, running: u32) -> bool {
        let now = now_ms();
        let mut placed = true;
        if let Some((id, slot)) = &self.reservation {
            let until = now + self.reservation_lease.as_millis() as i64;
            match store.renew_slot(id, *slot, until).await {
                Ok(live) => placed = live,
                Err(e) => {
                    tracing::warn!(error = %e, reservation_id = %id, slot, "renewing this worker's placement failed")
                }
            }
        }
        for pool in &self.pools {
            let record = batchplane::store::workers::WorkerRecord {
                pool: pool.clone(),
                worker_id: self.worker_id.clone(),
                cpu_milli: self.cpu_milli,
                memory_mib: self.memory_mib,
                gpu: self.gpu,
                running,
                tasks_done: self.tasks_done.load(std::sync::atomic::Ordering::Relaxed),
                busy_ms: self.busy_ms.load(std::sync::atomic::Ordering::Relaxed),
                startup_ms: self.startup_ms,
                last_seen: now,
                expires_at: now / 1000 + 3 * self.lease.as_secs() as i64,
            };
            if let Err(e) = store.put_worker(&record).await {
                tracing::warn!(error = %e, pool, "recording this worker failed");
            }
        }
        placed
    }

    /// Give back the placement and remove the worker's records (upkeep, as above).
    async fn forget(&self, store: &Store) {
        batchplane::aws::accounting::upkeep(self.remove(store)).await
    }

    async fn remove(&self, store: &Store) {
        if let Some((id, slot)) = &self.reservation {
            match store.release_slots(id, Some(&[*slot]), None).await {
                Ok(n) => {
                    tracing::info!(reservation_id = %id, slot, released = n, "placement released")
                }
                Err(e) => tracing::warn!(error = %e, reservation_id = %id, slot,
                    "releasing this worker's placement failed; the sweeper reclaims it when its lease lapses"),
            }
        }
        for pool in &self.pools {
            if let Err(e) = store.delete_worker(pool, &self.worker_id).await {
                tracing::warn!(error = %e, pool, "removing this worker's record failed");
            }
        }
    }
}

/// Extend every running task's lease (learning of cancellations and lost leases), and
/// keep their messages, and held ones, invisible to other workers.
async fn keep_alive(
    ctx: &Ctx,
    running: &HashMap<String, Running>,
    held: &VecDeque<(Delivery, TaskMessage, Instant)>,
    queues: &Queues,
) {
    let beats = running.values().map(|r| async move {
        match ctx
            .store
            .heartbeat(&r.task, &ctx.worker_id, ctx.lease)
            .await
        {
            Ok(Heartbeat::Held {
                cancel_requested: true,
            }) => {
                let _ = r.kill.send(Some(Kill::Cancelled));
            }
            Ok(Heartbeat::Held { .. }) => {}
            Ok(Heartbeat::Lost) => {
                tracing::warn!(task_id = %r.task.task_id, "lease lost; stopping the task");
                let _ = r.kill.send(Some(Kill::LeaseLost));
            }
            Err(e) => tracing::warn!(error = %e, task_id = %r.task.task_id, "heartbeat failed"),
        }
    });
    futures::future::join_all(beats).await;
    let receipts: Vec<(String, String)> = running
        .values()
        .map(|r| (r.queue_url.clone(), r.receipt.clone()))
        .chain(
            held.iter()
                .map(|(d, _, _)| (d.queue_url.clone(), d.receipt_handle.clone())),
        )
        .collect();
    extend_all(queues, receipts, ctx.lease).await;
}

/// Receipts grouped by the queue they belong to.
fn by_queue(items: Vec<(String, String)>) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (url, r) in items {
        m.entry(url).or_default().push(r);
    }
    m
}

async fn extend_all(queues: &Queues, items: Vec<(String, String)>, by: Duration) {
    for (url, receipts) in by_queue(items) {
        if let Err(e) = queues.extend(&url, &receipts, by).await {
            tracing::warn!(error = %e, "changing message visibility failed");
        }
    }
}

/// What became of a delivered message.
enum Started {
    /// Claimed (in the time given) and started, or waiting for a slot if claimed ahead.
    Running(Box<Running>, Duration),
    /// Nothing to run (finished, exhausted, unreadable): delete the message.
    Drop((String, String)),
    /// Not now (another worker's live lease, or a failed claim): the message comes back.
    Later,
}

/// Claim a delivered task and start it. A message for a task another live worker holds
/// is made visible again when that lease would lapse, so a dead holder's task returns.
async fn start(
    ctx: &Arc<Ctx>,
    d: &Delivery,
    m: &TaskMessage,
    done: &mpsc::UnboundedSender<Progress>,
    queues: &Queues,
    launch_now: bool,
) -> Started {
    let url = d.queue_url.as_str();
    let drop = || Started::Drop((d.queue_url.clone(), d.receipt_handle.clone()));
    let asked = Instant::now();
    let claim = if m.array_child {
        // A child's command is its job's template; a job that has ended (cancelled,
        // or failed by a dependency) starts no more children.
        match ctx.jobs.get(&m.job_id).await {
            Ok(Some(job)) if !job.state.is_terminal() && !job.cancel_requested => {
                match crate::templates::seed(&job, m, ctx.max_attempts) {
                    Some(seed) => ctx
                        .store
                        .claim_child(&m.job_id, m.shard, &seed, &ctx.worker_id, ctx.lease)
                        .await
                        .map(|c| crate::templates::with_template(c, &job)),
                    None => return drop(),
                }
            }
            Ok(_) => return drop(),
            Err(e) => {
                tracing::warn!(error = %e, job_id = %m.job_id, "reading the job failed; the message will come back");
                return Started::Later;
            }
        }
    } else {
        ctx.store
            .claim_task(&m.job_id, m.shard, &m.task_id, &ctx.worker_id, ctx.lease)
            .await
    };
    let task = match claim {
        Ok(Claim::Claimed(task)) => *task,
        Ok(Claim::NotClaimable { reason }) => {
            tracing::debug!(job_id = %m.job_id, task_id = %m.task_id, reason, "not claimed");
            if reason.starts_with("held by") {
                let _ = queues
                    .extend(url, std::slice::from_ref(&d.receipt_handle), ctx.lease)
                    .await;
                return Started::Later;
            }
            return drop();
        }
        Ok(Claim::Exhausted) => return drop(),
        Err(e) => {
            tracing::warn!(error = %e, task_id = %m.task_id, "claim failed; the message will come back");
            return Started::Later;
        }
    };
    let claim_took = asked.elapsed();
    tracing::info!(job_id = %task.job_id, task_id = %task.task_id, attempt = task.attempt,
        claim_ms = claim_took.as_millis() as u64, ahead = !launch_now, "task claimed");
    let (kill_tx, kill_rx) = watch::channel(None);
    let (gate, gate_rx) = if launch_now {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let running = Running {
        task: task.clone(),
        queue_url: d.queue_url.clone(),
        receipt: d.receipt_handle.clone(),
        cpu_milli: m.cpu_milli,
        memory_mib: m.memory_mib,
        gpu: m.gpu,
        kill: kill_tx,
        since: Instant::now(),
        gate,
    };
    let ctx = ctx.clone();
    let done = done.clone();
    let key = task_key(m);
    let receipt = (d.queue_url.clone(), d.receipt_handle.clone());
    tokio::spawn(async move {
        let recorded = run_attempt(&ctx, &task, kill_rx, gate_rx, || {
            let _ = done.send(Progress::SlotFree { key });
        })
        .await;
        let _ = done.send(Progress::Done {
            receipt: recorded.then_some(receipt),
        });
    });
    Started::Running(Box::new(running), claim_took)
}

enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    Killed(Kill),
    SpawnFailed(String),
}

/// The environment a task runs with: a few basics from the worker, the task's own
/// variables, and Batchplane's (so a task can find its job and the API).
pub fn task_environment(task: &TaskRecord, api_url: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    env.extend(task.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("BATCHPLANE_JOB_ID".into(), task.job_id.clone()));
    env.push(("BATCHPLANE_TASK_ID".into(), task.task_id.clone()));
    env.push(("BATCHPLANE_ATTEMPT".into(), task.attempt.to_string()));
    // AWS Batch's names, so a container moved off AWS Batch finds what it expects.
    let aws_id = match task.index {
        Some(i) if task.env.contains_key("AWS_BATCH_JOB_ARRAY_INDEX") => {
            format!("{}:{i}", task.job_id)
        }
        _ => task.job_id.clone(),
    };
    env.push(("AWS_BATCH_JOB_ID".into(), aws_id));
    env.push(("AWS_BATCH_JOB_ATTEMPT".into(), task.attempt.to_string()));
    env.push(("AWS_BATCH_JQ_NAME".into(), task.queue.clone()));
    if let Some(url) = api_url {
        env.push(("BATCHPLANE_API_URL".into(), url.to_string()));
    }
    env
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the worker asks for the task to be killed (never, if it never does).
async fn kill_requested(kill: &mut watch::Receiver<Option<Kill>>) -> Kill {
    loop {
        if let Some(k) = *kill.borrow_and_update() {
            return k;
        }
        if kill.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Run one attempt and record how it ended; `slot_free` is called as soon as the process
/// has ended, before the result is written. A task claimed ahead of a free slot starts
/// its process when `gate` opens (or ends without one if it is cancelled first). Returns
/// whether the result was recorded.
async fn run_attempt(
    ctx: &Ctx,
    task: &TaskRecord,
    mut kill: watch::Receiver<Option<Kill>>,
    gate: Option<oneshot::Receiver<()>>,
    slot_free: impl FnOnce(),
) -> bool {
    let claimed_ahead = gate.is_some();
    let before_start = match gate {
        None => None,
        Some(gate) => tokio::select! {
            opened = gate => match opened {
                Ok(()) => None,
                // The worker let go of it without starting it: the lease lapses and
                // the task comes back.
                Err(_) => Some(Ending::Killed(Kill::LeaseLost)),
            },
            reason = kill_requested(&mut kill) => Some(Ending::Killed(reason)),
        },
    };
    // RUNNING begins with the claim; a task claimed ahead of its slot starts when its
    // process does (the wait for the slot is not running time).
    let started_at = if claimed_ahead {
        now_ms()
    } else {
        task.started_at.unwrap_or_else(now_ms)
    };
    let dir = ctx.log_dir.join(&task.job_id).join(&task.task_id);
    let stdout_path = dir.join(format!("attempt-{}.stdout", task.attempt));
    let stderr_path = dir.join(format!("attempt-{}.stderr", task.attempt));
    let report_path = dir.join(format!("attempt-{}.report.json", task.attempt));
    let spawned = match before_start {
        Some(ending) => Err(ending),
        None => spawn(ctx, task, &dir, &stdout_path, &stderr_path, &report_path)
            .map_err(Ending::SpawnFailed),
    };
    let ending = match spawned {
        Err(ending) => ending,
        Ok(mut child) => {
            let pid = child.id();
            let timeout = task.timeout_seconds.map(Duration::from_secs);
            let kill_group = || {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            };
            tokio::select! {
                status = child.wait() => match status {
                    Ok(s) => Ending::Exited(s),
                    Err(e) => Ending::SpawnFailed(format!("waiting for the task failed: {e}")),
                },
                _ = sleep_or_forever(timeout) => {
                    kill_group();
                    let _ = child.wait().await;
                    Ending::TimedOut
                }
                reason = kill_requested(&mut kill) => {
                    kill_group();
                    let _ = child.wait().await;
                    Ending::Killed(reason)
                }
            }
        }
    };
    slot_free();
    let report: Option<Report> = std::fs::read(&report_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(&report_path);
    let mut attempt = AttemptRecord {
        attempt: task.attempt,
        worker_id: ctx.worker_id.clone(),
        started_at,
        finished_at: Some(now_ms()),
        stdout: Some(format!("file://{}", stdout_path.display())),
        stderr: Some(format!("file://{}", stderr_path.display())),
        tier: (!task.tiers.is_empty()).then_some(task.tier),
        cpu_milli: Some(task.cpu_milli),
        memory_mib: Some(task.memory_mib),
        ..Default::default()
    };
    if let Some(r) = &report {
        attempt.cpu_user_seconds = Some(r.cpu_user_seconds);
        attempt.cpu_system_seconds = Some(r.cpu_system_seconds);
        attempt.max_rss_kib = Some(r.max_rss_kib);
        attempt.avg_rss_kib = Some(r.avg_rss_kib);
        attempt.peak_rss_kib = Some(r.peak_rss_kib);
        attempt.gpu_peak_memory_mib = r.gpu_peak_memory_mib;
        attempt.gpu_utilization_percent = r.gpu_utilization_percent;
        attempt.memory_enforcement = r.memory_enforcement.clone();
    }
    let timed_out = matches!(ending, Ending::TimedOut);
    let out_of_memory =
        matches!(ending, Ending::Exited(_)) && report.as_ref().is_some_and(|r| r.out_of_memory);
    let (state, reason) = match ending {
        Ending::Killed(Kill::LeaseLost) => {
            // Someone else owns this task now; there is nothing of ours to record, and
            // the message is theirs to delete.
            return false;
        }
        Ending::Killed(Kill::Cancelled) => {
            (TaskState::Cancelled, Some("job cancelled".to_string()))
        }
        Ending::TimedOut => (
            TaskState::Failed,
            Some(format!(
                "Job attempt duration exceeded timeout ({} s)",
                task.timeout_seconds.unwrap_or(0)
            )),
        ),
        Ending::SpawnFailed(e) => (TaskState::Failed, Some(e)),
        Ending::Exited(_) if out_of_memory => {
            if let Some(r) = &report {
                attempt.exit_code = r.exit_code;
                attempt.signal = r.signal;
            }
            (TaskState::Failed, Some(OUT_OF_MEMORY.to_string()))
        }
        Ending::Exited(shim_status) => match &report {
            Some(Report {
                spawn_error: Some(e),
                ..
            }) => (TaskState::Failed, Some(e.clone())),
            Some(Report {
                exit_code: Some(0), ..
            }) => {
                attempt.exit_code = Some(0);
                (TaskState::Succeeded, None)
            }
            Some(Report {
                exit_code: Some(code),
                ..
            }) => {
                attempt.exit_code = Some(*code);
                (TaskState::Failed, Some(format!("exit code {code}")))
            }
            Some(Report {
                signal: Some(sig), ..
            }) => {
                attempt.signal = Some(*sig);
                (TaskState::Failed, Some(format!("killed by signal {sig}")))
            }
            _ => (
                TaskState::Failed,
                Some(format!(
                    "the task's process ended without a report ({shim_status})"
                )),
            ),
        },
    };
    attempt.reason = reason.clone();
    let (state, reason, escalation) =
        next_step(task, state, reason, &attempt, timed_out, out_of_memory);
    match ctx
        .store
        .finish_attempt(
            task,
            &ctx.worker_id,
            state,
            reason.as_deref(),
            &attempt,
            escalation.as_ref(),
        )
        .await
    {
        Ok(true) => {
            tracing::info!(job_id = %task.job_id, task_id = %task.task_id, state = %state, "task finished");
            true
        }
        Ok(false) => {
            tracing::warn!(task_id = %task.task_id, "lease lost before the result was recorded");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, task_id = %task.task_id, "recording the result failed; the lease will lapse and the task run again");
            false
        }
    }
}

/// What follows a finished attempt. An attempt that ran out of memory moves the task up
/// a tier (not charged to the retry budget), or fails it on the largest; any other
/// failure is tried again per the task's retry strategy, counting only attempts that did
/// not end in an escalation. A timeout is final, as in AWS Batch.
fn next_step(
    task: &TaskRecord,
    state: TaskState,
    reason: Option<String>,
    attempt: &AttemptRecord,
    timed_out: bool,
    out_of_memory: bool,
) -> (TaskState, Option<String>, Option<Escalation>) {
    if state != TaskState::Failed || timed_out {
        return (state, reason, None);
    }
    if out_of_memory {
        let n = task.tiers.len();
        match after_oom(&task.tiers, task.tier) {
            OomOutcome::Escalate { tier, shape } => {
                let pool = WorkerPool::for_task(&task.queue, &task.tiers, tier).name();
                let why = format!(
                    "OutOfMemory on tier {} of {n} ({} MiB); moving to tier {} of {n} ({}) in pool {pool}",
                    task.tier + 1,
                    task.memory_mib,
                    tier + 1,
                    shape.describe()
                );
                return (
                    TaskState::Runnable,
                    Some(why),
                    Some(Escalation { tier, shape, pool }),
                );
            }
            OomOutcome::LargestTier => {
                return (TaskState::Failed, Some(OOM_ON_LARGEST_TIER.into()), None)
            }
            OomOutcome::NoTiers => {}
        }
    }
    let end = AttemptEnd {
        exit_code: attempt.exit_code,
        reason: reason.as_deref(),
        status_reason: reason.as_deref(),
    };
    let used = budgeted_attempts(task.attempt, task.tier);
    match task.retry.decide(used, &end) {
        RetryAction::Retry => {
            let why = format!(
                "{}; retrying (attempt {used} of {})",
                reason.as_deref().unwrap_or("failed"),
                task.retry.attempts
            );
            (TaskState::Runnable, Some(why), None)
        }
        RetryAction::Exit => (state, reason, None),
    }
}

fn spawn(
    ctx: &Ctx,
    task: &TaskRecord,
    dir: &Path,
    stdout: &Path,
    stderr: &Path,
    report: &Path,
) -> Result<tokio::process::Child, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    let out = std::fs::File::create(stdout)
        .map_err(|e| format!("cannot create {}: {e}", stdout.display()))?;
    let err = std::fs::File::create(stderr)
        .map_err(|e| format!("cannot create {}: {e}", stderr.display()))?;
    let mut cmd = tokio::process::Command::new(&ctx.exe);
    cmd.arg("exec").arg("--report").arg(report);
    if task.memory_mib > 0 {
        cmd.arg("--memory-limit-mib")
            .arg(task.memory_mib.to_string())
            .arg("--memory-enforcement")
            .arg(ctx.memory.to_arg());
    }
    cmd.arg("--")
        .args(&task.command)
        .env_clear()
        .envs(task_environment(task, ctx.api_url.as_deref()))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| format!("could not start the task shim: {e}"))
}
