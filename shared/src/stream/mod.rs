//! Side effects driven by the DynamoDB stream (the log). For each task change:
//! RUNNABLE → send the task to its queue (or, for a barrier, complete it at once);
//! SUCCEEDED → release its dependents; FAILED/CANCELLED → fail its waiting dependents.
//! Then, once per batch and job, the batch's count deltas are recorded (idempotent on the
//! batch's sequence numbers) and a job whose tasks are all finished is closed.
//!
//! Records arrive at least once; every effect is conditional, so applying a record twice
//! changes nothing.

pub mod arrays;
mod counts;
mod jobs;
pub use jobs::close_if_done;
pub mod window;
mod work;

use crate::domain::JobRecord;
use crate::domain::{JobState, TaskKind, TaskRecord, TaskState, TaskTransition};
use crate::queue::Queues;
use crate::store::item::{is_job_item, is_task_item, job_from_item, task_from_item, Item};
use crate::store::{Store, StoreError};
use aws_lambda_events::event::dynamodb::EventRecord;
use futures::{stream, StreamExt};
use std::collections::{BTreeMap, HashMap};

/// One task change from the stream, decoded.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub sequence_number: String,
    pub old_state: Option<TaskState>,
    pub task: TaskRecord,
}

/// One job item change from the stream, decoded.
#[derive(Debug, Clone)]
pub struct JobChange {
    pub sequence_number: String,
    pub old_state: Option<JobState>,
    /// The job as it was before this change (`None` for its first write).
    pub old_job: Option<Box<JobRecord>>,
    pub job: JobRecord,
    /// The status key the job is listed under (`ls`), as this record shows it.
    pub listed_as: Option<String>,
}

/// A stream record as the fanout sees it.
#[derive(Debug, Clone)]
pub enum Change {
    Task(Box<TaskChange>),
    Job(Box<JobChange>),
    /// A job's paged work moved on: do its next page.
    Work {
        sequence_number: String,
        cursor: Box<crate::store::WorkCursor>,
    },
    /// A worker gave a slot of this job's release window back: send a held task in it.
    SlotFreed {
        sequence_number: String,
        job_id: String,
    },
    /// Counter, marker and key items: nothing to do.
    Other {
        sequence_number: String,
    },
}

