//! One attempt: claim the delivered task, wait for its slot if it was claimed ahead, run
//! its process under the shim, and record how it ended and what follows (a retry, the
//! next tier after running out of memory, or the end).

use super::fence::{fence_due, write_fence};
use super::messages::Receipt;
use super::{Ctx, Kill, Progress, Running};
use crate::shim::Report;
use batchplane::domain::containers::{IMAGE_ENFORCED, IMAGE_NOT_ENFORCED};
use batchplane::domain::retry::{AttemptEnd, RetryAction};
use batchplane::domain::tiers::{
    after_oom, budgeted_attempts, OomOutcome, WorkerPool, OOM_ON_LARGEST_TIER, OUT_OF_MEMORY,
};
use batchplane::domain::{AttemptRecord, TaskRecord, TaskState};
use batchplane::queue::{Queues, TaskMessage};
use batchplane::store::{now_ms, Escalation};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// What became of a delivered task.
pub(super) enum Started {
    /// Claimed (in the time given) and started, or waiting for a slot if claimed ahead.
    Running(Box<Running>, Duration),
    /// Nothing to run (finished, exhausted, a job that ended): the task is accounted for.
    Drop,
    /// Not now (another worker's live lease, or a failed claim): its message comes back.
    Later,
    /// The task had already succeeded (its message came again, or came back after its
    /// worker died): its chained N_TO_N successor child rides on the message instead.
    Chain(TaskMessage),
}

