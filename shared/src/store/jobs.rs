//! Job items: the idempotency key, the job record, its state.

use super::item::*;
use super::request::{send, send_if, send_if_current};
use super::{Store, StoreError};
use crate::domain::{JobRecord, JobState};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use std::collections::HashMap;

/// How long a submission holds its idempotency key before a retry may take it over:
/// longer than any submission request may run (API Gateway ends one at 29 s).
pub const KEY_HOLD_MS: i64 = 60_000;

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// Free (or let go of by a failed submission): this submission goes ahead.
    Claimed,
    /// Bound to an accepted job: the answer to the retry.
    Bound(String),
    /// Held by the submission of that job: still being written, or (`lapsed`) died.
    Held { job_id: String, lapsed: bool },
}

impl Store {
    /// Claim an idempotency key for a submission about to write `job_id`. The key is
    /// bound to a job only once that job is accepted ([`Store::bind_idempotency_key`]);
    /// until then it is held, for [`KEY_HOLD_MS`], by the submission writing it.
    pub async fn claim_idempotency_key(
        &self,
        team: &str,
        key_value: &str,
        job_id: &str,
    ) -> Result<KeyClaim, StoreError> {
        let k = key(format!("K#{team}#{key_value}"), "KEY".into());
        let now = self.now();
        let mut it = k.clone();
        it.insert("job_id".into(), s(job_id));
        it.insert("created_at".into(), n(now));
        it.insert("held_until".into(), n(now + KEY_HOLD_MS));
        let taken = send_if_current(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it))
                .condition_expression("attribute_not_exists(pk)")
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                ),
        )
        .await?;
        match taken {
            Ok(_) => Ok(KeyClaim::Claimed),
            Err(old) => {
                let old = old.unwrap_or_default();
                let r = Reader::new(&old);
                let existing = r.req_s("job_id")?;
                // Our own claim, applied on a try whose answer was lost.
                if existing == job_id {
                    return Ok(KeyClaim::Claimed);
                }
                // A key written before keys were held is a bound one.
                Ok(match r.opt_n::<i64>("held_until")? {
                    Some(until) => KeyClaim::Held {
                        job_id: existing,
                        lapsed: until < now,
                    },
                    None => KeyClaim::Bound(existing),
                })
            }
        }
    }

    /// Take over a key whose hold lapsed (its submission died part-way), for `job_id`;
    /// false if someone else did first.
    pub async fn take_over_idempotency_key(
        &self,
        team: &str,
        key_value: &str,
        held_by: &str,
        job_id: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(format!("K#{team}#{key_value}"), "KEY".into())))
                .update_expression("SET job_id = :job, held_until = :until, created_at = :now")
                .condition_expression("job_id = :old AND held_until < :now")
                .expression_attribute_values(":job", s(job_id))
                .expression_attribute_values(":old", s(held_by))
                .expression_attribute_values(":until", n(now + KEY_HOLD_MS))
                .expression_attribute_values(":now", n(now)),
        )
        .await?
        .is_some())
    }

    /// Bind a claimed key to the job it was claimed for, now accepted: from here on a
    /// retry with the key is answered with that job.
    pub async fn bind_idempotency_key(
        &self,
        team: &str,
        key_value: &str,
        job_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(format!("K#{team}#{key_value}"), "KEY".into())))
                .update_expression("REMOVE held_until")
                .condition_expression("job_id = :job")
                .expression_attribute_values(":job", s(job_id)),
        )
        .await?
        .is_some())
    }

    /// Let go of a key claimed for a submission that failed, so a retry tries again.
    pub async fn release_idempotency_key(
        &self,
        team: &str,
        key_value: &str,
        job_id: &str,
    ) -> Result<(), StoreError> {
        send_if(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(format!("K#{team}#{key_value}"), "KEY".into())))
                .condition_expression("job_id = :job AND attribute_exists(held_until)")
                .expression_attribute_values(":job", s(job_id)),
        )
        .await?;
        Ok(())
    }

    /// Commit a submitted DAG job whose tasks are all written: PENDING, and the walk
    /// that sends its ready tasks started, in one transaction. False if it was not an
    /// uncommitted SUBMITTED job (swept as abandoned meanwhile).
    pub async fn commit_job(&self, job_id: &str) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        let build = |source| StoreError::Build {
            operation: "TransactWriteItems",
            source,
        };
        let commit = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("SET #state = :pending, committed_at = :now REMOVE uncommitted")
            // An open job commits only with every page whole.
            .condition_expression("#state = :submitted AND uncommitted = :true AND (attribute_not_exists(pages_writing) OR pages_writing = :zero)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":pending", s(JobState::Pending.as_str()))
            .expression_attribute_values(":submitted", s(JobState::Submitted.as_str()))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":now", n(self.now()))
            .build()
            .map_err(build)?;
        let walk = Put::builder()
            .table_name(&self.table)
            .set_item(Some(super::work::cursor_to_item(
                &super::WorkCursor::start(job_id, super::WorkKind::Enqueue, 0),
            )))
            .build()
            .map_err(build)?;
        Ok(send_if(
            self.ddb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(commit).build())
                .transact_items(TransactWriteItem::builder().put(walk).build()),
        )
        .await?
        .is_some())
    }

    /// A queue's DAG jobs still uncommitted that were created between `from` and
    /// `until` (ms): submissions that failed or died part-way, once old enough.
    pub async fn uncommitted_jobs(
        &self,
        queue: &str,
        from: i64,
        until: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .index_name(BY_QUEUE_INDEX)
                    .key_condition_expression("#jq = :q AND created_at BETWEEN :from AND :until")
                    .filter_expression("uncommitted = :true")
                    .expression_attribute_names("#jq", JOB_QUEUE_ATTR)
                    .expression_attribute_values(":q", s(queue))
                    .expression_attribute_values(":from", n(from))
                    .expression_attribute_values(":until", n(until))
                    .expression_attribute_values(":true", AttributeValue::Bool(true))
            })
            .await?;
        items.iter().map(|it| Ok(job_from_item(it)?)).collect()
    }

    /// Close an abandoned submission: FAILED with `reason`, if it is still uncommitted
    /// (a submission that was only slow and commits first wins), and, for a job open
    /// for pages, if no page came after `idle_since` (ms). Its tasks were never sent
    /// and are left as written.
    pub async fn abandon_job(
        &self,
        job_id: &str,
        reason: &str,
        idle_since: i64,
    ) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(job_id), META_SK.into())))
                .update_expression("SET #state = :failed, reason = :reason, finished_at = :now")
                .condition_expression("#state = :submitted AND uncommitted = :true AND (attribute_not_exists(last_page_at) OR last_page_at < :idle)")
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":idle", n(idle_since))
                .expression_attribute_values(":failed", s(JobState::Failed.as_str()))
                .expression_attribute_values(":submitted", s(JobState::Submitted.as_str()))
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .expression_attribute_values(":reason", s(reason))
                .expression_attribute_values(":now", n(self.now())),
        )
        .await?
        .is_some())
    }

    pub async fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        if !job.team.is_empty() {
            self.note_job_team(&job.team).await?;
        }
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
            // Not while its submission is still being written: nothing runs before
            // the commit.
            .condition_expression(
                "#state IN (:submitted, :pending) AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false) AND attribute_not_exists(uncommitted)",
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

    /// Flag a job as cancelled so no task is added and its workers stop its tasks, and
    /// say how it was stopped and (when the caller gave one) why.
    pub async fn request_job_cancel(
        &self,
        job_id: &str,
        stop: crate::domain::Stop,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression(
                "SET cancel_requested = :true, stopped_by = :stop, \
                 stopped_at = if_not_exists(stopped_at, :now)",
            );
        if let Some(r) = reason {
            update = update
                .update_expression(
                    "SET cancel_requested = :true, stopped_by = :stop, stop_reason = :why, \
                     stopped_at = if_not_exists(stopped_at, :now)",
                )
                .expression_attribute_values(":why", s(r));
        }
        Ok(send_if(
            update
                .expression_attribute_values(":stop", s(stop.as_str()))
                .expression_attribute_values(":now", n(self.now()))
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