impl Change {
    pub fn sequence_number(&self) -> &str {
        match self {
            Change::Task(t) => &t.sequence_number,
            Change::Job(j) => &j.sequence_number,
            Change::Work {
                sequence_number, ..
            }
            | Change::SlotFreed {
                sequence_number, ..
            }
            | Change::Other { sequence_number } => sequence_number,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("stream record {sequence_number}: {problem}")]
    BadRecord {
        sequence_number: String,
        problem: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// Decode a Lambda DynamoDB stream record (the local poller builds the same type).
pub fn decode_record(record: &EventRecord) -> Result<Change, FanoutError> {
    let seq = record.change.sequence_number.clone().unwrap_or_default();
    let new: Item = record.change.new_image.clone().into();
    let old: Item = record.change.old_image.clone().into();
    if record.event_name != "REMOVE" && is_job_item(&new) {
        let job = job_from_item(&new).map_err(|e| FanoutError::BadRecord {
            sequence_number: seq.clone(),
            problem: e.to_string(),
        })?;
        return Ok(Change::Job(Box::new(JobChange {
            sequence_number: seq,
            old_state: crate::store::item::job_state_of(&old),
            old_job: is_job_item(&old)
                .then(|| job_from_item(&old).ok().map(Box::new))
                .flatten(),
            listed_as: crate::store::item::listed_status_of(&new),
            job,
        })));
    }
    if record.event_name != "REMOVE" && crate::store::item::is_work_item(&new) {
        let cursor =
            crate::store::work::cursor_from_item(&new).map_err(|e| FanoutError::BadRecord {
                sequence_number: seq.clone(),
                problem: e.to_string(),
            })?;
        return Ok(Change::Work {
            sequence_number: seq,
            cursor: Box::new(cursor),
        });
    }
    if record.event_name != "REMOVE" {
        if let Some(job_id) = crate::store::item::slot_freed(&old, &new) {
            return Ok(Change::SlotFreed {
                sequence_number: seq,
                job_id,
            });
        }
    }
    if record.event_name == "REMOVE" || !is_task_item(&new) {
        return Ok(Change::Other {
            sequence_number: seq,
        });
    }
    let task = task_from_item(&new).map_err(|e| FanoutError::BadRecord {
        sequence_number: seq.clone(),
        problem: e.to_string(),
    })?;
    let old_state = crate::store::item::state_of(&old);
    Ok(Change::Task(Box::new(TaskChange {
        sequence_number: seq,
        old_state,
        task,
    })))
}

/// Decode a stream batch. A record that cannot be read will not read better on retry:
/// it is skipped loudly (as `Other`) rather than blocking the shard forever.
pub fn decode_batch(records: &[EventRecord]) -> Vec<Change> {
    records
        .iter()
        .map(|record| {
            decode_record(record).unwrap_or_else(|e| {
                tracing::error!(error = %e, "undecodable stream record skipped");
                Change::Other {
                    sequence_number: record.change.sequence_number.clone().unwrap_or_default(),
                }
            })
        })
        .collect()
}

/// One queue's task transitions in a batch, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueMetrics {
    pub released: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// For each succeeded task with dependents: its end to now, when they are released (ms).
    pub release_latency_ms: Vec<f64>,
}

/// Count a batch's task transitions per queue (barriers left out).
pub fn batch_metrics(changes: &[Change], now: i64) -> BTreeMap<String, QueueMetrics> {
    let mut by_queue: BTreeMap<String, QueueMetrics> = BTreeMap::new();
    for c in changes {
        let Change::Task(t) = c else { continue };
        if t.old_state == Some(t.task.state) || t.task.kind != TaskKind::Command {
            continue;
        }
        let m = by_queue.entry(t.task.queue.clone()).or_default();
        match t.task.state {
            TaskState::Runnable => m.released += 1,
            TaskState::Running => m.started += 1,
            TaskState::Succeeded => {
                m.succeeded += 1;
                if !t.task.dependents.is_empty() {
                    if let Some(end) = t.task.attempts.last().and_then(|a| a.finished_at) {
                        m.release_latency_ms.push((now - end).max(0) as f64);
                    }
                }
            }
            TaskState::Failed => m.failed += 1,
            _ => {}
        }
    }
    by_queue
}

/// Emit a batch's metrics (EMF), per queue.
pub fn emit_batch_metrics(changes: &[Change], now: i64) {
    use crate::metrics::{emit, Unit};
    for (queue, m) in batch_metrics(changes, now) {
        let count = |n: u64| if n > 0 { vec![n as f64] } else { vec![] };
        emit(
            &[("Queue", &queue)],
            &[
                ("TasksReleased", Unit::Count, count(m.released)),
                ("TasksStarted", Unit::Count, count(m.started)),
                ("TasksSucceeded", Unit::Count, count(m.succeeded)),
                ("TasksFailed", Unit::Count, count(m.failed)),
                ("ReleaseLatency", Unit::Milliseconds, m.release_latency_ms),
            ],
        );
    }
}

/// What processing a batch did, and where it stopped if it failed.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The first record whose effects failed: the batch is retried from here.
    pub failed_at: Option<String>,
    pub enqueued: usize,
    pub released: usize,
    pub jobs_finished: Vec<(String, JobState)>,
}

/// The fanout's collaborators.
#[derive(Debug)]
pub struct Fanout {
    pub store: Store,
    pub queues: Queues,
    /// Committed jobs' shard counts and page edges (both fixed by the commit), so a
    /// record costs no job read.
    shapes: std::sync::Mutex<HashMap<String, JobShape>>,
    /// Jobs whose start time is recorded, so no batch spends a failed write on it again.
    started: std::sync::Mutex<std::collections::HashSet<String>>,
    /// How windowed jobs' windows follow their claims.
    window_policy: crate::store::WindowPolicy,
    /// Each windowed job's window as last seen, so a give-back names the right one.
    window_limits: std::sync::Mutex<HashMap<String, u32>>,
}

const EFFECT_CONCURRENCY: usize = 32;

/// What following a job's edges needs to know of it.
#[derive(Debug, Clone, Copy)]
struct JobShape {
    shard_count: u32,
    /// Some tasks have dependents in later pages, kept as items of their own.
    page_edges: bool,
    /// Its release window, if its ready tasks are paced by one.
    window: Option<window::Window>,
}

impl Fanout {
    pub fn new(store: Store, queues: Queues) -> Self {
        Fanout {
            store,
            queues,
            shapes: Default::default(),
            started: Default::default(),
            window_policy: Default::default(),
            window_limits: Default::default(),
        }
    }

