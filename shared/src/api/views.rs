//! What the API returns: jobs, tasks, attempts and team usage as JSON views of the
//! records.

use crate::domain::{AttemptRecord, JobRecord, JobState, TaskCounts, TaskRecord, TaskState};
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// `uid` (the attempt ran as a uid of its own) or `none`.
    pub isolation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
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
    /// Memory, CPU and GPU over the attempt's life (attempts of five seconds or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_series: Option<crate::domain::usage_series::UsageSeries>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Where its output is in CloudWatch Logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<String>,
    /// What of its output was not shipped there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_shipping: Option<String>,
    /// The image and job role it asked for, and whether the worker ran it in them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_enforcement: Option<String>,
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

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(super) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(super) fn attempt_view(a: &AttemptRecord) -> AttemptView {
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
        isolation: a.isolation.clone(),
        uid: a.uid,
        cpu_user_seconds: a.cpu_user_seconds,
        cpu_system_seconds: a.cpu_system_seconds,
        max_rss_kib: a.max_rss_kib,
        avg_rss_kib: a.avg_rss_kib,
        peak_rss_kib: a.peak_rss_kib,
        wall_seconds: a.finished_at.map(|f| (f - a.started_at) as f64 / 1000.0),
        gpu_peak_memory_mib: a.gpu_peak_memory_mib,
        gpu_utilization_percent: a.gpu_utilization_percent,
        usage_series: a.usage_series.clone(),
        stdout: a.stdout.clone(),
        stderr: a.stderr.clone(),
        log_group: a.log_group.clone(),
        log_stream: a.log_stream.clone(),
        log_shipping: a.log_shipping.clone(),
        image: a.image.clone(),
        job_role_arn: a.job_role_arn.clone(),
        image_enforcement: a.image_enforcement.clone(),
    }
}

/// The user tasks behind a list that may name barriers (`~…`): shown as the barrier
/// itself would be confusing, so the view lists the barrier ids' owners instead.
pub(super) fn user_edges(ids: &[String]) -> Vec<String> {
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

pub fn job_view(job: &JobRecord, counts: &TaskCounts) -> JobView {
    let counts = &job.shown_counts(&crate::domain::batch::child_counts(job, counts));
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
