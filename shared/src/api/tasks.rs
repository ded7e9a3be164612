//! A job's tasks: list them page by page, look at one, add more while the job runs.

use crate::domain::ids::is_valid_task_id;
use crate::domain::{
    parse_task_list, plan_addition, validate_addition, TaskKind, TaskState, MAX_EDGES,
};
use base64::Engine;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::domain::access::Access;

impl Service {
    pub async fn list_tasks(
        &self,
        who: &Access,
        job_id: &str,
        state: Option<&str>,
        prefix: Option<&str>,
        limit: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<TaskListView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let prefix = prefix.unwrap_or("");
        if !prefix.is_empty() && !is_valid_task_id(prefix) {
            return Err(ApiError::bad_request(
                format!("query parameter `prefix`: {prefix:?} cannot begin a task id (letters, digits, `_`, `.` and `-`, up to 128)"),
                json!({"parameter": "prefix"}),
            ));
        }
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
        // A job that closed CANCELLED before its walk wrote every waiting task shows
        // those as cancelled (`JobRecord::shown_task_state`): ask for what is shown.
        let stored: Vec<TaskState> = match state {
            Some(st) => TaskState::ALL
                .iter()
                .copied()
                .filter(|s| job.shown_task_state(*s) == st)
                .collect(),
            None => Vec::new(),
        };
        if state.is_some() && stored.is_empty() {
            return Ok(TaskListView {
                tasks: Vec::new(),
                next_token: None,
            });
        }
        let page = self
            .store
            .list_tasks(
                job_id,
                job.shard_count,
                state.map(|_| stored.as_slice()),
                prefix,
                limit,
                start,
            )
            .await?;
        Ok(TaskListView {
            tasks: page
                .tasks
                .iter()
                .map(|t| TaskSummary {
                    task_id: t.task_id.clone(),
                    state: job.shown_task_state(t.state),
                    status_reason: shown_reason(&job, t),
                    attempt: t.attempt,
                    exit_code: t.exit_code,
                })
                .collect(),
            next_token: page.next.map(|(shard, sk)| encode_token(shard, &sk)),
        })
    }

    pub async fn get_task(
        &self,
        who: &Access,
        job_id: &str,
        task_id: &str,
    ) -> Result<TaskView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
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
        if job.paging.page_edges {
            let later = self
                .store
                .page_dependents(job_id, job.shard_count, task_id)
                .await?;
            task.dependents.extend(later);
        }
        let deps = self
            .store
            .get_tasks(job_id, job.shard_count, &task.deps)
            .await?;
        let mut view = task_view(&task);
        view.state = job.shown_task_state(task.state);
        view.status_reason = shown_reason(&job, &task);
        view.dependency_states = deps
            .into_iter()
            .map(|(id, t)| (id, job.shown_task_state(t.state)))
            .collect();
        Ok(view)
    }

    /// Add tasks to a job that has not finished. New tasks may depend on any task of
    /// the job, finished or not; the job is not done until they are.
    pub async fn add_tasks(
        &self,
        who: &Access,
        job_id: &str,
        body: &str,
    ) -> Result<Added, ApiError> {
        let job = self.job_for(who, job_id, Need::Act).await?;
        let refuse = || {
            ApiError::new(
                ErrorKind::Conflict,
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
        self.check_tasks_fit(&job.queue, &job.team, "tasks", &tasks)
            .await?;
        self.ensure_pools(&job.queue, &job.team, &super::pool_uses(&tasks))
            .await?;
        let (plan, edges) = plan_addition(&tasks);
        check_fan_out(&edges, &found)?;
        check_addition_size(&plan)?;
        // The total goes up first, so the job cannot close before the new tasks are
        // counted; it comes down again if they are not written. It counts user tasks:
        // the barriers the plan adds for wide edges are not counted when they end.
        let n = tasks.len() as u64;
        if !self.store.add_to_total(job_id, n).await? {
            return Err(refuse());
        }
        let written = self
            .store
            .add_new_tasks(
                job_id,
                job.shard_count,
                (&job.queue, &job.team),
                self.max_attempts,
                &plan,
            )
            .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(taken)) => {
                self.store.take_from_total(job_id, n).await?;
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    "TaskExists",
                    format!(
                        "job {job_id} already has task{} {}: another addition took {} first; nothing of this one was added",
                        if taken.len() == 1 { "" } else { "s" },
                        quoted_list(&taken),
                        if taken.len() == 1 { "it" } else { "them" },
                    ),
                    json!({"job_id": job_id, "tasks": taken, "field": "id"}),
                ));
            }
            Err(e) => {
                // Nothing was written (a transaction): give the total back, if we can.
                if let Err(undo) = self.store.take_from_total(job_id, n).await {
                    tracing::error!(job_id, error = %undo, "an addition failed and its total could not be taken back");
                }
                return Err(e.into());
            }
        }
        self.link_to_stored(job_id, job.shard_count, &edges, &plan)
            .await?;
        self.store
            .add_group_edges(job_id, &super::group_edges_of(&tasks))
            .await?;
        tracing::info!(job_id, added = tasks.len(), "tasks added");
        Ok(Added {
            job_id: job_id.to_string(),
            added: tasks.len(),
        })
    }
}

