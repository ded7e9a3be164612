//! `GET /v1/jobs/{id}/graph`: a job's tasks with their dependencies (barriers seen
//! through), states and attempts, and its critical path, for the console's DAG view
//! and timeline. Only for jobs small enough to draw task by task: a larger job answers
//! `drawn: false` and why, and is looked at by group (`GET /v1/jobs/{id}/groups`: its
//! counts and spans by group, kept by the fanout, and the edges between its groups,
//! kept at submission, so nothing reads its tasks) and task search.

use super::*;
use crate::domain::access::Access;
use crate::domain::graph::{critical_path, is_barrier, user_dependencies};
use crate::domain::group_graph::{group_critical_path, GroupSpan};
use crate::domain::TaskState;
use serde::Serialize;
use std::collections::BTreeMap;

/// The most tasks a job may have to be drawn task by task.
pub const GRAPH_TASK_LIMIT: u64 = 2_000;

#[derive(Debug, Clone, Serialize)]
pub struct GraphView {
    pub job_id: String,
    pub total_tasks: u64,
    pub drawn: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    pub tasks: Vec<GraphTask>,
    /// Task ids, first to last: the chain whose run times add up to the most.
    pub critical_path: Vec<String>,
}

/// A task in the graph. Times are milliseconds since the epoch.
#[derive(Debug, Clone, Serialize)]
pub struct GraphTask {
    pub id: String,
    pub state: TaskState,
    pub deps: Vec<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: Vec<GraphAttempt>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphAttempt {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// A job's counts by group (`domain::graph::group_of`), the edges between its groups
/// and the chain of groups that held it up (`domain::group_graph`).
#[derive(Debug, Clone, Serialize)]
pub struct GroupsView {
    pub job_id: String,
    pub total_tasks: u64,
    pub groups: Vec<GroupView>,
    /// The most groups a job's counts name; past them, tasks count in `~other`.
    pub groups_kept: usize,
    /// Some task of `to` depends on some task of `from`.
    pub edges: Vec<GroupEdgeView>,
    /// False when the job has more edges between groups than are kept.
    pub edges_complete: bool,
    /// The groups that held the job up, first to last.
    pub critical_path: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// The group, which is also the prefix its tasks' ids begin with.
    pub group: String,
    pub total: u64,
    pub task_counts: BTreeMap<String, u64>,
    /// When its first task started and its last one finished (ms since the epoch).
    pub first_started_at: Option<i64>,
    pub last_finished_at: Option<i64>,
}

/// The most points a job's history is given in.
pub const HISTORY_POINTS: usize = 200;

/// How many of a job's tasks were in each state, over its life: each point the counts
/// as of its time (ms since the epoch), the points at least `step_ms` apart.
#[derive(Debug, Clone, Serialize)]
pub struct CountHistoryView {
    pub job_id: String,
    pub step_ms: i64,
    pub points: Vec<crate::domain::count_history::CountsAt>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupEdgeView {
    pub from: String,
    pub to: String,
}

impl Service {
    pub async fn job_groups(&self, who: &Access, job_id: &str) -> Result<GroupsView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let (totals, _) = self.store.job_group_counts(job_id).await?;
        let edges = self.store.group_edges(job_id).await?;
        let now = self.store.now();
        let groups: Vec<GroupView> = totals
            .into_iter()
            .map(|(group, t)| {
                let shown = job.shown_counts(&t.counts);
                let task_counts: BTreeMap<String, u64> = TaskState::ALL
                    .iter()
                    .map(|st| (st.as_str().to_string(), shown.get(*st)))
                    .collect();
                GroupView {
                    group,
                    total: task_counts.values().sum(),
                    task_counts,
                    first_started_at: t.first_started_at,
                    last_finished_at: t.last_finished_at,
                }
            })
            .filter(|g| g.total > 0)
            .collect();
        // A group with a task running ends now; one all of whose tasks ended, at its
        // last finish; one that has not started, nowhere yet.
        let spans: BTreeMap<String, GroupSpan> = groups
            .iter()
            .map(|g| {
                let running = ["STARTING", "RUNNING"]
                    .iter()
                    .any(|st| g.task_counts.get(*st).copied().unwrap_or(0) > 0);
                let span = GroupSpan {
                    first_started_at: g.first_started_at,
                    ended_at: if running {
                        Some(now)
                    } else {
                        g.last_finished_at
                    },
                };
                (g.group.clone(), span)
            })
            .collect();
        Ok(GroupsView {
            job_id: job.job_id.clone(),
            total_tasks: job.total_tasks,
            critical_path: group_critical_path(&spans, &edges.edges),
            groups,
            groups_kept: crate::store::GROUPS_KEPT,
            edges: edges
                .edges
                .into_iter()
                .map(|(from, to)| GroupEdgeView { from, to })
                .collect(),
            edges_complete: edges.complete,
        })
    }

    /// A job's tasks by state over its whole life, in at most [`HISTORY_POINTS`] points.
    pub async fn job_history(
        &self,
        who: &Access,
        job_id: &str,
    ) -> Result<CountHistoryView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let history = self.store.job_count_history(job_id, job.created_at).await?;
        let points = history.cumulative(HISTORY_POINTS);
        Ok(CountHistoryView {
            job_id: job.job_id.clone(),
            step_ms: points
                .windows(2)
                .map(|w| w[1].at - w[0].at)
                .min()
                .unwrap_or(history.bucket_ms),
            points,
        })
    }

    pub async fn job_graph(&self, who: &Access, job_id: &str) -> Result<GraphView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let not_drawn = |why: String| GraphView {
            job_id: job.job_id.clone(),
            total_tasks: job.total_tasks,
            drawn: false,
            why_not: Some(why),
            tasks: Vec::new(),
            critical_path: Vec::new(),
        };
        if job.array.is_some() {
            return Ok(not_drawn(
                "a single or array job: its children do not depend on each other".into(),
            ));
        }
        if job.total_tasks > GRAPH_TASK_LIMIT {
            return Ok(not_drawn(format!(
                "{} tasks: jobs of up to {GRAPH_TASK_LIMIT} are drawn task by task",
                job.total_tasks
            )));
        }
        let all = self.store.all_tasks(job_id, job.shard_count).await?;
        let deps_of: BTreeMap<String, Vec<String>> = all
            .iter()
            .map(|t| (t.task_id.clone(), t.deps.clone()))
            .collect();
        let users = user_dependencies(&deps_of);
        let now = self.store.now();
        let weight: BTreeMap<String, i64> = all
            .iter()
            .filter(|t| !is_barrier(&t.task_id))
            .map(|t| {
                let ran = t.started_at.map_or(0, |s| t.finished_at.unwrap_or(now) - s);
                (t.task_id.clone(), ran)
            })
            .collect();
        let path = critical_path(&users, &weight);
        let tasks = all
            .iter()
            .filter(|t| !is_barrier(&t.task_id))
            .map(|t| GraphTask {
                id: t.task_id.clone(),
                state: job.shown_task_state(t.state),
                deps: users.get(&t.task_id).cloned().unwrap_or_default(),
                started_at: t.started_at,
                finished_at: t.finished_at,
                attempts: t
                    .attempts
                    .iter()
                    .map(|a| GraphAttempt {
                        attempt: a.attempt,
                        worker_id: a.worker_id.clone(),
                        started_at: a.started_at,
                        finished_at: a.finished_at,
                        exit_code: a.exit_code,
                        signal: a.signal,
                    })
                    .collect(),
            })
            .collect();
        Ok(GraphView {
            job_id: job.job_id.clone(),
            total_tasks: job.total_tasks,
            drawn: true,
            why_not: None,
            tasks,
            critical_path: path,
        })
    }
}
