//! Job and task state changes, out of the table's stream (a second consumer beside the
//! fanout, so an EventBridge or Step Functions outage never holds up task release).
//!
//! - Every job status change, submission included, goes to the deployment's event bus as
//!   `source: batchplane`, `detail-type: "Job State Change"`, with a detail shaped like
//!   AWS Batch's job detail (`jobArn`, `jobName`, `jobId`, `jobQueue`, `status`,
//!   `statusReason`, `createdAt`, `startedAt`, `stoppedAt`) plus `team`, `totalTasks`,
//!   `previousStatus` and `transitionId`. Jobs that asked (`task_events: true`) also get
//!   `"Task State Change"` per task transition.
//! - A job submitted with a Step Functions task token reports back: SendTaskSuccess with
//!   its summary when it succeeds, SendTaskFailure when it fails or is cancelled, and
//!   SendTaskHeartbeat every minute while it runs ([`Publisher::heartbeats`]).
//!
//! Each transition has an id (`job:<id>:<STATUS>`, `task:<job>:<task>:<attempt>:<STATE>`,
//! `sfn:<job>:<STATUS>`) and is claimed in the table before it is sent and confirmed
//! after, so a redelivered record sends nothing twice (see `store::published`).

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use batchplane::aws_batch::{arn, aws_status};
use batchplane::domain::{JobRecord, JobState, Notify};
use batchplane::store::{now_ms, Store, StoreError};
use batchplane::stream::{Change, JobChange, TaskChange};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;

pub const SOURCE: &str = "batchplane";
pub const JOB_STATE_CHANGE: &str = "Job State Change";
pub const TASK_STATE_CHANGE: &str = "Task State Change";
/// Step Functions error names a failed job reports.
pub const JOB_FAILED: &str = "Batchplane.JobFailed";
pub const JOB_CANCELLED: &str = "Batchplane.JobCancelled";

/// What a Step Functions execution is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Callback {
    Success {
        token: String,
        output: Value,
    },
    Failure {
        token: String,
        error: String,
        cause: String,
    },
}

/// One transition to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub transition_id: String,
    pub detail_type: &'static str,
    pub resources: Vec<String>,
    pub detail: Value,
}

/// The job's summary as the API shows it, for events and Step Functions output.
pub fn job_detail(job: &JobRecord, previous: Option<&str>) -> Value {
    let status = aws_status(job);
    let mut d = json!({
        "jobArn": arn("job", &job.job_id),
        "jobName": job.name,
        "jobId": job.job_id,
        "jobQueue": arn("job-queue", &job.queue),
        "status": status,
        "createdAt": job.created_at,
        "team": job.team,
        "totalTasks": job.total_tasks,
        "transitionId": format!("job:{}:{status}", job.job_id),
    });
    if let Some(r) = &job.reason {
        d["statusReason"] = json!(r);
    }
    if let Some(t) = job.started_at {
        d["startedAt"] = json!(t);
    }
    if let Some(t) = job.finished_at {
        d["stoppedAt"] = json!(t);
    }
    if let Some(p) = previous {
        d["previousStatus"] = json!(p);
    }
    if let Some(a) = &job.array {
        if let Some(size) = a.array_size {
            d["arrayProperties"] = json!({"size": size});
        }
        if let Some(def) = &a.job_definition {
            d["jobDefinition"] = json!(def);
        }
    }
    d
}

/// The job's transition in this change, if its AWS status moved (its first write is
/// a transition from nothing: submission).
pub fn job_transition(change: &JobChange) -> Option<Outgoing> {
    let status = aws_status(&change.job);
    let previous = change.old_job.as_deref().map(aws_status);
    if previous == Some(status) {
        return None;
    }
    let detail = job_detail(&change.job, previous);
    Some(Outgoing {
        transition_id: format!("job:{}:{status}", change.job.job_id),
        detail_type: JOB_STATE_CHANGE,
        resources: vec![arn("job", &change.job.job_id)],
        detail,
    })
}

