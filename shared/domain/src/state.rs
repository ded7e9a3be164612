//! Task and job states (AWS Batch's names) and the transitions a task may take.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A task's place in its life. Every change is one conditional write in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting on dependencies.
    Pending,
    /// All dependencies succeeded; queued for a worker.
    Runnable,
    /// Claimed by a worker that is starting it (reserved: today a claim goes straight to RUNNING).
    Starting,
    /// A worker holds the lease and the process runs.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Runnable,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Runnable => "RUNNABLE",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Failed => "FAILED",
            TaskState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The states a task is still open in (not finished), in the order of its life.
    pub const OPEN: [TaskState; 4] = [
        TaskState::Pending,
        TaskState::Runnable,
        TaskState::Starting,
        TaskState::Running,
    ];

    /// The states in which a worker holds the task under a lease.
    pub const LEASED: [TaskState; 2] = [TaskState::Starting, TaskState::Running];

    /// Whether some transition of the table ([`TaskTransition`]) takes `self` to `next`.
    pub fn can_become(self, next: TaskState) -> bool {
        TaskTransition::ALL
            .iter()
            .any(|t| t.from().contains(&self) && t.to().contains(&next))
    }
}

/// Every way a task's state changes: the one transition table. Each of the store's
/// conditional writes names its transition and takes the states it may start from
/// here, so the rule is written once; [`TaskState::can_become`] is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskTransition {
    /// Its last dependency succeeded (or it had none): the task is queued.
    Release,
    /// A dependency failed (the task ends FAILED) or was cancelled (CANCELLED: only a
    /// job's cancel or terminate cancels a task), so the task never runs.
    FailDependent,
    /// A worker claims it as its next attempt, under a lease. (An array child's first
    /// claim creates its item RUNNING.)
    Claim,
    /// A worker takes over a task whose lease lapsed, as the next attempt.
    TakeOver,
    /// A lapsed lease ends the task instead of a take-over: it was the task's last
    /// attempt (FAILED), or the task was cancelled (CANCELLED).
    ExhaustLeases,
    /// The holder of the lease reports how the attempt ended: the task ends, or goes back
    /// to RUNNABLE to be tried again (retry strategy, or the next tier after an OOM).
    Finish,
    /// A barrier (a task with no command) completes the moment it becomes runnable.
    PassBarrier,
    /// Its job was cancelled before the task started.
    Cancel,
    /// No worker would take it: its message was dead-lettered again after a redrive.
    Undeliverable,
}

impl TaskTransition {
    pub const ALL: [TaskTransition; 9] = [
        TaskTransition::Release,
        TaskTransition::FailDependent,
        TaskTransition::Claim,
        TaskTransition::TakeOver,
        TaskTransition::ExhaustLeases,
        TaskTransition::Finish,
        TaskTransition::PassBarrier,
        TaskTransition::Cancel,
        TaskTransition::Undeliverable,
    ];

    /// The states the task may be in for this transition to happen.
    pub fn from(self) -> &'static [TaskState] {
        use TaskState::*;
        match self {
            TaskTransition::Release | TaskTransition::FailDependent => &[Pending],
            TaskTransition::Claim | TaskTransition::PassBarrier | TaskTransition::Undeliverable => {
                &[Runnable]
            }
            TaskTransition::TakeOver | TaskTransition::ExhaustLeases | TaskTransition::Finish => {
                &[Running]
            }
            TaskTransition::Cancel => &[Pending, Runnable],
        }
    }

    /// The states it may leave the task in.
    pub fn to(self) -> &'static [TaskState] {
        use TaskState::*;
        match self {
            TaskTransition::Release => &[Runnable],
            TaskTransition::FailDependent => &[Failed, Cancelled],
            TaskTransition::Undeliverable => &[Failed],
            TaskTransition::ExhaustLeases => &[Failed, Cancelled],
            TaskTransition::Claim | TaskTransition::TakeOver => &[Running],
            TaskTransition::Finish => &[Succeeded, Failed, Cancelled, Runnable],
            TaskTransition::PassBarrier => &[Succeeded],
            TaskTransition::Cancel => &[Cancelled],
        }
    }

    /// Whether this transition may end in `to`.
    pub fn allows(self, to: TaskState) -> bool {
        self.to().contains(&to)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskTransition::Release => "release",
            TaskTransition::FailDependent => "fail-dependent",
            TaskTransition::Claim => "claim",
            TaskTransition::TakeOver => "take-over",
            TaskTransition::ExhaustLeases => "exhaust-leases",
            TaskTransition::Finish => "finish",
            TaskTransition::PassBarrier => "pass-barrier",
            TaskTransition::Cancel => "cancel",
            TaskTransition::Undeliverable => "undeliverable",
        }
    }
}

impl fmt::Display for TaskTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown task state {s:?}: expected one of PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLED"
                )
            })
    }
}

