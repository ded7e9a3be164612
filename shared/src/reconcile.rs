//! The reconciler: on the autoscaler's schedule, it finds what the event-driven paths
//! left undone when a writer died or a message was lost, and finishes it.
//!
//! - **Abandoned submissions.** A DAG job still uncommitted [`ABANDON_AFTER_MS`] after
//!   it was created (its submission failed or died part-way) is closed FAILED. None of
//!   it ran: nothing is sent before the commit. A job open for pages is closed so once
//!   no page has come for [`OPEN_IDLE_MS`].
//! - **Stranded tasks.** A committed job with RUNNABLE tasks while every pool of its
//!   queue and team is empty (no message visible or in flight) lost messages: its ready
//!   tasks are sent again through the paged walk (a copy of a message that did exist is
//!   dropped by the claim).
//! - **Dead letters.** A message SQS moved to the dead-letter queue after
//!   `maxReceiveCount` receives without being deleted: for a task still RUNNABLE it is
//!   sent again once; dead-lettered a second time, the task fails with a reason that
//!   names what it needs (no worker of its pool took it: too big for every worker, or
//!   its pool has none). For a task RUNNING under a live lease (an attempt longer than
//!   SQS's 12-hour visibility limit, whose message kept coming back) it is sent again
//!   with a delay, so a takeover still finds it if that worker dies. Anything else
//!   (finished, gone) is dropped.
//! - **Cancels that settled quietly.** A cancelled job closes once nothing of it runs
//!   ([`crate::domain::JobRecord::closes_cancelled`]), on the stream record that shows
//!   it; one whose last record came before its cancel settled is closed here.

use crate::domain::tiers::WorkerPool;
use crate::domain::{TaskKind, TaskState};
use crate::queue::{Queues, TaskMessage};
use crate::store::{now_ms, JobQuery, Store, StoreError, WorkKind};
use serde::Serialize;

/// How old an uncommitted submission must be before it is closed as abandoned: well
/// past the longest a submission request may run.
pub const ABANDON_AFTER_MS: i64 = 5 * 60 * 1000;

/// How long a job open for pages may go without a page before it is closed as
/// abandoned: a sender that stopped (or died) for this long is not coming back.
pub const OPEN_IDLE_MS: i64 = 30 * 60 * 1000;

/// How far back abandoned submissions are looked for.
const ABANDON_LOOKBACK_MS: i64 = 7 * 24 * 3600 * 1000;

/// The most recent jobs of each queue looked at for stranded tasks per run.
const JOBS_PER_QUEUE: usize = 500;

/// How many dead letters one run takes (ten a receive).
const DEAD_LETTERS_PER_RUN: usize = 100;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reconciled {
    pub abandoned: Vec<String>,
    /// Jobs whose ready tasks were sent again.
    pub resent_jobs: Vec<String>,
    /// Windowed jobs given their whole window back (none of their messages waited)
    /// with held tasks sent in it.
    pub refilled_jobs: Vec<String>,
    pub dead_letters: usize,
    pub redriven: usize,
    /// Tasks failed because no worker would take them (job/task).
    pub undeliverable: Vec<String>,
    /// Cancelled jobs closed here (no stream record came once their cancel settled).
    pub closed_cancelled: Vec<String>,
    pub errors: Vec<String>,
}

pub struct Reconciler<'a> {
    pub store: &'a Store,
    pub queues: &'a Queues,
    /// The queue's name (without the prefix) that pools dead-letter to, if any.
    pub dead_letter_queue: Option<String>,
}

