//! AWS Batch's operations over Batchplane's one model: job definitions, job queues,
//! compute environments and scheduling policies are registry documents in AWS's own
//! shape; jobs are array jobs (a single job is an array of one) with dependency rules.
//! Inputs and outputs are AWS Batch's JSON; errors are `ClientException` (400) and
//! `ServerException` (500), named by [`ApiError::code`].

use crate::domain::batch::{
    child_aws_id, child_counts, child_task_id, substitute_parameters, unborn_child_state,
    weighted_window, ArrayJob, DependencyKind, Dependent, JobDependency, JobTemplate,
    MAX_ARRAY_SIZE, MAX_JOB_DEPENDENCIES,
};
use crate::domain::ids::{is_valid_job_id, new_job_id, shard_count_for, task_shard};
use crate::domain::retry::{ExitRule, RetryAction, RetryStrategy};
use crate::domain::spec::ArrayJobSpec;
use crate::domain::tiers::{validate_tiers, Tier};
use crate::domain::{JobRecord, JobState, TaskRecord, TaskState};
use crate::service::{ApiError, Service};
use crate::store::arrays::DependencyStatus;
use crate::store::now_ms;
use crate::store::registry::{revision_sk, ResourceKind};
use base64::Engine;
use futures::{stream, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const CLIENT: &str = "ClientException";

fn client(message: impl Into<String>) -> ApiError {
    ApiError::new(400, CLIENT, message, Value::Null)
}

fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

fn account() -> String {
    std::env::var("BATCHPLANE_ACCOUNT_ID").unwrap_or_else(|_| "000000000000".into())
}

pub fn arn(kind: &str, name: &str) -> String {
    format!("arn:aws:batch:{}:{}:{kind}/{name}", region(), account())
}

/// A name, or the name at the end of an ARN.
fn name_of(name_or_arn: &str) -> &str {
    name_or_arn.rsplit('/').next().unwrap_or(name_or_arn)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn req_str<'a>(input: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(client(format!("{field} is required")))
        }
        Some(_) => Err(client(format!("{field} must be a string"))),
    }
}

fn opt_str<'a>(input: &'a Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(Value::as_str)
}

fn checked_name(input: &Value, field: &str) -> Result<String, ApiError> {
    let name = req_str(input, field)?;
    if !valid_name(name) {
        return Err(client(format!(
            "{field} {name:?}: up to 128 letters, numbers, hyphens and underscores, starting with a letter or number"
        )));
    }
    Ok(name.to_string())
}

/// Offset pagination over a list already in order: `nextToken` is the offset.
fn paginate(items: Vec<Value>, input: &Value) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let max = match input.get("maxResults").and_then(Value::as_u64) {
        Some(m) if (1..=1000).contains(&m) => m as usize,
        Some(m) => return Err(client(format!("maxResults {m} must be 1 to 1000"))),
        None => 100,
    };
    let start = match opt_str(input, "nextToken") {
        Some(t) => decode_offset(t)?,
        None => 0,
    };
    let end = (start + max).min(items.len());
    let next = (end < items.len()).then(|| encode_offset(end));
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

fn encode_offset(n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{n}"))
}

fn decode_offset(t: &str) -> Result<usize, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| client("nextToken is not a token this API gave out"))
}

fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(client(format!("{field}.{k} must be a string"))),
            })
            .collect(),
        Some(_) => Err(client(format!("{field} must be a map of strings"))),
    }
}

/// AWS's `retryStrategy` → ours, with its limits checked.
fn retry_from(v: Option<&Value>, field: &str) -> Result<Option<RetryStrategy>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let attempts = v.get("attempts").and_then(Value::as_u64).unwrap_or(1) as u32;
    let mut rules = Vec::new();
    for (i, r) in v
        .get("evaluateOnExit")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let action = match r
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("RETRY") => RetryAction::Retry,
            Some("EXIT") => RetryAction::Exit,
            other => {
                return Err(client(format!(
                    "{field}.evaluateOnExit[{i}].action {other:?} must be RETRY or EXIT"
                )))
            }
        };
        rules.push(ExitRule {
            on_exit_code: opt_str(r, "onExitCode").map(String::from),
            on_reason: opt_str(r, "onReason").map(String::from),
            on_status_reason: opt_str(r, "onStatusReason").map(String::from),
            action,
        });
    }
    let s = RetryStrategy {
        attempts,
        evaluate_on_exit: rules,
    };
    s.validate()
        .map_err(|e| client(format!("{field}: {}", e.replace("retry_strategy.", ""))))?;
    Ok(Some(s))
}

fn retry_to(r: &RetryStrategy) -> Value {
    json!({
        "attempts": r.attempts,
        "evaluateOnExit": r.evaluate_on_exit.iter().map(|e| {
            let mut m = Map::new();
            if let Some(v) = &e.on_exit_code { m.insert("onExitCode".into(), json!(v)); }
            if let Some(v) = &e.on_reason { m.insert("onReason".into(), json!(v)); }
            if let Some(v) = &e.on_status_reason { m.insert("onStatusReason".into(), json!(v)); }
            m.insert("action".into(), json!(match e.action { RetryAction::Retry => "RETRY", RetryAction::Exit => "EXIT" }));
            Value::Object(m)
        }).collect::<Vec<_>>(),
    })
}

/// vCPUs and memory from `resourceRequirements` (or the older `vcpus`/`memory`).
fn resources(container: &Value, field: &str) -> Result<(Option<f64>, Option<u64>), ApiError> {
    let mut cpu = container.get("vcpus").and_then(Value::as_f64);
    let mut mem = container.get("memory").and_then(Value::as_u64);
    for (i, r) in container
        .get("resourceRequirements")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let value = opt_str(r, "value").unwrap_or_default();
        match opt_str(r, "type") {
            Some("VCPU") => {
                cpu = Some(value.parse::<f64>().ok().filter(|v| *v > 0.0).ok_or_else(|| {
                    client(format!(
                        "{field}.resourceRequirements[{i}]: VCPU {value:?} is not a positive number"
                    ))
                })?)
            }
            Some("MEMORY") => {
                mem = Some(value.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    client(format!(
                        "{field}.resourceRequirements[{i}]: MEMORY {value:?} is not a whole number of MiB"
                    ))
                })?)
            }
            Some("GPU") => {}
            other => {
                return Err(client(format!(
                    "{field}.resourceRequirements[{i}].type {other:?} must be VCPU, MEMORY or GPU"
                )))
            }
        }
    }
    Ok((cpu, mem))
}

