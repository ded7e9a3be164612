//! "Why is this not running?": a job's or a task's blockers, each read from recorded
//! state — dependency states, gates, the dispatch window, the pool's queue depth, the
//! pool's live workers (their records), the job queue's state — never guessed.
//!
//! Team quotas and capacity-limited launch configs are recorded by the placement and
//! autoscaler functions; their reasons join here through [`Service::placement_reasons`].

use crate::api::{ApiError, Need, Service};
use crate::domain::access::Access;
use crate::domain::tiers::WorkerPool;
use crate::domain::{JobRecord, JobState, TaskKind, TaskRecord, TaskState};
use crate::store::now_ms;
use crate::store::registry::ResourceKind;
use serde::Serialize;
use serde_json::{json, Value};

/// Workers not heard from for this long are not counted as live.
const LIVE_FOR_MS: i64 = 60_000;

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub state: String,
    pub reasons: Vec<Reason>,
}

/// One thing that holds the job or task back (or says what it is doing).
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    /// Stable for programs: `WaitingOnDependencies`, `WaitingOnJobs`, `Queued`,
    /// `NoWorkerPool`, `NoWorkerLargeEnough`, `QueueDisabled`, `WaitingForWindow`,
    /// `Running`, `Finished`, `Cancelling`; later `TeamOverQuota`, `CapacityLimited`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

fn reason(code: &'static str, message: String, details: Value) -> Reason {
    Reason {
        code,
        message,
        details,
    }
}

