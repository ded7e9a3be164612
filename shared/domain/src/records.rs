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
    /// How a caller stopped the job, if one did (AWS's `isCancelled`/`isTerminated`).
    pub stopped_by: Option<Stop>,
    /// The reason the caller gave when stopping it: the job's reason once it closes
    /// (an array waits for its running children first).
    pub stop_reason: Option<String>,
    /// When the job was first asked to stop (ms): once no worker can still hold a stale
    /// view of it, a stopped job whose tasks have all stopped running may close.
    pub stopped_at: Option<i64>,
    /// A DAG job whose tasks are still being written: none of them is sent to a queue
    /// until the submission commits (clears this), so a submission that fails part-way
    /// runs nothing.
    pub uncommitted: bool,
    /// For an array (or single AWS-style) job: its template and rules.
    pub array: Option<super::batch::ArrayJob>,
    /// Gating dependencies met so far (array jobs).
    pub gates_met: u32,
    /// Children handed to the queue so far by the dispatch cursor (array jobs).
    pub dispatched: u64,
    /// Jobs waiting on this one, encoded as [`super::batch::Dependent`].
    pub dependents: Vec<String>,
    /// Who hears about the job besides its API: task events, a Step Functions token.
    pub notify: Notify,
    /// For a job opened for pages: what its pages have done.
    pub paging: Paging,
    /// For a DAG job: how many of its ready tasks may wait in SQS at once (its release
    /// window, see [`JobRecord::release_window`]). `None` for arrays, and for DAG jobs
    /// stored before windows existed (their tasks are sent as they become ready).
    pub dag_window: Option<u32>,
}

/// A job opened for pages (`open: true` in its spec): its tasks come in pages, each
/// stored under a name its sender gives, and nothing runs before its commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Paging {
    /// Opened for pages: it takes pages until it commits.
    pub open: bool,
    /// When its last page was stored (ms): an open job idle too long is abandoned.
    pub last_page_at: Option<i64>,
    /// Some page's tasks depend on tasks of an earlier page. Those edges are items of
    /// their own (a stored task is not rewritten), which whoever follows a task's
    /// dependents reads beside its `dependents`.
    pub page_edges: bool,
}

impl JobRecord {
    /// A new job of `name` for `team` on `queue`, SUBMITTED, with nothing in it yet:
    /// callers set what differs with struct update syntax (`..JobRecord::new(…)`).
    pub fn new(job_id: &str, name: &str, team: &str, queue: &str) -> JobRecord {
        JobRecord {
            job_id: job_id.to_string(),
            name: name.to_string(),
            team: team.to_string(),
            queue: queue.to_string(),
            state: JobState::Submitted,
            reason: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            total_tasks: 0,
            shard_count: 1,
            cancel_requested: false,
            stopped_by: None,
            stop_reason: None,
            stopped_at: None,
            uncommitted: false,
            array: None,
            gates_met: 0,
            dispatched: 0,
            dependents: Vec::new(),
            notify: Notify::default(),
            paging: Paging::default(),
            dag_window: None,
        }
    }

    /// How many of this job's ready tasks may wait in SQS at once, where tasks become
    /// ready in any order (a DAG's, an N_TO_N array's children): the rest are held in the
    /// table and sent as workers take the waiting ones, so no job's backlog sits in
    /// front of another's. `None` where the job is paced otherwise (an array's dispatch
    /// cursor, a SEQUENTIAL array's one child at a time), not at all, or need not be: a
    /// job of no more tasks than its window can never have more waiting, so it pays
    /// nothing for one (its total is read at its commit: tasks a running job adds later
    /// do not make it windowed).
    pub fn release_window(&self) -> Option<u32> {
        let window = match &self.array {
            Some(a) if !a.n_to_n.is_empty() && !a.sequential => Some(a.window.max(1)),
            Some(_) => None,
            None => self.dag_window.map(|w| w.max(1)),
        }?;
        (self.total_tasks > u64::from(window)).then_some(window)
    }

