//! Job items: the idempotency key, the job record, its state, listing a queue's jobs.

use super::item::*;
use super::request::{send, send_if, send_if_current};
use super::{Store, StoreError};
use crate::domain::{JobRecord, JobState};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use std::collections::HashMap;

/// job returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKey {
    pub created_at: i64,
    pub job_id: String,
}

impl Store {
    /// Remember `job_id` for an idempotency key; if the key was used before, the job
    /// it named.
    pub async fn claim_idempotency_key(
        &self,
        team: &str,
        key_value: &str,
        job_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut it = key(format!("K#{team}#{key_value}"), "KEY".into());
        it.insert("job_id".into(), s(job_id));
        it.insert("created_at".into(), n(self.now()));
        match send_if_current(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it))
                .condition_expression("attribute_not_exists(pk)")
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                ),
        )
        .await?
        {
            Ok(_) => Ok(None),
            Err(old) => {
                let old = old.unwrap_or_default();
                Ok(Some(Reader::new(&old).req_s("job_id")?))
            }
        }
    }

    pub async fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(job_to_item(job)))
                .condition_expression("attribute_not_exists(pk)"),
        )
        .await?;
        Ok(())
    }

    pub async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        match self.read_item(key(job_pk(job_id), META_SK.into())).await? {
            Some(it) => Ok(Some(job_from_item(&it)?)),
            None => Ok(None),
        }
    }

    /// Move a job's stored state, if it is still one of `from`.
    pub async fn set_job_state(
        &self,
        job_id: &str,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.set_job_state_if(job_id, from, to, reason, None).await
    }

    /// Close a job as `to`, if it is still one of `from` and still has `total` tasks: a
    /// job that grew since its counts were read (tasks added meanwhile) stays open.
    pub async fn close_job(
        &self,
        job_id: &str,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
        total: u64,
    ) -> Result<bool, StoreError> {
        self.set_job_state_if(job_id, from, to, reason, Some(total))
            .await
    }

    async fn set_job_state_if(
        &self,
        job_id: &str,
        from: &[JobState],
        to: JobState,
        reason: Option<&str>,
        total: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut values = HashMap::from([(":to".to_string(), s(to.as_str()))]);
        let mut placeholders = Vec::new();
        for (i, st) in from.iter().enumerate() {
            values.insert(format!(":f{i}"), s(st.as_str()));
            placeholders.push(format!(":f{i}"));
        }
        let mut update = "SET #state = :to".to_string();
        if to.is_terminal() {
            update.push_str(", finished_at = :now");
            values.insert(":now".into(), n(self.now()));
        }
        if let Some(r) = reason {
            update.push_str(", reason = :reason");
            values.insert(":reason".into(), s(r));
        }
        if let Some(t) = total {
            values.insert(":total".into(), n(t));
        }
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression(update)
                .condition_expression(match total {
                    Some(_) => format!(
                        "#state IN ({}) AND total_tasks = :total",
                        placeholders.join(", ")
                    ),
                    None => format!("#state IN ({})", placeholders.join(", ")),
                })
                .expression_attribute_names("#state", "state")
                .set_expression_attribute_values(Some(values)),
        )
        .await?
        .is_some())
    }

    /// A queue's jobs, newest first, that pass `keep`: up to `max`, and where to go on.
    pub async fn list_jobs_in_queue(
        &self,
        queue: &str,
        max: usize,
        start: Option<ListKey>,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, Option<ListKey>), StoreError> {
        let mut out = Vec::new();
        let mut exclusive: Option<Item> = start.map(|k| {
            let mut it = key(job_pk(&k.job_id), META_SK.into());
            it.insert(JOB_QUEUE_ATTR.into(), s(queue));
            it.insert("created_at".into(), n(k.created_at));
            it
        });
        loop {
            let page = send(
                self.ddb
                    .query()
                    .table_name(&self.table)
                    .index_name(BY_QUEUE_INDEX)
                    .key_condition_expression("#jq = :q")
                    .expression_attribute_names("#jq", JOB_QUEUE_ATTR)
                    .expression_attribute_values(":q", s(queue))
                    .scan_index_forward(false)
                    .limit(100)
                    .set_exclusive_start_key(exclusive.take()),
            )
            .await?;
            for it in page.items() {
                let job = job_from_item(it)?;
                if keep(&job) {
                    out.push(job);
                    if out.len() == max {
                        let last = &out[out.len() - 1];
                        let k = ListKey {
                            created_at: last.created_at,
                            job_id: last.job_id.clone(),
                        };
                        return Ok((out, Some(k)));
                    }
                }
            }
            match page.last_evaluated_key() {
                Some(k) => exclusive = Some(k.clone()),
                None => return Ok((out, None)),
            }
        }
    }

    /// Record when the job's first task started (once).
    pub async fn mark_job_started(&self, job_id: &str, at: i64) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("SET started_at = :at")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(started_at)")
                .expression_attribute_values(":at", n(at)),
        )
        .await?
        .is_some())
    }

    /// Grow a job by `added` tasks, unless it has finished or is being cancelled.
    pub async fn add_to_total(&self, job_id: &str, added: u64) -> Result<bool, StoreError> {
        Ok(send_if(self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("ADD total_tasks :n")
            .condition_expression(
                "#state IN (:submitted, :pending) AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":n", n(added))
            .expression_attribute_values(":submitted", s(JobState::Submitted.as_str()))
            .expression_attribute_values(":pending", s(JobState::Pending.as_str()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))).await?.is_some())
    }

    /// Take back `removed` of a job's total: an addition that raised it wrote nothing.
    /// The job's stream record lets the fanout close a job this leaves complete.
    pub async fn take_from_total(&self, job_id: &str, removed: u64) -> Result<(), StoreError> {
        send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("ADD total_tasks :n")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":n", n(-(removed as i64))),
        )
        .await?;
        Ok(())
    }

    /// Flag a job as cancelled so no task is added and its workers stop its tasks.
    pub async fn request_job_cancel(&self, job_id: &str) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("SET cancel_requested = :true")
                .condition_expression("#state IN (:submitted, :pending, :runnable)")
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .expression_attribute_values(":submitted", s(JobState::Submitted.as_str()))
                .expression_attribute_values(":pending", s(JobState::Pending.as_str()))
                .expression_attribute_values(":runnable", s(JobState::Runnable.as_str())),
        )
        .await?
        .is_some())
    }
}
