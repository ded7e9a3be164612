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

    /// Whether the state machine allows `self → next`. The store's condition expressions
    /// enforce the same rule; this is the one place it is written down.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        match (self, next) {
            (Pending, Runnable | Failed | Cancelled) => true,
            // A claim: straight to RUNNING, or STARTING where a later stage wants it.
            (Runnable, Starting | Running | Cancelled | Failed) => true,
            (Starting, Running | Succeeded | Failed | Cancelled) => true,
            (Running, Succeeded | Failed | Cancelled) => true,
            // A lost lease: the task is claimed again by another worker, attempt + 1.
            (Running, Running) => true,
            _ => false,
        }
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