    /// A cancelled job (not an array: those close by [`super::batch::stopped_array_ends`])
    /// closes once no task of it is leased and no worker can still start one, though its
    /// cancel walk, an UpdateItem per waiting task, may have minutes of a big job left:
    /// what has not started never will. Workers re-read a job at most
    /// [`JOB_VIEW_FRESH_FOR_MS`] old before every claim, so [`CANCEL_SETTLES_AFTER_MS`]
    /// after the cancel a claim that read the job before it has been counted.
    pub fn closes_cancelled(&self, counts: &super::TaskCounts, now: i64) -> bool {
        self.array.is_none()
            && self.cancel_requested
            && !self.state.is_terminal()
            && self
                .stopped_at
                .is_some_and(|at| now - at >= CANCEL_SETTLES_AFTER_MS)
            && !counts.any_running()
    }

    /// A task's state as readers see it: a task still waiting in a job that closed
    /// CANCELLED (before its walk wrote it) is CANCELLED.
    pub fn shown_task_state(&self, state: TaskState) -> TaskState {
        let waiting = matches!(state, TaskState::Pending | TaskState::Runnable);
        if self.state == JobState::Cancelled && waiting {
            TaskState::Cancelled
        } else {
            state
        }
    }

    /// The job's counts as readers see them ([`JobRecord::shown_task_state`]).
    pub fn shown_counts(&self, counts: &super::TaskCounts) -> super::TaskCounts {
        let mut shown = counts.clone();
        for st in [TaskState::Pending, TaskState::Runnable] {
            let n = counts.get(st) as i64;
            if self.shown_task_state(st) != st {
                shown.add(st, -n);
                shown.add(self.shown_task_state(st), n);
            }
        }
        shown
    }
}

/// How old a worker's view of a job may be when it decides to claim one of its tasks.
pub const JOB_VIEW_FRESH_FOR_MS: i64 = 2_000;
/// How long after a cancel a job may close with tasks not yet walked: a worker's
/// stale view, its claim, and the claim's stream record counted.
pub const CANCEL_SETTLES_AFTER_MS: i64 = JOB_VIEW_FRESH_FOR_MS + 3_000;

/// How a caller stopped a job: CancelJob (what has not started never runs) or
/// TerminateJob (what runs is killed too); the native cancel is a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    Cancel,
    Terminate,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Cancel => "cancel",
            Stop::Terminate => "terminate",
        }
    }

    pub fn parse(s: &str) -> Option<Stop> {
        match s {
            "cancel" => Some(Stop::Cancel),
            "terminate" => Some(Stop::Terminate),
            _ => None,
        }
    }
}

/// What a job asks to be told about, beyond its own state changes (always published).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Publish every task state change too ("Task State Change").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub task_events: bool,
    /// A Step Functions task token (`.waitForTaskToken`): SendTaskSuccess with the job's
    /// summary when it succeeds, SendTaskFailure when it fails, heartbeats while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
}

impl Notify {
    pub fn is_empty(&self) -> bool {
        !self.task_events && self.task_token.is_none()
    }
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
    /// The tier this attempt ran on (tasks with tiers) and what it reserved.
    pub tier: Option<u32>,
    pub cpu_milli: Option<u32>,
    pub memory_mib: Option<u64>,
    /// How the worker held the attempt to its memory: `cgroup-v2`, `cgroup-v1` or
    /// `rlimit+rss-poll`.
    pub memory_enforcement: Option<String>,
    /// How the attempt was kept from its neighbours: `uid` (its own uid, below) or
    /// `none` (the worker could not switch uid: it ran as the worker's user).
    pub isolation: Option<String>,
    pub uid: Option<u32>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub max_rss_kib: Option<u64>,
    /// Resident memory of the task's processes sampled while it ran (every 100 ms).
    pub avg_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// GPU figures for the task's own processes; absent where the worker has no GPU.
    pub gpu_peak_memory_mib: Option<u64>,
    pub gpu_utilization_percent: Option<f64>,
    /// Memory, CPU and GPU over the attempt's life, for attempts long enough to chart
    /// (see [`crate::usage_series`]).
    pub usage_series: Option<crate::usage_series::UsageSeries>,
    /// Where this attempt's stdout and stderr are (`file://…` locally; S3 or CloudWatch
    /// Logs URIs in AWS).
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// The CloudWatch Logs group and stream the attempt's output was shipped to.
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
    /// What of its output did not reach CloudWatch Logs, and why (the local files
    /// above still have all of it).
    pub log_shipping: Option<String>,
    /// The image and job role the task asked to run in (absent: the deployment's
    /// worker image), and whether the worker ran it there:
    /// [`IMAGE_ENFORCED`](crate::containers::IMAGE_ENFORCED) or
    /// [`IMAGE_NOT_ENFORCED`](crate::containers::IMAGE_NOT_ENFORCED).
    pub image: Option<String>,
    pub job_role_arn: Option<String>,
    pub image_enforcement: Option<String>,
    /// The N_TO_N successor job whose child of the same index this attempt's worker took
    /// on next, itself, carried by this task's message (depth first): the stream does
    /// not release that child.
    pub followed_by: Option<String>,
}

