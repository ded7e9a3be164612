//! Array jobs and dependencies between jobs, in DynamoDB.
//!
//! | item | pk | sk | written |
//! |---|---|---|---|
//! | dependencies as submitted | `J#<job>` | `DEPS` | submit (only with dependencies) |
//! | one met gate | `J#<job>` | `G#<dependency>` | when the dependency succeeds, once |
//! | array child | `J#<job>#<shard>` | `T#<index>` | by the claim that starts it |
//!
//! A gate marker and the job's `gates_met` counter move in one transaction, so a
//! dependency released twice (stream redelivery) counts once.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use crate::domain::batch::{Dependent, JobDependency};
use crate::domain::ids::task_shard;
use crate::domain::{JobRecord, JobState, TaskState};
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};

/// Where a new dependency stands once registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyStatus {
    /// The dependency will release this job when it ends.
    Waiting,
    /// It has already succeeded.
    Met,
    /// It has already failed (or can never run); the reason says which.
    Failed(String),
    NoSuchJob,
}

/// Non-terminal stored job states.
const OPEN_JOB: &str = "#state IN (:submitted, :pending, :runnable)";

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Build {
        operation: "TransactWriteItems",
        source: e,
    }
}

impl Store {
    /// Store an array job's dependencies as submitted (for describing it).
    pub async fn put_job_dependencies(
        &self,
        job_id: &str,
        deps: &[JobDependency],
    ) -> Result<(), StoreError> {
        let mut it = key(job_pk(job_id), "DEPS".into());
        it.insert(
            "deps".into(),
            s(serde_json::to_string(deps).unwrap_or_default()),
        );
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    pub async fn job_dependencies(&self, job_id: &str) -> Result<Vec<JobDependency>, StoreError> {
        let Some(it) = self.read_item(key(job_pk(job_id), "DEPS".into())).await? else {
            return Ok(Vec::new());
        };
        let r = Reader::new(&it);
        serde_json::from_str(&r.req_s("deps")?).map_err(|e| {
            StoreError::Malformed(Malformed {
                key: format!("J#{job_id}/DEPS"),
                problem: e.to_string(),
            })
        })
    }

    /// Register `dependent` on the job `on` names, unless that job (or child) has
    /// already ended, in which case say how.
    pub async fn register_dependent(
        &self,
        on: &JobDependency,
        dependent: &Dependent,
    ) -> Result<DependencyStatus, StoreError> {
        let Some(target) = self.get_job(&on.job_id).await? else {
            return Ok(DependencyStatus::NoSuchJob);
        };
        let meta = key(job_pk(&on.job_id), META_SK.into());
        let add = |open_only: bool| -> Result<Update, StoreError> {
            let mut u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(meta.clone()))
                .update_expression("ADD dependents :d")
                .expression_attribute_values(":d", AttributeValue::Ss(vec![dependent.encode()]));
            if open_only {
                u = u
                    .condition_expression(OPEN_JOB)
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":submitted", s("SUBMITTED"))
                    .expression_attribute_values(":pending", s("PENDING"))
                    .expression_attribute_values(":runnable", s("RUNNABLE"));
            } else {
                u = u.condition_expression("attribute_exists(pk)");
            }
            u.build().map_err(build_err)
        };
        match (on.kind, on.index) {
            // N_TO_N: registered even on a finished job; the dependent sweeps its
            // children once it may start.
            (crate::domain::batch::DependencyKind::NToN, _) => {
                let u = add(false)?;
                self.run_transaction(vec![TransactWriteItem::builder().update(u).build()])
                    .await?;
                Ok(DependencyStatus::Waiting)
            }
            (_, None) => {
                let u = add(true)?;
                if self
                    .run_transaction(vec![TransactWriteItem::builder().update(u).build()])
                    .await?
                {
                    return Ok(DependencyStatus::Waiting);
                }
                Ok(match self.get_job(&on.job_id).await?.map(|j| j.state) {
                    Some(JobState::Succeeded) => DependencyStatus::Met,
                    Some(st) => DependencyStatus::Failed(format!("job {} {st}", on.job_id)),
                    None => DependencyStatus::NoSuchJob,
                })
            }
            (_, Some(index)) => {
                let child_key = key(
                    task_pk(
                        &on.job_id,
                        task_shard(&index.to_string(), target.shard_count),
                    ),
                    task_sk(&index.to_string()),
                );
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(child_key.clone()))
                    .condition_expression(
                        "attribute_not_exists(#state) OR #state IN (:runnable, :running)",
                    )
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":runnable", s("RUNNABLE"))
                    .expression_attribute_values(":running", s("RUNNING"))
                    .build()
                    .map_err(build_err)?;
                let u = add(true)?;
                if self
                    .run_transaction(vec![
                        TransactWriteItem::builder().condition_check(check).build(),
                        TransactWriteItem::builder().update(u).build(),
                    ])
                    .await?
                {
                    return Ok(DependencyStatus::Waiting);
                }
                let child = self.read_item(child_key).await?;
                Ok(match child.as_ref().and_then(state_of) {
                    Some(TaskState::Succeeded) => DependencyStatus::Met,
                    Some(st) => DependencyStatus::Failed(format!("job {} {st}", on.key())),
                    None => DependencyStatus::Failed(format!(
                        "job {} ended before child {index} ran",
                        on.job_id
                    )),
                })
            }
        }
    }

    /// Record that gate `gate` of `job_id` is met (once, however often it is called),
    /// then start the job if every gate is. Returns whether this call started it.
    pub async fn meet_gate(&self, job_id: &str, gate: &str) -> Result<bool, StoreError> {
        let mut marker = key(job_pk(job_id), format!("G#{gate}"));
        marker.insert("at".into(), n(self.now()));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(marker))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        let count = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("ADD gates_met :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(build_err)?;
        self.run_transaction(vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(count).build(),
        ])
        .await?;
        self.start_if_gates_met(job_id).await
    }

    /// PENDING → RUNNABLE once every gate is met. Returns whether this call did it.
    pub async fn start_if_gates_met(&self, job_id: &str) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("SET #state = :runnable")
                .condition_expression("#state = :pending AND gates_met >= gate_count")
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":runnable", s(JobState::Runnable.as_str()))
                .expression_attribute_values(":pending", s(JobState::Pending.as_str())),
        )
        .await?
        .is_some())
    }

    /// Move the dispatch cursor from `from` to `to`; false if another writer moved it.
    pub async fn advance_dispatch(
        &self,
        job_id: &str,
        from: u64,
        to: u64,
    ) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("SET dispatched = :to")
                .condition_expression("dispatched = :from")
                .expression_attribute_values(":to", n(to))
                .expression_attribute_values(":from", n(from)),
        )
        .await?
        .is_some())
    }

    /// End a child that never ran (its dependency failed, or its job was cancelled):
    /// the item is created FAILED, unless the child already exists.
    pub async fn fail_unstarted_child(
        &self,
        job: &JobRecord,
        index: u32,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let task_id = index.to_string();
        let shard = task_shard(&task_id, job.shard_count);
        let now = self.now();
        let mut it = key(task_pk(&job.job_id, shard), task_sk(&task_id));
        it.insert("job_id".into(), s(&job.job_id));
        it.insert("task_id".into(), s(&task_id));
        it.insert("idx".into(), n(index));
        it.insert("shard".into(), n(shard));
        it.insert("kind".into(), s("command"));
        it.insert("queue".into(), s(&job.queue));
        it.insert("state".into(), s(TaskState::Failed.as_str()));
        it.insert(super::item::FAILED_IN_ATTR.into(), s(&job.job_id));
        it.insert("reason".into(), s(reason));
        it.insert("attempt".into(), n(0));
        it.insert("created_at".into(), n(now));
        it.insert("finished_at".into(), n(now));
        self.put_if_absent(it).await
    }

    /// Close an array job that cannot run (a dependency failed, or it was cancelled
    /// before its children all ran).
    pub async fn fail_job(
        &self,
        job_id: &str,
        to: JobState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.set_job_state(
            job_id,
            &[JobState::Submitted, JobState::Pending, JobState::Runnable],
            to,
            Some(reason),
        )
        .await
    }

    /// Run a transaction; false when a condition in it failed.
    async fn run_transaction(&self, items: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .transact_write_items()
                .set_transact_items(Some(items)),
        )
        .await?
        .is_some())
    }
}