    /// How windowed jobs' windows follow their claim rates (by default, a second of
    /// each job's claims).
    pub fn with_window_policy(mut self, policy: crate::store::WindowPolicy) -> Self {
        self.window_policy = policy;
        self
    }

    /// Apply a batch of stream records in order (effects run concurrently; all are
    /// idempotent). Counts are recorded for the prefix of records that succeeded.
    pub async fn process(&self, changes: &[Change]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();

        // Effects per record, concurrently; remember which records failed.
        let results: Vec<(usize, Result<usize, FanoutError>)> = stream::iter(0..changes.len())
            .map(|i| async move { (i, self.effects(&changes[i]).await) })
            .buffer_unordered(EFFECT_CONCURRENCY)
            .collect()
            .await;
        let mut first_failed = changes.len();
        for (i, r) in results {
            match r {
                Ok(n) => outcome.released += n,
                Err(e) => {
                    tracing::warn!(error = %e, seq = changes[i].sequence_number(), "stream record failed; will retry");
                    first_failed = first_failed.min(i);
                }
            }
        }

        // Paged work over jobs' tasks: one page per cursor record.
        for (i, c) in changes.iter().enumerate() {
            if let Change::Work { cursor, .. } = c {
                match self.work_page(cursor).await {
                    Ok(n) => outcome.enqueued += n,
                    Err(e) => {
                        tracing::warn!(error = %e, job_id = %cursor.job_id, kind = cursor.kind.as_str(), "a page of a job's work failed; will retry");
                        first_failed = first_failed.min(i);
                    }
                }
            }
        }

        // Array jobs: dispatch windows and the rules between jobs.
        if let Err(failed) = self.array_effects(changes, &mut outcome).await {
            first_failed = first_failed.min(failed);
        }

        // Release dependents of succeeded tasks: the batch's edges into one dependent
        // go in one write, so a fan-in whose dependencies finish together is cheap. The
        // command tasks released are sent below with the rest, not a stream hop later.
        let mut released_now: Vec<(usize, TaskRecord)> = Vec::new();
        match self.release_all(changes, &mut released_now).await {
            Ok(n) => outcome.released += n,
            Err(failed) => first_failed = first_failed.min(failed),
        }

        // Enqueue runnable command tasks, grouped by pool, ten a request: those this
        // batch released, and those the stream shows becoming RUNNABLE otherwise
        // (submitted ready, retried, moved up a tier, released by the API).
        // Claims of windowed tasks give their slots back first: held tasks (ready
        // before anything this batch released) go out in them.
        if let Err(failed) = self.give_back_claims(changes, &mut outcome).await {
            first_failed = first_failed.min(failed);
        }

        if let Err(failed) = self.send_ready(changes, &released_now, &mut outcome).await {
            first_failed = first_failed.min(failed);
        }

        // Counts for the records that succeeded, once per job.
        let done = &changes[..first_failed];
        if let Err(e) = self.record_counts(done, &mut outcome).await {
            tracing::warn!(error = %e, "recording counts failed; will retry the batch");
            first_failed = 0;
        }
        if first_failed < changes.len() {
            outcome.failed_at = Some(changes[first_failed].sequence_number().to_string());
        }
        outcome
    }

