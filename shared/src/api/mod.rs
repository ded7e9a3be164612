//! The operations of Batchplane's HTTP API, independent of HTTP: submit a job, look at
//! it and its tasks, add tasks while it runs, cancel it. The api Lambda's router maps
//! requests onto these and [`ApiError`]s onto status codes.

pub mod explain;

use crate::domain::ids::{is_valid_job_id, is_valid_task_id, new_job_id, shard_count_for};
use crate::domain::spec::{parse_submission, Submission};
use crate::domain::{
    parse_task_list, plan_addition, plan_job, validate_addition, AttemptRecord, JobRecord,
    JobState, SpecError, TaskCounts, TaskKind, TaskRecord, TaskState, MAX_EDGES,
};
use crate::queue::{QueueError, Queues};
use crate::store::{now_ms, Store, StoreError};
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// An error as the API returns it: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>, details: Value) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details,
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(404, "NotFound", what, Value::Null)
    }
    pub fn bad_request(message: impl Into<String>, details: Value) -> Self {
        ApiError::new(400, "BadRequest", message, details)
    }
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "details": self.details}})
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::new(400, e.code, e.message, e.details)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store error");
        match e {
            StoreError::Throttled { .. } => ApiError::new(
                503,
                "Throttled",
                "the job store is busy; retry",
                Value::Null,
            ),
            other => ApiError::new(500, "StoreError", other.to_string(), Value::Null),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NoSuchQueue { queue } => ApiError::new(
                400,
                "UnknownQueue",
                format!("field `queue`: no queue named {queue:?}"),
                json!({"field": "queue"}),
            ),
            other => ApiError::new(500, "QueueError", other.to_string(), Value::Null),
        }
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub name: String,
    pub team: String,
    pub queue: String,
    pub state: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub total_tasks: u64,
    pub task_counts: BTreeMap<String, u64>,
    /// Single and array jobs: children (absent for a single job), the job definition's
    /// ARN, whether children run one at a time. Their children are tasks `0`, `1`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayView>,
    /// Requested versus used CPU and memory over the attempts measured so far.
    pub usage: crate::domain::Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArrayView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_definition: Option<String>,
    pub sequential: bool,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub job_id: String,
    pub task_id: String,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The current tier's CPU and memory (the task's own without tiers).
    pub cpu: f64,
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gpu: u32,
    /// Worker configs from small to large, and the one the task is on (0-based).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<crate::domain::tiers::Tier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// The worker pool the task is (or was last) queued in.
    pub pool: String,
    pub timeout_seconds: Option<u64>,
    pub retry_strategy: crate::domain::retry::RetryStrategy,
    pub depends_on: Vec<String>,
    /// Each dependency's state now (`~…` ids are internal barriers joining wide edges).
    pub dependency_states: BTreeMap<String, TaskState>,
    pub dependents: Vec<String>,
    pub attempt: u32,
    pub worker_id: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// The tier the attempt ran on, what it reserved, and how its memory was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    pub memory_enforcement: Option<String>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub max_rss_kib: Option<u64>,
    pub avg_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    pub wall_seconds: Option<f64>,
    /// Absent (not zero) where the worker has no GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_peak_memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_utilization_percent: Option<f64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskListView {
    pub tasks: Vec<TaskSummary>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub attempt: u32,
    pub exit_code: Option<i32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn attempt_view(a: &AttemptRecord) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        worker_id: a.worker_id.clone(),
        started_at: time(a.started_at),
        finished_at: a.finished_at.map(time),
        exit_code: a.exit_code,
        signal: a.signal,
        reason: a.reason.clone(),
        tier: a.tier,
        cpu: a.cpu_milli.map(|c| f64::from(c) / 1000.0),
        memory_mib: a.memory_mib,
        memory_enforcement: a.memory_enforcement.clone(),
        cpu_user_seconds: a.cpu_user_seconds,
        cpu_system_seconds: a.cpu_system_seconds,
        max_rss_kib: a.max_rss_kib,
        avg_rss_kib: a.avg_rss_kib,
        peak_rss_kib: a.peak_rss_kib,
        wall_seconds: a.finished_at.map(|f| (f - a.started_at) as f64 / 1000.0),
        gpu_peak_memory_mib: a.gpu_peak_memory_mib,
        gpu_utilization_percent: a.gpu_utilization_percent,
        stdout: a.stdout.clone(),
        stderr: a.stderr.clone(),
    }
}

