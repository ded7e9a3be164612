//! Paged work over a job's tasks: what must touch every task of a job (sending a just
//! committed job's ready tasks; cancelling) is done a page at a time, each page driven
//! by the stream record of a cursor item that the previous page advanced. No request,
//! stream record or Lambda invocation touches more than one page, however big the job.
//!
//! The cursor (`J#<job>` / `W#<kind>`) says which shard and where in it the next page
//! starts, and a step number: advancing is conditional on the step, so a duplicate
//! stream record of a cursor repeats at most its own page (whose effects are
//! idempotent) and never skips or doubles the walk.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use crate::domain::TaskRecord;
use aws_sdk_dynamodb::types::AttributeValue;

/// What a job's paged work does at each task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Send the RUNNABLE tasks of a job whose submission just committed.
    Enqueue,
    /// Cancel every task not yet finished.
    Cancel,
}

impl WorkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkKind::Enqueue => "enqueue",
            WorkKind::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<WorkKind> {
        match s {
            "enqueue" => Some(WorkKind::Enqueue),
            "cancel" => Some(WorkKind::Cancel),
            _ => None,
        }
    }
}

/// Where a job's paged work has got to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCursor {
    pub job_id: String,
    pub kind: WorkKind,
    pub shard: u32,
    /// The sort key the next page starts after (none: the shard's start).
    pub after: Option<String>,
    pub step: u64,
}

/// How many tasks one page covers.
pub const WORK_PAGE: i32 = 500;

pub fn cursor_to_item(c: &WorkCursor) -> Item {
    let mut it = key(job_pk(&c.job_id), work_sk(c.kind.as_str()));
    it.insert("type".into(), s("work"));
    it.insert("job_id".into(), s(&c.job_id));
    it.insert("kind".into(), s(c.kind.as_str()));
    it.insert("shard".into(), n(c.shard));
    it.insert("step".into(), n(c.step));
    if let Some(a) = &c.after {
        it.insert("after".into(), s(a));
    }
    it
}

pub fn cursor_from_item(item: &Item) -> Result<WorkCursor, Malformed> {
    let r = Reader::new(item);
    let kind = r.req_s("kind")?;
    Ok(WorkCursor {
        job_id: r.req_s("job_id")?,
        kind: WorkKind::parse(&kind).ok_or_else(|| r.bad("kind", "unknown work kind"))?,
        shard: r.req_n("shard")?,
        after: r.opt_s("after")?,
        step: r.req_n("step")?,
    })
}

impl Store {
    /// Start a job's paged work (a no-op if it is under way already).
    pub async fn start_work(&self, job_id: &str, kind: WorkKind) -> Result<bool, StoreError> {
        self.put_if_absent(cursor_to_item(&WorkCursor {
            job_id: job_id.into(),
            kind,
            shard: 0,
            after: None,
            step: 0,
        }))
        .await
    }

    /// The tasks of the cursor's page (every item kind), and the cursor for the next
    /// page (`None`: the walk is done).
    pub async fn work_page(
        &self,
        c: &WorkCursor,
        shard_count: u32,
    ) -> Result<(Vec<TaskRecord>, Option<WorkCursor>), StoreError> {
        let out = send(
            self.ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(task_pk(&c.job_id, c.shard)))
                .consistent_read(true)
                .limit(WORK_PAGE)
                .set_exclusive_start_key(
                    c.after
                        .as_ref()
                        .map(|sk| key(task_pk(&c.job_id, c.shard), sk.clone())),
                ),
        )
        .await?;
        let tasks = out
            .items()
            .iter()
            .filter(|it| is_task_item(it))
            .map(task_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match out.last_evaluated_key().and_then(|k| k.get("sk")) {
            Some(AttributeValue::S(sk)) => Some(WorkCursor {
                after: Some(sk.clone()),
                step: c.step + 1,
                ..c.clone()
            }),
            _ if c.shard + 1 < shard_count => Some(WorkCursor {
                shard: c.shard + 1,
                after: None,
                step: c.step + 1,
                ..c.clone()
            }),
            _ => None,
        };
        Ok((tasks, next))
    }

    /// Move the cursor from `from` to `to` (its stream record drives the next page), or
    /// remove it when the walk is done; false when another copy of this page moved it
    /// first.
    pub async fn advance_work(
        &self,
        from: &WorkCursor,
        to: Option<&WorkCursor>,
    ) -> Result<bool, StoreError> {
        let k = key(job_pk(&from.job_id), work_sk(from.kind.as_str()));
        let done = match to {
            Some(next) => send_if(
                self.ddb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(cursor_to_item(next)))
                    .condition_expression("step = :step")
                    .expression_attribute_values(":step", n(from.step)),
            )
            .await?
            .is_some(),
            None => send_if(
                self.ddb
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .condition_expression("step = :step")
                    .expression_attribute_values(":step", n(from.step)),
            )
            .await?
            .is_some(),
        };
        Ok(done)
    }
}
