//! Task items: writing a job's planned tasks, reading them by id, and listing them.

use super::item::*;
use super::request::{send, state_in, StateCondition};
use super::WRITE_CONCURRENCY;
use super::{Store, StoreError};
use crate::aws::backoff::Backoff;
use crate::domain::{PlannedTask, TaskKind, TaskRecord, TaskState};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, WriteRequest};
use futures::{stream, StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The first and longest waits before unprocessed batch entries are sent again.
const UNPROCESSED_FIRST_WAIT: Duration = Duration::from_millis(20);
const UNPROCESSED_MAX_WAIT: Duration = Duration::from_secs(2);
/// How long a batch may go without any of its entries being taken before it fails.
const UNPROCESSED_PATIENCE: Duration = Duration::from_secs(60);

/// A page of tasks and the token for the next one.
#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    pub next: Option<(u32, String)>,
}

impl Store {
    /// Write a job's planned tasks with BatchWriteItem (25 a request, several at once),
    /// retrying unprocessed items with backoff. Every PENDING task is written before any
    /// RUNNABLE one: only runnable tasks can start, so no task can finish before the
    /// dependents it must release exist.
    pub async fn write_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        (queue, team): (&str, &str),
        max_attempts: u32,
        tasks: &[PlannedTask],
    ) -> Result<(), StoreError> {
        self.write_tasks_as(
            job_id,
            shard_count,
            (queue, team),
            max_attempts,
            tasks,
            false,
        )
        .await
    }

    /// [`Store::write_tasks`] for a submission that commits afterwards: its ready tasks
    /// are sent by the commit's walk, not by their own stream records (which may come
    /// before or after the commit), so each is marked as sent by another writer.
    pub async fn write_staged_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        (queue, team): (&str, &str),
        max_attempts: u32,
        tasks: &[PlannedTask],
    ) -> Result<(), StoreError> {
        self.write_tasks_as(
            job_id,
            shard_count,
            (queue, team),
            max_attempts,
            tasks,
            true,
        )
        .await
    }

    async fn write_tasks_as(
        &self,
        job_id: &str,
        shard_count: u32,
        pool: (&str, &str),
        max_attempts: u32,
        tasks: &[PlannedTask],
        staged: bool,
    ) -> Result<(), StoreError> {
        let (waiting, runnable): (Vec<&PlannedTask>, Vec<&PlannedTask>) =
            tasks.iter().partition(|t| t.state != TaskState::Runnable);
        self.put_tasks(job_id, shard_count, pool, max_attempts, &waiting, staged)
            .await?;
        self.put_tasks(job_id, shard_count, pool, max_attempts, &runnable, staged)
            .await
    }

    /// Add tasks to a running job, all or none: one transaction whose every put requires
    /// that no item has the task's key. `Err(ids)`: those ids exist already (another
    /// addition took them first) and nothing was written.
    pub async fn add_new_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        (queue, team): (&str, &str),
        max_attempts: u32,
        tasks: &[PlannedTask],
    ) -> Result<Result<(), Vec<String>>, StoreError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        let now = self.now();
        let items = tasks
            .iter()
            .map(|t| {
                let shard = crate::domain::ids::task_shard(&t.id, shard_count);
                Ok(TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(new_task_item(
                                job_id,
                                shard,
                                (queue, team),
                                max_attempts,
                                now,
                                t,
                            )))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(|source| StoreError::Build {
                                operation: "TransactWriteItems",
                                source,
                            })?,
                    )
                    .build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        match super::request::send_raw(
            self.ddb
                .transact_write_items()
                .set_transact_items(Some(items)),
        )
        .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(tc)) =
                    e.as_service_error()
                {
                    let taken: Vec<String> = tc
                        .cancellation_reasons()
                        .iter()
                        .zip(tasks)
                        .filter(|(r, _)| r.code() == Some("ConditionalCheckFailed"))
                        .map(|(_, t)| t.id.clone())
                        .collect();
                    if !taken.is_empty() {
                        super::request::record_failed_condition("TransactWriteItems");
                        return Ok(Err(taken));
                    }
                }
                Err(super::classify("TransactWriteItems", e))
            }
        }
    }

    async fn put_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        (queue, team): (&str, &str),
        max_attempts: u32,
        tasks: &[&PlannedTask],
        staged: bool,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let items = tasks
            .iter()
            .map(|t| {
                let shard = crate::domain::ids::task_shard(&t.id, shard_count);
                let mut item = new_task_item(job_id, shard, (queue, team), max_attempts, now, t);
                if staged && t.state == TaskState::Runnable {
                    item.insert("enqueued".into(), AttributeValue::Bool(true));
                }
                item
            })
            .collect();
        self.put_items(items).await
    }

    /// One BatchWriteItem of up to 25 puts, its unprocessed entries sent again (with
    /// jittered backoff, started over whenever some were taken) until every one is
    /// written. Only a real error, or no progress at all for [`UNPROCESSED_PATIENCE`],
    /// ends it early, and then as an error: a throttled write is never dropped.
    pub(super) async fn batch_write(
        &self,
        mut pending: Vec<WriteRequest>,
    ) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(UNPROCESSED_FIRST_WAIT, UNPROCESSED_MAX_WAIT);
        let mut stalled_since = Instant::now();
        loop {
            let sent = pending.len();
            let out = send(
                self.ddb
                    .batch_write_item()
                    .request_items(&self.table, pending.clone()),
            )
            .await?;
            pending = out
                .unprocessed_items()
                .and_then(|m| m.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            if pending.len() < sent {
                backoff.reset(UNPROCESSED_FIRST_WAIT);
                stalled_since = Instant::now();
            }
            if stalled_since.elapsed() >= UNPROCESSED_PATIENCE || !backoff.wait().await {
                return Err(StoreError::Unprocessed {
                    operation: "BatchWriteItem",
                    remaining: pending.len(),
                });
            }
        }
    }

    pub async fn get_task(
        &self,
        job_id: &str,
        shard_count: u32,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let shard = crate::domain::ids::task_shard(task_id, shard_count);
        self.get_task_in_shard(job_id, shard, task_id).await
    }

    /// Tasks by id (100 a request, consistent reads); an id is absent from the answer
    /// only when DynamoDB said it has no such item. Keys it left unprocessed are asked
    /// again until answered, or the whole read fails.
    pub async fn get_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        ids: &[String],
    ) -> Result<HashMap<String, TaskRecord>, StoreError> {
        let unique: Vec<String> = ids
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let keys: Vec<Item> = unique
            .iter()
            .map(|id| {
                key(
                    task_pk(job_id, crate::domain::ids::task_shard(id, shard_count)),
                    task_sk(id),
                )
            })
            .collect();
        self.get_items(keys, true)
            .await?
            .iter()
            .map(|it| {
                let t = task_from_item(it)?;
                Ok((t.task_id.clone(), t))
            })
            .collect()
    }

    /// Items by key (100 a request, several at once); a key is absent from the answer
    /// only when DynamoDB said it has no such item. Keys it left unprocessed are asked
    /// again until answered, or the whole read fails.
    pub(crate) async fn get_items(
        &self,
        keys: Vec<Item>,
        consistent: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let chunks: Vec<Vec<Item>> = keys.chunks(100).map(|c| c.to_vec()).collect();
        let pages = stream::iter(chunks)
            .map(|mut keys| async move {
                let mut found = Vec::new();
                let mut backoff = Backoff::new(UNPROCESSED_FIRST_WAIT, UNPROCESSED_MAX_WAIT);
                let mut stalled_since = Instant::now();
                while !keys.is_empty() {
                    let asked = keys.len();
                    let out = send(
                        self.ddb.batch_get_item().request_items(
                            &self.table,
                            KeysAndAttributes::builder()
                                .set_keys(Some(std::mem::take(&mut keys)))
                                .consistent_read(consistent)
                                .build()
                                .map_err(|source| StoreError::Build {
                                    operation: "BatchGetItem",
                                    source,
                                })?,
                        ),
                    )
                    .await?;
                    if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                        found.extend(items.iter().cloned());
                    }
                    keys = out
                        .unprocessed_keys()
                        .and_then(|m| m.get(&self.table))
                        .map(|k| k.keys().to_vec())
                        .unwrap_or_default();
                    if keys.is_empty() {
                        break;
                    }
                    if keys.len() < asked {
                        backoff.reset(UNPROCESSED_FIRST_WAIT);
                        stalled_since = Instant::now();
                    }
                    // A key DynamoDB did not get to is not an absent item: give up only
                    // as an error.
                    if stalled_since.elapsed() >= UNPROCESSED_PATIENCE || !backoff.wait().await {
                        return Err(StoreError::Unprocessed {
                            operation: "BatchGetItem",
                            remaining: keys.len(),
                        });
                    }
                }
                Ok::<_, StoreError>(found)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// One page of a job's user tasks whose ids begin with `prefix` (every task for
    /// ""), optionally only those in `state`, walking the job's shards in order (ids
    /// sort within a shard; tasks spread over shards by a hash of their id). `start` is
    /// where the previous page stopped.
    pub async fn list_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        states: Option<&[TaskState]>,
        prefix: &str,
        limit: usize,
        start: Option<(u32, String)>,
    ) -> Result<TaskPage, StoreError> {
        let begins = task_sk(prefix);
        if states == Some(&[TaskState::Failed]) {
            return self.list_failed_tasks(job_id, &begins, limit, start).await;
        }
        let (mut shard, mut after) = match start {
            Some((sh, sk)) => (sh, Some(sk)),
            None => (0, None),
        };
        let mut tasks = Vec::new();
        while shard < shard_count {
            let mut q = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :t)")
                .expression_attribute_values(":pk", s(task_pk(job_id, shard)))
                .expression_attribute_values(":t", s(&begins))
                .expression_attribute_values(":command", s(TaskKind::Command.as_str()))
                .expression_attribute_names("#kind", "kind")
                .limit(((limit - tasks.len()) * 2).clamp(10, 1000) as i32);
            q = match states {
                Some(states) => q
                    .filter_expression(format!("#kind = :command AND {}", state_in(states)))
                    .with_states(states),
                None => q.filter_expression("#kind = :command"),
            };
            if let Some(sk) = after.take() {
                q = q.set_exclusive_start_key(Some(key(task_pk(job_id, shard), sk)));
            }
            let out = send(q).await?;
            for it in out.items() {
                tasks.push(task_from_item(it)?);
                if tasks.len() == limit {
                    let last = tasks
                        .last()
                        .map(|t| task_sk(&t.task_id))
                        .unwrap_or_default();
                    let more = out.last_evaluated_key().is_some()
                        || it != out.items().last().unwrap_or(it)
                        || shard + 1 < shard_count;
                    return Ok(TaskPage {
                        tasks,
                        next: more.then_some((shard, last)),
                    });
                }
            }
            match out.last_evaluated_key().and_then(|k| k.get("sk")) {
                Some(AttributeValue::S(sk)) => after = Some(sk.clone()),
                _ => shard += 1,
            }
        }
        Ok(TaskPage { tasks, next: None })
    }

    /// A page of a job's failed tasks, from the sparse `failures` index: it holds only
    /// failed tasks, so finding the one failure among a million successes reads one item.
    async fn list_failed_tasks(
        &self,
        job_id: &str,
        begins: &str,
        limit: usize,
        start: Option<(u32, String)>,
    ) -> Result<TaskPage, StoreError> {
        let mut tasks = Vec::new();
        let mut after = start.map(|(shard, sk)| {
            let mut k = key(task_pk(job_id, shard), sk);
            k.insert(FAILED_IN_ATTR.into(), s(job_id));
            k
        });
        loop {
            let out = send(
                self.ddb
                    .query()
                    .table_name(&self.table)
                    .index_name(FAILURES_INDEX)
                    .key_condition_expression("failed_in = :job AND begins_with(sk, :t)")
                    .expression_attribute_values(":t", s(begins))
                    .filter_expression("#kind = :command")
                    .expression_attribute_names("#kind", "kind")
                    .expression_attribute_values(":job", s(job_id))
                    .expression_attribute_values(":command", s(TaskKind::Command.as_str()))
                    .set_exclusive_start_key(after.take())
                    .limit((limit - tasks.len()).clamp(1, 1000) as i32),
            )
            .await?;
            for it in out.items() {
                tasks.push(task_from_item(it)?);
            }
            let next = out.last_evaluated_key().cloned();
            match next {
                Some(k) if tasks.len() >= limit => {
                    let r = Reader::new(&k);
                    let shard = r
                        .req_s("pk")?
                        .rsplit_once('#')
                        .and_then(|(_, n)| n.parse().ok())
                        .unwrap_or(0);
                    return Ok(TaskPage {
                        tasks,
                        next: Some((shard, r.req_s("sk")?)),
                    });
                }
                Some(k) => after = Some(k),
                None => return Ok(TaskPage { tasks, next: None }),
            }
        }
    }

    /// Every task of a job, shard by shard (cancel walks them).
    pub async fn all_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut tasks = Vec::new();
        for shard in 0..shard_count {
            let mut start: Option<Item> = None;
            loop {
                let out = send(
                    self.ddb
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(task_pk(job_id, shard)))
                        .set_exclusive_start_key(start.take()),
                )
                .await?;
                for it in out.items() {
                    tasks.push(task_from_item(it)?);
                }
                match out.last_evaluated_key() {
                    Some(k) => start = Some(k.clone()),
                    None => break,
                }
            }
        }
        Ok(tasks)
    }

    pub(crate) async fn get_task_in_shard(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, StoreError> {
        match self
            .read_item(key(task_pk(job_id, shard), task_sk(task_id)))
            .await?
        {
            Some(it) => Ok(Some(task_from_item(&it)?)),
            None => Ok(None),
        }
    }
}
