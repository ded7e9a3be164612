//! Paged work over a job's tasks: what must touch every task of a job (sending a just
//! committed job's ready tasks; cancelling; failing the rest of a SEQUENTIAL array after
//! a child failed; sweeping an N_TO_N array's children against its predecessors) is
//! done a page at a time, each page driven by the stream record of a cursor item that
//! the previous page advanced. No request, stream record or Lambda invocation touches
//! more than one page, however big the job.
//!
//! The cursor (`J#<job>` / `W#<kind>`) says where the next page starts, and a step
//! number: advancing is conditional on the step, so a duplicate stream record of a
//! cursor repeats at most its own page (whose effects are idempotent) and never skips
//! or doubles the walk. Walks over stored tasks go shard by shard, a page of sort keys
//! at a time; walks over an array's children go by index, because a child that never
//! started has no item to find.

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
    /// Fail every child of a SEQUENTIAL array from the cursor's index on (a child
    /// before them did not succeed).
    FailSequence,
    /// Send each child of an N_TO_N array whose predecessors' children all succeeded,
    /// and fail each whose predecessor child failed or will never run.
    SweepNToN,
}

impl WorkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkKind::Enqueue => "enqueue",
            WorkKind::Cancel => "cancel",
            WorkKind::FailSequence => "fail-sequence",
            WorkKind::SweepNToN => "sweep-n-to-n",
        }
    }

    pub fn parse(s: &str) -> Option<WorkKind> {
        match s {
            "enqueue" => Some(WorkKind::Enqueue),
            "cancel" => Some(WorkKind::Cancel),
            "fail-sequence" => Some(WorkKind::FailSequence),
            "sweep-n-to-n" => Some(WorkKind::SweepNToN),
            _ => None,
        }
    }

    /// Whether the walk goes over an array's child indexes rather than stored tasks.
    pub fn by_index(&self) -> bool {
        matches!(self, WorkKind::FailSequence | WorkKind::SweepNToN)
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
    /// For walks by index: the child index the next page starts at.
    pub index: u32,
    pub step: u64,
}

impl WorkCursor {
    /// A walk's first cursor.
    pub fn start(job_id: &str, kind: WorkKind, index: u32) -> WorkCursor {
        WorkCursor {
            job_id: job_id.into(),
            kind,
            shard: 0,
            after: None,
            index,
            step: 0,
        }
    }

    /// For walks by index over an array of `size` children: this page's indexes and
    /// the cursor for the next page (`None`: the walk is done).
    pub fn index_page(&self, size: u32) -> (std::ops::Range<u32>, Option<WorkCursor>) {
        let end = self.index.saturating_add(WORK_PAGE as u32).min(size);
        let next = (end < size).then(|| WorkCursor {
            index: end,
            step: self.step + 1,
            ..self.clone()
        });
        (self.index.min(end)..end, next)
    }
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
    if c.index > 0 {
        it.insert("idx".into(), n(c.index));
    }
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
        index: r.opt_n("idx")?.unwrap_or(0),
        step: r.req_n("step")?,
    })
}

impl Store {
    /// Start a job's paged work (a no-op if it is under way already).
    pub async fn start_work(&self, job_id: &str, kind: WorkKind) -> Result<bool, StoreError> {
        self.start_work_at(job_id, kind, 0).await
    }

    /// Start a walk by index at child `index` (a no-op if it is under way already).
    pub async fn start_work_at(
        &self,
        job_id: &str,
        kind: WorkKind,
        index: u32,
    ) -> Result<bool, StoreError> {
        self.put_if_absent(cursor_to_item(&WorkCursor::start(job_id, kind, index)))
            .await
    }

    /// The job's walk of this kind, if one is under way.
    pub async fn work_cursor(
        &self,
        job_id: &str,
        kind: WorkKind,
    ) -> Result<Option<WorkCursor>, StoreError> {
        let k = key(job_pk(job_id), work_sk(kind.as_str()));
        match self.read_item(k).await? {
            Some(item) => Ok(Some(cursor_from_item(&item)?)),
            None => Ok(None),
        }
    }

    /// Start a walk again from its beginning, whether or not it is under way: what
    /// its passed pages saw may have changed. The cursor's step moves on, so the
    /// page in flight of the walk it replaces cannot advance it.
    pub async fn restart_work(&self, job_id: &str, kind: WorkKind) -> Result<(), StoreError> {
        loop {
            let current = match self.work_cursor(job_id, kind).await? {
                Some(c) => c,
                None => {
                    if self.start_work(job_id, kind).await? {
                        return Ok(());
                    }
                    continue;
                }
            };
            let fresh = WorkCursor {
                step: current.step + 1,
                ..WorkCursor::start(job_id, kind, 0)
            };
            let moved = send_if(
                self.ddb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(cursor_to_item(&fresh)))
                    .condition_expression("step = :step")
                    .expression_attribute_values(":step", n(current.step)),
            )
            .await?
            .is_some();
            if moved {
                return Ok(());
            }
        }
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