impl AttemptRecord {
    /// The exit code as a container runtime reports it: the process's own, or 128 plus
    /// the signal that killed it (137 for SIGKILL, an out-of-memory kill among them).
    pub fn container_exit_code(&self) -> Option<i32> {
        self.exit_code.or_else(|| self.signal.map(|s| 128 + s))
    }
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
    /// The current tier's CPU and memory (the task's own without tiers).
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: u32,
    /// Worker configs from small to large, and the one the task is on.
    pub tiers: Vec<super::tiers::Tier>,
    pub tier: u32,
    /// The worker pool (and queue) the task is sent to; the job's queue when absent.
    pub pool: Option<String>,
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
    /// Set by the write that made a task RUNNABLE when another writer sends its
    /// message (the fanout releasing dependents; a submission's commit walk for the
    /// tasks it wrote ready), so the stream's record of that write does not send it.
    pub enqueued_on_release: bool,
    /// An N_TO_N child claimed by the worker that ran its predecessor child, straight
    /// after it, with no message: its claim took no slot of its job's release window and
    /// gives none back. A later claim (a retry, through a message) clears it.
    pub chained: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub attempts: Vec<AttemptRecord>,
    /// For a child of an array job: its index (its item is created by its claim).
    pub index: Option<u32>,
    /// For a child: where its output goes and its job definition (from the job's
    /// template, not stored on the item). `None` for a DAG's task: the defaults.
    pub log: Option<super::logs::LogConfig>,
    pub definition: Option<String>,
    /// The page of an open job that wrote the task, if one did.
    pub page: Option<String>,
}

impl TaskRecord {
    /// Whether every dependency has been released into this task.
    pub fn all_deps_done(&self) -> bool {
        self.deps.iter().all(|d| self.deps_done.contains(d))
    }

    /// The pool (and queue) whose workers run this task now.
    pub fn pool_name(&self) -> &str {
        self.pool.as_deref().unwrap_or(&self.queue)
    }
}

/// Requested versus used resources, summed over measured attempts: the "requested vs
/// used" table that shows how much of what tasks reserve they actually use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub attempts: f64,
    pub cpu_seconds_requested: f64,
    pub cpu_seconds_used: f64,
    pub memory_mib_seconds_requested: f64,
    pub memory_mib_seconds_used: f64,
}

impl Usage {
    /// Field names as stored (`u_…` attributes of count items).
    pub const FIELDS: [&'static str; 5] = [
        "attempts",
        "cpu_seconds_requested",
        "cpu_seconds_used",
        "memory_mib_seconds_requested",
        "memory_mib_seconds_used",
    ];

    /// What one finished attempt of a task asking for `cpu_milli` and `memory_mib` used.
    /// An attempt that recorded what it reserved (its tier) is measured against that.
    pub fn of_attempt(cpu_milli: u32, memory_mib: u64, a: &AttemptRecord) -> Option<Usage> {
        let wall = (a.finished_at? - a.started_at).max(0) as f64 / 1000.0;
        let cpu_milli = a.cpu_milli.unwrap_or(cpu_milli);
        let memory_mib = a.memory_mib.unwrap_or(memory_mib);
        Some(Usage {
            attempts: 1.0,
            cpu_seconds_requested: f64::from(cpu_milli) / 1000.0 * wall,
            cpu_seconds_used: a.cpu_user_seconds.unwrap_or(0.0)
                + a.cpu_system_seconds.unwrap_or(0.0),
            memory_mib_seconds_requested: memory_mib as f64 * wall,
            memory_mib_seconds_used: a.avg_rss_kib.unwrap_or(0) as f64 / 1024.0 * wall,
        })
    }

    pub fn values(&self) -> [f64; 5] {
        [
            self.attempts,
            self.cpu_seconds_requested,
            self.cpu_seconds_used,
            self.memory_mib_seconds_requested,
            self.memory_mib_seconds_used,
        ]
    }

