//! Pages of an open job: a job too big for one request goes in as pages of tasks, each
//! stored under a name its sender gives, then commits.
//!
//! A page is three steps, each safe to repeat:
//! 1. **Begin**: one transaction puts the page's item (`P#<page>`, WRITING, with a digest
//!    of its tasks) and, on the job, adds its tasks to the total and one to
//!    `pages_writing`, on condition that the job is still open and uncommitted.
//! 2. **Write**: the page's task items and its edges to tasks of earlier pages, with
//!    BatchWriteItem. Plain puts: a repeat writes the same items again. A stored task is
//!    never rewritten by a later page: an edge from it is an item of its own
//!    (`J#<job>#<shard>#E`, `E#<from>/<to>`), read beside its `dependents`.
//! 3. **End**: one transaction marks the page WRITTEN and takes one from
//!    `pages_writing`, on condition that it was WRITING.
//!
//! The commit requires `pages_writing = 0`, so a job never commits around a page whose
//! tasks are half written; a page that died part-way is finished by sending it again.

use super::item::*;
use super::{Store, StoreError};
use crate::domain::{ExistingEdge, PlannedTask, TaskState};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};

/// A page as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRecord {
    pub page_id: String,
    /// The digest of its tasks as first sent: a page sent again under its name must
    /// carry the same tasks.
    pub digest: String,
    pub tasks: u64,
    /// All its items are written.
    pub written: bool,
}

/// What beginning a page found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStart {
    /// Begun now, or begun before and not finished (a repeat after a failure): write it.
    Write,
    /// Stored already with these tasks: nothing to do.
    Written,
    /// The page's name is taken by other tasks.
    Conflict { digest: String },
    /// The job no longer takes pages (committed, abandoned or cancelled).
    Closed,
}

const WRITING: &str = "WRITING";
const WRITTEN: &str = "WRITTEN";

fn build(source: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Build {
        operation: "TransactWriteItems",
        source,
    }
}

impl Store {
    /// A page of a job, as stored.
    pub async fn get_page(
        &self,
        job_id: &str,
        page_id: &str,
    ) -> Result<Option<PageRecord>, StoreError> {
        let Some(it) = self
            .read_item(key(job_pk(job_id), page_sk(page_id)))
            .await?
        else {
            return Ok(None);
        };
        let r = Reader::new(&it);
        Ok(Some(PageRecord {
            page_id: page_id.to_string(),
            digest: r.req_s("digest")?,
            tasks: r.req_n("tasks")?,
            written: r.req_s("state")? == WRITTEN,
        }))
    }