/// The user tasks behind a list that may name barriers (`~…`): shown as the barrier
/// itself would be confusing, so the view lists the barrier ids' owners instead.
fn user_edges(ids: &[String]) -> Vec<String> {
    ids.to_vec()
}

pub fn task_view(t: &TaskRecord) -> TaskView {
    TaskView {
        job_id: t.job_id.clone(),
        task_id: t.task_id.clone(),
        state: t.state,
        status_reason: t.reason.clone(),
        command: t.command.clone(),
        env: t.env.clone(),
        cpu: f64::from(t.cpu_milli) / 1000.0,
        memory_mib: t.memory_mib,
        gpu: t.gpu,
        tiers: t.tiers.clone(),
        tier: (!t.tiers.is_empty()).then_some(t.tier),
        pool: t.pool_name().to_string(),
        timeout_seconds: t.timeout_seconds,
        retry_strategy: t.retry.clone(),
        depends_on: user_edges(&t.deps),
        dependency_states: BTreeMap::new(),
        dependents: user_edges(&t.dependents),
        attempt: t.attempt,
        worker_id: t.worker_id.clone(),
        created_at: time(t.created_at),
        started_at: t.started_at.map(time),
        finished_at: t.finished_at.map(time),
        exit_code: t.exit_code,
        attempts: t.attempts.iter().map(attempt_view).collect(),
    }
}

/// The API's operations over the store and the queues.
#[derive(Debug)]
pub struct Service {
    pub store: Store,
    pub queues: Queues,
    /// Attempts a task gets when its worker vanishes.
    pub max_attempts: u32,
    /// Children of an array job queued at once (before its share's weight).
    pub job_window: u32,
    /// How long a worker's placement holds quota without a renewal.
    pub reservation_lease: std::time::Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub job_id: String,
    /// False when an `Idempotency-Key` named a job submitted before.
    #[serde(skip)]
    pub created: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub job_id: String,
    pub added: usize,
}

