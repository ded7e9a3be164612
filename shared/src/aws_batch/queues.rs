//! Job queues: priority, state and the compute environments they order.

use crate::api::{ApiError, Service};
use crate::domain::access::Access;
use crate::store::registry::ResourceKind;
use crate::store::JobQuery;
use serde_json::{json, Value};

use super::{arn::*, wire::*};

impl Service {
    // ---- job queues ----

    pub(super) async fn check_job_queue(&self, doc: &Value) -> Result<(), ApiError> {
        if let Some(st) = opt_str(doc, "state") {
            if st != "ENABLED" && st != "DISABLED" {
                return Err(client(format!("state {st:?} must be ENABLED or DISABLED")));
            }
        }
        opt_int(doc, "priority", "priority", 0, i64::from(i32::MAX))?;
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

    pub async fn create_job_queue(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        Self::require_admin(who, "create job queues")?;
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

    pub async fn describe_job_queues(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        self.describe(who, ResourceKind::JobQueue, input, "jobQueues", "jobQueues")
            .await
    }

    /// GetJobQueueSnapshot: the first 100 RUNNABLE jobs of the queue that the caller may
    /// see, in the order they were submitted (the order a queue without a fair-share
    /// policy starts them). A job's `earliestTimeAtPosition` is its submission: a job
    /// keeps its place from then on. Capacity and quota shares are not reported.
    pub async fn get_job_queue_snapshot(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let (name, _) = self
            .existing(ResourceKind::JobQueue, input, "jobQueue")
            .await?;
        let teams: Option<Vec<String>> = who
            .visible_teams()
            .map(|t| t.into_iter().map(String::from).collect());
        let page = self
            .store
            .list_jobs(name, &JobQuery::Front, teams.as_deref(), 100, None)
            .await?;
        let jobs: Vec<Value> = page
            .jobs
            .iter()
            .map(|j| json!({"jobArn": arn("job", &j.job_id), "earliestTimeAtPosition": j.created_at}))
            .collect();
        Ok(json!({"frontOfQueue": {"jobs": jobs, "lastUpdatedAt": self.store.now()}}))
    }

    pub async fn update_job_queue(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        Self::require_admin(who, "update job queues")?;
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

    pub async fn delete_job_queue(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        Self::require_admin(who, "delete job queues")?;
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

    // ---- jobs ----

    /// The job queue a job goes to, which must exist and be ENABLED; with its
    /// scheduling policy's weight for `share`, if it has one.
    pub(super) async fn enabled_queue(
        &self,
        reference: &str,
        share: Option<&str>,
    ) -> Result<EnabledQueue, ApiError> {
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
        // The compute environment a job is placed in: the queue's first, by order.
        let compute_environment = q["computeEnvironmentOrder"]
            .as_array()
            .and_then(|order| {
                order
                    .iter()
                    .min_by_key(|e| e["order"].as_i64().unwrap_or(i64::MAX))
                    .and_then(|e| opt_str(e, "computeEnvironment"))
            })
            .map(|ce| name_of(ce).to_string());
        Ok(EnabledQueue {
            name: name.to_string(),
            weight,
            compute_environment,
        })
    }
}

/// A job queue that takes jobs, as a submission uses it.
#[derive(Debug, Clone, Default)]
pub(super) struct EnabledQueue {
    pub name: String,
    /// The share's weight factor in the queue's scheduling policy.
    pub weight: Option<f64>,
    /// Its first compute environment (`AWS_BATCH_CE_NAME`).
    pub compute_environment: Option<String>,
}
