//! The DynamoDB adapter: every read and conditional write Batchplane makes. Each state
//! transition is one conditional write; the condition is the state machine's rule (and
//! the attempt and worker, for a claimed task), so a duplicate message or stream record
//! loses the race instead of acting twice.

pub mod arrays;
pub mod autoscaler;
pub mod capacity;
pub mod events;
pub mod item;
pub mod placement;
pub mod registry;
pub mod teams;
pub mod workers;

use crate::domain::{
    AttemptRecord, JobRecord, JobState, PlannedTask, TaskCounts, TaskKind, TaskRecord, TaskState,
    Usage,
};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement, KeyType,
    KeysAndAttributes, PutRequest, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, StreamSpecification, StreamViewType,
    WriteRequest,
};
use futures::{stream, StreamExt, TryStreamExt};
use item::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What can go wrong talking to DynamoDB, sorted into what callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The condition did not hold; `current` is the item as it was, when DynamoDB sent it.
    #[error("conditional check failed on {operation}")]
    ConditionFailed {
        operation: &'static str,
        current: Option<Box<Item>>,
    },
    #[error("DynamoDB throttled {operation}")]
    Throttled {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DynamoDB {operation} failed: {code}: {message}")]
    Request {
        operation: &'static str,
        code: String,
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("building a {operation} request: {source}")]
    Build {
        operation: &'static str,
        #[source]
        source: aws_sdk_dynamodb::error::BuildError,
    },
    #[error("{operation}: {remaining} items still unprocessed after retries")]
    Unprocessed {
        operation: &'static str,
        remaining: usize,
    },
}

impl StoreError {
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, StoreError::ConditionFailed { .. })
    }

    /// Whether trying again may succeed: no answer came back (`Unavailable`), DynamoDB
    /// reported an internal error, or it throttled. (DynamoDB Local answers a request
    /// that waited too long on an item a transaction holds with InternalServerError,
    /// "this request will succeed in actual DynamoDB".)
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Throttled { .. } => true,
            StoreError::Request { code, .. } => {
                matches!(code.as_str(), "InternalServerError" | "Unavailable")
            }
            _ => false,
        }
    }
}

fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("").to_string();
    if code == "ConditionalCheckFailedException" {
        return StoreError::ConditionFailed {
            operation,
            current: None,
        };
    }
    if matches!(
        code.as_str(),
        "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded"
    ) {
        return StoreError::Throttled {
            operation,
            source: Box::new(err),
        };
    }
    // No answer from DynamoDB (connection failed or reset, timed out): say so, with the
    // transport's own words, so callers can tell it from a refusal.
    if matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    ) {
        let message = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_else(|| err.to_string());
        return StoreError::Request {
            operation,
            code: "Unavailable".into(),
            message,
            source: Box::new(err),
        };
    }
    let message = err.message().unwrap_or("").to_string();
    StoreError::Request {
        operation,
        message,
        code: if code.is_empty() {
            "unknown".into()
        } else {
            code
        },
        source: Box::new(err),
    }
}

fn record_capacity(operation: &'static str, c: Option<&ConsumedCapacity>) {
    if let Some(c) = c {
        if let Some(w) = c.write_capacity_units() {
            crate::metrics::record_write_units(operation, w);
        }
        if let Some(r) = c.read_capacity_units() {
            crate::metrics::record_read_units(operation, r);
        }
        if c.write_capacity_units().is_none() && c.read_capacity_units().is_none() {
            if let Some(total) = c.capacity_units() {
                if operation.contains("Get") || operation.contains("Query") {
                    crate::metrics::record_read_units(operation, total);
                } else {
                    crate::metrics::record_write_units(operation, total);
                }
            }
        }
    }
}

/// A failed condition still costs a write unit in DynamoDB; count it like one.
fn record_failed_condition(operation: &'static str) {
    crate::metrics::record_write_units(operation, 1.0);
}

/// Now, in milliseconds since the epoch: the unit of every time the store keeps.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The outcome of trying to claim a task for a worker.
#[derive(Debug)]
pub enum Claim {
    /// The worker holds the task: run it as this attempt.
    Claimed(Box<TaskRecord>),
    /// Nothing to run: the task is finished, held by a live lease, or gone.
    NotClaimable { reason: String },
    /// The previous worker's lease lapsed too often; the task was failed instead.
    Exhausted,
}

/// What a child's first claim writes into its new item.
#[derive(Debug, Clone)]
pub struct ChildSeed {
    pub index: u32,
    pub queue: String,
    /// The first tier's pool, for a job with tiers.
    pub pool: Option<String>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: u32,
    pub max_attempts: u32,
}

/// A task moving up a tier after running out of memory: the next attempt reserves the
/// new tier's resources and is sent to that tier's pool.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub tier: u32,
    pub shape: crate::domain::tiers::Tier,
    pub pool: String,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Held {
        cancel_requested: bool,
    },
    /// The lease is gone (another worker took the task, or it was finished elsewhere).
    Lost,
}