impl Service {
    /// Make sure the queues of the worker pools these tiers use exist, before anything
    /// of the job is written.
    pub async fn ensure_pools<'a>(
        &self,
        queue: &str,
        tiers: impl IntoIterator<Item = &'a crate::domain::tiers::Tier>,
    ) -> Result<(), ApiError> {
        for t in tiers {
            self.queues
                .ensure_pool(&crate::domain::tiers::WorkerPool::new(queue, Some(*t)))
                .await?;
        }
        Ok(())
    }

    /// Claim `key` for `job_id`; the job it already named, if another submission claimed
    /// it first.
    async fn claim_idempotency(
        &self,
        team: &str,
        key: Option<&str>,
        job_id: &str,
    ) -> Result<Option<Submitted>, ApiError> {
        let Some(k) = key else { return Ok(None) };
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::bad_request(
                "header Idempotency-Key: must be 1 to 256 characters",
                json!({"header": "Idempotency-Key"}),
            ));
        }
        Ok(self
            .store
            .claim_idempotency_key(team, k, job_id)
            .await?
            .map(|existing| Submitted {
                job_id: existing,
                created: false,
            }))
    }

    /// Validate, then store a job: the job item (SUBMITTED), its tasks in batches, then
    /// the job marked PENDING. A spec that fails validation writes nothing; a store
    /// failure part-way marks the job FAILED with the cause.
    pub async fn submit_job(
        &self,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ApiError> {
        let spec = match parse_submission(body)? {
            Submission::Dag(spec) => spec,
            Submission::Array(spec) => {
                let job_id = new_job_id(now_ms());
                if let Some(existing) = self
                    .claim_idempotency(&spec.team, idempotency_key, &job_id)
                    .await?
                {
                    return Ok(existing);
                }
                let job_id = self.submit_native_array(job_id, *spec).await?;
                return Ok(Submitted {
                    job_id,
                    created: true,
                });
            }
        };
        self.queues.url(&spec.queue).await?;
        let shapes: std::collections::BTreeSet<crate::domain::tiers::Tier> = spec
            .tasks
            .iter()
            .flat_map(|t| t.tiers.iter().copied())
            .collect();
        self.ensure_pools(&spec.queue, &shapes).await?;
        let now = now_ms();
        let job_id = new_job_id(now);
        if let Some(existing) = self
            .claim_idempotency(&spec.team, idempotency_key, &job_id)
            .await?
        {
            return Ok(existing);
        }
        let plan = plan_job(&spec.tasks);
        let shard_count = shard_count_for(plan.len());
        let job = JobRecord {
            job_id: job_id.clone(),
            name: spec.name.clone(),
            team: spec.team.clone(),
            queue: spec.queue.clone(),
            state: JobState::Submitted,
            reason: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            total_tasks: spec.tasks.len() as u64,
            shard_count,
            cancel_requested: false,
            array: None,
            gates_met: 0,
            dispatched: 0,
            dependents: vec![],
            notify: crate::domain::Notify {
                task_events: spec.task_events,
                task_token: spec.task_token.clone(),
            },
        };
        self.store.put_job(&job).await?;
        if let Err(e) = self
            .store
            .write_tasks(&job_id, shard_count, &spec.queue, self.max_attempts, &plan)
            .await
        {
            let reason = format!("submission failed while writing tasks: {e}");
            let _ = self
                .store
                .set_job_state(
                    &job_id,
                    &[JobState::Submitted],
                    JobState::Failed,
                    Some(&reason),
                )
                .await;
            return Err(e.into());
        }
        self.store
            .set_job_state(&job_id, &[JobState::Submitted], JobState::Pending, None)
            .await?;
        tracing::info!(job_id, name = %spec.name, tasks = spec.tasks.len(), "job submitted");
        Ok(Submitted {
            job_id,
            created: true,
        })
    }

    pub(crate) async fn job(&self, job_id: &str) -> Result<JobRecord, ApiError> {
        if !is_valid_job_id(job_id) {
            return Err(ApiError::not_found(format!("no job {job_id:?}")));
        }
        self.store
            .get_job(job_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job {job_id:?}")))
    }

    pub async fn get_job(&self, job_id: &str) -> Result<JobView, ApiError> {
        let job = self.job(job_id).await?;
        let (counts, usage, _) = self.store.job_counts(job_id).await?;
        let mut view = job_view(&job, &counts);
        view.usage = usage;
        Ok(view)
    }

    pub async fn list_tasks(
        &self,
        job_id: &str,
        state: Option<&str>,
        limit: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<TaskListView, ApiError> {
        let job = self.job(job_id).await?;
        let state = match state {
            Some(s) => Some(s.parse::<TaskState>().map_err(|e| {
                ApiError::bad_request(
                    format!("query parameter `state`: {e}"),
                    json!({"parameter": "state"}),
                )
            })?),
            None => None,
        };
        let limit = limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(
                format!("query parameter `limit`: {limit} must be 1 to 1000"),
                json!({"parameter": "limit"}),
            ));
        }
        let start = match next_token {
            Some(t) => Some(decode_token(t).ok_or_else(|| {
                ApiError::bad_request(
                    "query parameter `next_token`: not a token this API gave out",
                    json!({"parameter": "next_token"}),
                )
            })?),
            None => None,
        };
        let page = self
            .store
            .list_tasks(job_id, job.shard_count, state, limit, start)
            .await?;
        Ok(TaskListView {
            tasks: page
                .tasks
                .iter()
                .map(|t| TaskSummary {
                    task_id: t.task_id.clone(),
                    state: t.state,
                    status_reason: t.reason.clone(),
                    attempt: t.attempt,
                    exit_code: t.exit_code,
                })
                .collect(),
            next_token: page.next.map(|(shard, sk)| encode_token(shard, &sk)),
        })
    }

    pub async fn get_task(&self, job_id: &str, task_id: &str) -> Result<TaskView, ApiError> {
        let job = self.job(job_id).await?;
        if !is_valid_task_id(task_id) {
            return Err(ApiError::not_found(format!(
                "no task {task_id:?} in job {job_id}"
            )));
        }
        let mut task = self
            .store
            .get_task(job_id, job.shard_count, task_id)
            .await?
            .filter(|t| t.kind == TaskKind::Command)
            .ok_or_else(|| ApiError::not_found(format!("no task {task_id:?} in job {job_id}")))?;
        if let Some(a) = &job.array {
            crate::domain::batch::apply_template(&mut task, a);
        }
        let deps = self
            .store
            .get_tasks(job_id, job.shard_count, &task.deps)
            .await?;
        let mut view = task_view(&task);
        view.dependency_states = deps.into_iter().map(|(id, t)| (id, t.state)).collect();
        Ok(view)
    }

    /// Add tasks to a job that has not finished. New tasks may depend on any task of
    /// the job, finished or not; the job is not done until they are.
    pub async fn add_tasks(&self, job_id: &str, body: &str) -> Result<Added, ApiError> {
        let job = self.job(job_id).await?;
        let refuse = || {
            ApiError::new(
                409,
                "JobFinished",
                format!("job {job_id} has finished or is being cancelled; tasks cannot be added"),
                json!({"job_id": job_id}),
            )
        };
        if job.state.is_terminal() || job.cancel_requested {
            return Err(refuse());
        }
        let tasks = parse_task_list(body)?;
        // Which of the ids the new tasks use exist already?
        let new_ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let mut lookup: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for t in &tasks {
            for d in &t.depends_on {
                if !new_ids.contains(d.as_str()) {
                    lookup.push(d.clone());
                }
            }
        }
        lookup.retain(|id| is_valid_task_id(id));
        let found = self
            .store
            .get_tasks(job_id, job.shard_count, &lookup)
            .await?;
        let existing: HashSet<String> = found
            .values()
            .filter(|t| t.kind == TaskKind::Command)
            .map(|t| t.task_id.clone())
            .collect();
        validate_addition(&tasks, &existing)?;
        let shapes: std::collections::BTreeSet<crate::domain::tiers::Tier> =
            tasks.iter().flat_map(|t| t.tiers.iter().copied()).collect();
        self.ensure_pools(&job.queue, &shapes).await?;
        let (plan, edges) = plan_addition(&tasks);
        let mut fan_out: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &edges {
            *fan_out.entry(e.from.as_str()).or_default() += 1;
        }
        for (from, extra) in &fan_out {
            let have = found.get(*from).map(|t| t.dependents.len()).unwrap_or(0);
            if have + extra > MAX_EDGES {
                return Err(ApiError::bad_request(
                    format!(
                        "task {from:?} would have {} dependents; a task added later may have at most {MAX_EDGES} (add an intermediate task)",
                        have + extra
                    ),
                    json!({"task": from, "field": "depends_on"}),
                ));
            }
        }
        if !self.store.add_to_total(job_id, tasks.len() as u64).await? {
            return Err(refuse());
        }
        self.store
            .write_tasks(
                job_id,
                job.shard_count,
                &job.queue,
                self.max_attempts,
                &plan,
            )
            .await?;
        let written: std::collections::HashMap<&str, &crate::domain::PlannedTask> =
            plan.iter().map(|t| (t.id.as_str(), t)).collect();
        for e in &edges {
            if let Err(from) = self
                .store
                .append_dependent(job_id, job.shard_count, &e.from, &e.to)
                .await?
            {
                // The dependency finished before we could link it: act as its
                // stream record would have.
                let Some(planned) = written.get(e.to.as_str()) else {
                    continue;
                };
                let Some(to) = self
                    .store
                    .get_tasks(job_id, job.shard_count, std::slice::from_ref(&planned.id))
                    .await?
                    .remove(&planned.id)
                else {
                    continue;
                };
                match from.state {
                    TaskState::Succeeded => {
                        self.store.release_edge(&to, &e.from).await?;
                    }
                    TaskState::Cancelled => {
                        self.store
                            .fail_dependent(
                                &to,
                                &e.from,
                                &format!("dependency {} cancelled", e.from),
                            )
                            .await?;
                    }
                    _ => {
                        self.store
                            .fail_dependent(&to, &e.from, &format!("dependency {} failed", e.from))
                            .await?;
                    }
                }
            }
        }
        tracing::info!(job_id, added = tasks.len(), "tasks added");
        Ok(Added {
            job_id: job_id.to_string(),
            added: tasks.len(),
        })
    }

    /// Cancel a job: tasks not yet running end CANCELLED, running ones are flagged and
    /// killed by their workers within a heartbeat; the job ends CANCELLED.
    pub async fn cancel_job(&self, job_id: &str) -> Result<JobView, ApiError> {
        let job = self.job(job_id).await?;
        if job.state.is_terminal() {
            return Err(ApiError::new(
                409,
                "JobFinished",
                format!("job {job_id} already ended {}", job.state),
                json!({"job_id": job_id, "state": job.state}),
            ));
        }
        self.store.request_job_cancel(job_id).await?;
        let tasks = self.store.all_tasks(job_id, job.shard_count).await?;
        use futures::StreamExt;
        let open: Vec<TaskRecord> = tasks
            .into_iter()
            .filter(|t| !t.state.is_terminal())
            .collect();
        let results: Vec<Result<TaskState, StoreError>> = futures::stream::iter(open)
            .map(|t| {
                let store = self.store.clone();
                async move { store.cancel_task(&t).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        tracing::info!(job_id, "job cancel requested");
        self.get_job(job_id).await
    }
}

/// A team's requested versus used resources over its jobs that finished in a span of days.
#[derive(Debug, Clone, Serialize)]
pub struct TeamUsageView {
    pub team: String,
    /// The first day counted (UTC).
    pub since: String,
    pub jobs: u64,
    pub usage: crate::domain::Usage,
    pub days: Vec<TeamDayView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TeamDayView {
    pub date: String,
    pub jobs: u64,
    pub usage: crate::domain::Usage,
}

impl Service {
    /// A team's usage over the jobs that finished in the last `days` days (today too).
    pub async fn team_usage(&self, team: &str, days: u32) -> Result<TeamUsageView, ApiError> {
        if !crate::domain::ids::is_valid_task_id(team) || team.len() > 64 {
            return Err(ApiError::bad_request(
                format!("team {team:?} must be 1 to 64 of [A-Za-z0-9_.-]"),
                json!({"parameter": "team"}),
            ));
        }
        if !(1..=3660).contains(&days) {
            return Err(ApiError::bad_request(
                format!("query parameter `days`: {days} must be 1 to 3660"),
                json!({"parameter": "days"}),
            ));
        }
        let since = (chrono::Utc::now() - chrono::Duration::days(i64::from(days) - 1))
            .format("%Y-%m-%d")
            .to_string();
        let rows = self.store.team_usage(team, &since).await?;
        let mut usage = crate::domain::Usage::default();
        for r in &rows {
            usage.add(&r.usage);
        }
        Ok(TeamUsageView {
            team: team.to_string(),
            since,
            jobs: rows.iter().map(|r| r.jobs).sum(),
            usage,
            days: rows
                .into_iter()
                .map(|r| TeamDayView {
                    date: r.date,
                    jobs: r.jobs,
                    usage: r.usage,
                })
                .collect(),
        })
    }
}

pub fn job_view(job: &JobRecord, counts: &TaskCounts) -> JobView {
    let counts = &crate::domain::batch::child_counts(job, counts);
    let state = if job.state.is_terminal() || job.state == JobState::Submitted {
        job.state
    } else {
        JobState::from_counts(counts)
    };
    JobView {
        job_id: job.job_id.clone(),
        name: job.name.clone(),
        team: job.team.clone(),
        queue: job.queue.clone(),
        state,
        reason: job.reason.clone(),
        created_at: time(job.created_at),
        started_at: job.started_at.map(time),
        finished_at: job.finished_at.map(time),
        total_tasks: job.total_tasks,
        task_counts: TaskState::ALL
            .iter()
            .map(|st| (st.as_str().to_string(), counts.get(*st)))
            .collect(),
        array: job.array.as_ref().map(|a| ArrayView {
            size: a.array_size,
            job_definition: a.job_definition.clone(),
            sequential: a.sequential,
        }),
        usage: Default::default(),
    }
}

fn encode_token(shard: u32, sk: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{shard}:{sk}"))
}

fn decode_token(token: &str) -> Option<(u32, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (shard, sk) = text.split_once(':')?;
    if !sk.starts_with("T#") {
        return None;
    }
    Some((shard.parse().ok()?, sk.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = encode_token(3, "T#abc");
        assert_eq!(decode_token(&t), Some((3, "T#abc".to_string())));
        assert_eq!(decode_token("not-a-token"), None);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1:META");
        assert_eq!(decode_token(&forged), None);
    }

    #[test]
    fn api_error_body_shape() {
        let e = ApiError::bad_request("bad", json!({"field": "x"}));
        assert_eq!(e.body()["error"]["code"], "BadRequest");
        assert_eq!(e.body()["error"]["details"]["field"], "x");
    }
}
