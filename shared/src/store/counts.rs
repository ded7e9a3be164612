//! A job's task counts: one delta item per stream batch (each record counted once, see
//! [`Store::add_batch_counts`]), summed on read and folded into the job's running total.

use super::item::*;
use super::request::{send, send_unless_cancelled};
use super::{Store, StoreError};
use crate::domain::{TaskCounts, Usage};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// Whether stream sequence number `a` comes after `b` (both decimal, of one shard).
pub fn sequence_after(a: &str, b: &str) -> bool {
    (a.len(), a) > (b.len(), b)
}

/// How long a batch's count item is kept as it is before it may be folded: a retried
/// batch finds it and adds only what it has not counted yet.
const FOLD_MIN_AGE_MS: i64 = 15 * 60 * 1000;

/// One stream record's part of a job's counts.
#[derive(Debug, Clone, Default)]
pub struct RecordCounts {
    pub sequence_number: String,
    pub counts: TaskCounts,
    pub usage: Usage,
}

fn sum(parts: &[&RecordCounts]) -> (TaskCounts, Usage) {
    let mut counts = TaskCounts::default();
    let mut usage = Usage::default();
    for p in parts {
        counts.merge(&p.counts);
        usage.add(&p.usage);
    }
    (counts, usage)
}

impl Store {
    /// Add a stream batch's count deltas for a job, each record's once. The batch's item
    /// is keyed by its first record and remembers the last record it counted (`upto`):
    /// a batch retried from the same record (a function error, a duplicate invocation)
    /// adds only the records past that, however far each try got. Records are in stream
    /// order. Whether anything was added.
    pub async fn add_batch_counts(
        &self,
        job_id: &str,
        batch_start: &str,
        parts: &[RecordCounts],
    ) -> Result<bool, StoreError> {
        let Some(last) = parts.last().map(|p| p.sequence_number.clone()) else {
            return Ok(false);
        };
        let k = key(job_pk(job_id), format!("{COUNTS_PREFIX}{batch_start}"));
        let all: Vec<&RecordCounts> = parts.iter().collect();
        let (counts, usage) = sum(&all);
        let mut it = k.clone();
        for (st, delta) in &counts.0 {
            if *delta != 0 {
                it.insert(counts_attr(*st), n(*delta));
            }
        }
        if !usage.is_empty() {
            for (field, v) in Usage::FIELDS.iter().zip(usage.values()) {
                it.insert(usage_attr(field), n(v));
            }
        }
        it.insert("upto".into(), s(&last));
        it.insert("at".into(), n(self.now()));
        if self.put_if_absent(it).await? {
            return Ok(true);
        }
        for _ in 0..super::request::CONFLICT_RETRIES {
            let Some(current) = self.read_item(k.clone()).await? else {
                // Folded since: it was old, and what it counted is in the base.
                return Ok(false);
            };
            // An item without `upto` predates per-record counting: a retry of it
            // counted everything its key named.
            let Some(upto) = Reader::new(&current).opt_s("upto")? else {
                return Ok(false);
            };
            let rest: Vec<&RecordCounts> = parts
                .iter()
                .filter(|p| sequence_after(&p.sequence_number, &upto))
                .collect();
            if rest.is_empty() {
                return Ok(false);
            }
            let (counts, usage) = sum(&rest);
            let mut adds = Vec::new();
            let mut values = HashMap::from([
                (":upto".to_string(), s(&upto)),
                (":last".to_string(), s(&last)),
            ]);
            for (i, (st, delta)) in counts.0.iter().enumerate() {
                if *delta != 0 {
                    adds.push(format!("{} :v{i}", counts_attr(*st)));
                    values.insert(format!(":v{i}"), n(*delta));
                }
            }
            if !usage.is_empty() {
                for (i, (field, v)) in Usage::FIELDS.iter().zip(usage.values()).enumerate() {
                    adds.push(format!("{} :u{i}", usage_attr(field)));
                    values.insert(format!(":u{i}"), n(v));
                }
            }
            let update = if adds.is_empty() {
                "SET upto = :last".to_string()
            } else {
                format!("SET upto = :last ADD {}", adds.join(", "))
            };
            let written = super::request::send_if(
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(k.clone()))
                    .update_expression(update)
                    .condition_expression("upto = :upto")
                    .set_expression_attribute_values(Some(values)),
            )
            .await?;
            if written.is_some() {
                return Ok(true);
            }
        }
        Err(StoreError::Unprocessed {
            operation: "UpdateItem (batch counts)",
            remaining: parts.len(),
        })
    }

    /// A job's counts of tasks by state and its resource usage: the sum of its batch
    /// count items. Returns how many items were summed too, so callers can fold them
    /// when they pile up.
    pub async fn job_counts(&self, job_id: &str) -> Result<(TaskCounts, Usage, usize), StoreError> {
        let mut total = TaskCounts::default();
        let mut usage = Usage::default();
        let mut items = 0;
        let mut start: Option<Item> = None;
        loop {
            let out = send(
                self.ddb
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
                    .expression_attribute_values(":pk", s(job_pk(job_id)))
                    .expression_attribute_values(":c", s(COUNTS_PREFIX))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take()),
            )
            .await?;
            for it in out.items() {
                total.merge(&counts_from_item(it));
                usage.add(&usage_from_item(it));
                items += 1;
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        Ok((total, usage, items))
    }

    /// Fold batch count items into `C#base`, 99 at a time, each fold one transaction, so
    /// reading a job's counts stays a small query however long the job runs.
    pub async fn fold_counts(&self, job_id: &str) -> Result<(), StoreError> {
        let out = send(
            self.ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
                .expression_attribute_values(":pk", s(job_pk(job_id)))
                .expression_attribute_values(":c", s(COUNTS_PREFIX))
                .consistent_read(true)
                .limit(100),
        )
        .await?;
        let young = self.now() - FOLD_MIN_AGE_MS;
        let batch: Vec<&Item> = out
            .items()
            .iter()
            .filter(
                |it| !matches!(it.get("sk"), Some(AttributeValue::S(sk)) if sk == COUNTS_BASE_SK),
            )
            .filter(|it| {
                Reader::new(it)
                    .opt_n::<i64>("at")
                    .ok()
                    .flatten()
                    .is_none_or(|at| at < young)
            })
            .take(99)
            .collect();
        if batch.len() < 2 {
            return Ok(());
        }
        let mut sum = TaskCounts::default();
        let mut usage = Usage::default();
        for it in &batch {
            sum.merge(&counts_from_item(it));
            usage.add(&usage_from_item(it));
        }
        use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};
        let mut update_parts = Vec::new();
        let mut values = HashMap::new();
        for (i, (st, delta)) in sum.0.iter().enumerate() {
            update_parts.push(format!("{} :v{i}", counts_attr(*st)));
            values.insert(format!(":v{i}"), n(*delta));
        }
        if !usage.is_empty() {
            for (i, (field, v)) in Usage::FIELDS.iter().zip(usage.values()).enumerate() {
                update_parts.push(format!("{} :u{i}", usage_attr(field)));
                values.insert(format!(":u{i}"), n(v));
            }
        }
        let mut items = Vec::new();
        if !update_parts.is_empty() {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(job_pk(job_id), COUNTS_BASE_SK.into())))
                            .update_expression(format!("ADD {}", update_parts.join(", ")))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(|source| StoreError::Build {
                                operation: "TransactWriteItems",
                                source,
                            })?,
                    )
                    .build(),
            );
        }
        for it in &batch {
            let k = key(job_pk(job_id), Reader::new(it).req_s("sk")?);
            // Deleted only as read: a retried batch may have added to it meanwhile.
            let delete = match Reader::new(it).opt_s("upto")? {
                Some(upto) => Delete::builder()
                    .condition_expression("upto = :upto")
                    .expression_attribute_values(":upto", s(upto)),
                None => Delete::builder().condition_expression("attribute_exists(pk)"),
            };
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        delete
                            .table_name(&self.table)
                            .set_key(Some(k))
                            .build()
                            .map_err(|source| StoreError::Build {
                                operation: "TransactWriteItems",
                                source,
                            })?,
                    )
                    .build(),
            );
        }
        // Cancelled: another fold won the race; the counts are intact either way.
        send_unless_cancelled(
            self.ddb
                .transact_write_items()
                .set_transact_items(Some(items)),
        )
        .await?;
        Ok(())
    }
}
