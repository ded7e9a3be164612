//! A job's task counts: one delta item per stream batch (written once), summed on read
//! and folded into the job's running total.

use super::item::*;
use super::request::{send, send_unless_cancelled};
use super::{Store, StoreError};
use crate::domain::{TaskCounts, Usage};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

impl Store {
    /// Record one stream batch's count deltas for a job, once: a retried batch has the
    /// same key and is refused by the condition.
    pub async fn put_batch_counts(
        &self,
        job_id: &str,
        batch_key: &str,
        counts: &TaskCounts,
        usage: &Usage,
    ) -> Result<bool, StoreError> {
        let mut it = key(job_pk(job_id), format!("{COUNTS_PREFIX}{batch_key}"));
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
        self.put_if_absent(it).await
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
        let batch: Vec<&Item> = out
            .items()
            .iter()
            .filter(
                |it| !matches!(it.get("sk"), Some(AttributeValue::S(sk)) if sk == COUNTS_BASE_SK),
            )
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
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(k))
                            .condition_expression("attribute_exists(pk)")
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