/// A job's state: SUBMITTED while its tasks are being written, then derived from its task
/// counts until it ends SUCCEEDED, FAILED or CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Submitted,
    Pending,
    Runnable,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "SUBMITTED",
            JobState::Pending => "PENDING",
            JobState::Runnable => "RUNNABLE",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The state of a job that is not finished, from its counts of tasks by state.
    pub fn from_counts(counts: &TaskCounts) -> JobState {
        if counts.get(TaskState::Running) + counts.get(TaskState::Starting) > 0
            || counts.get(TaskState::Succeeded) + counts.get(TaskState::Failed) > 0
        {
            JobState::Running
        } else if counts.get(TaskState::Runnable) > 0 {
            JobState::Runnable
        } else {
            JobState::Pending
        }
    }

    /// The final state once every task is terminal, or `None` while some are not.
    pub fn final_state(
        counts: &TaskCounts,
        total: u64,
        cancel_requested: bool,
    ) -> Option<JobState> {
        if counts.terminal() < total {
            return None;
        }
        Some(if cancel_requested {
            JobState::Cancelled
        } else if counts.get(TaskState::Succeeded) >= total {
            JobState::Succeeded
        } else {
            JobState::Failed
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JobState::Submitted,
            JobState::Pending,
            JobState::Runnable,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// Counts of tasks by state. Signed, because counter deltas from the stream are summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts(pub std::collections::BTreeMap<TaskState, i64>);

impl TaskCounts {
    pub fn get(&self, state: TaskState) -> u64 {
        self.0.get(&state).copied().unwrap_or(0).max(0) as u64
    }
    pub fn add(&mut self, state: TaskState, delta: i64) {
        *self.0.entry(state).or_insert(0) += delta;
    }
    pub fn merge(&mut self, other: &TaskCounts) {
        for (st, n) in &other.0 {
            self.add(*st, *n);
        }
    }
    pub fn terminal(&self) -> u64 {
        self.get(TaskState::Succeeded)
            + self.get(TaskState::Failed)
            + self.get(TaskState::Cancelled)
    }
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|n| *n == 0)
    }
    /// Whether any task is claimed or running: what a stopped array waits for.
    pub fn any_running(&self) -> bool {
        self.get(TaskState::Starting) + self.get(TaskState::Running) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_aws_batch_order() {
        use TaskState::*;
        assert!(Pending.can_become(Runnable));
        assert!(Runnable.can_become(Running));
        assert!(Running.can_become(Succeeded));
        assert!(Running.can_become(Running), "a lost lease is re-claimed");
        assert!(!Succeeded.can_become(Running));
        assert!(!Pending.can_become(Running), "a task never skips the queue");
        assert!(!Failed.can_become(Runnable));
        assert!(!Cancelled.can_become(Runnable));
        assert!(
            Runnable.can_become(Succeeded),
            "a barrier passes as it is released"
        );
        assert!(
            Running.can_become(Runnable),
            "a failed attempt is tried again"
        );
    }

    #[test]
    fn no_transition_leaves_a_finished_task() {
        for t in TaskTransition::ALL {
            for from in t.from() {
                assert!(!from.is_terminal(), "{t} starts from {from}");
            }
            assert!(!t.to().is_empty(), "{t} goes nowhere");
        }
        for done in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for next in TaskState::ALL {
                assert!(!done.can_become(next), "{done} -> {next}");
            }
        }
    }

    #[test]
    fn open_states_are_the_non_terminal_ones() {
        let open: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(open, TaskState::OPEN);
        assert!(TaskState::LEASED
            .iter()
            .all(|s| TaskState::OPEN.contains(s)));
    }

    #[test]
    fn states_round_trip_through_strings() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
        }
        assert_eq!("failed".parse::<TaskState>().unwrap(), TaskState::Failed);
        assert!("DONE".parse::<TaskState>().unwrap_err().contains("DONE"));
    }

    #[test]
    fn job_state_from_counts() {
        let mut c = TaskCounts::default();
        c.add(TaskState::Pending, 3);
        assert_eq!(JobState::from_counts(&c), JobState::Pending);
        c.add(TaskState::Runnable, 1);
        assert_eq!(JobState::from_counts(&c), JobState::Runnable);
        c.add(TaskState::Runnable, -1);
        c.add(TaskState::Succeeded, 1);
        assert_eq!(JobState::from_counts(&c), JobState::Running);
        assert_eq!(JobState::final_state(&c, 4, false), None);
    }

    #[test]
    fn final_state_needs_every_task_terminal() {
        let mut c = TaskCounts::default();
        c.add(TaskState::Succeeded, 3);
        assert_eq!(
            JobState::final_state(&c, 3, false),
            Some(JobState::Succeeded)
        );
        c.add(TaskState::Failed, 1);
        assert_eq!(JobState::final_state(&c, 4, false), Some(JobState::Failed));
        assert_eq!(
            JobState::final_state(&c, 4, true),
            Some(JobState::Cancelled)
        );
        assert_eq!(JobState::final_state(&c, 5, false), None);
    }
}
