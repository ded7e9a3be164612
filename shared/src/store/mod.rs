//! The DynamoDB adapter: every read and conditional write Batchplane makes. Each state
//! transition is one conditional write; the condition is the state machine's rule (and
//! the attempt and worker, for a claimed task), so a duplicate message or stream record
//! loses the race instead of acting twice.

pub mod access;
pub mod arrays;
pub mod autoscaler;
mod cancel;
pub mod capacity;
mod claims;
mod counts;
mod edges;
mod error;
mod group_counts;
mod group_edges;
pub mod item;
mod jobs;
mod listing;
mod pages;
pub mod placement;
pub mod published;
pub mod registry;
pub(crate) mod request;
mod schema;
mod tasks;
mod team_jobs;
pub mod teams;
mod window;
pub mod work;
pub mod workers;

pub use claims::{ChildSeed, Claim, Escalation, Heartbeat};
pub use counts::{sequence_after, EndedTally, RecordCounts};
pub(crate) use error::classify;
pub use error::StoreError;
pub use group_counts::{GroupRecordCounts, GroupTotals, GROUPS_KEPT, OTHER_GROUPS};
pub use group_edges::{GroupEdges, GROUP_EDGES_KEPT};
pub use jobs::{KeyClaim, KEY_HOLD_MS};
pub use listing::{JobPage, JobQuery, ListAt, ListPosition, LIST_EXAMINE_LIMIT};
pub use pages::{PageRecord, PageStart};
pub use tasks::TaskPage;
pub use team_jobs::{JobFilter, TeamJobPage};
pub use window::{
    bundle_size, HeldBundle, HeldTask, Slots, WindowPolicy, BUNDLE, RATE_PERIOD_MS, WINDOW_CEILING,
    WINDOW_FLOOR, WINDOW_SETTLES_AFTER_MS,
};
pub use work::{WorkCursor, WorkKind, WORK_PAGE};

use item::*;
use request::send;

/// Now, in milliseconds since the epoch: the unit of every time the store keeps.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where the store reads the time (ms since the epoch) that leases, claims and
/// finishes are measured by: the system clock, or a test's own.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(std::sync::Arc::new(now_ms))
    }

    /// A clock that reads `now` (a test moves it to lapse a lease without waiting).
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(std::sync::Arc::new(now))
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The DynamoDB side of Batchplane.
#[derive(Debug, Clone)]
pub struct Store {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    clock: Clock,
    /// Teams this process has noted as having jobs (see `note_job_team`): noted once.
    noted_teams: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

pub(super) const WRITE_CONCURRENCY: usize = 8;

impl Store {
    pub fn new(ddb: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Store {
            ddb,
            table: table.into(),
            clock: Clock::system(),
            noted_teams: Default::default(),
        }
    }

    /// The same store reading its time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by the store's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// An UpdateItem of `task`'s item; the caller adds the update and its condition.
    pub(crate) fn update_task(
        &self,
        task: &crate::domain::TaskRecord,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                task_pk(&task.job_id, task.shard),
                task_sk(&task.task_id),
            )))
    }

    /// Put `item` unless an item with its key exists; whether it was written (a marker
    /// or record written once, whoever asks how often).
    pub(crate) async fn put_if_absent(&self, item: Item) -> Result<bool, StoreError> {
        Ok(request::send_if(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)"),
        )
        .await?
        .is_some())
    }

    /// One item by key, read consistently.
    async fn read_item(&self, k: Item) -> Result<Option<Item>, StoreError> {
        let out = send(
            self.ddb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .consistent_read(true),
        )
        .await?;
        Ok(out.item().cloned())
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
            let out = send(
                query()
                    .table_name(&self.table)
                    .set_exclusive_start_key(start.take()),
            )
            .await?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(items),
            }
        }
    }
}
