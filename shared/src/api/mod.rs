//! The operations of Batchplane's HTTP API, independent of HTTP: submit a job, look at
//! it and its tasks, add tasks while it runs, cancel it. The api Lambda's router maps
//! requests onto these and [`ApiError`]s onto status codes.
//!
//! | file | what it holds |
//! |---|---|
//! | `jobs` | submit, look at and cancel a job |
//! | `tasks` | list a job's tasks, look at one, add tasks |
//! | `pages` | a job too big for one request: opened, sent in pages, committed |
//! | `teams` | a team's usage |
//! | `explain` | why a job or task is not running |
//! | `fit` | refusing a task no worker of its pool can hold |
//! | `logs` | a task's output, read back from CloudWatch Logs |
//! | `views` | what the API returns, as JSON |
//! | `access` | who the caller is, what it may do, and the grants |
//! | `error` | the API's errors |

pub mod access;
mod error;
pub mod explain;
mod fit;
mod graph;
mod jobs;
mod listing;
mod logs;
mod pages;
mod tasks;
mod teams;
mod views;

pub use access::Need;
pub use error::{ApiError, ErrorKind};
pub use graph::{
    CountHistoryView, GraphAttempt, GraphTask, GraphView, GroupEdgeView, GroupView, GroupsView,
    GRAPH_TASK_LIMIT, HISTORY_POINTS,
};
use jobs::group_edges_of;
pub use jobs::{pool_uses, Added, PoolUses, Submitted};
pub use listing::{JobListQuery, JobListView, JOB_LIST_MAX};
pub use logs::{LogLine, LogPage};
pub use pages::{Committed, PageAdded};
pub use views::{
    job_view, task_view, ArrayView, AttemptView, JobView, TaskListView, TaskSummary, TaskView,
    TeamDayView, TeamUsageView,
};

use crate::queue::Queues;
use crate::store::Store;

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
    /// The shortest attempt timeout a job may ask for.
    pub min_attempt_seconds: u64,
    /// Principals (or ARN patterns) that are admins by the deployment's configuration.
    pub admins: Vec<String>,
    /// Where the HTTP layer reads who the caller is.
    pub identity: crate::config::IdentitySource,
    /// Where EKS is asked about clusters being registered (`None`: AWS's own).
    pub eks_endpoint: Option<String>,
    /// Where tasks' output is read back from (`None`: this deployment ships none).
    pub logs: Option<aws_sdk_cloudwatchlogs::Client>,
    /// The job roles tasks may name (see [`crate::config::Config::job_roles`]).
    pub job_roles: Option<std::collections::BTreeSet<String>>,
}

impl Service {
    /// The service over `store` and `queues`, with the rest from `config`.
    pub fn new(store: Store, queues: Queues, config: &crate::config::Config) -> Service {
        Service {
            store,
            queues,
            max_attempts: config.max_attempts,
            job_window: config.job_window,
            reservation_lease: config.reservation_lease,
            min_attempt_seconds: config.min_attempt_seconds,
            admins: config.admins.clone(),
            identity: config.identity,
            eks_endpoint: config.endpoints.eks.clone(),
            logs: None,
            job_roles: config.job_roles.clone(),
        }
    }

    /// A job role tasks may name here: one with a service account for its pods, where
    /// the deployment lists them; `field` names it in the refusal.
    pub fn check_job_role(&self, role: Option<&str>, field: &str) -> Result<(), ApiError> {
        match (role, &self.job_roles) {
            (Some(r), Some(roles)) if !roles.contains(r) => Err(ApiError::bad_request(
                format!(
                    "{field}: {r} is not a job role of this deployment: no service account runs its pods (JobRoleServiceAccounts maps each job role to one)"
                ),
                serde_json::json!({"field": field, "job_role_arn": r}),
            )),
            _ => Ok(()),
        }
    }
}

/// Names as a message lists them: quoted, comma-separated.
pub(crate) fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