    /// The pages of a job still being written.
    pub async fn pages_writing(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .filter_expression("#state = :writing")
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":pk", s(job_pk(job_id)))
                    .expression_attribute_values(":p", s("P#"))
                    .expression_attribute_values(":writing", s(WRITING))
                    .consistent_read(true)
            })
            .await?;
        items
            .iter()
            .map(|it| Ok(Reader::new(it).req_s("page_id")?))
            .collect()
    }

    /// Step 1: record the page and count its tasks into the job, unless it is there.
    pub async fn begin_page(
        &self,
        job_id: &str,
        page_id: &str,
        digest: &str,
        tasks: u64,
        page_edges: bool,
    ) -> Result<PageStart, StoreError> {
        let now = self.now();
        let mut page = key(job_pk(job_id), page_sk(page_id));
        page.insert("page_id".into(), s(page_id));
        page.insert("digest".into(), s(digest));
        page.insert("tasks".into(), n(tasks));
        page.insert("state".into(), s(WRITING));
        page.insert("created_at".into(), n(now));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(page))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        let mut set = "SET last_page_at = :now".to_string();
        if page_edges {
            set.push_str(", page_edges = :true");
        }
        let job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression(format!("{set} ADD total_tasks :n, pages_writing :one"))
            .condition_expression("#state = :submitted AND uncommitted = :true AND #open = :true AND (attribute_not_exists(cancel_requested) OR cancel_requested = :false)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#open", "open")
            .expression_attribute_values(
                ":submitted",
                s(crate::domain::JobState::Submitted.as_str()),
            )
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":n", n(tasks))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(build)?;
        let begun = super::request::send_if(
            self.ddb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().update(job).build()),
        )
        .await?
        .is_some();
        if begun {
            return Ok(PageStart::Write);
        }
        // The page is there already, or the job takes no more pages.
        Ok(match self.get_page(job_id, page_id).await? {
            Some(p) if p.digest != digest => PageStart::Conflict { digest: p.digest },
            Some(p) if p.written => PageStart::Written,
            Some(_) => PageStart::Write,
            None => PageStart::Closed,
        })
    }

    /// Step 2's items, written with [`Store::put_items`]: the page's tasks (marked as
    /// the page's, ready ones as sent by the commit's walk) and its edges from tasks of
    /// earlier pages.
    #[allow(clippy::too_many_arguments)]
    pub fn page_items(
        &self,
        job_id: &str,
        shard_count: u32,
        pool: (&str, &str),
        max_attempts: u32,
        page_id: &str,
        plan: &[PlannedTask],
        edges: &[ExistingEdge],
    ) -> Vec<Item> {
        let now = self.now();
        let mut items = Vec::with_capacity(plan.len() + edges.len());
        for t in plan {
            let shard = crate::domain::ids::task_shard(&t.id, shard_count);
            let mut item = new_task_item(job_id, shard, pool, max_attempts, now, t);
            if t.state == TaskState::Runnable {
                item.insert("enqueued".into(), AttributeValue::Bool(true));
            }
            item.insert("page".into(), s(page_id));
            items.push(item);
        }
        for e in edges {
            let shard = crate::domain::ids::task_shard(&e.from, shard_count);
            let mut item = key(page_edge_pk(job_id, shard), page_edge_sk(&e.from, &e.to));
            item.insert("page".into(), s(page_id));
            items.push(item);
        }
        items
    }

    /// Step 3: the page is whole.
    pub async fn end_page(&self, job_id: &str, page_id: &str) -> Result<(), StoreError> {
        let page = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), page_sk(page_id))))
            .update_expression("SET #state = :written")
            .condition_expression("#state = :writing")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":written", s(WRITTEN))
            .expression_attribute_values(":writing", s(WRITING))
            .build()
            .map_err(build)?;
        let job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), META_SK.into())))
            .update_expression("ADD pages_writing :minus")
            .expression_attribute_values(":minus", n(-1))
            .build()
            .map_err(build)?;
        // Not applied: a repeat found it ended already.
        super::request::send_if(
            self.ddb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(page).build())
                .transact_items(TransactWriteItem::builder().update(job).build()),
        )
        .await?;
        Ok(())
    }

    /// The tasks of later pages that depend on `from` (besides its own `dependents`).
    pub async fn page_dependents(
        &self,
        job_id: &str,
        shard_count: u32,
        from: &str,
    ) -> Result<Vec<String>, StoreError> {
        let shard = crate::domain::ids::task_shard(from, shard_count);
        let prefix = page_edge_prefix(from);
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":pk", s(page_edge_pk(job_id, shard)))
                    .expression_attribute_values(":p", s(&prefix))
                    .consistent_read(true)
            })
            .await?;
        Ok(items
            .iter()
            .filter_map(|it| match it.get("sk") {
                Some(AttributeValue::S(sk)) => sk.strip_prefix(&prefix).map(str::to_string),
                _ => None,
            })
            .collect())
    }

    /// Items written with BatchWriteItem, 25 a request and several requests at once.
    pub async fn put_items(&self, items: Vec<Item>) -> Result<(), StoreError> {
        use futures::{stream, StreamExt, TryStreamExt};
        let requests: Vec<WriteRequest> = items
            .into_iter()
            .map(|item| {
                Ok(WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().map_err(
                        |source| StoreError::Build {
                            operation: "BatchWriteItem",
                            source,
                        },
                    )?)
                    .build())
            })
            .collect::<Result<_, StoreError>>()?;
        let chunks: Vec<Vec<WriteRequest>> = requests.chunks(25).map(|c| c.to_vec()).collect();
        stream::iter(chunks)
            .map(|chunk| self.batch_write(chunk))
            .buffer_unordered(super::WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