/// The callback a job's final state owes its Step Functions execution.
pub fn job_callback(job: &JobRecord) -> Option<Callback> {
    let token = job.notify.task_token.clone()?;
    match job.state {
        JobState::Succeeded => Some(Callback::Success {
            token,
            output: job_detail(job, None),
        }),
        JobState::Failed | JobState::Cancelled => Some(Callback::Failure {
            token,
            error: if job.state == JobState::Cancelled {
                JOB_CANCELLED
            } else {
                JOB_FAILED
            }
            .to_string(),
            cause: job
                .reason
                .clone()
                .unwrap_or_else(|| format!("job {} {}", job.job_id, job.state.as_str())),
        }),
        _ => None,
    }
}

/// A task's transition in this change, if its state moved.
pub fn task_transition(change: &TaskChange) -> Option<Outgoing> {
    let t = &change.task;
    if change.old_state == Some(t.state) {
        return None;
    }
    let status = t.state.as_str();
    let transition_id = format!("task:{}:{}:{}:{status}", t.job_id, t.task_id, t.attempt);
    let mut detail = json!({
        "jobArn": arn("job", &t.job_id),
        "jobId": t.job_id,
        "taskId": t.task_id,
        "status": status,
        "attempt": t.attempt,
        "transitionId": transition_id,
    });
    if let Some(p) = change.old_state {
        detail["previousStatus"] = json!(p.as_str());
    }
    if let Some(r) = &t.reason {
        detail["statusReason"] = json!(r);
    }
    if let Some(a) = t.attempts.last() {
        if let Some(c) = a.exit_code {
            detail["exitCode"] = json!(c);
        }
        if let Some(w) = t.worker_id.as_ref() {
            detail["workerId"] = json!(w);
        }
    }
    Some(Outgoing {
        transition_id,
        detail_type: TASK_STATE_CHANGE,
        resources: vec![arn("job", &t.job_id)],
        detail,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// EventBridge did not take the request (throttled, unreachable, refused).
    #[error("PutEvents failed: {message}")]
    PutEvents {
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// EventBridge took the request but refused some of its entries.
    #[error("PutEvents: {failed} of {sent} entries failed: {reasons}")]
    EntriesRefused {
        failed: i32,
        sent: usize,
        reasons: String,
    },
    #[error("{operation} failed: {message}")]
    StepFunctions {
        operation: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// What a batch published.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Published {
    pub events: usize,
    pub duplicates: usize,
    pub callbacks: usize,
}

/// The publisher's collaborators.
pub struct Publisher {
    pub store: Store,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub sfn: aws_sdk_sfn::Client,
    /// The event bus's name (or ARN).
    pub bus: String,
    /// Jobs' notification settings (fixed at submission), so task records cost no read.
    notify: Mutex<HashMap<String, Notify>>,
}

/// Step Functions errors that mean the execution no longer waits: telling it again
/// cannot help, so the callback is done.
fn execution_gone(code: &str) -> bool {
    matches!(code, "InvalidToken" | "TaskTimedOut" | "TaskDoesNotExist")
}

impl Publisher {
    pub fn new(
        store: Store,
        eventbridge: aws_sdk_eventbridge::Client,
        sfn: aws_sdk_sfn::Client,
        bus: impl Into<String>,
    ) -> Publisher {
        Publisher {
            store,
            eventbridge,
            sfn,
            bus: bus.into(),
            notify: Mutex::default(),
        }
    }

    async fn notify_of(&self, job_id: &str) -> Result<Notify, StoreError> {
        if let Some(n) = self
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
        {
            return Ok(n.clone());
        }
        let n = self
            .store
            .get_job(job_id)
            .await?
            .map(|j| j.notify)
            .unwrap_or_default();
        self.notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_string(), n.clone());
        Ok(n)
    }

    /// Publish the transitions of a batch of stream changes, in order; callbacks for
    /// jobs that ended. An error leaves nothing half-claimed: the batch can be retried.
    pub async fn publish(&self, changes: &[Change]) -> Result<Published, PublishError> {
        let mut out = Vec::new();
        let mut callbacks = Vec::new();
        for c in changes {
            match c {
                Change::Job(j) => {
                    self.notify
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(j.job.job_id.clone(), j.job.notify.clone());
                    if let Some(o) = job_transition(j) {
                        out.push(o);
                    }
                    if let Some(token) = &j.job.notify.task_token {
                        if j.old_job.is_none() && !j.job.state.is_terminal() {
                            self.store.put_task_token(&j.job.job_id, token).await?;
                        }
                    }
                    if let Some(cb) = job_callback(&j.job) {
                        callbacks.push((j.job.job_id.clone(), j.job.state, cb));
                    }
                }
                Change::Task(t) => {
                    if self.notify_of(&t.task.job_id).await?.task_events {
                        if let Some(o) = task_transition(t) {
                            out.push(o);
                        }
                    }
                }
                Change::Work { .. } | Change::SlotFreed { .. } | Change::Other { .. } => {}
            }
        }
        let mut published = Published::default();
        let mut claimed = Vec::new();
        let now = now_ms();
        for o in out {
            if self.store.claim_event(&o.transition_id, now).await? {
                claimed.push(o);
            } else {
                published.duplicates += 1;
            }
        }
        for chunk in claimed.chunks(10) {
            if let Err(e) = self.put_events(chunk).await {
                for o in chunk {
                    self.store.release_event(&o.transition_id).await?;
                }
                return Err(e);
            }
            for o in chunk {
                self.store.confirm_event(&o.transition_id).await?;
            }
            published.events += chunk.len();
        }
        for (job_id, state, cb) in callbacks {
            let id = format!("sfn:{job_id}:{}", state.as_str());
            if !self.store.claim_event(&id, now).await? {
                continue;
            }
            match self.callback(&cb).await {
                Ok(()) => {}
                Err(PublishError::StepFunctions { message, .. }) if execution_gone(&message) => {
                    tracing::warn!(job_id, error = %message, "the Step Functions execution no longer waits for this job");
                }
                Err(e) => {
                    self.store.release_event(&id).await?;
                    return Err(e);
                }
            }
            self.store.confirm_event(&id).await?;
            self.store.delete_task_token(&job_id).await?;
            published.callbacks += 1;
        }
        Ok(published)
    }

    async fn put_events(&self, chunk: &[Outgoing]) -> Result<(), PublishError> {
        let entries = chunk
            .iter()
            .map(|o| {
                PutEventsRequestEntry::builder()
                    .source(SOURCE)
                    .detail_type(o.detail_type)
                    .detail(o.detail.to_string())
                    .set_resources(Some(o.resources.clone()))
                    .event_bus_name(&self.bus)
                    .build()
            })
            .collect::<Vec<_>>();
        let out = self
            .eventbridge
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| PublishError::PutEvents {
                message: aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string(),
                source: Box::new(e),
            })?;
        if out.failed_entry_count() > 0 {
            let why: Vec<String> = out
                .entries()
                .iter()
                .filter_map(|e| {
                    e.error_code()
                        .map(|c| format!("{c}: {}", e.error_message().unwrap_or("")))
                })
                .collect();
            return Err(PublishError::EntriesRefused {
                failed: out.failed_entry_count(),
                sent: chunk.len(),
                reasons: why.join("; "),
            });
        }
        Ok(())
    }

    async fn callback(&self, cb: &Callback) -> Result<(), PublishError> {
        match cb {
            Callback::Success { token, output } => self
                .sfn
                .send_task_success()
                .task_token(token)
                .output(output.to_string())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sfn_error("SendTaskSuccess", e)),
            Callback::Failure {
                token,
                error,
                cause,
            } => self
                .sfn
                .send_task_failure()
                .task_token(token)
                .error(error)
                .cause(cause)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sfn_error("SendTaskFailure", e)),
        }
    }

    /// Tell every waiting execution its job is still running (the schedule calls this
    /// every minute); tokens whose execution is gone are forgotten. Returns heartbeats sent.
    pub async fn heartbeats(&self) -> Result<u32, PublishError> {
        use aws_sdk_sfn::error::ProvideErrorMetadata;
        let mut sent = 0;
        for (job_id, token) in self.store.task_tokens().await? {
            match self
                .sfn
                .send_task_heartbeat()
                .task_token(&token)
                .send()
                .await
            {
                Ok(_) => sent += 1,
                Err(e) if e.code().is_some_and(execution_gone) => {
                    tracing::warn!(
                        job_id,
                        code = e.code().unwrap_or(""),
                        "forgetting the task token of an execution that no longer waits"
                    );
                    self.store.delete_task_token(&job_id).await?;
                }
                Err(e) => {
                    return Err(PublishError::StepFunctions {
                        operation: "SendTaskHeartbeat",
                        message: e.to_string(),
                        source: Some(Box::new(e)),
                    })
                }
            }
        }
        Ok(sent)
    }
}