/// Where a listing of a queue's jobs stopped (the `by_queue` index's key of the last
/// job returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKey {
    pub created_at: i64,
    pub job_id: String,
}

/// A page of tasks and the token for the next one.
#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    pub next: Option<(u32, String)>,
}

/// The DynamoDB side of Batchplane.
#[derive(Debug, Clone)]
pub struct Store {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
}

const WRITE_CONCURRENCY: usize = 8;

impl Store {
    pub fn new(ddb: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Store {
            ddb,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Create the table (on-demand, stream with both images) and wait until it is
    /// active. Used by the local stack and tests; in AWS the SAM template owns it.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|source| StoreError::Build {
                    operation: "CreateTable",
                    source,
                })
        };
        let key = |name: &str, kt: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kt)
                .build()
                .map_err(|source| StoreError::Build {
                    operation: "CreateTable",
                    source,
                })
        };
        let res = self
            .ddb
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(JOB_QUEUE_ATTR)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .attribute_definitions(attr(FAILED_IN_ATTR)?)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("created_at")
                    .attribute_type(ScalarAttributeType::N)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            // Jobs by queue, newest last: ListJobs. Sparse: only job items have `jq`.
            .global_secondary_indexes(
                aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                    .index_name(BY_QUEUE_INDEX)
                    .key_schema(key(JOB_QUEUE_ATTR, KeyType::Hash)?)
                    .key_schema(key("created_at", KeyType::Range)?)
                    .projection(
                        aws_sdk_dynamodb::types::Projection::builder()
                            .projection_type(aws_sdk_dynamodb::types::ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            // A job's failed tasks. Sparse: only failed task items have `failed_in`.
            .global_secondary_indexes(
                aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                    .index_name(FAILURES_INDEX)
                    .key_schema(key(FAILED_IN_ATTR, KeyType::Hash)?)
                    .key_schema(key("sk", KeyType::Range)?)
                    .projection(
                        aws_sdk_dynamodb::types::Projection::builder()
                            .projection_type(aws_sdk_dynamodb::types::ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .send()
            .await;
        match res {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(classify("CreateTable", e)),
        }
        for _ in 0..100 {
            let d = self
                .ddb
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| classify("DescribeTable", e))?;
            if d.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Request {
            operation: "CreateTable",
            code: "NotActive".into(),
            message: format!("table {} did not become ACTIVE", self.table),
            source: format!("table {} did not become ACTIVE", self.table).into(),
        })
    }

    /// Items in the table, by a counting scan (benchmarks: what a run left behind).
    pub async fn count_items(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(&self.table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("Scan", e))?;
            total += out.count() as u64;
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(total),
            }
        }
    }

    /// Delete the table (local stacks and benchmarks clean up after themselves).
    pub async fn delete_table(&self) -> Result<(), StoreError> {
        match self.ddb.delete_table().table_name(&self.table).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(classify("DeleteTable", e)),
        }
    }

    /// The table's stream ARN (the local stack polls it).
    pub async fn stream_arn(&self) -> Result<Option<String>, StoreError> {
        let d = self
            .ddb
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| classify("DescribeTable", e))?;
        Ok(d.table()
            .and_then(|t| t.latest_stream_arn())
            .map(str::to_string))
    }

    // ---- jobs ----

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
        it.insert("created_at".into(), n(now_ms()));
        let res = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(it))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match res {
            Ok(out) => {
                record_capacity("PutItem", out.consumed_capacity());
                Ok(None)
            }
            Err(e) => {
                let old = condition_old_item(&e);
                match classify("PutItem", e) {
                    StoreError::ConditionFailed { .. } => {
                        record_failed_condition("PutItem");
                        let old = old.unwrap_or_default();
                        Ok(Some(Reader::new(&old).req_s("job_id")?))
                    }
                    other => Err(other),
                }
            }
        }
    }

    pub async fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let out = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_to_item(job)))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| classify("PutItem", e))?;
        record_capacity("PutItem", out.consumed_capacity());
        Ok(())
    }

    /// One item by key, read consistently.
    async fn read_item(&self, k: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| classify("GetItem", e))?;
        record_capacity("GetItem", out.consumed_capacity());
        Ok(out.item().cloned())
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
            values.insert(":now".into(), n(now_ms()));
        }
        if let Some(r) = reason {
            update.push_str(", reason = :reason");
            values.insert(":reason".into(), s(r));
        }
        if let Some(t) = total {
            values.insert(":total".into(), n(t));
        }
        let res = self
            .ddb
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
            .set_expression_attribute_values(Some(values))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
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
            let page = self
                .ddb
                .query()
                .table_name(&self.table)
                .index_name(BY_QUEUE_INDEX)
                .key_condition_expression("#jq = :q")
                .expression_attribute_names("#jq", JOB_QUEUE_ATTR)
                .expression_attribute_values(":q", s(queue))
                .scan_index_forward(false)
                .limit(100)
                .set_exclusive_start_key(exclusive.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            record_capacity("Query", page.consumed_capacity());
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
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("SET started_at = :at")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(started_at)")
            .expression_attribute_values(":at", n(at))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Grow a job by `added` tasks, unless it has finished or is being cancelled.
    pub async fn add_to_total(&self, job_id: &str, added: u64) -> Result<bool, StoreError> {
        let res = self
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
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Flag a job as cancelled so no task is added and its workers stop its tasks.
    pub async fn request_job_cancel(&self, job_id: &str) -> Result<bool, StoreError> {
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("SET cancel_requested = :true")
            .condition_expression("#state IN (:submitted, :pending, :runnable)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":submitted", s(JobState::Submitted.as_str()))
            .expression_attribute_values(":pending", s(JobState::Pending.as_str()))
            .expression_attribute_values(":runnable", s(JobState::Runnable.as_str()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Every item of a key-condition query, page by page. `query` gives the request
    /// (table, key condition, values); paging and capacity counting are done here.
    pub(crate) async fn query_all(
        &self,
        query: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = query()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            record_capacity("Query", out.consumed_capacity());
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(items),
            }
        }
    }

    fn conditional(
        &self,
        operation: &'static str,
        res: Result<
            Option<ConsumedCapacity>,
            SdkError<
                impl ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
                impl std::fmt::Debug + Send + Sync + 'static,
            >,
        >,
    ) -> Result<bool, StoreError> {
        match res {
            Ok(c) => {
                record_capacity(operation, c.as_ref());
                Ok(true)
            }
            Err(e) => match classify(operation, e) {
                StoreError::ConditionFailed { .. } => {
                    record_failed_condition(operation);
                    Ok(false)
                }
                other => Err(other),
            },
        }
    }

    // ---- counts ----

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
        let res = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(it))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("PutItem", res.map(|o| o.consumed_capacity().cloned()))
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
            let out = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
                .expression_attribute_values(":pk", s(job_pk(job_id)))
                .expression_attribute_values(":c", s(COUNTS_PREFIX))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            record_capacity("Query", out.consumed_capacity());
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
        let out = self
            .ddb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
            .expression_attribute_values(":pk", s(job_pk(job_id)))
            .expression_attribute_values(":c", s(COUNTS_PREFIX))
            .consistent_read(true)
            .limit(100)
            .send()
            .await
            .map_err(|e| classify("Query", e))?;
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
        let res = self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match res {
            Ok(out) => {
                for c in out.consumed_capacity() {
                    record_capacity("TransactWriteItems", Some(c));
                }
                Ok(())
            }
            // Another fold won the race; the counts are intact either way.
            Err(e) if e.code() == Some("TransactionCanceledException") => Ok(()),
            Err(e) => Err(classify("TransactWriteItems", e)),
        }
    }

    // ---- tasks ----

    /// Write a job's planned tasks with BatchWriteItem (25 a request, several at once),
    /// retrying unprocessed items with backoff. Every PENDING task is written before any
    /// RUNNABLE one: only runnable tasks can start, so no task can finish before the
    /// dependents it must release exist.
    pub async fn write_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        queue: &str,
        max_attempts: u32,
        tasks: &[PlannedTask],
    ) -> Result<(), StoreError> {
        let (waiting, runnable): (Vec<&PlannedTask>, Vec<&PlannedTask>) =
            tasks.iter().partition(|t| t.state != TaskState::Runnable);
        self.put_tasks(job_id, shard_count, queue, max_attempts, &waiting)
            .await?;
        self.put_tasks(job_id, shard_count, queue, max_attempts, &runnable)
            .await
    }

    async fn put_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        queue: &str,
        max_attempts: u32,
        tasks: &[&PlannedTask],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let requests: Vec<WriteRequest> = tasks
            .iter()
            .map(|t| {
                let shard = crate::domain::ids::task_shard(&t.id, shard_count);
                Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(new_task_item(
                                job_id,
                                shard,
                                queue,
                                max_attempts,
                                now,
                                t,
                            )))
                            .build()
                            .map_err(|source| StoreError::Build {
                                operation: "BatchWriteItem",
                                source,
                            })?,
                    )
                    .build())
            })
            .collect::<Result<_, StoreError>>()?;
        let chunks: Vec<Vec<WriteRequest>> = requests.chunks(25).map(|c| c.to_vec()).collect();
        stream::iter(chunks)
            .map(|chunk| self.batch_write(chunk))
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn batch_write(&self, mut pending: Vec<WriteRequest>) -> Result<(), StoreError> {
        let mut backoff = Duration::from_millis(20);
        for _ in 0..12 {
            let out = self
                .ddb
                .batch_write_item()
                .request_items(&self.table, pending.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify("BatchWriteItem", e))?;
            for c in out.consumed_capacity() {
                record_capacity("BatchWriteItem", Some(c));
            }
            pending = out
                .unprocessed_items()
                .and_then(|m| m.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(StoreError::Unprocessed {
            operation: "BatchWriteItem",
            remaining: pending.len(),
        })
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

    /// Tasks by id (100 a request, consistent reads); missing ids are simply absent.
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
        let chunks: Vec<Vec<String>> = unique.chunks(100).map(|c| c.to_vec()).collect();
        let pages = stream::iter(chunks)
            .map(|chunk| async move {
                let mut keys: Vec<Item> = chunk
                    .iter()
                    .map(|id| {
                        key(
                            task_pk(job_id, crate::domain::ids::task_shard(id, shard_count)),
                            task_sk(id),
                        )
                    })
                    .collect();
                let mut found = Vec::new();
                for _ in 0..12 {
                    if keys.is_empty() {
                        break;
                    }
                    let out = self
                        .ddb
                        .batch_get_item()
                        .request_items(
                            &self.table,
                            KeysAndAttributes::builder()
                                .set_keys(Some(std::mem::take(&mut keys)))
                                .consistent_read(true)
                                .build()
                                .map_err(|source| StoreError::Build {
                                    operation: "BatchGetItem",
                                    source,
                                })?,
                        )
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                        .await
                        .map_err(|e| classify("BatchGetItem", e))?;
                    for c in out.consumed_capacity() {
                        record_capacity("BatchGetItem", Some(c));
                    }
                    if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                        for it in items {
                            found.push(task_from_item(it)?);
                        }
                    }
                    keys = out
                        .unprocessed_keys()
                        .and_then(|m| m.get(&self.table))
                        .map(|k| k.keys().to_vec())
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Ok::<_, StoreError>(found)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(pages
            .into_iter()
            .flatten()
            .map(|t| (t.task_id.clone(), t))
            .collect())
    }

    /// One page of a job's user tasks, optionally only those in `state`, walking the
    /// job's shards in order. `start` is where the previous page stopped.
    pub async fn list_tasks(
        &self,
        job_id: &str,
        shard_count: u32,
        state: Option<TaskState>,
        limit: usize,
        start: Option<(u32, String)>,
    ) -> Result<TaskPage, StoreError> {
        if state == Some(TaskState::Failed) {
            return self.list_failed_tasks(job_id, limit, start).await;
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
                .expression_attribute_values(":t", s("T#"))
                .expression_attribute_values(":command", s(TaskKind::Command.as_str()))
                .expression_attribute_names("#kind", "kind")
                .limit(((limit - tasks.len()) * 2).clamp(10, 1000) as i32)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            q = match state {
                Some(st) => q
                    .filter_expression("#kind = :command AND #state = :state")
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":state", s(st.as_str())),
                None => q.filter_expression("#kind = :command"),
            };
            if let Some(sk) = after.take() {
                q = q.set_exclusive_start_key(Some(key(task_pk(job_id, shard), sk)));
            }
            let out = q.send().await.map_err(|e| classify("Query", e))?;
            record_capacity("Query", out.consumed_capacity());
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
            let out = self
                .ddb
                .query()
                .table_name(&self.table)
                .index_name(FAILURES_INDEX)
                .key_condition_expression("failed_in = :job")
                .filter_expression("#kind = :command")
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":job", s(job_id))
                .expression_attribute_values(":command", s(TaskKind::Command.as_str()))
                .set_exclusive_start_key(after.take())
                .limit((limit - tasks.len()).clamp(1, 1000) as i32)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            record_capacity("Query", out.consumed_capacity());
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
                let out = self
                    .ddb
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(task_pk(job_id, shard)))
                    .set_exclusive_start_key(start.take())
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| classify("Query", e))?;
                record_capacity("Query", out.consumed_capacity());
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

    /// Release one finished dependency into a waiting task; see [`Store::release_edges`].
    pub async fn release_edge(
        &self,
        dependent: &TaskRecord,
        dep: &str,
    ) -> Result<bool, StoreError> {
        self.release_edges(dependent, &[dep.to_string()], false)
            .await
    }

    /// Release finished dependencies into a waiting task, and make the task RUNNABLE
    /// when they were the last. Idempotent: dependencies are added to a set, and the
    /// transition is conditional on PENDING. `dependent` is the task as last read.
    /// Usually one write, however many dependencies it carries: the write that
    /// completes the set also sets RUNNABLE. Returns whether the task became RUNNABLE.
    /// With `enqueue_follows` the caller sends the task's message itself when it does
    /// (one stream hop less between a dependency's end and its dependent's start), and
    /// the write marks the task `enqueued` so the stream's record of it sends nothing.
    pub async fn release_edges(
        &self,
        dependent: &TaskRecord,
        deps: &[String],
        enqueue_follows: bool,
    ) -> Result<bool, StoreError> {
        let runnable = if enqueue_follows {
            "#state = :runnable, enqueued = :true"
        } else {
            "#state = :runnable"
        };
        if dependent.state != TaskState::Pending || deps.is_empty() {
            return Ok(false);
        }
        let k = key(
            task_pk(&dependent.job_id, dependent.shard),
            task_sk(&dependent.task_id),
        );
        let new: Vec<String> = deps
            .iter()
            .filter(|d| !dependent.deps_done.contains(d))
            .cloned()
            .collect();
        let completes = dependent
            .deps
            .iter()
            .all(|d| deps.contains(d) || dependent.deps_done.contains(d));
        let set = AttributeValue::Ss(if new.is_empty() {
            deps.to_vec()
        } else {
            new.clone()
        });
        if completes {
            // The last edges, as far as we saw: add them and release in one write,
            // provided nobody changed the set since we read it.
            let size_cond = if dependent.deps_done.is_empty() {
                "attribute_not_exists(deps_done)".to_string()
            } else {
                "size(deps_done) = :seen".to_string()
            };
            let mut req = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k.clone()))
                .update_expression(format!("ADD deps_done :d SET {runnable}"))
                .condition_expression(format!("#state = :pending AND {size_cond}"))
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":d", set.clone())
                .expression_attribute_values(":runnable", s(TaskState::Runnable.as_str()))
                .expression_attribute_values(":pending", s(TaskState::Pending.as_str()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            if !dependent.deps_done.is_empty() {
                req = req.expression_attribute_values(":seen", n(dependent.deps_done.len()));
            }
            if enqueue_follows {
                req = req.expression_attribute_values(":true", AttributeValue::Bool(true));
            }
            let res = req.send().await;
            if self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))? {
                return Ok(true);
            }
        } else if new.is_empty() {
            return Ok(false);
        }
        // Not the last edges (or a race): add them and look at what the set became.
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .update_expression("ADD deps_done :d")
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":d", set)
            .expression_attribute_values(":pending", s(TaskState::Pending.as_str()))
            .return_values(ReturnValue::AllNew)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let now = match res {
            Ok(out) => {
                record_capacity("UpdateItem", out.consumed_capacity());
                match out.attributes() {
                    Some(it) => task_from_item(it)?,
                    None => return Ok(false),
                }
            }
            Err(e) => match classify("UpdateItem", e) {
                StoreError::ConditionFailed { .. } => {
                    record_failed_condition("UpdateItem");
                    return Ok(false);
                }
                other => return Err(other),
            },
        };
        if !now.all_deps_done() {
            return Ok(false);
        }
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&now.job_id, now.shard),
                task_sk(&now.task_id),
            )))
            .update_expression(format!("SET {runnable}"))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":runnable", s(TaskState::Runnable.as_str()))
            .expression_attribute_values(":pending", s(TaskState::Pending.as_str()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if enqueue_follows {
            req = req.expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        let res = req.send().await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Move a task between states with no other change, if it is in one of `from`.
    pub async fn transition(
        &self,
        task: &TaskRecord,
        from: &[TaskState],
        to: TaskState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut values = HashMap::from([(":to".to_string(), s(to.as_str()))]);
        let mut names = Vec::new();
        for (i, st) in from.iter().enumerate() {
            values.insert(format!(":f{i}"), s(st.as_str()));
            names.push(format!(":f{i}"));
        }
        let mut update = "SET #state = :to".to_string();
        if to.is_terminal() {
            update.push_str(", finished_at = :now");
            values.insert(":now".into(), n(now_ms()));
        }
        if let Some(r) = reason {
            update.push_str(", reason = :reason");
            values.insert(":reason".into(), s(r));
        }
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&task.job_id, task.shard),
                task_sk(&task.task_id),
            )))
            .update_expression(update)
            .condition_expression(format!("#state IN ({})", names.join(", ")))
            .expression_attribute_names("#state", "state")
            .set_expression_attribute_values(Some(values))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Fail a waiting task because a dependency failed or was cancelled.
    pub async fn fail_dependent(
        &self,
        dependent: &TaskRecord,
        root: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&dependent.job_id, dependent.shard),
                task_sk(&dependent.task_id),
            )))
            .update_expression("SET #state = :failed, reason = :reason, failed_dependency = :root, finished_at = :now, failed_in = :job")
            .expression_attribute_values(":job", s(&dependent.job_id))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":failed", s(TaskState::Failed.as_str()))
            .expression_attribute_values(":pending", s(TaskState::Pending.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":root", s(root))
            .expression_attribute_values(":now", n(now_ms()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Add a new dependent to a stored task that has not finished. If it has, the
    /// condition fails and the caller releases (or fails) the new task itself.
    pub async fn append_dependent(
        &self,
        job_id: &str,
        shard_count: u32,
        from: &str,
        to: &str,
    ) -> Result<Result<(), TaskRecord>, StoreError> {
        let shard = crate::domain::ids::task_shard(from, shard_count);
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(job_id, shard), task_sk(from))))
            .update_expression(
                "SET dependents = list_append(if_not_exists(dependents, :empty), :to)",
            )
            .condition_expression("#state IN (:pending, :runnable, :starting, :running)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":to", list_s(&[to.to_string()]))
            .expression_attribute_values(":pending", s("PENDING"))
            .expression_attribute_values(":runnable", s("RUNNABLE"))
            .expression_attribute_values(":starting", s("STARTING"))
            .expression_attribute_values(":running", s("RUNNING"))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match res {
            Ok(out) => {
                record_capacity("UpdateItem", out.consumed_capacity());
                Ok(Ok(()))
            }
            Err(e) => {
                let old = condition_old_item(&e);
                match classify("UpdateItem", e) {
                    StoreError::ConditionFailed { operation, .. } => {
                        record_failed_condition("UpdateItem");
                        match old {
                            Some(it) => Ok(Err(task_from_item(&it)?)),
                            None => Err(StoreError::ConditionFailed {
                                operation,
                                current: None,
                            }),
                        }
                    }
                    other => Err(other),
                }
            }
        }
    }

    /// Claim a task for a worker: RUNNABLE → RUNNING with attempt + 1 and a lease; or,
    /// if the task is RUNNING under a lease that has lapsed (its worker died), take it
    /// over as the next attempt, recording the lost one.
    pub async fn claim_task(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim(job_id, shard, task_id, worker_id, lease, None)
            .await
    }

    /// Claim a child of an array job. Its item does not exist until its first claim,
    /// which creates it (with what the job's template says about it); after that it is
    /// claimed like any task.
    pub async fn claim_child(
        &self,
        job_id: &str,
        shard: u32,
        seed: &ChildSeed,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim(
            job_id,
            shard,
            &seed.index.to_string(),
            worker_id,
            lease,
            Some(seed),
        )
        .await
    }

    async fn claim(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
        seed: Option<&ChildSeed>,
    ) -> Result<Claim, StoreError> {
        let now = now_ms();
        let lease_until = now + lease.as_millis() as i64;
        let k = key(task_pk(job_id, shard), task_sk(task_id));
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k.clone()));
        req = match seed {
            None => req
                .update_expression(
                    "SET #state = :running, attempt = attempt + :one, worker_id = :w, lease_expires = :lease, started_at = :now",
                )
                .condition_expression("#state = :runnable"),
            // A child claimed again (retried, or moved up a tier) keeps what its item
            // says about its resources and pool.
            Some(c) => req
                .update_expression(format!(
                    "SET #state = :running, attempt = if_not_exists(attempt, :zero) + :one, worker_id = :w, lease_expires = :lease, started_at = :now, \
                     job_id = :job, task_id = :task, idx = :idx, #shard = :shard, kind = :kind, queue = :queue, \
                     cpu_milli = if_not_exists(cpu_milli, :cpu), memory_mib = if_not_exists(memory_mib, :mem), \
                     max_attempts = if_not_exists(max_attempts, :max), created_at = if_not_exists(created_at, :now){}{}",
                    // `pool` is a reserved word.
                    if c.pool.is_some() { ", #pool = if_not_exists(#pool, :pool)" } else { "" },
                    if c.gpu > 0 { ", gpu = if_not_exists(gpu, :gpu)" } else { "" },
                ))
                .set_expression_attribute_values(Some(
                    [
                        c.pool.as_ref().map(|p| (":pool".to_string(), s(p))),
                        (c.gpu > 0).then(|| (":gpu".to_string(), n(c.gpu))),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ))
                .condition_expression("attribute_not_exists(#state) OR #state = :runnable")
                .set_expression_attribute_names(Some(
                    [
                        Some(("#shard".to_string(), "shard".to_string())),
                        c.pool.as_ref().map(|_| ("#pool".to_string(), "pool".to_string())),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":job", s(job_id))
                .expression_attribute_values(":task", s(task_id))
                .expression_attribute_values(":idx", n(c.index))
                .expression_attribute_values(":shard", n(shard))
                .expression_attribute_values(":kind", s(TaskKind::Command.as_str()))
                .expression_attribute_values(":queue", s(&c.queue))
                .expression_attribute_values(":cpu", n(c.cpu_milli))
                .expression_attribute_values(":mem", n(c.memory_mib))
                .expression_attribute_values(":max", n(c.max_attempts)),
        };
        let res = req
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":running", s("RUNNING"))
            .expression_attribute_values(":runnable", s("RUNNABLE"))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(worker_id))
            .expression_attribute_values(":lease", n(lease_until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let old = match res {
            Ok(out) => {
                record_capacity("UpdateItem", out.consumed_capacity());
                let it = out.attributes().cloned().unwrap_or_default();
                return Ok(Claim::Claimed(Box::new(task_from_item(&it)?)));
            }
            Err(e) => {
                let old = condition_old_item(&e);
                match classify("UpdateItem", e) {
                    StoreError::ConditionFailed { .. } => {
                        record_failed_condition("UpdateItem");
                        old
                    }
                    other => return Err(other),
                }
            }
        };
        let Some(old) = old else {
            return Ok(Claim::NotClaimable {
                reason: "no such task".into(),
            });
        };
        let task = task_from_item(&old)?;
        if task.state != TaskState::Running {
            return Ok(Claim::NotClaimable {
                reason: format!("task is {}", task.state),
            });
        }
        let expires = task.lease_expires.unwrap_or(0);
        if task.cancel_requested || expires >= now {
            return Ok(Claim::NotClaimable {
                reason: format!(
                    "held by worker {} until {}",
                    task.worker_id.as_deref().unwrap_or("?"),
                    expires
                ),
            });
        }
        // The holder's lease lapsed: its worker is gone. Record the lost attempt.
        let lost = AttemptRecord {
            attempt: task.attempt,
            worker_id: task.worker_id.clone().unwrap_or_default(),
            started_at: task.started_at.unwrap_or(now),
            finished_at: Some(now),
            reason: Some(format!(
                "worker {} lost: lease expired",
                task.worker_id.as_deref().unwrap_or("?")
            )),
            ..Default::default()
        };
        if crate::domain::tiers::budgeted_attempts(task.attempt, task.tier) >= task.max_attempts {
            let reason = format!(
                "worker lost on attempt {} of {}; no attempts left",
                task.attempt, task.max_attempts
            );
            let res = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .update_expression(
                    "SET #state = :failed, reason = :reason, finished_at = :now, failed_in = :job, attempts = list_append(if_not_exists(attempts, :empty), :lost) REMOVE lease_expires",
                )
                .expression_attribute_values(":job", s(job_id))
                .condition_expression("#state = :running AND attempt = :attempt AND lease_expires < :now")
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":failed", s("FAILED"))
                .expression_attribute_values(":running", s("RUNNING"))
                .expression_attribute_values(":reason", s(reason))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":attempt", n(task.attempt))
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(":lost", AttributeValue::L(vec![attempt_to_value(&lost)]))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            return Ok(
                if self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))? {
                    Claim::Exhausted
                } else {
                    Claim::NotClaimable {
                        reason: "another worker took it over".into(),
                    }
                },
            );
        }
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .update_expression(
                "SET attempt = attempt + :one, worker_id = :w, lease_expires = :lease, started_at = :now, attempts = list_append(if_not_exists(attempts, :empty), :lost)",
            )
            .condition_expression("#state = :running AND attempt = :attempt AND lease_expires < :now")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":running", s("RUNNING"))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(worker_id))
            .expression_attribute_values(":lease", n(lease_until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":attempt", n(task.attempt))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":lost", AttributeValue::L(vec![attempt_to_value(&lost)]))
            .return_values(ReturnValue::AllNew)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match res {
            Ok(out) => {
                record_capacity("UpdateItem", out.consumed_capacity());
                let it = out.attributes().cloned().unwrap_or_default();
                Ok(Claim::Claimed(Box::new(task_from_item(&it)?)))
            }
            Err(e) => match classify("UpdateItem", e) {
                StoreError::ConditionFailed { .. } => {
                    record_failed_condition("UpdateItem");
                    Ok(Claim::NotClaimable {
                        reason: "another worker took it over".into(),
                    })
                }
                other => Err(other),
            },
        }
    }

    /// Extend a held lease; tells the worker whether the task was cancelled meanwhile.
    pub async fn heartbeat(
        &self,
        task: &TaskRecord,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let res = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&task.job_id, task.shard),
                task_sk(&task.task_id),
            )))
            .update_expression("SET lease_expires = :lease")
            .condition_expression("#state = :running AND attempt = :attempt AND worker_id = :w")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":lease", n(now_ms() + lease.as_millis() as i64))
            .expression_attribute_values(":running", s("RUNNING"))
            .expression_attribute_values(":attempt", n(task.attempt))
            .expression_attribute_values(":w", s(worker_id))
            .return_values(ReturnValue::AllNew)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match res {
            Ok(out) => {
                record_capacity("UpdateItem", out.consumed_capacity());
                let cancel = out
                    .attributes()
                    .map(|it| Reader::new(it).bool("cancel_requested"))
                    .unwrap_or(false);
                Ok(Heartbeat::Held {
                    cancel_requested: cancel,
                })
            }
            Err(e) => match classify("UpdateItem", e) {
                StoreError::ConditionFailed { .. } => {
                    record_failed_condition("UpdateItem");
                    Ok(Heartbeat::Lost)
                }
                other => Err(other),
            },
        }
    }

    /// Record how an attempt ended. Only the worker that holds this attempt can.
    pub async fn finish_attempt(
        &self,
        task: &TaskRecord,
        worker_id: &str,
        state: TaskState,
        reason: Option<&str>,
        record: &AttemptRecord,
        escalation: Option<&Escalation>,
    ) -> Result<bool, StoreError> {
        // A retried attempt goes back to RUNNABLE (the stream re-queues it); only a
        // terminal state closes the task.
        let mut sets = vec![
            "#state = :to",
            "attempts = list_append(if_not_exists(attempts, :empty), :rec)",
        ];
        let mut values: HashMap<String, AttributeValue> = HashMap::new();
        if let Some(e) = escalation {
            sets.push(
                "tier = :tier, cpu_milli = :cpu, memory_mib = :mem, gpu = :gpu, #pool = :pool",
            );
            values.insert(":tier".into(), n(e.tier));
            values.insert(":cpu".into(), n(e.shape.cpu_milli));
            values.insert(":mem".into(), n(e.shape.memory_mib));
            values.insert(":gpu".into(), n(e.shape.gpu));
            values.insert(":pool".into(), s(&e.pool));
        }
        if state == TaskState::Failed {
            // The sparse index of failures: `tasks --state FAILED` is a query.
            sets.push("failed_in = :job");
            values.insert(":job".into(), s(&task.job_id));
        }
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&task.job_id, task.shard),
                task_sk(&task.task_id),
            )))
            .condition_expression("#state = :running AND attempt = :attempt AND worker_id = :w")
            .set_expression_attribute_values(Some(values))
            .set_expression_attribute_names(Some(
                [
                    Some(("#state".to_string(), "state".to_string())),
                    escalation.map(|_| ("#pool".to_string(), "pool".to_string())),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ))
            .expression_attribute_values(":to", s(state.as_str()))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":rec", AttributeValue::L(vec![attempt_to_value(record)]))
            .expression_attribute_values(":running", s("RUNNING"))
            .expression_attribute_values(":attempt", n(task.attempt))
            .expression_attribute_values(":w", s(worker_id))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if state.is_terminal() {
            sets.push("finished_at = :now");
            req = req
                .expression_attribute_values(":now", n(record.finished_at.unwrap_or_else(now_ms)));
        }
        if let Some(r) = reason {
            sets.push("reason = :reason");
            req = req.expression_attribute_values(":reason", s(r));
        }
        if let Some(code) = record.exit_code {
            sets.push("exit_code = :code");
            req = req.expression_attribute_values(":code", n(code));
        }
        let update = format!("SET {} REMOVE lease_expires", sets.join(", "));
        let res = req.update_expression(update).send().await;
        self.conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))
    }

    /// Cancel one task of a cancelled job: a task that has not started ends CANCELLED; a
    /// running one is flagged so its worker kills it. Returns the state it was left in.
    pub async fn cancel_task(&self, task: &TaskRecord) -> Result<TaskState, StoreError> {
        let mut current = task.clone();
        for _ in 0..3 {
            match current.state {
                TaskState::Pending | TaskState::Runnable => {
                    if self
                        .transition(
                            &current,
                            &[TaskState::Pending, TaskState::Runnable],
                            TaskState::Cancelled,
                            Some("job cancelled"),
                        )
                        .await?
                    {
                        return Ok(TaskState::Cancelled);
                    }
                }
                TaskState::Starting | TaskState::Running => {
                    let res = self
                        .ddb
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(key(
                            task_pk(&current.job_id, current.shard),
                            task_sk(&current.task_id),
                        )))
                        .update_expression("SET cancel_requested = :true")
                        .condition_expression("#state IN (:starting, :running)")
                        .expression_attribute_names("#state", "state")
                        .expression_attribute_values(":true", AttributeValue::Bool(true))
                        .expression_attribute_values(":starting", s("STARTING"))
                        .expression_attribute_values(":running", s("RUNNING"))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send()
                        .await;
                    if self
                        .conditional("UpdateItem", res.map(|o| o.consumed_capacity().cloned()))?
                    {
                        return Ok(TaskState::Running);
                    }
                }
                terminal => return Ok(terminal),
            }
            // The task moved under us; look again and act on what it is now.
            match self
                .get_task_in_shard(&current.job_id, current.shard, &current.task_id)
                .await?
            {
                Some(t) => current = t,
                None => return Ok(TaskState::Cancelled),
            }
        }
        Ok(current.state)
    }

    async fn get_task_in_shard(
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

/// The item a failed condition returned (`ReturnValuesOnConditionCheckFailure`).
fn condition_old_item<E: std::any::Any, R>(err: &SdkError<E, R>) -> Option<Item> {
    use aws_sdk_dynamodb::operation::{put_item::PutItemError, update_item::UpdateItemError};
    let service = err.as_service_error()?;
    let any: &dyn std::any::Any = service;
    if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
        any.downcast_ref::<UpdateItemError>()
    {
        return c.item().cloned();
    }
    if let Some(PutItemError::ConditionalCheckFailedException(c)) =
        any.downcast_ref::<PutItemError>()
    {
        return c.item().cloned();
    }
    None
}