impl Service {
    /// Give each added task's stored dependencies their new dependent; where one has
    /// finished already, act as its stream record would have (release the added task,
    /// or fail it).
    async fn link_to_stored(
        &self,
        job_id: &str,
        shard_count: u32,
        edges: &[crate::domain::ExistingEdge],
        plan: &[crate::domain::PlannedTask],
    ) -> Result<(), ApiError> {
        let written: std::collections::HashMap<&str, &crate::domain::PlannedTask> =
            plan.iter().map(|t| (t.id.as_str(), t)).collect();
        for e in edges {
            if let Err(from) = self
                .store
                .append_dependent(job_id, shard_count, &e.from, &e.to)
                .await?
            {
                // The dependency finished before we could link it: act as its
                // stream record would have.
                let Some(planned) = written.get(e.to.as_str()) else {
                    continue;
                };
                let Some(to) = self
                    .store
                    .get_tasks(job_id, shard_count, std::slice::from_ref(&planned.id))
                    .await?
                    .remove(&planned.id)
                else {
                    continue;
                };
                match from.state {
                    TaskState::Succeeded => {
                        self.store.release_edge(&to, &e.from).await?;
                    }
                    ended => {
                        self.store.fail_dependent(&to, &e.from, ended).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An addition is one transaction: at most [`MAX_TASKS_PER_ADDITION`] tasks and
/// [`MAX_ADDITION_BYTES`] of them.
///
/// [`MAX_TASKS_PER_ADDITION`]: crate::domain::limits::MAX_TASKS_PER_ADDITION
/// [`MAX_ADDITION_BYTES`]: crate::domain::limits::MAX_ADDITION_BYTES
/// A task's reason as readers see it: one its job's close cancelled says so.
fn shown_reason(job: &crate::domain::JobRecord, t: &crate::domain::TaskRecord) -> Option<String> {
    if job.shown_task_state(t.state) == t.state {
        t.reason.clone()
    } else {
        Some("job cancelled".to_string())
    }
}

fn check_addition_size(plan: &[crate::domain::PlannedTask]) -> Result<(), ApiError> {
    use crate::domain::limits::{MAX_ADDITION_BYTES, MAX_TASKS_PER_ADDITION};
    if plan.len() > MAX_TASKS_PER_ADDITION {
        return Err(ApiError::bad_request(
            format!(
                "{} tasks in one addition (with the barriers their dependencies need); at most {MAX_TASKS_PER_ADDITION}, so that an addition is all or nothing: send several",
                plan.len()
            ),
            json!({"field": "tasks", "count": plan.len(), "max": MAX_TASKS_PER_ADDITION}),
        ));
    }
    // What each item carries beyond a few hundred bytes of fixed attributes.
    let bytes: usize = plan
        .iter()
        .map(|t| {
            let strings = t.command.iter().chain(&t.deps).chain(&t.dependents);
            512 + t.id.len()
                + strings.map(String::len).sum::<usize>()
                + t.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        })
        .sum();
    if bytes > MAX_ADDITION_BYTES {
        return Err(ApiError::bad_request(
            format!("the added tasks take {bytes} bytes; one addition may take at most {MAX_ADDITION_BYTES}: send several"),
            json!({"field": "tasks", "bytes": bytes, "max": MAX_ADDITION_BYTES}),
        ));
    }
    Ok(())
}

/// A stored task may gain dependents only up to [`MAX_EDGES`] in all.
fn check_fan_out(
    edges: &[crate::domain::ExistingEdge],
    found: &std::collections::HashMap<String, crate::domain::TaskRecord>,
) -> Result<(), ApiError> {
    let mut fan_out: BTreeMap<&str, usize> = BTreeMap::new();
    for e in edges {
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
    Ok(())
}

pub(super) fn encode_token(shard: u32, sk: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{shard}:{sk}"))
}

pub(super) fn decode_token(token: &str) -> Option<(u32, String)> {
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
    pub(super) fn tokens_round_trip_and_reject_garbage() {
        let t = encode_token(3, "T#abc");
        assert_eq!(decode_token(&t), Some((3, "T#abc".to_string())));
        assert_eq!(decode_token("not-a-token"), None);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1:META");
        assert_eq!(decode_token(&forged), None);
    }

    #[test]
    pub(super) fn api_error_body_shape() {
        let e = ApiError::bad_request("bad", json!({"field": "x"}));
        assert_eq!(e.body()["error"]["code"], "BadRequest");
        assert_eq!(e.body()["error"]["details"]["field"], "x");
    }
}
