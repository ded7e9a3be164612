//! Array jobs in the fanout: dispatch windows and the rules between jobs.
//!
//! - A job becoming RUNNABLE (every gate met) queues its first `window` children (or,
//!   SEQUENTIAL, child 0; or, N_TO_N, starts a paged sweep that queues every child
//!   whose predecessors already succeeded).
//! - Each child that ends queues one more (the window slides), so a job has at most
//!   `window` children waiting in SQS and a job submitted later is not stuck behind a
//!   million messages. The cursor moves with a conditional write after the messages are
//!   sent: a crash in between re-sends, and a duplicate message loses its claim.
//! - A child that ends releases what its rules say: child `i + 1` (SEQUENTIAL), child
//!   `i` of N_TO_N dependents, and jobs waiting on exactly this child.
//! - A job that ends releases (or fails) the jobs waiting on it.

use crate::domain::batch::{child_task_id, Dependent};
use crate::domain::ids::task_shard;
use crate::domain::{JobRecord, JobState, TaskState};
use crate::queue::{TaskMessage, SEND_CHUNK};
use crate::stream::{BatchOutcome, Change, Fanout, FanoutError, JobChange, TaskChange};
use futures::{stream, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};

const CONCURRENCY: usize = 16;

/// A child's message, from its job.
pub fn child_message(job: &JobRecord, index: u32) -> Option<TaskMessage> {
    let a = job.array.as_ref()?;
    let task_id = child_task_id(index);
    Some(TaskMessage {
        shard: task_shard(&task_id, job.shard_count),
        job_id: job.job_id.clone(),
        task_id,
        cpu_milli: a.template.cpu_milli,
        memory_mib: a.template.memory_mib,
        gpu: a.template.tiers.first().map_or(0, |t| t.gpu),
        array_child: true,
        windowed: false,
        chained: false,
    })
}

/// The child a worker that has just run child `index` of `pred` to success takes on
/// next itself, depth first, with no message of its own: the same index of `dep`, an
/// N_TO_N dependent of `pred` alone that is RUNNABLE, not being cancelled, and starts
/// its children in the pool `pred` starts its own in. `None`: `dep`'s child goes through
/// its window as the fanout releases it.
///
/// The worker says so in the predecessor child's finish (`followed_by` on its
/// attempt), so the stream does not release the child too, and the predecessor child's
/// message carries it until it is accounted for. Its claim creates it `chained`.
pub fn chained_successor(pred: &JobRecord, dep: &JobRecord, index: u32) -> Option<TaskMessage> {
    let a = dep.array.as_ref()?;
    let waits_on_pred_alone = a.n_to_n.len() == 1 && a.n_to_n[0] == pred.job_id;
    let runs = dep.state == JobState::Runnable && !dep.cancel_requested;
    if !waits_on_pred_alone || !runs || a.sequential || index >= a.size() {
        return None;
    }
    if pred.array.is_none() || first_pool(dep) != first_pool(pred) {
        return None;
    }
    let mut m = child_message(dep, index)?;
    m.chained = true;
    Some(m)
}

/// Whether the worker that ran `pred_child` took on its successor child of `dep_id`
/// itself (its message carries that child until it is accounted for).
fn taken_on(pred_child: &crate::domain::TaskRecord, dep_id: &str) -> bool {
    pred_child.state == TaskState::Succeeded
        && pred_child
            .attempts
            .last()
            .and_then(|a| a.followed_by.as_deref())
            == Some(dep_id)
}

/// The pool a job's children start in: the first tier's, or the job's queue.
pub fn first_pool(job: &JobRecord) -> String {
    match &job.array {
        Some(a) => a.template.pool(&job.queue, &job.team, 0).name(),
        None => crate::domain::tiers::WorkerPool::new(&job.queue, &job.team, None).name(),
    }
}

