//! A job of any size, in pages: open it (`open: true`), put pages of tasks under names
//! the sender gives, then commit. Each page is checked as an addition is (a task may
//! depend on tasks of its own page or of pages already stored, so a page's own cycle
//! check is the whole graph's), written with BatchWriteItem, and idempotent: a page
//! sent again under its name is answered as the first time. Nothing runs before the
//! commit; a job never committed is closed by the reconciler (see [`crate::store`]'s
//! pages for how a page that dies part-way is kept from a commit).

use crate::domain::ids::{is_valid_page_id, is_valid_task_id, stable_hash};
use crate::domain::limits::MAX_TASKS_PER_PAGE;
use crate::domain::{parse_task_list, plan_addition, validate_addition, JobRecord, TaskKind};
use crate::store::PageStart;
use serde::Serialize;
use serde_json::json;
use std::collections::HashSet;

use super::*;
use crate::domain::access::Access;

/// A page stored.
#[derive(Debug, Clone, Serialize)]
pub struct PageAdded {
    pub job_id: String,
    pub page_id: String,
    /// Tasks the page holds.
    pub tasks: u64,
    /// True when the page was stored by an earlier request with the same tasks.
    pub already_stored: bool,
}

/// A job committed.
#[derive(Debug, Clone, Serialize)]
pub struct Committed {
    pub job_id: String,
    pub total_tasks: u64,
    /// False when an earlier request committed it.
    pub committed_now: bool,
}

impl Service {
    /// The job `job_id` if it takes pages now: opened for pages, not committed, not
    /// closed.
    async fn open_job(&self, who: &Access, job_id: &str) -> Result<JobRecord, ApiError> {
        let job = self.paged_job(who, job_id).await?;
        still_open(&job)?;
        Ok(job)
    }