/// A Step Functions call that failed, named by its error code where it has one (which
/// is what tells a gone execution from a passing fault), with the error as its source.
fn sfn_error<E>(operation: &'static str, e: E) -> PublishError
where
    E: aws_sdk_sfn::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    PublishError::StepFunctions {
        operation,
        message: e.code().map_or_else(|| e.to_string(), String::from),
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, started: bool) -> JobRecord {
        JobRecord {
            state,
            reason: (state == JobState::Failed).then(|| "task a failed".to_string()),
            created_at: 1,
            started_at: started.then_some(2),
            finished_at: state.is_terminal().then_some(3),
            total_tasks: 2,
            notify: Notify {
                task_events: false,
                task_token: Some("tok".into()),
            },
            ..JobRecord::new("j1", "n", "t", "default")
        }
    }

    fn change(old: Option<JobRecord>, new: JobRecord) -> JobChange {
        JobChange {
            sequence_number: "1".into(),
            old_state: old.as_ref().map(|j| j.state),
            old_job: old.map(Box::new),
            job: new,
            listed_as: None,
        }
    }

    #[test]
    fn a_job_announces_each_status_once_with_submission_first() {
        let submitted = job_transition(&change(None, job(JobState::Submitted, false)))
            .expect("submission is a transition");
        assert_eq!(submitted.transition_id, "job:j1:SUBMITTED");
        assert_eq!(submitted.detail["status"], "SUBMITTED");
        assert!(submitted.detail.get("previousStatus").is_none());
        // A write that leaves the AWS status where it was announces nothing.
        let same = change(
            Some(job(JobState::Pending, true)),
            job(JobState::Pending, true),
        );
        assert_eq!(job_transition(&same), None);
        // Starting a task moves a job to RUNNING.
        let running = job_transition(&change(
            Some(job(JobState::Pending, false)),
            job(JobState::Pending, true),
        ))
        .expect("RUNNABLE to RUNNING");
        assert_eq!(
            (
                running.detail["status"].as_str(),
                running.detail["previousStatus"].as_str()
            ),
            (Some("RUNNING"), Some("RUNNABLE"))
        );
        let done = job_transition(&change(
            Some(job(JobState::Pending, true)),
            job(JobState::Failed, true),
        ))
        .expect("to FAILED");
        assert_eq!(done.detail["statusReason"], "task a failed");
        assert_eq!(done.detail["stoppedAt"], 3);
        assert!(done.detail["jobArn"]
            .as_str()
            .unwrap_or("")
            .ends_with(":job/j1"));
    }

    #[test]
    fn final_states_owe_the_execution_a_callback() {
        assert!(matches!(
            job_callback(&job(JobState::Succeeded, true)),
            Some(Callback::Success { ref token, ref output }) if token == "tok" && output["status"] == "SUCCEEDED"
        ));
        assert!(matches!(
            job_callback(&job(JobState::Failed, true)),
            Some(Callback::Failure { ref error, ref cause, .. }) if error == JOB_FAILED && cause == "task a failed"
        ));
        assert_eq!(job_callback(&job(JobState::Pending, true)), None);
        let mut no_token = job(JobState::Succeeded, true);
        no_token.notify.task_token = None;
        assert_eq!(job_callback(&no_token), None);
    }
}

#[cfg(test)]
mod sample_state_machine {
    /// The example state machine in `infra/` hands the job its task token and names
    /// the errors a job's failure reports.
    #[test]
    fn the_sample_passes_the_task_token_and_catches_job_failures() {
        let text = include_str!("../../../infra/statemachines/run-job.asl.json");
        let asl: serde_json::Value = serde_json::from_str(text).expect("the ASL is JSON");
        let run = &asl["States"]["RunJob"];
        assert_eq!(
            run["Resource"],
            "arn:aws:states:::apigateway:invoke.waitForTaskToken"
        );
        assert_eq!(
            run["Parameters"]["RequestBody"]["task_token.$"],
            "$$.Task.Token"
        );
        let caught = run["Catch"][0]["ErrorEquals"].to_string();
        assert!(caught.contains(super::JOB_FAILED) && caught.contains(super::JOB_CANCELLED));
    }
}