impl Fanout {
    /// The array-job effects of a batch. On failure, the index of the first record whose
    /// effects did not all happen.
    pub(crate) async fn array_effects(
        &self,
        changes: &[Change],
        outcome: &mut BatchOutcome,
    ) -> Result<(), usize> {
        let mut failed: Option<usize> = None;
        let mut fail_at = |i: usize, e: FanoutError| {
            tracing::warn!(error = %e, seq = changes[i].sequence_number(), "array effect failed; will retry");
            failed = Some(failed.map_or(i, |f: usize| f.min(i)));
        };
        // Job transitions.
        for (i, c) in changes.iter().enumerate() {
            if let Change::Job(j) = c {
                if j.old_state != Some(j.job.state) {
                    match self.job_transition(j).await {
                        Ok(n) => outcome.enqueued += n,
                        Err(e) => fail_at(i, e),
                    }
                }
            }
        }
        // Children that ended, per job.
        let mut ended: BTreeMap<&str, Vec<(usize, &TaskChange)>> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            if let Change::Task(t) = c {
                if t.task.index.is_some()
                    && t.task.state.is_terminal()
                    && t.old_state != Some(t.task.state)
                {
                    ended
                        .entry(t.task.job_id.as_str())
                        .or_default()
                        .push((i, t));
                }
            }
        }
        for (job_id, children) in ended {
            let first = children[0].0;
            match self.children_ended(job_id, &children).await {
                Ok(n) => outcome.enqueued += n,
                Err(e) => fail_at(first, e),
            }
        }
        match failed {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }

    async fn job_transition(&self, change: &JobChange) -> Result<usize, FanoutError> {
        let job = &change.job;
        match job.state {
            JobState::Runnable if job.array.is_some() => self.start_array(job).await,
            st if st.is_terminal() => {
                self.release_job_dependents(job).await?;
                Ok(0)
            }
            _ => Ok(0),
        }
    }

    /// A job whose gates are all met starts its children.
    async fn start_array(&self, job: &JobRecord) -> Result<usize, FanoutError> {
        let Some(a) = &job.array else { return Ok(0) };
        if a.dispatched_by_cursor() {
            return self.dispatch(&job.job_id, u64::from(a.window)).await;
        }
        if a.sequential {
            return self.send_children(job, &[0]).await;
        }
        self.store
            .start_work(&job.job_id, crate::store::WorkKind::SweepNToN)
            .await?;
        Ok(0)
    }

    /// Slide the window: queue up to `count` more children from the cursor.
    pub async fn dispatch(&self, job_id: &str, count: u64) -> Result<usize, FanoutError> {
        for _ in 0..5 {
            let Some(job) = self.store.get_job(job_id).await? else {
                return Ok(0);
            };
            let Some(a) = &job.array else { return Ok(0) };
            if job.state != JobState::Runnable || job.cancel_requested {
                return Ok(0);
            }
            let from = job.dispatched;
            let to = (from + count).min(u64::from(a.size()));
            if to <= from {
                return Ok(0);
            }
            let indexes: Vec<u32> = (from as u32..to as u32).collect();
            let sent = self.send_children(&job, &indexes).await?;
            if self.store.advance_dispatch(job_id, from, to).await? {
                return Ok(sent);
            }
            // Another batch moved the cursor meanwhile; what we sent were duplicates.
        }
        Ok(0)
    }