    /// The effects of one record other than enqueueing; returns how many tasks it released.
    async fn effects(&self, change: &Change) -> Result<usize, FanoutError> {
        let t = match change {
            Change::Task(t) => t,
            Change::Job(j) => {
                self.job_effects(j).await?;
                return Ok(0);
            }
            _ => return Ok(0),
        };
        let task = &t.task;
        if became(t, TaskState::Runnable) && task.kind == TaskKind::Barrier {
            self.store
                .transition(
                    task,
                    TaskTransition::PassBarrier,
                    TaskState::Succeeded,
                    None,
                )
                .await?;
            return Ok(0);
        }
        let failed = became(t, TaskState::Failed) || became(t, TaskState::Cancelled);
        if !failed {
            return Ok(0);
        }
        let shape = self.job_shape(&task.job_id).await?;
        let shard_count = shape.shard_count;
        let dependents = self.dependents_of(task, shape).await?;
        if dependents.is_empty() {
            return Ok(0);
        }
        {
            // Name the user task at the root, looking through barriers.
            let root = match task.kind {
                TaskKind::Barrier => task
                    .failed_dependency
                    .clone()
                    .unwrap_or_else(|| task.task_id.clone()),
                TaskKind::Command => task.task_id.clone(),
            };
            let root_state = if task.kind == TaskKind::Command {
                task.state
            } else {
                TaskState::Failed
            };
            let dependents = self
                .store
                .get_tasks(&task.job_id, shard_count, &dependents)
                .await?;
            let results: Vec<Result<bool, StoreError>> = stream::iter(dependents.into_values())
                .map(|d| {
                    let store = self.store.clone();
                    let root = root.clone();
                    async move { store.fail_dependent(&d, &root, root_state).await }
                })
                .buffer_unordered(EFFECT_CONCURRENCY)
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
        Ok(0)
    }

    /// Release the dependents of every task that succeeded in this batch, adding to
    /// `send` each one this batch made RUNNABLE (with the index of the first record
    /// naming it) for the caller to enqueue. A dependent already RUNNABLE by these very
    /// edges is sent again: this may be a retry of the batch whose send was lost, and a
    /// second message for a task is dropped by its claim. On failure, the index of the
    /// first record whose releases did not all go through.
    async fn release_all(
        &self,
        changes: &[Change],
        send: &mut Vec<(usize, TaskRecord)>,
    ) -> Result<usize, usize> {
        // Each succeeded task's dependents: its own list, and its edges to later pages.
        let mut followed: Vec<(usize, &TaskRecord, Vec<String>)> = Vec::new();
        let mut failed: Option<usize> = None;
        for (i, c) in changes.iter().enumerate() {
            let Change::Task(t) = c else { continue };
            if !became(t, TaskState::Succeeded) {
                continue;
            }
            let listed = match self.job_shape(&t.task.job_id).await {
                Ok(shape) => self.dependents_of(&t.task, shape).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(d) => followed.push((i, &t.task, d)),
                Err(e) => {
                    tracing::warn!(error = %e, job_id = %t.task.job_id, "reading dependents failed; will retry");
                    failed = Some(failed.map_or(i, |f| f.min(i)));
                }
            }
        }
        // job → dependent → (finished dependencies, first record index naming it)
        let mut edges: BTreeMap<&str, BTreeMap<String, (Vec<String>, usize)>> = BTreeMap::new();
        for (i, task, dependents) in followed {
            let job = edges.entry(task.job_id.as_str()).or_default();
            for d in dependents {
                let e = job.entry(d).or_insert((Vec::new(), i));
                if !e.0.contains(&task.task_id) {
                    e.0.push(task.task_id.clone());
                }
                e.1 = e.1.min(i);
            }
        }
        let mut released = 0;
        for (job_id, dependents) in edges {
            let first = dependents.values().map(|(_, i)| *i).min().unwrap_or(0);
            let shard_count = match self.shard_count(job_id).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, job_id, "release failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                    continue;
                }
            };
            let ids: Vec<String> = dependents.keys().map(|d| d.to_string()).collect();
            let found = match self.store.get_tasks(job_id, shard_count, &ids).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, job_id, "reading dependents failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                    continue;
                }
            };
            for id in &ids {
                if !found.contains_key(id) {
                    tracing::error!(job_id, dependent = %id, "dependent task item is missing");
                }
            }
            let work: Vec<(TaskRecord, Vec<String>, usize)> = found
                .into_values()
                .filter_map(|d| {
                    let (deps, i) = dependents.get(d.task_id.as_str())?.clone();
                    Some((d, deps, i))
                })
                .collect();
            let released_by = |d: &TaskRecord, deps: &[String]| {
                d.state == TaskState::Runnable
                    && d.enqueued_on_release
                    && deps.iter().all(|x| d.deps_done.contains(x))
            };
            let results: Vec<(usize, TaskRecord, Result<bool, StoreError>)> = stream::iter(work)
                .map(|(d, deps, i)| {
                    let store = self.store.clone();
                    async move {
                        if released_by(&d, &deps) {
                            return (i, d, Ok(true));
                        }
                        let r = match store.release_edges(&d, &deps, true).await {
                            // Refused: another writer got there, or this very write was
                            // applied on a try whose answer was lost. Which, the task
                            // says: released by these edges, it is sent here.
                            Ok(false) => match store
                                .get_task_in_shard(&d.job_id, d.shard, &d.task_id)
                                .await
                            {
                                Ok(Some(now)) if released_by(&now, &deps) => Ok(true),
                                Ok(_) => Ok(false),
                                Err(e) => Err(e),
                            },
                            other => other,
                        };
                        (i, d, r)
                    }
                })
                .buffer_unordered(EFFECT_CONCURRENCY)
                .collect()
                .await;
            for (i, d, r) in results {
                match r {
                    Ok(true) => {
                        released += 1;
                        send.push((i, d));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, job_id, "release failed; will retry");
                        failed = Some(failed.map_or(i, |f| f.min(i)));
                    }
                }
            }
        }
        match failed {
            Some(i) => Err(i),
            None => Ok(released),
        }
    }

    async fn shard_count(&self, job_id: &str) -> Result<u32, FanoutError> {
        Ok(self.job_shape(job_id).await?.shard_count)
    }

    /// A task's dependents: its own list, and for a job whose pages made edges, its
    /// edges to tasks of later pages.
    async fn dependents_of(
        &self,
        task: &TaskRecord,
        shape: JobShape,
    ) -> Result<Vec<String>, FanoutError> {
        let mut all = task.dependents.clone();
        if shape.page_edges && task.kind == TaskKind::Command {
            all.extend(
                self.store
                    .page_dependents(&task.job_id, shape.shard_count, &task.task_id)
                    .await?,
            );
        }
        Ok(all)
    }

    async fn job_shape(&self, job_id: &str) -> Result<JobShape, FanoutError> {
        // Tasks carry their own shard but not the job's count: read the job once.
        if let Some(shape) = self
            .shapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
        {
            return Ok(*shape);
        }
        match self.store.get_job(job_id).await? {
            Some(j) => {
                let shape = JobShape {
                    shard_count: j.shard_count,
                    page_edges: j.paging.page_edges,
                    window: j.release_window().map(|size| window::Window {
                        size,
                        shard_count: j.shard_count,
                    }),
                };
                // Until its commit a job may still gain page edges.
                if !j.uncommitted {
                    let mut cache = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(job_id.to_string(), shape);
                }
                Ok(shape)
            }
            None => Err(FanoutError::BadRecord {
                sequence_number: String::new(),
                problem: format!("job {job_id} has tasks but no job item"),
            }),
        }
    }
}

fn became(t: &TaskChange, state: TaskState) -> bool {
    t.task.state == state && t.old_state != Some(state)
}