    pub fn from_values(v: [f64; 5]) -> Usage {
        Usage {
            attempts: v[0],
            cpu_seconds_requested: v[1],
            cpu_seconds_used: v[2],
            memory_mib_seconds_requested: v[3],
            memory_mib_seconds_used: v[4],
        }
    }

    pub fn add(&mut self, other: &Usage) {
        let (a, b) = (self.values(), other.values());
        *self = Usage::from_values(std::array::from_fn(|i| a[i] + b[i]));
    }

    pub fn is_empty(&self) -> bool {
        self.attempts == 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_an_attempt_is_reserved_times_wall_time_versus_measured() {
        let a = AttemptRecord {
            started_at: 1_000,
            finished_at: Some(3_000),
            cpu_user_seconds: Some(0.5),
            cpu_system_seconds: Some(0.25),
            avg_rss_kib: Some(256 * 1024),
            ..Default::default()
        };
        let u = Usage::of_attempt(2000, 1024, &a).unwrap();
        assert_eq!(u.cpu_seconds_requested, 4.0);
        assert_eq!(u.cpu_seconds_used, 0.75);
        assert_eq!(u.memory_mib_seconds_requested, 2048.0);
        assert_eq!(u.memory_mib_seconds_used, 512.0);
        let mut sum = u.clone();
        sum.add(&u);
        assert_eq!(sum.attempts, 2.0);
        assert!(
            Usage::of_attempt(1000, 1, &AttemptRecord::default()).is_none(),
            "unfinished"
        );
    }

    #[test]
    fn a_cancelled_job_closes_once_nothing_runs_and_no_stale_claim_can_come() {
        let mut job = JobRecord {
            state: JobState::Pending,
            cancel_requested: true,
            stopped_at: Some(10_000),
            total_tasks: 100,
            ..JobRecord::new("j", "big", "t", "q")
        };
        let mut counts = super::super::TaskCounts::default();
        counts.add(TaskState::Pending, 90);
        counts.add(TaskState::Runnable, 5);
        counts.add(TaskState::Succeeded, 5);
        let settled = 10_000 + CANCEL_SETTLES_AFTER_MS;
        assert!(job.closes_cancelled(&counts, settled));
        assert!(
            !job.closes_cancelled(&counts, settled - 1),
            "a worker may still claim on a view from before the cancel"
        );
        counts.add(TaskState::Running, 1);
        assert!(!job.closes_cancelled(&counts, settled), "a task still runs");
        counts.add(TaskState::Running, -1);
        counts.add(TaskState::Starting, 1);
        assert!(
            !job.closes_cancelled(&counts, settled),
            "a task is starting"
        );
        counts.add(TaskState::Starting, -1);
        let mut array = job.clone();
        array.array = Some(
            serde_json::from_value(serde_json::json!({
                "template": {"command": ["true"], "cpu_milli": 1000, "memory_mib": 64},
                "array_size": 4,
                "window": 1,
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(
            !array.closes_cancelled(&counts, settled),
            "arrays have their own rule"
        );
        let mut never_asked = job.clone();
        never_asked.cancel_requested = false;
        assert!(!never_asked.closes_cancelled(&counts, settled));
        let mut undated = job.clone();
        undated.stopped_at = None;
        assert!(
            !undated.closes_cancelled(&counts, settled),
            "waits for its walk"
        );

        // Before it closes its tasks are what they are; after, the waiting ones are
        // cancelled, and its counts say so.
        assert_eq!(job.shown_task_state(TaskState::Pending), TaskState::Pending);
        job.state = JobState::Cancelled;
        for (st, shown) in [
            (TaskState::Pending, TaskState::Cancelled),
            (TaskState::Runnable, TaskState::Cancelled),
            (TaskState::Running, TaskState::Running),
            (TaskState::Succeeded, TaskState::Succeeded),
        ] {
            assert_eq!(job.shown_task_state(st), shown, "{st}");
        }
        let shown = job.shown_counts(&counts);
        assert_eq!(shown.get(TaskState::Cancelled), 95);
        assert_eq!(
            shown.get(TaskState::Pending) + shown.get(TaskState::Runnable),
            0
        );
        assert_eq!(shown.get(TaskState::Succeeded), 5);
    }
}