/// Claim a delivered task and start it. A message for a task another live worker holds
/// is made visible again when that lease would lapse, so a dead holder's task returns.
pub(super) async fn start(
    ctx: &Arc<Ctx>,
    receipt: &Receipt,
    m: &TaskMessage,
    done: &mpsc::UnboundedSender<Progress>,
    queues: &Queues,
    launch_now: bool,
) -> Started {
    let asked = Instant::now();
    let task = match super::claim::claim(ctx, receipt, m, queues).await {
        Ok(task) => task,
        Err(outcome) => return outcome,
    };
    let claim_took = asked.elapsed();
    tracing::info!(job_id = %task.job_id, task_id = %task.task_id, attempt = task.attempt,
        claim_ms = claim_took.as_millis() as u64, ahead = !launch_now, "task claimed");
    let (kill_tx, kill_rx) = watch::channel(None);
    let (lease_tx, lease_rx) = watch::channel(
        task.lease_expires
            .unwrap_or_else(|| now_ms() + ctx.lease.as_millis() as i64),
    );
    let (gate, gate_rx) = if launch_now {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let running = Running {
        task: task.clone(),
        lease: lease_tx,
        need: super::need(m),
        kill: kill_tx,
        since: Instant::now(),
        gate,
    };
    let ctx = ctx.clone();
    let done = done.clone();
    let key = super::attempt_key(&task);
    let receipt = receipt.clone();
    tokio::spawn(async move {
        let recorded = run_attempt(&ctx, &task, kill_rx, lease_rx, gate_rx, || {
            let _ = done.send(Progress::SlotFree { key });
        })
        .await;
        let _ = done.send(Progress::Done {
            receipt,
            recorded: recorded.is_some(),
            next: recorded.and_then(|(_, next)| next),
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

/// Where an attempt's output and report go, and the directory it runs in.
struct AttemptFiles {
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    report: PathBuf,
    /// The shim's fence: the time the attempt must be gone by (see [`write_fence`]).
    fence: PathBuf,
    workdir: PathBuf,
}

impl AttemptFiles {
    fn new(ctx: &Ctx, task: &TaskRecord) -> AttemptFiles {
        let dir = ctx.log_dir.join(&task.job_id).join(&task.task_id);
        AttemptFiles {
            stdout: dir.join(format!("attempt-{}.stdout", task.attempt)),
            stderr: dir.join(format!("attempt-{}.stderr", task.attempt)),
            report: dir.join(format!("attempt-{}.report.json", task.attempt)),
            fence: dir.join(format!("attempt-{}.fence", task.attempt)),
            workdir: dir.join(format!("attempt-{}.work", task.attempt)),
            dir,
        }
    }

    /// The shim's report of the process (read once: the file is removed).
    fn take_report(&self) -> Option<Report> {
        let report = std::fs::read(&self.report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(&self.report);
        report
    }
}

/// Run one attempt and record how it ended; `slot_free` is called as soon as the process
/// has ended, before the result is written. A task claimed ahead of a free slot starts
/// its process when `gate` opens (or ends without one if it is cancelled first). Returns
/// the state recorded and the chained successor child to take on next (see `chain`), or
/// `None` if nothing was recorded.
async fn run_attempt(
    ctx: &Ctx,
    task: &TaskRecord,
    mut kill: watch::Receiver<Option<Kill>>,
    mut lease: watch::Receiver<i64>,
    gate: Option<oneshot::Receiver<()>>,
    slot_free: impl FnOnce(),
) -> Option<(TaskState, Option<TaskMessage>)> {
    let claimed_ahead = gate.is_some();
    let before_start = match gate {
        None => None,
        Some(gate) => wait_for_slot(ctx, gate, &mut kill, &mut lease).await,
    };
    // RUNNING begins with the claim; a task claimed ahead of its slot starts when its
    // process does (the wait for the slot is not running time).
    let started_at = if claimed_ahead {
        now_ms()
    } else {
        task.started_at.unwrap_or_else(now_ms)
    };
    let files = AttemptFiles::new(ctx, task);
    let target = batchplane::domain::logs::log_target(
        task.log.as_ref(),
        task.definition.as_deref(),
        &task.job_id,
        &task.task_id,
        task.attempt,
    );
    // The output goes to CloudWatch Logs as it is written, beside the files.
    let shipping = match (&ctx.logs, &before_start) {
        (Some(logs), None) => Some(logs.start(
            target.clone(),
            vec![files.stdout.clone(), files.stderr.clone()],
        )),
        _ => None,
    };
    let (ending, uid) = match before_start {
        Some(ending) => (ending, None),
        None => run_process(ctx, task, &files, &mut kill, &mut lease).await,
    };
    slot_free();
    let shipped = match shipping {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let report = files.take_report();
    let mut attempt = attempt_record(ctx, task, started_at, &files, report.as_ref());
    if let Some(shipped) = shipped {
        attempt.log_group = Some(target.group);
        attempt.log_stream = Some(target.stream);
        attempt.log_shipping = shipped.note();
    }
    attempt.isolation = Some(ctx.isolation.name().to_string());
    if let Some(c) = ctx.container_of(task).await {
        attempt.image = Some(c.image);
        attempt.job_role_arn = c.job_role_arn;
        attempt.image_enforcement = Some(
            if ctx.in_image {
                IMAGE_ENFORCED
            } else {
                IMAGE_NOT_ENFORCED
            }
            .to_string(),
        );
    }
    attempt.uid = uid;
    let timed_out = matches!(ending, Ending::TimedOut);
    let out_of_memory =
        matches!(ending, Ending::Exited(_)) && report.as_ref().is_some_and(|r| r.out_of_memory);
    // A lost lease: someone else owns this task now; there is nothing of ours to
    // record, and the message is theirs to delete.
    let (state, reason) = how_it_ended(task, ending, report.as_ref(), &mut attempt)?;
    attempt.reason = reason.clone();
    let (state, reason, escalation) =
        next_step(task, state, reason, &attempt, timed_out, out_of_memory);
    // Decided before the success is recorded, and said in it, so the stream leaves
    // the successor child to this worker (a job that cannot be read now: no chain).
    let next = match (state, task.index) {
        (TaskState::Succeeded, Some(index)) => super::chain::successor(ctx, &task.job_id, index)
            .await
            .unwrap_or_default(),
        _ => None,
    };
    attempt.followed_by = next.as_ref().map(|m| m.job_id.clone());
    let record_by = batchplane::domain::lease::takeover_after(*lease.borrow(), ctx.lease);
    record(
        ctx,
        task,
        (state, reason.as_deref()),
        &attempt,
        escalation.as_ref(),
        record_by,
    )
    .await
    .then_some((state, next))
}

/// A task claimed ahead waits for its slot: `None` once the gate opens, or how it ended
/// without a process (cancelled, let go of, or its lease not renewed in time).
async fn wait_for_slot(
    ctx: &Ctx,
    gate: oneshot::Receiver<()>,
    kill: &mut watch::Receiver<Option<Kill>>,
    lease: &mut watch::Receiver<i64>,
) -> Option<Ending> {
    tokio::select! {
        _ = fence_due(lease, ctx.lease) => Some(Ending::Killed(Kill::Fenced)),
        opened = gate => match opened {
            Ok(()) => None,
            // The worker let go of it without starting it: the lease lapses and the
            // task comes back.
            Err(_) => Some(Ending::Killed(Kill::LeaseLost)),
        },
        reason = kill_requested(kill) => Some(Ending::Killed(reason)),
    }
}

/// How long the shim has to kill its task on SIGTERM before the worker kills it all.
const SHIM_GRACE: Duration = Duration::from_secs(5);

/// Stop an attempt: SIGTERM to the shim, which kills every process of the task (its
/// cgroup's and its descendants, `setsid` ones too) and exits; if it has not within
/// `grace`, SIGKILL to its process group and to everything in its cgroup.
async fn stop(ctx: &Ctx, child: &mut tokio::process::Child, grace: Duration) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let Some(pid) = child.id() else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = child.wait().await;
    }
    if let Some(group) = crate::memory::TaskGroup::of_shim(&ctx.memory, pid) {
        group.kill_all();
    }
}

/// Start the task's process under the shim, as a uid of its own, and wait for it to
/// end, to time out, or to be stopped; then remove its working directory. Also the uid
/// it ran as.
async fn run_process(
    ctx: &Ctx,
    task: &TaskRecord,
    files: &AttemptFiles,
    kill: &mut watch::Receiver<Option<Kill>>,
    lease: &mut watch::Receiver<i64>,
) -> (Ending, Option<u32>) {
    // The uid is this attempt's until the lease drops, after every process is gone.
    let uid_lease = match ctx.isolation.lease() {
        Ok(lease) => lease,
        Err(e) => {
            return (
                Ending::SpawnFailed(format!("no uid to run the task as: {e}")),
                None,
            )
        }
    };
    let uid = uid_lease.as_ref().map(|l| l.uid);
    // The fence is in place before the process exists.
    if let Err(e) = write_fence(&files.fence, *lease.borrow_and_update(), ctx.lease) {
        return (Ending::SpawnFailed(e), uid);
    }
    let mut child = match spawn(ctx, task, files, uid) {
        Ok(child) => child,
        Err(e) => return (Ending::SpawnFailed(e), uid),
    };
    let timeout = sleep_or_forever(task.timeout_seconds.map(Duration::from_secs));
    tokio::pin!(timeout);
    let fence_grace = batchplane::domain::lease::fence_margin(ctx.lease) / 2;
    let mut fence_view = lease.clone();
    let ending = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(s) => Ending::Exited(s),
                Err(e) => Ending::SpawnFailed(format!("waiting for the task failed: {e}")),
            },
            _ = &mut timeout => {
                stop(ctx, &mut child, SHIM_GRACE).await;
                break Ending::TimedOut;
            }
            reason = kill_requested(kill) => {
                stop(ctx, &mut child, SHIM_GRACE).await;
                break Ending::Killed(reason);
            }
            // The shim fences by the same deadline; this is the worker's own hand on it.
            _ = fence_due(&mut fence_view, ctx.lease) => {
                tracing::warn!(task_id = %task.task_id, attempt = task.attempt, "lease not renewed in time; stopping the attempt");
                stop(ctx, &mut child, fence_grace).await;
                break Ending::Killed(Kill::Fenced);
            }
            Ok(()) = lease.changed() => {
                if let Err(e) = write_fence(&files.fence, *lease.borrow_and_update(), ctx.lease) {
                    tracing::warn!(error = %e, "moving the attempt's fence failed; it keeps the old deadline");
                }
            }
        }
    };
    let _ = std::fs::remove_file(&files.fence);
    if let Err(e) = std::fs::remove_dir_all(&files.workdir) {
        tracing::warn!(error = %e, dir = %files.workdir.display(), "removing an attempt's working directory failed");
    }
    drop(uid_lease);
    (ending, uid)
}

/// The attempt as recorded: who ran it, when, where its output is, what it reserved and
/// what the shim measured.
fn attempt_record(
    ctx: &Ctx,
    task: &TaskRecord,
    started_at: i64,
    files: &AttemptFiles,
    report: Option<&Report>,
) -> AttemptRecord {
    let mut attempt = AttemptRecord {
        attempt: task.attempt,
        worker_id: ctx.worker_id.clone(),
        started_at,
        finished_at: Some(now_ms()),
        stdout: Some(format!("file://{}", files.stdout.display())),
        stderr: Some(format!("file://{}", files.stderr.display())),
        tier: (!task.tiers.is_empty()).then_some(task.tier),
        cpu_milli: Some(task.cpu_milli),
        memory_mib: Some(task.memory_mib),
        ..Default::default()
    };
    if let Some(r) = report {
        r.record_into(&mut attempt);
    }
    attempt
}

/// The state and reason an attempt ended in (its exit code or signal into `attempt`);
/// `None` when the lease was lost and the task is no longer this worker's.
fn how_it_ended(
    task: &TaskRecord,
    ending: Ending,
    report: Option<&Report>,
    attempt: &mut AttemptRecord,
) -> Option<(TaskState, Option<String>)> {
    let out_of_memory = report.is_some_and(|r| r.out_of_memory);
    if report.is_some_and(|r| r.fenced) {
        return None;
    }
    Some(match ending {
        // Someone else owns the task now, or may soon: nothing of ours to record.
        Ending::Killed(Kill::LeaseLost | Kill::Fenced) => return None,
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
            if let Some(r) = report {
                attempt.exit_code = r.exit_code;
                attempt.signal = r.signal;
            }
            (TaskState::Failed, Some(OUT_OF_MEMORY.to_string()))
        }
        Ending::Exited(shim_status) => match report {
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
    })
}

/// Write the attempt's end; whether it was recorded. A write that fails for a reason
/// that may pass (throttled, no answer) is tried again with backoff until `by` (ms),
/// when another worker may take the task over; a write whose answer was lost is found
/// recorded by the store. `false`: the lease was lost first, or the write kept failing,
/// and the task runs again after the lease lapses.
async fn record(
    ctx: &Ctx,
    task: &TaskRecord,
    (state, reason): (TaskState, Option<&str>),
    attempt: &AttemptRecord,
    escalation: Option<&Escalation>,
    by: i64,
) -> bool {
    let mut backoff =
        batchplane::aws::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match ctx
            .store
            .finish_attempt(task, &ctx.worker_id, state, reason, attempt, escalation)
            .await
        {
            Ok(true) => {
                tracing::info!(job_id = %task.job_id, task_id = %task.task_id, state = %state, tries = backoff.tries() + 1, "task finished");
                return true;
            }
            Ok(false) => {
                tracing::warn!(task_id = %task.task_id, "lease lost before the result was recorded");
                return false;
            }
            Err(e) if e.is_transient() => {
                let left = by - now_ms();
                let wait = backoff
                    .next_wait()
                    .filter(|w| (w.as_millis() as i64) < left);
                let Some(wait) = wait else {
                    tracing::error!(error = %e, task_id = %task.task_id, tries = backoff.tries() + 1,
                        "recording the result kept failing until the lease ran out; the task will run again");
                    return false;
                };
                tracing::warn!(error = %e, task_id = %task.task_id, "recording the result failed; trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                tracing::error!(error = %e, task_id = %task.task_id, "recording the result failed; the lease will lapse and the task run again");
                return false;
            }
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
                // The next tier's pool is the same team's, in the same container.
                let pool = match WorkerPool::parse(task.pool_name()) {
                    Some(p) => p.of_shape(Some(shape)),
                    None => WorkerPool::for_task(&task.queue, "default", &task.tiers, tier),
                }
                .name();
                let why = format!(
                    "{OUT_OF_MEMORY} on tier {} of {n} ({} MiB); moving to tier {} of {n} ({}) in pool {pool}",
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
        exit_code: attempt.container_exit_code(),
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
    files: &AttemptFiles,
    uid: Option<u32>,
) -> Result<tokio::process::Child, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (dir, stdout, stderr, report) = (&files.dir, &files.stdout, &files.stderr, &files.report);
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    // Others may pass through (to their own working directory) but not list it; the
    // logs are the worker's alone, written through the descriptors the task inherits.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    let private = |path: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))
    };
    let (out, err) = (private(stdout)?, private(stderr)?);
    crate::isolation::make_workdir(&files.workdir, uid)?;
    let mut cmd = tokio::process::Command::new(&ctx.exe);
    cmd.arg("exec")
        .arg("--report")
        .arg(report)
        .arg("--fence-file")
        .arg(&files.fence);
    if task.memory_mib > 0 {
        cmd.arg("--memory-limit-mib")
            .arg(task.memory_mib.to_string());
    }
    // A cgroup of its own even without a limit: it is how every process of the task
    // is found and killed.
    if task.memory_mib > 0 || ctx.memory != crate::memory::Mechanism::Poll {
        cmd.arg("--memory-enforcement").arg(ctx.memory.to_arg());
    }
    if let Some(uid) = uid {
        cmd.arg("--uid").arg(uid.to_string());
    }
    cmd.arg("--workdir")
        .arg(&files.workdir)
        .arg("--")
        .args(&task.command)
        .env_clear()
        .envs(super::environment::task_environment(
            task,
            ctx.api_url.as_deref(),
            Some(&files.workdir),
        ))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| format!("could not start the task shim: {e}"))
}
