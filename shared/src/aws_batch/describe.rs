//! DescribeJobs and ListJobs: jobs and array children in AWS Batch's shape and statuses.

use crate::api::{ApiError, Service};
use crate::domain::access::Access;
use crate::domain::batch::{child_aws_id, child_counts, child_task_id, unborn_child_state};
use crate::domain::ids::is_valid_job_id;
use crate::domain::{JobRecord, JobState, TaskRecord, TaskState};
use crate::store::{JobQuery, ListAt, ListPosition};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::{arn::*, definitions::*, wire::*};

pub use crate::domain::listing::aws_status;

pub(super) fn task_status(t: &TaskState) -> &'static str {
    match t {
        TaskState::Pending => "PENDING",
        TaskState::Runnable => "RUNNABLE",
        TaskState::Starting => "STARTING",
        TaskState::Running => "RUNNING",
        TaskState::Succeeded => "SUCCEEDED",
        TaskState::Failed | TaskState::Cancelled => "FAILED",
    }
}

use crate::domain::listing::BATCH_STATUSES;

pub(super) fn attempts_json(t: &TaskRecord) -> Value {
    Value::Array(
        t.attempts
            .iter()
            .map(|a| {
                let mut c = Map::new();
                if let Some(code) = a.container_exit_code() {
                    c.insert("exitCode".into(), json!(code));
                }
                if let Some(r) = &a.reason {
                    c.insert("reason".into(), json!(r));
                }
                if let Some(l) = a.log_stream.as_ref().or(a.stdout.as_ref()) {
                    c.insert("logStreamName".into(), json!(l));
                }
                let mut m = Map::new();
                m.insert("container".into(), Value::Object(c));
                m.insert("startedAt".into(), json!(a.started_at));
                if let Some(f) = a.finished_at {
                    m.insert("stoppedAt".into(), json!(f));
                }
                if let Some(r) = &a.reason {
                    m.insert("statusReason".into(), json!(r));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// The most array children one ListJobs page reads, and the time it reads them for.
const LIST_CHILDREN_READ: u32 = 10_000;
const LIST_CHILDREN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

impl Service {
    /// Jobs the caller has no role on are left out, as AWS leaves out unknown ids.
    pub async fn describe_jobs(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        let ids: Vec<String> = input["jobs"]
            .as_array()
            .ok_or_else(|| client("jobs is required"))?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if ids.len() > 100 {
            return Err(client(format!("jobs: {} ids; at most 100", ids.len())));
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some(d) = self.job_detail(who, &id).await? {
                out.push(d);
            }
        }
        Ok(json!({ "jobs": out }))
    }

    /// AWS's JobDetail for a job id or an array child id (`<job>:<index>`).
    pub(super) async fn job_detail(
        &self,
        who: &Access,
        id: &str,
    ) -> Result<Option<Value>, ApiError> {
        let (job_id, index) = match id.rsplit_once(':') {
            Some((j, i)) => match i.parse::<u32>() {
                Ok(i) => (j, Some(i)),
                Err(_) => return Ok(None),
            },
            None => (id, None),
        };
        if !is_valid_job_id(job_id) {
            return Ok(None);
        }
        let Some(job) = self
            .store
            .get_job(job_id)
            .await?
            .filter(|j| who.can_view(&j.team))
        else {
            return Ok(None);
        };
        let deps = self.store.job_dependencies(job_id).await?;
        let mut d = Map::new();
        d.insert("jobArn".into(), json!(arn("job", id)));
        d.insert("jobName".into(), json!(job.name));
        d.insert("jobId".into(), json!(id));
        d.insert("jobQueue".into(), json!(arn("job-queue", &job.queue)));
        d.insert("createdAt".into(), json!(job.created_at));
        d.insert(
            "dependsOn".into(),
            Value::Array(
                deps.iter()
                    .map(|x| match x.kind.aws_type() {
                        Some(t) => json!({"jobId": x.key(), "type": t}),
                        None => json!({"jobId": x.key()}),
                    })
                    .collect(),
            ),
        );
        d.insert("platformCapabilities".into(), json!(["EC2"]));
        let Some(a) = &job.array else {
            // A native DAG job: its tasks are a graph, not one container.
            job_status_fields(&job, &mut d);
            d.insert("jobDefinition".into(), json!(""));
            d.insert("container".into(), json!({}));
            return Ok(Some(Value::Object(d)));
        };
        d.insert(
            "jobDefinition".into(),
            json!(a.job_definition.clone().unwrap_or_default()),
        );
        d.insert("parameters".into(), json!(a.parameters));
        d.insert("tags".into(), json!(a.tags));
        d.insert("retryStrategy".into(), retry_to(&a.template.retry));
        if let Some(t) = a.template.timeout_seconds {
            d.insert("timeout".into(), json!({"attemptDurationSeconds": t}));
        }
        if let Some(s) = &a.share_identifier {
            d.insert("shareIdentifier".into(), json!(s));
        }
        d.insert("schedulingPriority".into(), json!(a.scheduling_priority));
        if a.sequential {
            if let Some(Value::Array(list)) = d.get_mut("dependsOn") {
                list.push(json!({"type": "SEQUENTIAL"}));
            }
        }
        let mut requirements = vec![
            json!({"type": "VCPU", "value": format!("{}", f64::from(a.template.cpu_milli) / 1000.0)}),
            json!({"type": "MEMORY", "value": a.template.memory_mib.to_string()}),
        ];
        if let Some(gpus) = a.template.tiers.first().map(|t| t.gpu).filter(|g| *g > 0) {
            requirements.push(json!({"type": "GPU", "value": gpus.to_string()}));
        }
        let mut container = json!({
            "command": a.template.command,
            "environment": env_list(&a.template.env),
            "resourceRequirements": requirements,
        });
        if let Some(c) = &a.template.container {
            container["image"] = json!(c.image);
            if let Some(r) = &c.job_role_arn {
                container["jobRoleArn"] = json!(r);
            }
        }
        let child_index = match (a.array_size, index) {
            (Some(size), Some(i)) if i < size => Some(i),
            (Some(_), Some(_)) => return Ok(None),
            (None, Some(_)) => return Ok(None),
            (None, None) => Some(0),
            (Some(_), None) => None,
        };
        match child_index {
            Some(i) => {
                self.child_detail(&job, index, i, &mut d, &mut container)
                    .await?
            }
            None => self.array_summary(&job, &mut d).await?,
        }
        d.insert("container".into(), container);
        Ok(Some(Value::Object(d)))
    }

    /// One container run's detail: a child of an array (`index`), or a single job.
    async fn child_detail(
        &self,
        job: &JobRecord,
        index: Option<u32>,
        i: u32,
        d: &mut Map<String, Value>,
        container: &mut Value,
    ) -> Result<(), ApiError> {
        let job_id = job.job_id.as_str();
        let Some(a) = &job.array else {
            return Ok(());
        };
        let task = self
            .store
            .get_task(job_id, job.shard_count, &child_task_id(i))
            .await?;
        let (status, reason) = match &task {
            Some(t) => (task_status(&t.state), t.reason.clone()),
            None if job.state.is_terminal() => ("FAILED", job.reason.clone()),
            None if job.state == JobState::Runnable && a.dispatched_by_cursor() => {
                ("RUNNABLE", None)
            }
            None => ("PENDING", None),
        };
        // A single job that ended is as the job ended: its status, and its attempt's
        // reason, or the caller's, as given, when a cancel or terminate ended it.
        let whole_job = index.is_none() && job.state.is_terminal();
        let (status, reason) = if whole_job {
            let reason = match job.stopped_by {
                Some(_) => job.reason.clone().or(reason),
                None => reason.or_else(|| job.reason.clone()),
            };
            (aws_status(job), reason)
        } else {
            (
                status,
                reason.or_else(|| job.reason.clone().filter(|_| index.is_none())),
            )
        };
        d.insert("status".into(), json!(status));
        if let Some(r) = reason {
            d.insert("statusReason".into(), json!(r));
        }
        if index.is_none() {
            stop_fields(job, d);
        }
        if let Some(t) = &task {
            d.insert("attempts".into(), attempts_json(t));
            if let Some(at) = t.started_at {
                d.insert("startedAt".into(), json!(at));
            }
            if let Some(at) = t.finished_at {
                d.insert("stoppedAt".into(), json!(at));
            }
            if let Some(last) = t.attempts.last() {
                if let Some(c) = last.container_exit_code() {
                    container["exitCode"] = json!(c);
                }
                if let Some(r) = &last.reason {
                    container["reason"] = json!(r);
                }
                if let Some(l) = last.log_stream.as_ref().or(last.stdout.as_ref()) {
                    container["logStreamName"] = json!(l);
                }
            }
            // A running attempt's stream is named before anything reaches it.
            if t.state == TaskState::Running && t.attempt > 0 {
                let target = crate::domain::logs::log_target(
                    a.template.log.as_ref(),
                    a.job_definition.as_deref(),
                    job_id,
                    &t.task_id,
                    t.attempt,
                );
                container["logStreamName"] = json!(target.stream);
            }
        } else {
            d.insert("attempts".into(), json!([]));
        }
        if whole_job {
            // Stopped when the job was (a terminated attempt may still be ending).
            if let Some(at) = job.finished_at {
                d.insert("stoppedAt".into(), json!(at));
            }
        }
        if index.is_some() {
            d.insert("arrayProperties".into(), json!({"index": i}));
            d.insert("jobId".into(), json!(child_aws_id(job_id, true, i)));
        }
        if let Some(env) = container["environment"].as_array_mut() {
            if let Some(i) = index {
                env.push(json!({"name": "AWS_BATCH_JOB_ARRAY_INDEX", "value": i.to_string()}));
            }
        }
        Ok(())
    }

    /// The parent of an array: counts of its children by status.
    async fn array_summary(
        &self,
        job: &JobRecord,
        d: &mut Map<String, Value>,
    ) -> Result<(), ApiError> {
        let job_id = job.job_id.as_str();
        let Some(a) = &job.array else {
            return Ok(());
        };
        let (counts, _, _) = self.store.job_counts(job_id).await?;
        let counts = child_counts(job, &counts);
        let mut summary: BTreeMap<&str, u64> = BATCH_STATUSES.iter().map(|s| (*s, 0)).collect();
        for st in TaskState::ALL {
            *summary.entry(task_status(&st)).or_default() += counts.get(st);
        }
        job_status_fields(job, d);
        d.insert("attempts".into(), json!([]));
        d.insert(
            "arrayProperties".into(),
            json!({"size": a.size(), "statusSummary": summary}),
        );
        Ok(())
    }

    /// Only jobs of teams the caller has a role on are listed.
    pub async fn list_jobs(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        if input.get("multiNodeJobId").is_some_and(|v| !v.is_null()) {
            return Err(client(
                "multiNodeJobId: multi-node parallel jobs are not supported",
            ));
        }
        let filters = input["filters"].as_array().cloned().unwrap_or_default();
        let query = super::filters::job_query(&filters, opt_str(input, "jobStatus"))?;
        let max = input["maxResults"].as_u64().unwrap_or(100).clamp(1, 1000) as usize;
        if let Some(parent) = opt_str(input, "arrayJobId") {
            // Children are listed by status; a filter does not apply to them.
            let status = match &query {
                JobQuery::Status(s) => Some(s.as_str()),
                _ => None,
            };
            return self
                .list_children(who, parent, status, max, opt_str(input, "nextToken"))
                .await;
        }
        let queue = name_of(
            req_str(input, "jobQueue").map_err(|_| client("jobQueue or arrayJobId is required"))?,
        )
        .to_string();
        let start = match opt_str(input, "nextToken") {
            Some(t) => Some(decode_position(t, query.sorted_by_time())?),
            None => None,
        };
        let teams: Option<Vec<String>> = who
            .visible_teams()
            .map(|t| t.into_iter().map(String::from).collect());
        let page = self
            .store
            .list_jobs(&queue, &query, teams.as_deref(), max, start.as_ref())
            .await?;
        let summaries: Vec<Value> = page.jobs.iter().map(job_summary).collect();
        Ok(
            json!({"jobSummaryList": summaries, "nextToken": page.next.map(|p| encode_position(&p))}),
        )
    }

    pub(super) async fn list_children(
        &self,
        who: &Access,
        parent: &str,
        status: Option<&str>,
        max: usize,
        token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let job = self
            .store
            .get_job(parent)
            .await?
            .filter(|j| j.array.as_ref().is_some_and(|a| a.array_size.is_some()))
            .filter(|j| who.can_view(&j.team))
            .ok_or_else(|| client(format!("arrayJobId {parent} is not an array job")))?;
        let Some(a) = &job.array else {
            return Ok(json!({"jobSummaryList": []}));
        };
        let size = a.size();
        let mut from = match token {
            Some(t) => decode_offset(t)? as u32,
            None => 0,
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        // A status the children mostly lack can mean reading far for a page: stop at a
        // bound of children read and of time (a busy table answers slowly) and give the
        // caller the rest as the next page, as AWS Batch may return a short one.
        let began = std::time::Instant::now();
        while from < size
            && out.len() < max
            && scanned < LIST_CHILDREN_READ
            && began.elapsed() < LIST_CHILDREN_TIME
        {
            let to = (from + 100).min(size);
            let ids: Vec<String> = (from..to).map(child_task_id).collect();
            let found = self.store.get_tasks(parent, job.shard_count, &ids).await?;
            let mut next_from = to;
            for i in from..to {
                if out.len() >= max {
                    next_from = i;
                    break;
                }
                let t = found.get(&child_task_id(i));
                let st = match t {
                    Some(t) => task_status(&t.state),
                    None => task_status(&unborn_child_state(&job)),
                };
                if status.is_none_or(|s| s == st) {
                    let mut m = json!({
                        "jobArn": arn("job", &child_aws_id(parent, true, i)),
                        "jobId": child_aws_id(parent, true, i),
                        "jobName": job.name,
                        "createdAt": t.map_or(job.created_at, |t| t.created_at),
                        "status": st,
                        "arrayProperties": {"index": i},
                        "jobDefinition": a.job_definition.clone().unwrap_or_default(),
                        "container": {},
                    });
                    if let Some(t) = t {
                        if let Some(r) = &t.reason {
                            m["statusReason"] = json!(r);
                        }
                        if let Some(s) = t.started_at {
                            m["startedAt"] = json!(s);
                        }
                        if let Some(s) = t.finished_at {
                            m["stoppedAt"] = json!(s);
                        }
                        let code = t.attempts.last().and_then(|a| a.container_exit_code());
                        if let Some(c) = code.or(t.exit_code) {
                            m["container"]["exitCode"] = json!(c);
                        }
                    }
                    out.push(m);
                }
            }
            from = next_from;
            scanned += 100;
        }
        let next = (from < size).then(|| encode_offset(from as usize));
        Ok(json!({"jobSummaryList": out, "nextToken": next}))
    }
}

/// A job's own `status`, `statusReason`, `startedAt` and `stoppedAt` (the last three
/// only when known: botocore wants numbers where they are present).
pub(super) fn job_status_fields(j: &JobRecord, d: &mut Map<String, Value>) {
    d.insert("status".into(), json!(aws_status(j)));
    stop_fields(j, d);
    if let Some(r) = &j.reason {
        d.insert("statusReason".into(), json!(r));
    }
    if let Some(t) = j.started_at {
        d.insert("startedAt".into(), json!(t));
    }
    if let Some(t) = j.finished_at {
        d.insert("stoppedAt".into(), json!(t));
    }
}

/// `isCancelled` / `isTerminated`, once the caller's cancel or terminate has ended the
/// job.
fn stop_fields(j: &JobRecord, d: &mut Map<String, Value>) {
    if !j.state.is_terminal() {
        return;
    }
    match j.stopped_by {
        Some(crate::domain::Stop::Cancel) => d.insert("isCancelled".into(), json!(true)),
        Some(crate::domain::Stop::Terminate) => d.insert("isTerminated".into(), json!(true)),
        None => None,
    };
}

pub(super) fn job_summary(j: &JobRecord) -> Value {
    let mut m = json!({
        "jobArn": arn("job", &j.job_id),
        "jobId": j.job_id,
        "jobName": j.name,
        "createdAt": j.created_at,
        "container": {},
    });
    if let Value::Object(fields) = &mut m {
        job_status_fields(j, fields);
    }
    if let Some(a) = &j.array {
        if let Some(s) = a.array_size {
            m["arrayProperties"] = json!({"size": s});
        }
        m["jobDefinition"] = json!(a.job_definition.clone().unwrap_or_default());
    }
    m
}

/// A listing's nextToken: where it goes on from, as `t:<ms>:<job>` or `k:<job>:<key>`.
fn encode_position(p: &ListPosition) -> String {
    let text = match &p.at {
        ListAt::Time(t) => format!("t:{t}:{}", p.job_id),
        ListAt::Key(k) => format!("k:{}:{k}", p.job_id),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A nextToken this API gave out for the same question (by time or by key).
fn decode_position(t: &str, by_time: bool) -> Result<ListPosition, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (kind, rest) = s.split_once(':')?;
            match (kind, by_time) {
                ("t", true) => {
                    let (at, id) = rest.split_once(':')?;
                    Some(ListPosition {
                        job_id: id.to_string(),
                        at: ListAt::Time(at.parse().ok()?),
                    })
                }
                ("k", false) => {
                    let (id, k) = rest.split_once(':')?;
                    Some(ListPosition {
                        job_id: id.to_string(),
                        at: ListAt::Key(k.to_string()),
                    })
                }
                _ => None,
            }
        })
        .filter(|p| is_valid_job_id(&p.job_id))
        .ok_or_else(|| client("nextToken is not a token this API gave out for this question"))
}