    /// The job `job_id` if it was opened for pages.
    async fn paged_job(&self, who: &Access, job_id: &str) -> Result<JobRecord, ApiError> {
        let job = self.job_for(who, job_id, Need::Act).await?;
        if !job.paging.open {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "JobNotOpen",
                format!("job {job_id} was not opened for pages: submit it with `open: true` to send its tasks in pages"),
                json!({"job_id": job_id}),
            ));
        }
        Ok(job)
    }

    /// Store page `page_id` of an open job.
    pub async fn add_page(
        &self,
        who: &Access,
        job_id: &str,
        page_id: &str,
        body: &str,
    ) -> Result<PageAdded, ApiError> {
        if !is_valid_page_id(page_id) {
            return Err(ApiError::bad_request(
                format!("path parameter `page`: {page_id:?} must be 1 to 64 of [A-Za-z0-9_.-]"),
                json!({"parameter": "page"}),
            ));
        }
        let job = self.paged_job(who, job_id).await?;
        let tasks = parse_task_list(body)?;
        if tasks.len() > MAX_TASKS_PER_PAGE {
            return Err(ApiError::bad_request(
                format!(
                    "page {page_id}, field `tasks`: {} tasks; a page may hold at most {MAX_TASKS_PER_PAGE}: send several pages",
                    tasks.len()
                ),
                json!({"field": "tasks", "page": page_id, "count": tasks.len(), "max": MAX_TASKS_PER_PAGE}),
            ));
        }
        let digest = format!(
            "{:016x}",
            stable_hash(&serde_json::to_string(&tasks).unwrap_or_default())
        );
        let answer = |already_stored| PageAdded {
            job_id: job_id.to_string(),
            page_id: page_id.to_string(),
            tasks: tasks.len() as u64,
            already_stored,
        };
        let conflict = |stored: &str| {
            ApiError::new(
                ErrorKind::Conflict,
                "PageConflict",
                format!("job {job_id} has a page {page_id:?} with other tasks (digest {stored}, this one {digest}); a page is stored once under its name: send new tasks under a new name"),
                json!({"job_id": job_id, "page": page_id}),
            )
        };
        if let Some(p) = self.store.get_page(job_id, page_id).await? {
            if p.digest != digest {
                return Err(conflict(&p.digest));
            }
            // Answered as the first time, even once the job has committed.
            if p.written {
                return Ok(answer(true));
            }
        }
        still_open(&job)?;
        let existing = self.stored_ids(&job, page_id, &tasks).await?;
        validate_addition(&tasks, &existing).map_err(|e| in_page(e.into(), page_id))?;
        self.check_tasks_fit(&job.queue, &job.team, "tasks", &tasks)
            .await
            .map_err(|e| in_page(e, page_id))?;
        self.ensure_pools(&job.queue, &job.team, &super::pool_uses(&tasks))
            .await?;
        let (plan, edges) = plan_addition(&tasks);
        match self
            .store
            .begin_page(
                job_id,
                page_id,
                &digest,
                tasks.len() as u64,
                !edges.is_empty(),
            )
            .await?
        {
            PageStart::Write => {}
            PageStart::Written => return Ok(answer(true)),
            PageStart::Conflict { digest: stored } => return Err(conflict(&stored)),
            PageStart::Closed => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    "JobNotOpen",
                    format!("job {job_id} stopped taking pages while page {page_id:?} was checked (committed, cancelled or abandoned)"),
                    json!({"job_id": job_id, "page": page_id}),
                ))
            }
        }
        let items = self.store.page_items(
            job_id,
            job.shard_count,
            (&job.queue, &job.team),
            self.max_attempts,
            page_id,
            &plan,
            &edges,
        );
        self.store.put_items(items).await?;
        self.store
            .add_group_edges(job_id, &super::group_edges_of(&tasks))
            .await?;
        self.store.end_page(job_id, page_id).await?;
        tracing::info!(
            job_id,
            page_id,
            tasks = tasks.len(),
            edges = edges.len(),
            "page stored"
        );
        Ok(answer(false))
    }

    /// Which of the ids a page uses (its own and its dependencies) the job has from
    /// other pages. Its own tasks found stored were written by an earlier try of this
    /// very page.
    async fn stored_ids(
        &self,
        job: &JobRecord,
        page_id: &str,
        tasks: &[crate::domain::TaskSpec],
    ) -> Result<HashSet<String>, ApiError> {
        let own: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let mut lookup: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for t in tasks {
            lookup.extend(
                t.depends_on
                    .iter()
                    .filter(|d| !own.contains(d.as_str()))
                    .cloned(),
            );
        }
        lookup.retain(|id| is_valid_task_id(id));
        lookup.sort();
        lookup.dedup();
        let found = self
            .store
            .get_tasks(&job.job_id, job.shard_count, &lookup)
            .await?;
        let existing: HashSet<String> = found
            .values()
            .filter(|t| t.kind == TaskKind::Command && t.page.as_deref() != Some(page_id))
            .map(|t| t.task_id.clone())
            .collect();
        Ok(existing)
    }

    /// Commit an open job: its ready tasks are sent and it runs. Committing again
    /// answers as the first time.
    pub async fn commit_open_job(&self, who: &Access, job_id: &str) -> Result<Committed, ApiError> {
        let job = self.job_for(who, job_id, Need::Act).await?;
        if job.paging.open && !job.uncommitted {
            return Ok(Committed {
                job_id: job_id.to_string(),
                total_tasks: job.total_tasks,
                committed_now: false,
            });
        }
        let job = self.open_job(who, job_id).await?;
        if job.total_tasks == 0 {
            return Err(ApiError::bad_request(
                format!("job {job_id} has no tasks: send a page before committing it"),
                json!({"job_id": job_id, "field": "tasks"}),
            ));
        }
        if self.store.commit_job(job_id).await? {
            tracing::info!(job_id, tasks = job.total_tasks, "open job committed");
            return Ok(Committed {
                job_id: job_id.to_string(),
                total_tasks: job.total_tasks,
                committed_now: true,
            });
        }
        // Not committed: a page is still being written, or the job moved on meanwhile.
        let writing = self.store.pages_writing(job_id).await?;
        if !writing.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "PagesIncomplete",
                format!(
                    "job {job_id}: page{} {} {} not finished being written; send {} again, then commit",
                    if writing.len() == 1 { "" } else { "s" },
                    quoted_list(&writing),
                    if writing.len() == 1 { "is" } else { "are" },
                    if writing.len() == 1 { "it" } else { "them" },
                ),
                json!({"job_id": job_id, "pages": writing}),
            ));
        }
        let now = self.job_for(who, job_id, Need::Act).await?;
        if !now.uncommitted && !now.state.is_terminal() {
            return Ok(Committed {
                job_id: job_id.to_string(),
                total_tasks: now.total_tasks,
                committed_now: false,
            });
        }
        self.open_job(who, job_id).await?;
        Err(ApiError::new(
            ErrorKind::Busy,
            "CommitRaced",
            format!("job {job_id} changed while it was committed; commit again"),
            json!({"job_id": job_id}),
        ))
    }
}

/// Refused unless the job still takes pages: not committed, not closed.
fn still_open(job: &JobRecord) -> Result<(), ApiError> {
    let job_id = job.job_id.as_str();
    if job.state.is_terminal() || !job.uncommitted || job.cancel_requested {
        let why = match (&job.reason, job.uncommitted) {
            (_, false) => "has been committed".to_string(),
            _ if job.cancel_requested && !job.state.is_terminal() => {
                "is being cancelled".to_string()
            }
            (Some(r), _) => format!("is closed ({r})"),
            (None, _) => "is closed".to_string(),
        };
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "JobNotOpen",
            format!("job {job_id} {why}; it takes no more pages"),
            json!({"job_id": job_id, "state": job.state}),
        ));
    }
    Ok(())
}

/// An error about a page's tasks, with the page named.
fn in_page(mut e: ApiError, page_id: &str) -> ApiError {
    e.message = format!("page {page_id}: {}", e.message);
    if let Some(d) = e.details.as_object_mut() {
        d.insert("page".into(), json!(page_id));
    }
    e
}