impl Reconciler<'_> {
    /// One pass of everything; what fails is reported, not fatal.
    pub async fn run(&self, now: i64) -> Reconciled {
        let mut out = Reconciled::default();
        let names = match self.queues.list().await {
            Ok(n) => n,
            Err(e) => {
                out.errors.push(format!("listing queues: {e}"));
                return out;
            }
        };
        let job_queues: Vec<&String> = names
            .iter()
            .filter(|n| WorkerPool::parse(n).is_none())
            .filter(|n| Some(n.as_str()) != self.dead_letter_queue.as_deref())
            .collect();
        for q in &job_queues {
            if let Err(e) = self.abandoned(q, now, &mut out).await {
                out.errors
                    .push(format!("queue {q}: abandoned submissions: {e}"));
            }
            if let Err(e) = self.stranded(q, &names, now, &mut out).await {
                out.errors.push(format!("queue {q}: stranded tasks: {e}"));
            }
        }
        if let Some(dlq) = &self.dead_letter_queue {
            if let Err(e) = self.dead_letters(dlq, &mut out).await {
                out.errors.push(format!("dead letters: {e}"));
            }
        }
        if out != Reconciled::default() {
            tracing::info!(?out, "reconciled");
        }
        out
    }

    async fn abandoned(
        &self,
        queue: &str,
        now: i64,
        out: &mut Reconciled,
    ) -> Result<(), StoreError> {
        let jobs = self
            .store
            .uncommitted_jobs(queue, now - ABANDON_LOOKBACK_MS, now - ABANDON_AFTER_MS)
            .await?;
        for job in jobs {
            let (idle_since, reason) = if job.paging.open {
                let last = job.paging.last_page_at.unwrap_or(job.created_at);
                if last >= now - OPEN_IDLE_MS {
                    continue;
                }
                (
                    now - OPEN_IDLE_MS,
                    format!(
                        "the job was opened for pages and none came for {} minutes before it committed; nothing of it ran",
                        OPEN_IDLE_MS / 60_000
                    ),
                )
            } else {
                (
                    i64::MAX,
                    format!(
                        "the submission did not complete within {} minutes; nothing of it ran",
                        ABANDON_AFTER_MS / 60_000
                    ),
                )
            };
            if self
                .store
                .abandon_job(&job.job_id, &reason, idle_since)
                .await?
            {
                tracing::warn!(job_id = %job.job_id, "an abandoned submission was closed");
                out.abandoned.push(job.job_id);
            }
        }
        Ok(())
    }

    async fn stranded(
        &self,
        queue: &str,
        all_queues: &[String],
        now: i64,
        out: &mut Reconciled,
    ) -> Result<(), anyhow::Error> {
        // A committed DAG job that has not ended is listed RUNNABLE or RUNNING.
        let mut jobs = Vec::new();
        for status in ["RUNNABLE", "RUNNING"] {
            let page = self
                .store
                .list_jobs(
                    queue,
                    &JobQuery::Status(status.into()),
                    None,
                    JOBS_PER_QUEUE,
                    None,
                )
                .await?;
            jobs.extend(page.jobs.into_iter().filter(|j| {
                !j.state.is_terminal()
                    && !j.uncommitted
                    && (j.array.is_none() || j.release_window().is_some())
            }));
        }
        for job in jobs {
            if job.cancel_requested {
                // Nothing to resend or refill: its walk and its workers cancel what is
                // left, and it closes once nothing of it runs.
                if job.array.is_none()
                    && crate::stream::close_if_done(self.store, &job.job_id)
                        .await?
                        .is_some()
                {
                    out.closed_cancelled.push(job.job_id);
                }
                continue;
            }
            let own = WorkerPool::new(queue, &job.team, None).name();
            let pools = all_queues
                .iter()
                .filter(|n| **n == own || n.starts_with(&format!("{own}--")));
            let (mut waiting, mut messages) = (0, 0);
            for p in pools {
                let url = self.queues.url(p).await?;
                let (visible, in_flight) = self.queues.depth(&url).await?;
                waiting += visible;
                messages += visible + in_flight;
            }
            if waiting == 0 {
                self.repair_window(&job, now, out).await?;
            }
            if job.array.is_some() {
                continue;
            }
            let (counts, _, _) = self.store.job_counts(&job.job_id).await?;
            if counts.get(TaskState::Runnable) == 0 {
                continue;
            }
            // A windowed job's held tasks are RUNNABLE with no message by design, and
            // between a claim and the refill it brings nothing waits either: sending
            // them again would hold each a second time. Only a window left alone that
            // holds nothing has lost messages.
            if job.release_window().is_some() {
                let slots = self.store.slots(&job.job_id).await?;
                if slots.held > 0 || now - slots.changed_at < crate::store::WINDOW_SETTLES_AFTER_MS
                {
                    continue;
                }
            }
            if messages == 0
                && self
                    .store
                    .start_work(&job.job_id, WorkKind::Enqueue)
                    .await?
            {
                tracing::warn!(job_id = %job.job_id, runnable = counts.get(TaskState::Runnable),
                    "RUNNABLE tasks with no message in any pool: sending them again");
                out.resent_jobs.push(job.job_id);
            }
        }
        Ok(())
    }

    /// None of a windowed job's messages waits in SQS and its window has not changed
    /// for a while, so every slot it took has come back or leaked (a message sent twice
    /// is claimed once; a send cut off after its take): give it its whole window back
    /// and send what it holds.
    async fn repair_window(
        &self,
        job: &crate::domain::JobRecord,
        now: i64,
        out: &mut Reconciled,
    ) -> Result<(), anyhow::Error> {
        let Some(size) = job.release_window() else {
            return Ok(());
        };
        let slots = self.store.slots(&job.job_id).await?;
        if slots.free >= i64::from(slots.window(size)) && slots.held == 0 {
            return Ok(());
        }
        // Nothing waits between a take and its send too: only a window left alone for a
        // while has leaked, and only if nothing took or gave since it was read.
        let quiet_for = now - slots.changed_at;
        if quiet_for < crate::store::WINDOW_SETTLES_AFTER_MS
            || !self.store.reset_slots(&job.job_id, size, &slots).await?
        {
            return Ok(());
        }
        if self
            .store
            .recount_held(&job.job_id, job.shard_count)
            .await?
            == 0
        {
            return Ok(());
        }
        let window = crate::stream::window::Window {
            size,
            shard_count: job.shard_count,
        };
        let sent = crate::stream::window::refill(
            self.store,
            self.queues,
            &job.job_id,
            window,
            i64::from(size),
        )
        .await?;
        tracing::warn!(job_id = %job.job_id, free = slots.free, held = slots.held, sent,
            "a windowed job had held tasks and no message waiting: its window is whole again");
        out.refilled_jobs.push(job.job_id.clone());
        Ok(())
    }

    async fn dead_letters(&self, dlq: &str, out: &mut Reconciled) -> Result<(), anyhow::Error> {
        let url = self.queues.url(dlq).await?;
        while out.dead_letters < DEAD_LETTERS_PER_RUN {
            let got = self
                .queues
                .receive(
                    &url,
                    10,
                    std::time::Duration::ZERO,
                    std::time::Duration::from_secs(60),
                )
                .await?;
            if got.is_empty() {
                break;
            }
            for d in got {
                out.dead_letters += 1;
                let mut handled = Ok(());
                for m in &d.tasks {
                    if let Err(e) = self.dead_letter(m, out).await {
                        handled = Err(e);
                    }
                }
                match handled {
                    Ok(()) => {
                        self.queues
                            .delete(&url, std::slice::from_ref(&d.receipt_handle))
                            .await?
                    }
                    // Left in the dead-letter queue: the next run tries again.
                    Err(e) => out.errors.push(format!("dead letter {}: {e}", d.body)),
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        m: &TaskMessage,
        out: &mut Reconciled,
    ) -> Result<(), anyhow::Error> {
        let Some(job) = self.store.get_job(&m.job_id).await? else {
            return Ok(());
        };
        let Some(task) = self
            .store
            .get_task(&m.job_id, job.shard_count, &m.task_id)
            .await?
        else {
            return Ok(());
        };
        if task.kind != TaskKind::Command || task.state.is_terminal() {
            return Ok(());
        }
        let pool = task.pool_name().to_string();
        let lease_live = task.lease_expires.is_some_and(|e| e > now_ms());
        match task.state {
            TaskState::Running if lease_live => {
                // A long attempt's message: keep one around for a takeover.
                self.queues
                    .send_delayed(
                        &pool,
                        std::slice::from_ref(m),
                        std::time::Duration::from_secs(900),
                    )
                    .await?;
                out.redriven += 1;
            }
            // Its worker is gone: the message lets the takeover happen.
            TaskState::Running => {
                self.queues.send(&pool, std::slice::from_ref(m)).await?;
                out.redriven += 1;
            }
            TaskState::Runnable => {
                if self.store.mark_redriven(&task).await? {
                    self.queues.send(&pool, std::slice::from_ref(m)).await?;
                    out.redriven += 1;
                } else {
                    let reason = format!(
                        "no worker took it: its message was dead-lettered twice after {} receives each; it needs {} vCPU, {} MiB{} and pool {pool} has no worker that large, or none at all",
                        self.queues.max_receives(),
                        crate::domain::placement::vcpus(u64::from(task.cpu_milli)),
                        task.memory_mib,
                        if task.gpu > 0 { format!(", {} GPU", task.gpu) } else { String::new() },
                    );
                    if self.store.fail_undeliverable(&task, &reason).await? {
                        tracing::error!(job_id = %task.job_id, task_id = %task.task_id, reason, "task failed: undeliverable");
                        out.undeliverable
                            .push(format!("{}/{}", task.job_id, task.task_id));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