    async fn send_children(&self, job: &JobRecord, indexes: &[u32]) -> Result<usize, FanoutError> {
        let messages: Vec<TaskMessage> = indexes
            .iter()
            .filter_map(|i| child_message(job, *i))
            .collect();
        // An N_TO_N array's children become ready in any order: its window paces them.
        if let Some(size) = job.release_window() {
            let pool = first_pool(job);
            let ready = messages.into_iter().map(|m| (pool.clone(), m)).collect();
            let window = super::window::Window {
                size,
                shard_count: job.shard_count,
            };
            return self.admit(&job.job_id, window, ready).await;
        }
        let chunks: Vec<Vec<TaskMessage>> =
            messages.chunks(SEND_CHUNK).map(|c| c.to_vec()).collect();
        stream::iter(chunks)
            .map(|chunk| async move { self.queues.send(&first_pool(job), &chunk).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(messages.len())
    }

    /// One page of an N_TO_N sweep: queue each child whose predecessors' children all
    /// succeeded; fail each whose predecessor child failed or will never run (its job
    /// ended without it); leave the rest to the predecessors' children as they end.
    pub(super) async fn sweep_n_to_n_page(
        &self,
        job: &JobRecord,
        range: std::ops::Range<u32>,
    ) -> Result<usize, FanoutError> {
        let Some(a) = &job.array else { return Ok(0) };
        let ids: Vec<String> = range.clone().map(child_task_id).collect();
        // per index: Some(true) all succeeded so far, Some(false) one failed, None waits
        let mut ready: Vec<Option<bool>> = vec![Some(true); ids.len()];
        let mut reasons: HashMap<u32, String> = HashMap::new();
        for pred_id in &a.n_to_n {
            let Some(pred) = self.store.get_job(pred_id).await? else {
                continue;
            };
            let found = self
                .store
                .get_tasks(pred_id, pred.shard_count, &ids)
                .await?;
            for (k, i) in range.clone().enumerate() {
                let why = match found.get(&ids[k]).map(|t| t.state) {
                    Some(TaskState::Succeeded) => continue,
                    Some(st) if st.is_terminal() => format!("Dependent job {pred_id}:{i} {st}"),
                    None if pred.state.is_terminal() => {
                        format!("Dependent job {pred_id}:{i} ended without running")
                    }
                    _ => {
                        if ready[k] == Some(true) {
                            ready[k] = None;
                        }
                        continue;
                    }
                };
                ready[k] = Some(false);
                reasons.entry(i).or_insert(why);
            }
        }
        let pick = |want: bool| -> Vec<u32> {
            range
                .clone()
                .zip(&ready)
                .filter(|(_, r)| **r == Some(want))
                .map(|(i, _)| i)
                .collect()
        };
        let sent = self.send_children(job, &pick(true)).await?;
        self.fail_children(job, &pick(false), |i| {
            reasons.get(&i).cloned().unwrap_or_default()
        })
        .await?;
        Ok(sent)
    }

    pub(super) async fn fail_children(
        &self,
        job: &JobRecord,
        indexes: &[u32],
        reason: impl Fn(u32) -> String,
    ) -> Result<(), FanoutError> {
        let work: Vec<(u32, String)> = indexes.iter().map(|i| (*i, reason(*i))).collect();
        stream::iter(work)
            .map(|(i, r)| async move { self.store.fail_unstarted_child(job, i, &r).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(())
    }

    /// Children of one job that ended in this batch.
    async fn children_ended(
        &self,
        job_id: &str,
        children: &[(usize, &TaskChange)],
    ) -> Result<usize, FanoutError> {
        let Some(job) = self.store.get_job(job_id).await? else {
            return Ok(0);
        };
        let Some(a) = &job.array else { return Ok(0) };
        let mut sent = 0;
        if a.dispatched_by_cursor() {
            sent += self.dispatch(job_id, children.len() as u64).await?;
        }
        if a.sequential && job.state == JobState::Runnable {
            let mut next = Vec::new();
            let mut fail_from: Option<u32> = None;
            for (_, t) in children {
                let i = t.task.index.unwrap_or(0);
                if i + 1 >= a.size() {
                    continue;
                }
                if t.task.state == TaskState::Succeeded {
                    next.push(i + 1);
                } else {
                    fail_from = Some(fail_from.map_or(i + 1, |f| f.min(i + 1)));
                }
            }
            sent += self.send_children(&job, &next).await?;
            // A failed child fails the rest of the sequence, a page at a time (each
            // write is conditional on the child not existing, so a page may repeat).
            if let Some(from) = fail_from {
                self.store
                    .start_work_at(job_id, crate::store::WorkKind::FailSequence, from)
                    .await?;
            }
        }
        for d in job.dependents.iter().filter_map(|d| Dependent::decode(d)) {
            match d {
                Dependent::NToN(dep_id) => {
                    sent += self.n_to_n_children(&dep_id, job_id, children).await?;
                }
                Dependent::Child {
                    job_id: dep_id,
                    index,
                } => {
                    for (_, t) in children.iter().filter(|(_, t)| t.task.index == Some(index)) {
                        if t.task.state == TaskState::Succeeded {
                            self.store
                                .meet_gate(&dep_id, &format!("{job_id}:{index}"))
                                .await?;
                        } else {
                            self.store
                                .fail_job(
                                    &dep_id,
                                    JobState::Failed,
                                    &format!("Dependent job {job_id}:{index} {}", t.task.state),
                                )
                                .await?;
                        }
                    }
                }
                Dependent::WholeJob(_) => {}
            }
        }
        Ok(sent)
    }

    /// Children of `pred_id` ended: queue (or fail) the same children of `dep_id`.
    async fn n_to_n_children(
        &self,
        dep_id: &str,
        pred_id: &str,
        children: &[(usize, &TaskChange)],
    ) -> Result<usize, FanoutError> {
        let Some(dep) = self.store.get_job(dep_id).await? else {
            return Ok(0);
        };
        let Some(a) = &dep.array else { return Ok(0) };
        // Not started yet: its sweep will see these children when it starts.
        if dep.state != JobState::Runnable {
            return Ok(0);
        }
        let mut go = Vec::new();
        let mut fail = Vec::new();
        for (_, t) in children {
            let i = t.task.index.unwrap_or(0);
            if i >= a.size() || taken_on(&t.task, dep_id) {
                continue;
            }
            if t.task.state == TaskState::Succeeded {
                go.push(i);
            } else {
                fail.push((i, t.task.state));
            }
        }
        // With several N_TO_N predecessors, child i waits for all of them.
        if a.n_to_n.len() > 1 && !go.is_empty() {
            let mut all_ok = go.clone();
            for other in a.n_to_n.iter().filter(|o| o.as_str() != pred_id) {
                let Some(o) = self.store.get_job(other).await? else {
                    continue;
                };
                let ids: Vec<String> = go.iter().map(|i| child_task_id(*i)).collect();
                let found = self.store.get_tasks(other, o.shard_count, &ids).await?;
                all_ok.retain(|i| {
                    found
                        .get(&child_task_id(*i))
                        .is_some_and(|t| t.state == TaskState::Succeeded)
                });
            }
            go = all_ok;
        }
        let sent = self.send_children(&dep, &go).await?;
        let reasons: HashMap<u32, TaskState> = fail.iter().cloned().collect();
        let idx: Vec<u32> = fail.iter().map(|(i, _)| *i).collect();
        self.fail_children(&dep, &idx, |i| {
            format!(
                "Dependent job {pred_id}:{i} {}",
                reasons.get(&i).copied().unwrap_or(TaskState::Failed)
            )
        })
        .await?;
        Ok(sent)
    }

    /// A job ended: jobs waiting on all of it are released (it succeeded) or failed; its
    /// N_TO_N dependents get a sweep (children that will now never run fail theirs).
    async fn release_job_dependents(&self, job: &JobRecord) -> Result<(), FanoutError> {
        let work: Vec<Dependent> = job
            .dependents
            .iter()
            .filter_map(|d| Dependent::decode(d))
            .collect();
        stream::iter(work)
            .map(|d| async move {
                match d {
                    Dependent::WholeJob(dep_id) => {
                        if job.state == JobState::Succeeded {
                            self.store.meet_gate(&dep_id, &job.job_id).await?;
                        } else {
                            self.store
                                .fail_job(
                                    &dep_id,
                                    JobState::Failed,
                                    &format!("Dependent job {} {}", job.job_id, job.state),
                                )
                                .await?;
                        }
                    }
                    Dependent::NToN(dep_id) => {
                        // Its children that never ran fail theirs: sweep the dependent
                        // again from the start, since what its passed pages saw changed.
                        let Some(dep) = self.store.get_job(&dep_id).await? else {
                            return Ok(());
                        };
                        if job.state != JobState::Succeeded && dep.state == JobState::Runnable {
                            self.store
                                .restart_work(&dep_id, crate::store::WorkKind::SweepNToN)
                                .await?;
                        }
                        // A dependent whose children all ended first waited for this job.
                        if !dep.state.is_terminal() {
                            self.close_if_done(&dep_id).await?;
                        }
                    }
                    Dependent::Child { job_id, index } => {
                        // The child may never have run (its job was cancelled).
                        let id = child_task_id(index);
                        let found = self
                            .store
                            .get_tasks(&job.job_id, job.shard_count, std::slice::from_ref(&id))
                            .await?;
                        if !found.get(&id).is_some_and(|t| t.state.is_terminal()) {
                            self.store
                                .fail_job(
                                    &job_id,
                                    JobState::Failed,
                                    &format!(
                                        "Dependent job {}:{index} ended without running",
                                        job.job_id
                                    ),
                                )
                                .await?;
                        }
                    }
                }
                Ok::<(), FanoutError>(())
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}
