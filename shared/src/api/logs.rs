//! A task's output, read back from CloudWatch Logs for anyone who may view its job:
//! the API reads the shared log group for the caller, so seeing one team's output needs
//! a role on that team, not read access to every team's streams.

use super::{ApiError, ErrorKind, Need, Service};
use crate::domain::access::Access;
use crate::domain::ids::is_valid_task_id;
use crate::domain::logs::log_target;
use crate::domain::TaskKind;
use serde::Serialize;
use serde_json::json;

/// The most lines one page carries.
pub const MAX_LOG_LINES: i32 = 1_000;

/// One line of a task's output.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub timestamp: i64,
    pub message: String,
}

/// A page of one attempt's output.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    pub job_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub log_group: String,
    pub log_stream: String,
    pub lines: Vec<LogLine>,
    /// Where the next page starts; the same token again when nothing new came.
    pub next_token: Option<String>,
    /// The attempt is still running: more may come.
    pub running: bool,
    /// What of it was not shipped, when the attempt's record says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping: Option<String>,
    /// The attempt's own files (where the worker ran it), with all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
}

impl Service {
    /// A page of attempt `attempt` (the latest when `None`) of a task's output, from
    /// `token` on (the start when `None`).
    pub async fn task_log(
        &self,
        who: &Access,
        job_id: &str,
        task_id: &str,
        attempt: Option<u32>,
        token: Option<&str>,
    ) -> Result<LogPage, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let missing = || ApiError::not_found(format!("no task {task_id:?} in job {job_id}"));
        if !is_valid_task_id(task_id) {
            return Err(missing());
        }
        let mut task = self
            .store
            .get_task(job_id, job.shard_count, task_id)
            .await?
            .filter(|t| t.kind == TaskKind::Command)
            .ok_or_else(missing)?;
        if let Some(a) = &job.array {
            crate::domain::batch::apply_template(&mut task, a);
        }
        let n = attempt.unwrap_or(task.attempt);
        if n == 0 || n > task.attempt {
            return Err(ApiError::not_found(format!(
                "task {task_id} of job {job_id} has no attempt {n} (it has run {} times)",
                task.attempt
            )));
        }
        let recorded = task.attempts.iter().rev().find(|a| a.attempt == n);
        let named = log_target(
            task.log.as_ref(),
            task.definition.as_deref(),
            job_id,
            task_id,
            n,
        );
        let group = recorded
            .and_then(|a| a.log_group.clone())
            .unwrap_or(named.group);
        let stream = recorded
            .and_then(|a| a.log_stream.clone())
            .unwrap_or(named.stream);
        let running = recorded.is_none() && !task.state.is_terminal();
        let Some(logs) = &self.logs else {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "LogsNotShipped",
                "this deployment does not ship tasks' output to CloudWatch Logs; read the attempt's files",
                json!({"stdout": recorded.and_then(|a| a.stdout.clone())}),
            ));
        };
        let mut req = logs
            .get_log_events()
            .log_group_name(&group)
            .log_stream_name(&stream)
            .start_from_head(true)
            .limit(MAX_LOG_LINES);
        if let Some(t) = token {
            req = req.next_token(t);
        }
        let (lines, next_token) = match req.send().await {
            Ok(out) => (
                out.events()
                    .iter()
                    .map(|e| LogLine {
                        timestamp: e.timestamp().unwrap_or(0),
                        message: e.message().unwrap_or_default().to_string(),
                    })
                    .collect(),
                out.next_forward_token().map(String::from),
            ),
            // Not there yet (nothing was written), or never shipped.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                (Vec::new(), token.map(String::from))
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorKind::Busy,
                    "LogsUnavailable",
                    format!("CloudWatch Logs did not answer for {group} {stream}: {e}"),
                    json!({"log_group": group, "log_stream": stream}),
                ))
            }
        };
        Ok(LogPage {
            job_id: job_id.to_string(),
            task_id: task_id.to_string(),
            attempt: n,
            log_group: group,
            log_stream: stream,
            lines,
            next_token,
            running,
            shipping: recorded.and_then(|a| a.log_shipping.clone()),
            stdout: recorded.and_then(|a| a.stdout.clone()),
        })
    }
}