impl Service {
    /// Why a task is where it is.
    pub async fn explain_task(
        &self,
        who: &Access,
        job_id: &str,
        task_id: &str,
    ) -> Result<Explanation, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let stored = self
            .store
            .get_task(job_id, job.shard_count, task_id)
            .await?
            .filter(|t| t.kind == TaskKind::Command);
        let mut reasons = Vec::new();
        let state = match stored {
            Some(mut task) => {
                if let Some(a) = &job.array {
                    crate::domain::batch::apply_template(&mut task, a);
                }
                let shown = job.shown_task_state(task.state);
                if shown != task.state {
                    // Its job closed CANCELLED before the cancel's walk wrote it.
                    task.state = shown;
                    task.reason = Some("job cancelled".into());
                }
                self.task_reasons(&job, &task, &mut reasons).await?;
                task.state.to_string()
            }
            None => {
                // An array child that no worker has claimed yet has no item.
                let index = job
                    .array
                    .as_ref()
                    .and_then(|a| task_id.parse::<u32>().ok().filter(|i| *i < a.size()));
                let Some(index) = index else {
                    return Err(ApiError::not_found(format!(
                        "no task {task_id:?} in job {job_id}"
                    )));
                };
                let state = crate::domain::batch::unborn_child_state(&job);
                self.job_reasons(&job, &mut reasons).await?;
                if job.release_window().is_some() {
                    if state == TaskState::Runnable {
                        reasons.extend(self.window_reason(&job).await?);
                    }
                } else if state == TaskState::Runnable && u64::from(index) >= job.dispatched {
                    reasons.push(reason(
                        "WaitingForWindow",
                        format!(
                            "child {index} waits for the job's window: {} of {} children have been queued so far",
                            job.dispatched,
                            job.total_tasks
                        ),
                        json!({"dispatched": job.dispatched}),
                    ));
                }
                state.to_string()
            }
        };
        Ok(Explanation {
            job_id: job_id.to_string(),
            task_id: Some(task_id.to_string()),
            state,
            reasons,
        })
    }

    /// A windowed job holding ready tasks in the table until slots free (which of them
    /// are held is not looked up: they are kept in bundles, not task by task).
    async fn window_reason(&self, job: &JobRecord) -> Result<Option<Reason>, ApiError> {
        let Some(start) = job.release_window() else {
            return Ok(None);
        };
        let slots = self.store.slots(&job.job_id).await?;
        let window = slots.window(start);
        if slots.held <= 0 {
            return Ok(None);
        }
        Ok(Some(reason(
            "WaitingForWindow",
            format!(
                "the job's release window is full: at most {window} of its tasks wait in SQS at once, and {} more are ready and held behind them (this one is queued or among them)",
                slots.held
            ),
            json!({"window": window, "held": slots.held, "free": slots.free}),
        )))
    }

    /// Why a job is where it is: its gates and window, its queue, and its pools.
    pub async fn explain_job(&self, who: &Access, job_id: &str) -> Result<Explanation, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let view = self.get_job(who, job_id).await?;
        let mut reasons = Vec::new();
        self.job_reasons(&job, &mut reasons).await?;
        if !job.state.is_terminal() {
            // The open states but STARTING, which no task is in (a claim goes straight
            // to RUNNING).
            let waiting: Vec<String> = TaskState::OPEN
                .iter()
                .filter(|s| **s != TaskState::Starting)
                .filter_map(|s| {
                    let n = view.task_counts.get(s.as_str()).copied().unwrap_or(0);
                    (n > 0).then(|| format!("{n} {s}"))
                })
                .collect();
            if !waiting.is_empty() {
                reasons.push(reason(
                    "Tasks",
                    format!(
                        "tasks: {} (`batchplane explain {job_id} TASK` for one of them)",
                        waiting.join(", ")
                    ),
                    json!(view.task_counts),
                ));
            }
            if view.task_counts.get("RUNNABLE").copied().unwrap_or(0) > 0 {
                let first = match &job.array {
                    Some(a) => a.template.pool(&job.queue, &job.team, 0),
                    None => WorkerPool::new(&job.queue, &job.team, None),
                };
                self.pool_reasons(&first, 0, 0, 0, &mut reasons).await?;
                reasons.extend(self.placement_reasons(&job.team, &first).await?);
            }
        }
        Ok(Explanation {
            job_id: job_id.to_string(),
            task_id: None,
            state: view.state.to_string(),
            reasons,
        })
    }

    /// Reasons that hold the whole job: it ended, it waits on other jobs, its job
    /// queue is disabled.
    async fn job_reasons(&self, job: &JobRecord, out: &mut Vec<Reason>) -> Result<(), ApiError> {
        if job.state.is_terminal() {
            out.push(reason(
                "Finished",
                format!(
                    "the job ended {}{}",
                    job.state,
                    job.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                Value::Null,
            ));
            return Ok(());
        }
        if job.cancel_requested {
            out.push(reason(
                "Cancelling",
                "the job is being cancelled".into(),
                Value::Null,
            ));
        }
        if let Some(a) = &job.array {
            if job.gates_met < a.gate_count {
                let mut waiting = Vec::new();
                for d in self.store.job_dependencies(&job.job_id).await? {
                    let state = match self.store.get_job(&d.job_id).await? {
                        Some(j) => j.state.to_string(),
                        None => "missing".into(),
                    };
                    if state != JobState::Succeeded.as_str() {
                        waiting.push(format!("{} ({state})", d.key()));
                    }
                }
                out.push(reason(
                    "WaitingOnJobs",
                    format!(
                        "{} of {} job dependencies met; waiting on {}",
                        job.gates_met,
                        a.gate_count,
                        waiting.join(", ")
                    ),
                    json!({"waiting_on": waiting}),
                ));
            }
        }
        if let Some(q) = self
            .store
            .get_resource(ResourceKind::JobQueue, &job.queue)
            .await?
        {
            if q["state"] != "ENABLED" {
                out.push(reason(
                    "QueueDisabled",
                    format!(
                        "job queue {} is {}: its jobs' children are not started",
                        job.queue,
                        q["state"].as_str().unwrap_or("DISABLED")
                    ),
                    Value::Null,
                ));
            }
        }
        Ok(())
    }

    async fn task_reasons(
        &self,
        job: &JobRecord,
        task: &TaskRecord,
        out: &mut Vec<Reason>,
    ) -> Result<(), ApiError> {
        if let Some(a) = task
            .attempts
            .iter()
            .rev()
            .find(|a| a.isolation.as_deref() == Some("none"))
        {
            out.push(reason(
                "NotIsolated",
                format!(
                    "attempt {} ran as its worker's own user, not a uid of its own (the worker is not root, or its isolation is off): it could see and signal the tasks beside it",
                    a.attempt
                ),
                json!({"attempt": a.attempt, "worker_id": a.worker_id}),
            ));
        }
        if let Some(a) = task.attempts.iter().rev().find(|a| {
            a.image_enforcement.as_deref() == Some(crate::domain::containers::IMAGE_NOT_ENFORCED)
        }) {
            out.push(reason(
                "ImageNotEnforced",
                format!(
                    "attempt {} asked for image {}{} but ran on worker {}'s host: the worker has no container runtime (the local stack), so the image was not enforced{}",
                    a.attempt,
                    a.image.as_deref().unwrap_or("?"),
                    a.job_role_arn
                        .as_deref()
                        .map(|r| format!(" and job role {r}"))
                        .unwrap_or_default(),
                    a.worker_id,
                    if a.job_role_arn.is_some() {
                        " and the role was not assumed"
                    } else {
                        ""
                    }
                ),
                json!({"attempt": a.attempt, "image": a.image, "job_role_arn": a.job_role_arn, "worker_id": a.worker_id}),
            ));
        }
        match task.state {
            TaskState::Pending => {
                let deps = self
                    .store
                    .get_tasks(&job.job_id, job.shard_count, &task.deps)
                    .await?;
                let mut waiting: Vec<String> = task
                    .deps
                    .iter()
                    .filter(|d| !task.deps_done.contains(d))
                    .map(|d| {
                        let st = deps
                            .get(d)
                            .map_or("missing".into(), |t| t.state.to_string());
                        format!("{d} ({st})")
                    })
                    .collect();
                waiting.sort();
                if !waiting.is_empty() {
                    out.push(reason(
                        "WaitingOnDependencies",
                        format!(
                            "waiting on {} of {} dependencies: {}",
                            waiting.len(),
                            task.deps.len(),
                            waiting.join(", ")
                        ),
                        json!({"waiting_on": waiting}),
                    ));
                }
                self.job_reasons(job, out).await?;
            }
            TaskState::Runnable => {
                self.job_reasons(job, out).await?;
                out.extend(self.window_reason(job).await?);
                let pool = WorkerPool::parse(task.pool_name()).unwrap_or_else(|| {
                    WorkerPool::for_task(&task.queue, &job.team, &task.tiers, task.tier)
                });
                self.pool_reasons(&pool, task.cpu_milli, task.memory_mib, task.gpu, out)
                    .await?;
                out.extend(self.placement_reasons(&job.team, &pool).await?);
            }
            TaskState::Starting | TaskState::Running => out.push(reason(
                "Running",
                format!(
                    "attempt {} is running on worker {} (lease until {})",
                    task.attempt,
                    task.worker_id.as_deref().unwrap_or("?"),
                    task.lease_expires
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                ),
                Value::Null,
            )),
            _ => out.push(reason(
                "Finished",
                format!(
                    "the task ended {}{}",
                    task.state,
                    task.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                Value::Null,
            )),
        }
        Ok(())
    }

    /// The pool a runnable task waits in: how deep its queue is, and whether a live
    /// worker serves it that is big enough for the task.
    async fn pool_reasons(
        &self,
        pool: &WorkerPool,
        cpu_milli: u32,
        memory_mib: u64,
        gpu: u32,
        out: &mut Vec<Reason>,
    ) -> Result<(), ApiError> {
        let name = pool.name();
        let (visible, in_flight) = match self.queues.url(&name).await {
            Ok(url) => self.queues.depth(&url).await?,
            Err(_) => (0, 0),
        };
        out.push(reason(
            "Queued",
            format!("queued in pool {name}: about {visible} messages waiting, {in_flight} taken by workers"),
            json!({"pool": name, "waiting": visible, "in_flight": in_flight}),
        ));
        let workers = self
            .store
            .workers(&format!("{name}#"), now_ms() - LIVE_FOR_MS)
            .await?;
        let shape = pool
            .shape
            .map(|s| {
                format!(
                    " (a taskhost with --tier {}:{}:{})",
                    s.cpu(),
                    s.memory_mib,
                    s.gpu
                )
            })
            .unwrap_or_default();
        if workers.is_empty() {
            out.push(reason(
                "NoWorkerPool",
                format!("no live worker serves pool {name}{shape}"),
                json!({"pool": name}),
            ));
            return Ok(());
        }
        let fits = workers
            .iter()
            .filter(|w| w.cpu_milli >= cpu_milli && w.memory_mib >= memory_mib && w.gpu >= gpu)
            .count();
        if fits == 0 {
            out.push(reason(
                "NoWorkerLargeEnough",
                format!(
                    "{} live workers serve pool {name}, none with {} vCPU, {memory_mib} MiB, {gpu} GPU",
                    workers.len(),
                    f64::from(cpu_milli) / 1000.0
                ),
                json!({"pool": name}),
            ));
        } else {
            let running: u32 = workers.iter().map(|w| w.running).sum();
            out.push(reason(
                "Workers",
                format!(
                    "{} live workers serve pool {name} ({running} tasks running on them)",
                    workers.len()
                ),
                json!({"pool": name, "workers": workers.len(), "running": running}),
            ));
        }
        Ok(())
    }

    /// What placement and the autoscaler have recorded that holds new workers back: the
    /// launch configs marked capacity-limited, and the team's last placement refusal for
    /// the pool (until a grant clears it).
    pub async fn placement_reasons(
        &self,
        team: &str,
        pool: &WorkerPool,
    ) -> Result<Vec<Reason>, ApiError> {
        let name = pool.name();
        let now = now_ms();
        let mut out: Vec<Reason> = self
            .store
            .capacity_marks(now)
            .await?
            .into_iter()
            .map(|m| {
                reason(
                    "CapacityLimited",
                    format!(
                        "launch config {} is capacity-limited for {} s more: {}",
                        m.launch_config,
                        (m.until - now).max(0) / 1000,
                        m.reason
                    ),
                    json!({"launch_config": m.launch_config, "until": m.until}),
                )
            })
            .collect();
        let record = self.store.team(team).await?;
        let Some((code, why, at)) = crate::placement::refusal_for(record.as_ref(), &name) else {
            return Ok(out);
        };
        let when = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.push(reason(
            "PlacementRefused",
            format!(
                "no new worker for pool {name}: placement refused team {team}: {why} (at {when})"
            ),
            json!({"pool": name, "team": team, "code": code, "at": when}),
        ));
        Ok(out)
    }
}
