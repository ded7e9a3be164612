//! What the store keeps about jobs, tasks and attempts, as plain data. The API shows
//! these; the store maps them to and from DynamoDB items.

use super::plan::TaskKind;
use super::state::{JobState, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job's own record (not its tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    pub team: String,
    pub queue: String,
    /// As stored: SUBMITTED, PENDING, or final. Views derive the rest from counts.
    pub state: JobState,
    pub reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// User tasks in the job (not barriers), including tasks added while it runs.
    pub total_tasks: u64,
    pub shard_count: u32,
    pub cancel_requested: bool,
}

/// One run of a task on a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub max_rss_kib: Option<u64>,
    /// Resident memory of the task's processes sampled while it ran (every 100 ms).
    pub avg_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// GPU figures for the task's own processes; absent where the worker has no GPU.
    pub gpu_peak_memory_mib: Option<u64>,
    pub gpu_utilization_percent: Option<f64>,
    /// Where this attempt's stdout and stderr are (`file://…` locally; S3 or CloudWatch
    /// Logs URIs in AWS).
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub job_id: String,
    pub task_id: String,
    pub shard: u32,
    pub kind: TaskKind,
    pub queue: String,
    pub state: TaskState,
    pub reason: Option<String>,
    /// Attempts started so far (0 until the first claim).
    pub attempt: u32,
    pub max_attempts: u32,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub timeout_seconds: Option<u64>,
    pub retry: super::retry::RetryStrategy,
    pub deps: Vec<String>,
    pub deps_done: Vec<String>,
    pub dependents: Vec<String>,
    /// For a task that failed because a dependency did: the user task at the root.
    pub failed_dependency: Option<String>,
    pub worker_id: Option<String>,
    pub lease_expires: Option<i64>,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub attempts: Vec<AttemptRecord>,
}

impl TaskRecord {
    /// Whether every dependency has been released into this task.
    pub fn all_deps_done(&self) -> bool {
        self.deps.iter().all(|d| self.deps_done.contains(d))
    }
}