fn environment(container: &Value) -> BTreeMap<String, String> {
    container
        .get("environment")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|kv| {
                    Some((
                        opt_str(kv, "name")?.to_string(),
                        opt_str(kv, "value").unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn command(container: &Value) -> Option<Vec<String>> {
    container.get("command").and_then(Value::as_array).map(|c| {
        c.iter()
            .map(|a| {
                a.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect()
    })
}

fn env_list(env: &BTreeMap<String, String>) -> Value {
    Value::Array(
        env.iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect(),
    )
}

fn merge_tags(doc: &mut Value, tags: &BTreeMap<String, String>) {
    let entry = doc
        .as_object_mut()
        .map(|m| m.entry("tags").or_insert_with(|| json!({})));
    if let Some(Value::Object(t)) = entry {
        for (k, v) in tags {
            t.insert(k.clone(), json!(v));
        }
    }
}

/// AWS's status of a job, from what is stored: a job is RUNNING once a task started.
pub fn aws_status(job: &JobRecord) -> &'static str {
    match job.state {
        JobState::Submitted => "SUBMITTED",
        JobState::Succeeded => "SUCCEEDED",
        JobState::Failed | JobState::Cancelled => "FAILED",
        JobState::Pending if job.array.is_some() => "PENDING",
        _ if job.started_at.is_some() => "RUNNING",
        _ => "RUNNABLE",
    }
}

fn task_status(t: &TaskState) -> &'static str {
    match t {
        TaskState::Pending => "PENDING",
        TaskState::Runnable => "RUNNABLE",
        TaskState::Starting => "STARTING",
        TaskState::Running => "RUNNING",
        TaskState::Succeeded => "SUCCEEDED",
        TaskState::Failed | TaskState::Cancelled => "FAILED",
    }
}

const ALL_STATUSES: [&str; 7] = [
    "SUBMITTED",
    "PENDING",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
];

fn attempts_json(t: &TaskRecord) -> Value {
    Value::Array(
        t.attempts
            .iter()
            .map(|a| {
                let mut c = Map::new();
                if let Some(code) = a.exit_code {
                    c.insert("exitCode".into(), json!(code));
                }
                if let Some(r) = &a.reason {
                    c.insert("reason".into(), json!(r));
                }
                if let Some(l) = &a.stdout {
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

impl Service {
    // ---- job definitions ----

    pub async fn register_job_definition(&self, input: &Value) -> Result<Value, ApiError> {
        let name = checked_name(input, "jobDefinitionName")?;
        match opt_str(input, "type") {
            Some("container") => {}
            Some(other) => {
                return Err(client(format!(
                    "type {other:?}: only container job definitions are supported (tasks run as processes on Batchplane workers)"
                )))
            }
            None => return Err(client("type is required")),
        }
        let container = input
            .get("containerProperties")
            .ok_or_else(|| client("containerProperties is required for type container"))?;
        resources(container, "containerProperties")?;
        retry_from(input.get("retryStrategy"), "retryStrategy")?;
        definition_tiers(input)?;
        let revision = self.store.next_revision(&name).await?;
        let definition_arn = arn("job-definition", &format!("{name}:{revision}"));
        let mut doc = input.clone();
        if let Some(m) = doc.as_object_mut() {
            m.insert("jobDefinitionArn".into(), json!(definition_arn));
            m.insert("revision".into(), json!(revision));
            m.insert("status".into(), json!("ACTIVE"));
        }
        self.store
            .put_resource(
                ResourceKind::JobDefinition,
                &revision_sk(&name, revision),
                &doc,
                true,
            )
            .await?;
        Ok(
            json!({"jobDefinitionName": name, "jobDefinitionArn": definition_arn, "revision": revision}),
        )
    }

    /// `name:revision`, an ARN, or a bare name (its latest ACTIVE revision).
    async fn job_definition(&self, reference: &str) -> Result<Option<Value>, ApiError> {
        let r = name_of(reference);
        if let Some((name, rev)) = r.rsplit_once(':') {
            let rev: u32 = rev
                .parse()
                .map_err(|_| client(format!("jobDefinition {reference:?}: bad revision")))?;
            return Ok(self
                .store
                .get_resource(ResourceKind::JobDefinition, &revision_sk(name, rev))
                .await?);
        }
        let all = self
            .store
            .list_resources(ResourceKind::JobDefinition, &format!("{r}#"))
            .await?;
        Ok(all.into_iter().rev().find(|d| d["status"] == "ACTIVE"))
    }

    pub async fn describe_job_definitions(&self, input: &Value) -> Result<Value, ApiError> {
        let mut found = Vec::new();
        if let Some(list) = input.get("jobDefinitions").and_then(Value::as_array) {
            for r in list.iter().filter_map(Value::as_str) {
                if let Some(d) = self.job_definition(r).await? {
                    found.push(d);
                }
            }
        } else {
            let prefix = opt_str(input, "jobDefinitionName")
                .map(|n| format!("{n}#"))
                .unwrap_or_default();
            found = self
                .store
                .list_resources(ResourceKind::JobDefinition, &prefix)
                .await?;
        }
        if let Some(status) = opt_str(input, "status") {
            found.retain(|d| d["status"] == status);
        }
        let (page, next) = paginate(found, input)?;
        Ok(json!({"jobDefinitions": page, "nextToken": next}))
    }

    pub async fn deregister_job_definition(&self, input: &Value) -> Result<Value, ApiError> {
        let reference = req_str(input, "jobDefinition")?;
        let r = name_of(reference);
        let Some((name, rev)) = r.rsplit_once(':') else {
            return Err(client(format!(
                "jobDefinition {reference:?}: give name:revision or an ARN"
            )));
        };
        let sk = revision_sk(name, rev.parse().unwrap_or(0));
        let mut doc = self
            .store
            .get_resource(ResourceKind::JobDefinition, &sk)
            .await?
            .ok_or_else(|| client(format!("job definition {reference} does not exist")))?;
        doc["status"] = json!("INACTIVE");
        self.store
            .put_resource(ResourceKind::JobDefinition, &sk, &doc, false)
            .await?;
        Ok(json!({}))
    }

    // ---- compute environments ----

    fn check_compute_environment(doc: &Value) -> Result<(), ApiError> {
        match opt_str(doc, "type") {
            Some("MANAGED") | Some("UNMANAGED") => {}
            other => {
                return Err(client(format!(
                    "type {other:?} must be MANAGED or UNMANAGED"
                )))
            }
        }
        if let Some(st) = opt_str(doc, "state") {
            if st != "ENABLED" && st != "DISABLED" {
                return Err(client(format!("state {st:?} must be ENABLED or DISABLED")));
            }
        }
        let Some(cr) = doc.get("computeResources").filter(|v| !v.is_null()) else {
            if doc["type"] == "MANAGED" {
                return Err(client(
                    "computeResources is required for a MANAGED compute environment",
                ));
            }
            return Ok(());
        };
        match opt_str(cr, "type") {
            Some("EC2") | Some("SPOT") | None => {}
            Some(other) => {
                return Err(client(format!(
                    "computeResources.type {other:?} must be EC2 or SPOT (Batchplane runs on EC2 nodes)"
                )))
            }
        }
        if let Some(a) = opt_str(cr, "allocationStrategy") {
            if ![
                "BEST_FIT",
                "BEST_FIT_PROGRESSIVE",
                "SPOT_CAPACITY_OPTIMIZED",
                "SPOT_PRICE_CAPACITY_OPTIMIZED",
            ]
            .contains(&a)
            {
                return Err(client(format!("computeResources.allocationStrategy {a:?} is not one of BEST_FIT, BEST_FIT_PROGRESSIVE, SPOT_CAPACITY_OPTIMIZED, SPOT_PRICE_CAPACITY_OPTIMIZED")));
            }
        }
        let get = |f: &str| cr.get(f).and_then(Value::as_i64);
        let (min, max, desired) = (get("minvCpus"), get("maxvCpus"), get("desiredvCpus"));
        if doc["type"] == "MANAGED" && max.is_none() {
            return Err(client("computeResources.maxvCpus is required"));
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                return Err(client(format!(
                    "computeResources.minvCpus {lo} is above maxvCpus {hi}"
                )));
            }
        }
        if let (Some(d), Some(hi)) = (desired, max) {
            if d > hi {
                return Err(client(format!(
                    "computeResources.desiredvCpus {d} is above maxvCpus {hi}"
                )));
            }
        }
        Ok(())
    }

    pub async fn create_compute_environment(&self, input: &Value) -> Result<Value, ApiError> {
        let name = checked_name(input, "computeEnvironmentName")?;
        let mut doc = input.clone();
        if doc.get("state").is_none() {
            doc["state"] = json!("ENABLED");
        }
        Self::check_compute_environment(&doc)?;
        let ce_arn = arn("compute-environment", &name);
        doc["computeEnvironmentArn"] = json!(ce_arn);
        doc["status"] = json!("VALID");
        doc["statusReason"] = json!("ComputeEnvironment Healthy");
        self.create_new(ResourceKind::ComputeEnvironment, &name, &doc)
            .await?;
        Ok(json!({"computeEnvironmentName": name, "computeEnvironmentArn": ce_arn}))
    }

    async fn describe(
        &self,
        kind: ResourceKind,
        input: &Value,
        names_field: &str,
        out_field: &str,
    ) -> Result<Value, ApiError> {
        let mut found = Vec::new();
        match input.get(names_field).and_then(Value::as_array) {
            Some(list) if !list.is_empty() => {
                for n in list.iter().filter_map(Value::as_str) {
                    if let Some(d) = self.store.get_resource(kind, name_of(n)).await? {
                        found.push(d);
                    }
                }
            }
            _ => found = self.store.list_resources(kind, "").await?,
        }
        let (page, next) = paginate(found, input)?;
        Ok(json!({ out_field: page, "nextToken": next }))
    }

    pub async fn describe_compute_environments(&self, input: &Value) -> Result<Value, ApiError> {
        self.describe(
            ResourceKind::ComputeEnvironment,
            input,
            "computeEnvironments",
            "computeEnvironments",
        )
        .await
    }

    pub async fn update_compute_environment(&self, input: &Value) -> Result<Value, ApiError> {
        let (name, mut doc) = self
            .existing(
                ResourceKind::ComputeEnvironment,
                input,
                "computeEnvironment",
            )
            .await?;
        if let Some(st) = input.get("state") {
            doc["state"] = st.clone();
        }
        if let Some(Value::Object(cr)) = input.get("computeResources") {
            for (k, v) in cr {
                doc["computeResources"][k] = v.clone();
            }
        }
        if let Some(r) = input.get("serviceRole") {
            doc["serviceRole"] = r.clone();
        }
        Self::check_compute_environment(&doc)?;
        self.store
            .put_resource(ResourceKind::ComputeEnvironment, name, &doc, false)
            .await?;
        Ok(
            json!({"computeEnvironmentName": name, "computeEnvironmentArn": doc["computeEnvironmentArn"]}),
        )
    }

    pub async fn delete_compute_environment(&self, input: &Value) -> Result<Value, ApiError> {
        let (name, doc) = self
            .existing(
                ResourceKind::ComputeEnvironment,
                input,
                "computeEnvironment",
            )
            .await?;
        if doc["state"] != "DISABLED" {
            return Err(client(format!(
                "compute environment {name} must be DISABLED before it is deleted"
            )));
        }
        let queues = self
            .store
            .list_resources(ResourceKind::JobQueue, "")
            .await?;
        if let Some(q) = queues.iter().find(|q| {
            q["computeEnvironmentOrder"].as_array().is_some_and(|o| {
                o.iter()
                    .any(|e| e["computeEnvironment"].as_str().map(name_of) == Some(name))
            })
        }) {
            return Err(client(format!(
                "compute environment {name} is still used by job queue {}",
                q["jobQueueName"].as_str().unwrap_or("?")
            )));
        }
        self.store
            .delete_resource(ResourceKind::ComputeEnvironment, name)
            .await?;
        Ok(json!({}))
    }

    // ---- scheduling policies ----

    fn check_fairshare(doc: &Value) -> Result<(), ApiError> {
        if let Some(list) = doc["fairsharePolicy"]["shareDistribution"].as_array() {
            for (i, s) in list.iter().enumerate() {
                if opt_str(s, "shareIdentifier").is_none() {
                    return Err(client(format!(
                        "fairsharePolicy.shareDistribution[{i}].shareIdentifier is required"
                    )));
                }
                if let Some(w) = s.get("weightFactor").and_then(Value::as_f64) {
                    if !(0.0001..=999.9999).contains(&w) {
                        return Err(client(format!(
                            "fairsharePolicy.shareDistribution[{i}].weightFactor {w} must be 0.0001 to 999.9999"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn create_scheduling_policy(&self, input: &Value) -> Result<Value, ApiError> {
        let name = checked_name(input, "name")?;
        Self::check_fairshare(input)?;
        let policy_arn = arn("scheduling-policy", &name);
        let mut doc = input.clone();
        doc["arn"] = json!(policy_arn);
        self.create_new(ResourceKind::SchedulingPolicy, &name, &doc)
            .await?;
        Ok(json!({"name": name, "arn": policy_arn}))
    }

    pub async fn describe_scheduling_policies(&self, input: &Value) -> Result<Value, ApiError> {
        let mut found = Vec::new();
        for a in input["arns"].as_array().cloned().unwrap_or_default() {
            if let Some(d) = self
                .store
                .get_resource(
                    ResourceKind::SchedulingPolicy,
                    name_of(a.as_str().unwrap_or("")),
                )
                .await?
            {
                found.push(d);
            }
        }
        Ok(json!({"schedulingPolicies": found}))
    }

    pub async fn list_scheduling_policies(&self, input: &Value) -> Result<Value, ApiError> {
        let all = self
            .store
            .list_resources(ResourceKind::SchedulingPolicy, "")
            .await?;
        let arns: Vec<Value> = all.iter().map(|d| json!({"arn": d["arn"]})).collect();
        let (page, next) = paginate(arns, input)?;
        Ok(json!({"schedulingPolicies": page, "nextToken": next}))
    }

    pub async fn update_scheduling_policy(&self, input: &Value) -> Result<Value, ApiError> {
        let (name, mut doc) = self
            .existing(ResourceKind::SchedulingPolicy, input, "arn")
            .await?;
        if let Some(f) = input.get("fairsharePolicy") {
            doc["fairsharePolicy"] = f.clone();
        }
        Self::check_fairshare(&doc)?;
        self.store
            .put_resource(ResourceKind::SchedulingPolicy, name, &doc, false)
            .await?;
        Ok(json!({}))
    }

    pub async fn delete_scheduling_policy(&self, input: &Value) -> Result<Value, ApiError> {
        let reference = req_str(input, "arn")?;
        if !self
            .store
            .delete_resource(ResourceKind::SchedulingPolicy, name_of(reference))
            .await?
        {
            return Err(client(format!(
                "scheduling policy {reference} does not exist"
            )));
        }
        Ok(json!({}))
    }

    // ---- job queues ----

    async fn check_job_queue(&self, doc: &Value) -> Result<(), ApiError> {
        if let Some(st) = opt_str(doc, "state") {
            if st != "ENABLED" && st != "DISABLED" {
                return Err(client(format!("state {st:?} must be ENABLED or DISABLED")));
            }
        }
        if doc.get("priority").is_some_and(|p| !p.is_i64()) {
            return Err(client("priority must be a whole number"));
        }
        let order = doc["computeEnvironmentOrder"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if order.is_empty() {
            return Err(client(
                "computeEnvironmentOrder needs at least one compute environment",
            ));
        }
        for (i, e) in order.iter().enumerate() {
            let ce = opt_str(e, "computeEnvironment").ok_or_else(|| {
                client(format!(
                    "computeEnvironmentOrder[{i}].computeEnvironment is required"
                ))
            })?;
            if self
                .store
                .get_resource(ResourceKind::ComputeEnvironment, name_of(ce))
                .await?
                .is_none()
            {
                return Err(client(format!(
                    "computeEnvironmentOrder[{i}]: compute environment {ce} does not exist"
                )));
            }
        }
        if let Some(p) = opt_str(doc, "schedulingPolicyArn") {
            if self
                .store
                .get_resource(ResourceKind::SchedulingPolicy, name_of(p))
                .await?
                .is_none()
            {
                return Err(client(format!("scheduling policy {p} does not exist")));
            }
        }
        Ok(())
    }

    pub async fn create_job_queue(&self, input: &Value) -> Result<Value, ApiError> {
        let name = checked_name(input, "jobQueueName")?;
        let mut doc = input.clone();
        if doc.get("state").is_none() {
            doc["state"] = json!("ENABLED");
        }
        if doc.get("priority").is_none() {
            return Err(client("priority is required"));
        }
        self.check_job_queue(&doc).await?;
        let queue_arn = arn("job-queue", &name);
        doc["jobQueueArn"] = json!(queue_arn);
        doc["status"] = json!("VALID");
        doc["statusReason"] = json!("JobQueue Healthy");
        // The queue's workers take tasks from its SQS queue.
        self.queues
            .create(&name, std::time::Duration::from_secs(30))
            .await?;
        self.create_new(ResourceKind::JobQueue, &name, &doc).await?;
        Ok(json!({"jobQueueName": name, "jobQueueArn": queue_arn}))
    }

    /// Store a new resource; a ClientException if one of that name exists.
    async fn create_new(
        &self,
        kind: ResourceKind,
        name: &str,
        doc: &Value,
    ) -> Result<(), ApiError> {
        if self.store.put_resource(kind, name, doc, true).await? {
            return Ok(());
        }
        Err(client(format!(
            "Object already exists: {} {name}",
            kind.arn_type().replace('-', " ")
        )))
    }

    /// The resource `input[field]` names (a name or an ARN), which must exist: its name
    /// and document.
    async fn existing<'a>(
        &self,
        kind: ResourceKind,
        input: &'a Value,
        field: &str,
    ) -> Result<(&'a str, Value), ApiError> {
        let reference = req_str(input, field)?;
        let name = name_of(reference);
        let doc = self.store.get_resource(kind, name).await?.ok_or_else(|| {
            client(format!(
                "{} {reference} does not exist",
                kind.arn_type().replace('-', " ")
            ))
        })?;
        Ok((name, doc))
    }

    pub async fn describe_job_queues(&self, input: &Value) -> Result<Value, ApiError> {
        self.describe(ResourceKind::JobQueue, input, "jobQueues", "jobQueues")
            .await
    }

    pub async fn update_job_queue(&self, input: &Value) -> Result<Value, ApiError> {
        let (name, mut doc) = self
            .existing(ResourceKind::JobQueue, input, "jobQueue")
            .await?;
        for f in [
            "state",
            "priority",
            "computeEnvironmentOrder",
            "schedulingPolicyArn",
        ] {
            if let Some(v) = input.get(f) {
                doc[f] = v.clone();
            }
        }
        self.check_job_queue(&doc).await?;
        self.store
            .put_resource(ResourceKind::JobQueue, name, &doc, false)
            .await?;
        Ok(json!({"jobQueueName": name, "jobQueueArn": doc["jobQueueArn"]}))
    }

    pub async fn delete_job_queue(&self, input: &Value) -> Result<Value, ApiError> {
        let (name, doc) = self
            .existing(ResourceKind::JobQueue, input, "jobQueue")
            .await?;
        if doc["state"] != "DISABLED" {
            return Err(client(format!(
                "job queue {name} must be DISABLED before it is deleted"
            )));
        }
        self.store
            .delete_resource(ResourceKind::JobQueue, name)
            .await?;
        Ok(json!({}))
    }

    // ---- tags ----

    fn tag_target(resource_arn: &str) -> Result<(ResourceKind, String), ApiError> {
        let tail = resource_arn.rsplit(':').next().unwrap_or("");
        let (kind, name) = tail
            .split_once('/')
            .ok_or_else(|| client(format!("resourceArn {resource_arn:?} is not a Batch ARN")))?;
        let kind = match kind {
            "job-definition" => ResourceKind::JobDefinition,
            "job-queue" => ResourceKind::JobQueue,
            "compute-environment" => ResourceKind::ComputeEnvironment,
            "scheduling-policy" => ResourceKind::SchedulingPolicy,
            "job" => {
                return Err(client(
                    "jobs are tagged when submitted (SubmitJob tags); their tags cannot change afterwards",
                ))
            }
            other => return Err(client(format!("resourceArn: unknown resource type {other:?}"))),
        };
        let sk = if kind == ResourceKind::JobDefinition {
            // job-definition/<name>:<rev>
            let (n, rev) = resource_arn
                .rsplit_once('/')
                .and_then(|(_, t)| t.rsplit_once(':'))
                .ok_or_else(|| client("resourceArn: a job definition ARN ends in name:revision"))?;
            revision_sk(n, rev.parse().unwrap_or(0))
        } else {
            name.to_string()
        };
        Ok((kind, sk))
    }

    pub async fn tag_resource(&self, resource_arn: &str, input: &Value) -> Result<Value, ApiError> {
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let mut doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        merge_tags(&mut doc, &string_map(input.get("tags"), "tags")?);
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn untag_resource(
        &self,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<Value, ApiError> {
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let mut doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        if let Some(Value::Object(t)) = doc.get_mut("tags") {
            for k in keys {
                t.remove(k);
            }
        }
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn list_tags_for_resource(&self, resource_arn: &str) -> Result<Value, ApiError> {
        if let Some(id) =
            resource_arn.strip_prefix(&format!("{}/", arn("job", "").trim_end_matches('/')))
        {
            let job = self
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| client(format!("job {id} does not exist")))?;
            let tags = job.array.map(|a| a.tags).unwrap_or_default();
            return Ok(json!({"tags": tags}));
        }
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        Ok(json!({"tags": doc.get("tags").cloned().unwrap_or(json!({}))}))
    }

    // ---- jobs ----

    /// The job queue a job goes to, which must exist and be ENABLED; with its
    /// scheduling policy's weight for `share`, if it has one.
    async fn enabled_queue(
        &self,
        reference: &str,
        share: Option<&str>,
    ) -> Result<(String, Option<f64>), ApiError> {
        let name = name_of(reference);
        let q = self
            .store
            .get_resource(ResourceKind::JobQueue, name)
            .await?
            .ok_or_else(|| client(format!("jobQueue {reference} does not exist")))?;
        if q["state"] != "ENABLED" {
            return Err(client(format!(
                "jobQueue {name} is DISABLED and accepts no new jobs"
            )));
        }
        let mut weight = None;
        if let (Some(p), Some(share)) = (opt_str(&q, "schedulingPolicyArn"), share) {
            if let Some(policy) = self
                .store
                .get_resource(ResourceKind::SchedulingPolicy, name_of(p))
                .await?
            {
                weight = policy["fairsharePolicy"]["shareDistribution"]
                    .as_array()
                    .and_then(|l| {
                        l.iter().find(|s| {
                            opt_str(s, "shareIdentifier").is_some_and(|id| {
                                id == share
                                    || id
                                        .strip_suffix('*')
                                        .is_some_and(|pre| share.starts_with(pre))
                            })
                        })
                    })
                    .and_then(|s| s.get("weightFactor").and_then(Value::as_f64));
            }
        }
        Ok((name.to_string(), weight))
    }

    pub async fn aws_submit_job(
        &self,
        input: &Value,
        caller: Option<&str>,
    ) -> Result<Value, ApiError> {
        let name = checked_name(input, "jobName")?;
        let queue_ref = req_str(input, "jobQueue")?;
        let def_ref = req_str(input, "jobDefinition")?;
        let def = self.job_definition(def_ref).await?.ok_or_else(|| {
            client(format!(
                "jobDefinition {def_ref} does not exist or is INACTIVE"
            ))
        })?;
        if def["status"] != "ACTIVE" {
            return Err(client(format!("jobDefinition {def_ref} is INACTIVE")));
        }
        let share = opt_str(input, "shareIdentifier");
        let (queue, weight) = self.enabled_queue(queue_ref, share).await?;
        let overrides = input
            .get("containerOverrides")
            .cloned()
            .unwrap_or(json!({}));
        let (o_cpu, o_mem) = resources(&overrides, "containerOverrides")?;
        let timeout = input["timeout"]["attemptDurationSeconds"].as_u64();
        if let Some(t) = timeout.or_else(|| def["timeout"]["attemptDurationSeconds"].as_u64()) {
            if t < 60 && std::env::var("BATCHPLANE_ALLOW_SHORT_TIMEOUTS").is_err() {
                return Err(client(format!(
                    "timeout.attemptDurationSeconds {t}: the minimum is 60 seconds"
                )));
            }
        }
        let (template, parameters) = template_from(
            Some(&def),
            TemplateInput {
                command: command(&overrides),
                env: environment(&overrides),
                cpu: o_cpu,
                memory_mib: o_mem,
                timeout_seconds: timeout,
                retry: retry_from(input.get("retryStrategy"), "retryStrategy")?,
                parameters: string_map(input.get("parameters"), "parameters")?,
                tiers: Vec::new(),
            },
        )?;
        let array_size = match input.get("arrayProperties").and_then(|a| a.get("size")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = v.as_u64().unwrap_or(0);
                if !(2..=u64::from(MAX_ARRAY_SIZE)).contains(&n) {
                    return Err(client(format!(
                        "arrayProperties.size {v} must be 2 to {MAX_ARRAY_SIZE}"
                    )));
                }
                Some(n as u32)
            }
        };
        let mut depends_on = Vec::new();
        let mut sequential = false;
        for (i, d) in input["dependsOn"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let kind = opt_str(d, "type");
            match opt_str(d, "jobId") {
                None | Some("") if kind == Some("SEQUENTIAL") => sequential = true,
                None | Some("") => return Err(client(format!("dependsOn[{i}].jobId is required"))),
                Some(id) => {
                    let dep = JobDependency::parse(id, kind)
                        .map_err(|e| client(format!("dependsOn[{i}]: {e}")))?;
                    if dep.kind == DependencyKind::Sequential {
                        return Err(client(format!(
                            "dependsOn[{i}]: SEQUENTIAL takes no jobId (it orders this job's own children)"
                        )));
                    }
                    depends_on.push(dep);
                }
            }
        }
        let tags = string_map(input.get("tags"), "tags")?;
        let job_id = self
            .submit_array_job(ArraySubmission {
                name: name.clone(),
                team: share.unwrap_or("default").to_string(),
                queue,
                template,
                array_size,
                sequential,
                depends_on,
                job_definition: def["jobDefinitionArn"].as_str().map(String::from),
                share_identifier: share.map(String::from),
                scheduling_priority: input["schedulingPriorityOverride"].as_i64().unwrap_or(0)
                    as i32,
                weight,
                parameters,
                tags,
                caller: caller.map(String::from),
            })
            .await?;
        Ok(json!({"jobArn": arn("job", &job_id), "jobName": name, "jobId": job_id}))
    }

    /// A native single or array job (`POST /v1/jobs` without `tasks:`): the same job as
    /// AWS's SubmitJob makes. `queue` is a job queue when one of that name exists (it
    /// must be ENABLED; its scheduling policy weighs `team`), else a plain worker queue.
    pub async fn submit_native_array(
        &self,
        job_id: String,
        spec: ArrayJobSpec,
    ) -> Result<String, ApiError> {
        let def = match &spec.job_definition {
            None => None,
            Some(r) => {
                let d = self.job_definition(r).await?.ok_or_else(|| {
                    ApiError::bad_request(
                        format!("field `job_definition`: {r} does not exist"),
                        json!({"field": "job_definition"}),
                    )
                })?;
                if d["status"] != "ACTIVE" {
                    return Err(ApiError::bad_request(
                        format!("field `job_definition`: {r} is INACTIVE"),
                        json!({"field": "job_definition"}),
                    ));
                }
                Some(d)
            }
        };
        let (queue, weight) = if self
            .store
            .get_resource(ResourceKind::JobQueue, &spec.queue)
            .await?
            .is_some()
        {
            self.enabled_queue(&spec.queue, Some(&spec.team)).await?
        } else {
            self.queues.url(&spec.queue).await?;
            (spec.queue.clone(), None)
        };
        // Without a definition, the native defaults of a task (1 vCPU, 512 MiB).
        let (cpu, memory_mib) = match def {
            Some(_) => (spec.cpu, spec.memory_mib),
            None => (spec.cpu.or(Some(1.0)), spec.memory_mib.or(Some(512))),
        };
        let (template, parameters) = template_from(
            def.as_ref(),
            TemplateInput {
                command: Some(spec.command.clone()),
                env: spec.env.clone(),
                cpu,
                memory_mib,
                timeout_seconds: spec.timeout_seconds,
                retry: spec.retry_strategy.clone(),
                parameters: spec.parameters.clone(),
                tiers: spec.tiers.clone(),
            },
        )?;
        let depends_on = spec
            .depends_on
            .iter()
            .map(|d| JobDependency::parse(&d.job, d.kind.as_deref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ApiError::bad_request(
                    format!("field `depends_on`: {e}"),
                    json!({"field": "depends_on"}),
                )
            })?;
        self.submit_array_job_as(
            job_id,
            ArraySubmission {
                name: spec.name,
                team: spec.team.clone(),
                queue,
                template,
                array_size: spec.array_size,
                sequential: spec.sequential,
                depends_on,
                job_definition: def.and_then(|d| d["jobDefinitionArn"].as_str().map(String::from)),
                share_identifier: Some(spec.team),
                scheduling_priority: spec.scheduling_priority,
                weight,
                parameters,
                tags: spec.tags,
                caller: None,
            },
        )
        .await
    }

    /// Store an array (or single) job and register its dependencies. Shared by the
    /// AWS-compatible and the native API.
    pub async fn submit_array_job(&self, sub: ArraySubmission) -> Result<String, ApiError> {
        self.submit_array_job_as(new_job_id(now_ms()), sub).await
    }

    /// [`Service::submit_array_job`] under an id chosen by the caller (one an
    /// idempotency key has already claimed).
    pub async fn submit_array_job_as(
        &self,
        job_id: String,
        sub: ArraySubmission,
    ) -> Result<String, ApiError> {
        if sub.sequential && sub.array_size.is_none() {
            return Err(client(
                "dependsOn SEQUENTIAL: only an array job has children to order",
            ));
        }
        if sub.depends_on.len() > MAX_JOB_DEPENDENCIES {
            return Err(client(format!(
                "dependsOn: {} dependencies; at most {MAX_JOB_DEPENDENCIES}",
                sub.depends_on.len()
            )));
        }
        if sub.template.command.is_empty() {
            return Err(client("command is empty"));
        }
        self.ensure_pools(&sub.queue, &sub.template.tiers).await?;
        // Every dependency must name a job that exists, with the right shape.
        let ids: Vec<String> = sub.depends_on.iter().map(|d| d.job_id.clone()).collect();
        let store = self.store.clone();
        let targets: Vec<Result<Option<JobRecord>, ApiError>> = stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move { Ok(store.get_job(&id).await?) }
            })
            .buffered(32)
            .collect()
            .await;
        let mut n_to_n = Vec::new();
        for (i, (d, t)) in sub.depends_on.iter().zip(targets).enumerate() {
            let t = t?.ok_or_else(|| {
                client(format!("dependsOn[{i}]: job {} does not exist", d.job_id))
            })?;
            let size = t.array.as_ref().and_then(|a| a.array_size);
            if let Some(idx) = d.index {
                if size.is_none_or(|s| idx >= s) {
                    return Err(client(format!(
                        "dependsOn[{i}]: job {} has no child {idx}",
                        d.job_id
                    )));
                }
            }
            if d.kind == DependencyKind::NToN {
                if sub.array_size.is_none() || size != sub.array_size {
                    return Err(client(format!(
                        "dependsOn[{i}]: N_TO_N needs two array jobs of the same size ({} is {}, this job {})",
                        d.job_id,
                        size.map_or("not an array".into(), |s| s.to_string()),
                        sub.array_size.map_or("not an array".into(), |s| s.to_string()),
                    )));
                }
                if sub.sequential {
                    return Err(client(
                        "dependsOn: N_TO_N and SEQUENTIAL cannot be combined",
                    ));
                }
                n_to_n.push(d.job_id.clone());
            }
        }
        let gates: Vec<&JobDependency> = sub
            .depends_on
            .iter()
            .filter(|d| d.kind == DependencyKind::Job)
            .collect();
        let now = now_ms();
        let size = sub.array_size.unwrap_or(1);
        let job = JobRecord {
            job_id: job_id.clone(),
            name: sub.name.clone(),
            team: sub.team.clone(),
            queue: sub.queue.clone(),
            // Nothing to wait for: RUNNABLE from the first write, one write and one stream
            // hop fewer. With dependencies it waits PENDING until they are registered.
            state: if sub.depends_on.is_empty() {
                JobState::Runnable
            } else {
                JobState::Pending
            },
            reason: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            total_tasks: u64::from(size),
            shard_count: shard_count_for(size as usize),
            cancel_requested: false,
            array: Some(ArrayJob {
                template: sub.template,
                array_size: sub.array_size,
                sequential: sub.sequential,
                n_to_n,
                gate_count: gates.len() as u32,
                window: weighted_window(self.job_window, sub.weight),
                job_definition: sub.job_definition,
                share_identifier: sub.share_identifier,
                scheduling_priority: sub.scheduling_priority,
                parameters: sub.parameters,
                tags: sub.tags,
                caller: sub.caller,
            }),
            gates_met: 0,
            dispatched: 0,
            dependents: Vec::new(),
            notify: Default::default(),
        };
        self.store.put_job(&job).await?;
        if let Err(e) = self.register_dependencies(&job_id, &sub.depends_on).await {
            let _ = self
                .store
                .fail_job(
                    &job_id,
                    JobState::Failed,
                    &format!(
                        "submission failed while registering dependencies: {}",
                        e.message
                    ),
                )
                .await;
            return Err(e);
        }
        if !sub.depends_on.is_empty() {
            self.store.start_if_gates_met(&job_id).await?;
        }
        tracing::info!(job_id, name = %sub.name, size, "array job submitted");
        Ok(job_id)
    }

    async fn register_dependencies(
        &self,
        job_id: &str,
        deps: &[JobDependency],
    ) -> Result<(), ApiError> {
        if deps.is_empty() {
            return Ok(());
        }
        self.store.put_job_dependencies(job_id, deps).await?;
        let store = self.store.clone();
        let owner = job_id.to_string();
        let results: Vec<Result<(JobDependency, DependencyStatus), ApiError>> =
            stream::iter(deps.to_vec())
                .map(|d| {
                    let (store, job_id) = (store.clone(), owner.clone());
                    async move {
                        let as_dependent = match (d.kind, d.index) {
                            (DependencyKind::NToN, _) => Dependent::NToN(job_id.clone()),
                            (_, Some(index)) => Dependent::Child {
                                job_id: job_id.clone(),
                                index,
                            },
                            _ => Dependent::WholeJob(job_id.clone()),
                        };
                        let status = store.register_dependent(&d, &as_dependent).await?;
                        Ok((d, status))
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
        // Dependencies that had already ended: gates met (or the job failed) here, as
        // many at a time as the registrations, since a job may name thousands.
        let settled: Vec<(JobDependency, DependencyStatus)> = results
            .into_iter()
            .collect::<Result<Vec<_>, ApiError>>()?
            .into_iter()
            .filter(|(_, status)| !matches!(status, DependencyStatus::Waiting))
            .collect();
        let outcomes: Vec<Result<(), ApiError>> = stream::iter(settled)
            .map(|(d, status)| {
                let (store, job_id) = (store.clone(), owner.clone());
                async move {
                    match status {
                        DependencyStatus::Met => {
                            store.meet_gate(&job_id, &d.key()).await?;
                        }
                        DependencyStatus::Failed(_) | DependencyStatus::NoSuchJob
                            if d.kind != DependencyKind::NToN =>
                        {
                            let why = match status {
                                DependencyStatus::Failed(w) => w,
                                _ => format!("job {} does not exist", d.key()),
                            };
                            store
                                .fail_job(&job_id, JobState::Failed, &format!("Dependent {why}"))
                                .await?;
                        }
                        _ => {}
                    }
                    Ok(())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        outcomes.into_iter().collect()
    }

    pub async fn describe_jobs(&self, input: &Value) -> Result<Value, ApiError> {
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
            if let Some(d) = self.job_detail(&id).await? {
                out.push(d);
            }
        }
        Ok(json!({ "jobs": out }))
    }

    /// AWS's JobDetail for a job id or an array child id (`<job>:<index>`).
    async fn job_detail(&self, id: &str) -> Result<Option<Value>, ApiError> {
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
        let Some(job) = self.store.get_job(job_id).await? else {
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
        let mut container = json!({
            "command": a.template.command,
            "environment": env_list(&a.template.env),
            "resourceRequirements": [
                {"type": "VCPU", "value": format!("{}", f64::from(a.template.cpu_milli) / 1000.0)},
                {"type": "MEMORY", "value": a.template.memory_mib.to_string()},
            ],
        });
        let child_index = match (a.array_size, index) {
            (Some(size), Some(i)) if i < size => Some(i),
            (Some(_), Some(_)) => return Ok(None),
            (None, Some(_)) => return Ok(None),
            (None, None) => Some(0),
            (Some(_), None) => None,
        };
        match child_index {
            Some(i) => {
                // One container run: a child of an array, or a single job.
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
                let status = if index.is_none() && job.state.is_terminal() {
                    aws_status(&job)
                } else {
                    status
                };
                d.insert("status".into(), json!(status));
                if let Some(r) = reason.or_else(|| job.reason.clone().filter(|_| index.is_none())) {
                    d.insert("statusReason".into(), json!(r));
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
                        if let Some(c) = last.exit_code {
                            container["exitCode"] = json!(c);
                        }
                        if let Some(r) = &last.reason {
                            container["reason"] = json!(r);
                        }
                        if let Some(l) = &last.stdout {
                            container["logStreamName"] = json!(l);
                        }
                    }
                } else {
                    d.insert("attempts".into(), json!([]));
                }
                if index.is_some() {
                    d.insert("arrayProperties".into(), json!({"index": i}));
                    d.insert("jobId".into(), json!(child_aws_id(job_id, true, i)));
                }
                if let Some(env) = container["environment"].as_array_mut() {
                    if let Some(i) = index {
                        env.push(
                            json!({"name": "AWS_BATCH_JOB_ARRAY_INDEX", "value": i.to_string()}),
                        );
                    }
                }
            }
            None => {
                // The parent of an array: counts of its children by status.
                let (counts, _, _) = self.store.job_counts(job_id).await?;
                let counts = child_counts(&job, &counts);
                let mut summary: BTreeMap<&str, u64> =
                    ALL_STATUSES.iter().map(|s| (*s, 0)).collect();
                for st in TaskState::ALL {
                    *summary.entry(task_status(&st)).or_default() += counts.get(st);
                }
                job_status_fields(&job, &mut d);
                d.insert("attempts".into(), json!([]));
                d.insert(
                    "arrayProperties".into(),
                    json!({"size": a.size(), "statusSummary": summary}),
                );
            }
        }
        d.insert("container".into(), container);
        Ok(Some(Value::Object(d)))
    }

    pub async fn list_jobs(&self, input: &Value) -> Result<Value, ApiError> {
        if input.get("multiNodeJobId").is_some_and(|v| !v.is_null()) {
            return Err(client(
                "multiNodeJobId: multi-node parallel jobs are not supported",
            ));
        }
        let filters = input["filters"].as_array().cloned().unwrap_or_default();
        let mut name_filter: Option<String> = None;
        let mut before: Option<i64> = None;
        let mut after: Option<i64> = None;
        for (i, f) in filters.iter().enumerate() {
            let value = f["values"]
                .as_array()
                .and_then(|v| v.first())
                .and_then(Value::as_str)
                .unwrap_or("");
            match opt_str(f, "name") {
                Some("JOB_NAME") => name_filter = Some(value.to_string()),
                Some("BEFORE_CREATED_AT") => before = Some(value.parse().map_err(|_| client(format!("filters[{i}]: {value:?} is not a time in milliseconds")))?),
                Some("AFTER_CREATED_AT") => after = Some(value.parse().map_err(|_| client(format!("filters[{i}]: {value:?} is not a time in milliseconds")))?),
                Some("JOB_DEFINITION") => {}
                other => return Err(client(format!("filters[{i}].name {other:?} must be JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT or AFTER_CREATED_AT"))),
            }
        }
        // As AWS: with filters, the status is not used; without, it defaults to RUNNING.
        let status = if filters.is_empty() {
            Some(opt_str(input, "jobStatus").unwrap_or("RUNNING").to_string())
        } else {
            None
        };
        if let Some(s) = &status {
            if !ALL_STATUSES.contains(&s.as_str()) {
                return Err(client(format!("jobStatus {s:?} is not a job status")));
            }
        }
        let max = input["maxResults"].as_u64().unwrap_or(100).clamp(1, 1000) as usize;
        if let Some(parent) = opt_str(input, "arrayJobId") {
            return self
                .list_children(parent, status.as_deref(), max, opt_str(input, "nextToken"))
                .await;
        }
        let queue = name_of(
            req_str(input, "jobQueue").map_err(|_| client("jobQueue or arrayJobId is required"))?,
        )
        .to_string();
        let start = match opt_str(input, "nextToken") {
            Some(t) => Some(decode_key(t)?),
            None => None,
        };
        let (jobs, next) = self
            .store
            .list_jobs_in_queue(&queue, max, start, |j| {
                status.as_deref().is_none_or(|s| aws_status(j) == s)
                    && name_filter
                        .as_deref()
                        .is_none_or(|n| match n.strip_suffix('*') {
                            Some(p) => j.name.starts_with(p),
                            None => j.name == n,
                        })
                    && before.is_none_or(|b| j.created_at < b)
                    && after.is_none_or(|a| j.created_at > a)
            })
            .await?;
        let summaries: Vec<Value> = jobs.iter().map(job_summary).collect();
        Ok(json!({"jobSummaryList": summaries, "nextToken": next.map(|k| encode_key(&k))}))
    }

    async fn list_children(
        &self,
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
        while from < size && out.len() < max && scanned < 10_000 {
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
                        if let Some(c) = t.exit_code {
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

    /// CancelJob (`terminate` false): children not yet running never run; running ones
    /// finish. TerminateJob: running ones are killed too. Either way the job ends FAILED
    /// with the reason given.
    pub async fn aws_cancel_job(&self, input: &Value, terminate: bool) -> Result<Value, ApiError> {
        let id = req_str(input, "jobId")?;
        let reason = req_str(input, "reason")?;
        let job_id = id.split(':').next().unwrap_or(id);
        let job = self
            .store
            .get_job(job_id)
            .await?
            .ok_or_else(|| client(format!("jobId {id} does not exist")))?;
        if job.state.is_terminal() {
            return Ok(json!({}));
        }
        let Some(array) = &job.array else {
            self.cancel_job(job_id).await?;
            return Ok(json!({}));
        };
        if !terminate && array.array_size.is_none() && aws_status(&job) == "RUNNING" {
            // As in AWS Batch: CancelJob succeeds but leaves a started job running.
            return Ok(json!({}));
        }
        self.store.request_job_cancel(job_id).await?;
        let why = if terminate {
            format!("Terminated: {reason}")
        } else {
            format!("Cancelled: {reason}")
        };
        self.store.fail_job(job_id, JobState::Failed, &why).await?;
        if terminate {
            let open: Vec<TaskRecord> = self
                .store
                .all_tasks(job_id, job.shard_count)
                .await?
                .into_iter()
                .filter(|t| !t.state.is_terminal())
                .collect();
            for t in open {
                self.store.cancel_task(&t).await?;
            }
        }
        tracing::info!(job_id, terminate, reason, "array job stopped");
        Ok(json!({}))
    }
}

/// A job's own `status`, `statusReason`, `startedAt` and `stoppedAt` (the last three
/// only when known: botocore wants numbers where they are present).
fn job_status_fields(j: &JobRecord, d: &mut Map<String, Value>) {
    d.insert("status".into(), json!(aws_status(j)));
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

fn job_summary(j: &JobRecord) -> Value {
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

fn encode_key(k: &crate::store::ListKey) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("k:{}:{}", k.created_at, k.job_id))
}

fn decode_key(t: &str) -> Result<crate::store::ListKey, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let rest = s.strip_prefix("k:")?;
            let (at, id) = rest.split_once(':')?;
            Some(crate::store::ListKey {
                created_at: at.parse().ok()?,
                job_id: id.to_string(),
            })
        })
        .ok_or_else(|| client("nextToken is not a token this API gave out"))
}

/// What [`Service::submit_array_job`] stores.
#[derive(Debug, Clone)]
pub struct ArraySubmission {
    pub name: String,
    pub team: String,
    pub queue: String,
    pub template: JobTemplate,
    pub array_size: Option<u32>,
    pub sequential: bool,
    pub depends_on: Vec<JobDependency>,
    pub job_definition: Option<String>,
    pub share_identifier: Option<String>,
    pub scheduling_priority: i32,
    /// The share's weight factor in the queue's scheduling policy.
    pub weight: Option<f64>,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub caller: Option<String>,
}

/// What a submission gives of a job's template; each given field wins over the job
/// definition's.
#[derive(Debug, Default)]
pub struct TemplateInput {
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub retry: Option<RetryStrategy>,
    pub parameters: BTreeMap<String, String>,
    /// Resource tiers; none given means the definition's (its `batchplane:tiers` tag).
    pub tiers: Vec<Tier>,
}

/// The tag by which a job definition lists resource tiers (AWS's RegisterJobDefinition
/// has no field for them): `CPU:MEMORY_MIB[:GPU]` per tier, comma-separated, small to
/// large, e.g. `1:1024,2:8192,8:32768:1`.
pub const TIERS_TAG: &str = "batchplane:tiers";

/// The tiers a job definition's tags list (none without the tag).
pub fn definition_tiers(def: &Value) -> Result<Vec<Tier>, ApiError> {
    let Some(text) = def["tags"][TIERS_TAG].as_str() else {
        return Ok(Vec::new());
    };
    let tiers = text
        .split(',')
        .map(|t| Tier::parse_shape(t.trim()))
        .collect::<Result<Vec<Tier>, String>>()
        .map_err(|e| client(format!("tags.{TIERS_TAG}: {e}")))?;
    validate_tiers(&tiers).map_err(|e| client(format!("tags.{TIERS_TAG}: {e}")))?;
    Ok(tiers)
}

/// A job's template: the definition (if any) under what the submission gives, with
/// `Ref::` parameters substituted. Returns the merged parameters too.
fn template_from(
    def: Option<&Value>,
    given: TemplateInput,
) -> Result<(JobTemplate, BTreeMap<String, String>), ApiError> {
    let none = Value::Null;
    let def = def.unwrap_or(&none);
    let container = &def["containerProperties"];
    let (def_cpu, def_mem) = resources(container, "containerProperties")?;
    let mut parameters = string_map(def.get("parameters"), "parameters")?;
    parameters.extend(given.parameters);
    let raw = given
        .command
        .filter(|c| !c.is_empty())
        .or_else(|| command(container))
        .ok_or_else(|| {
            client("no command: neither the job definition nor the submission gives one")
        })?;
    let mut env = environment(container);
    env.extend(given.env);
    let retry = match given.retry {
        Some(r) => r,
        None => {
            retry_from(def.get("retryStrategy"), "jobDefinition retryStrategy")?.unwrap_or_default()
        }
    };
    let tiers = if given.tiers.is_empty() {
        definition_tiers(def)?
    } else {
        given.tiers
    };
    let (cpu_milli, memory_mib) = match tiers.first() {
        Some(t) => (t.cpu_milli, t.memory_mib),
        None => (
            ((given.cpu.or(def_cpu).unwrap_or(1.0)) * 1000.0).round() as u32,
            given.memory_mib.or(def_mem).unwrap_or(2048),
        ),
    };
    let template = JobTemplate {
        command: substitute_parameters(&raw, &parameters),
        env,
        cpu_milli,
        memory_mib,
        tiers,
        timeout_seconds: given
            .timeout_seconds
            .or_else(|| def["timeout"]["attemptDurationSeconds"].as_u64()),
        retry,
    };
    Ok((template, parameters))
}

/// The shard a child's item is on (for callers that know only the index).
pub fn child_shard(job: &JobRecord, index: u32) -> u32 {
    task_shard(&child_task_id(index), job.shard_count)
}
