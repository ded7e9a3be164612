//! Release windows in the fanout (the store's side is `store::window`): a windowed
//! job's ready tasks go to SQS as far as its free slots go and are held past that; a
//! claim gives its slot back, and the giver sends held tasks in the slots it freed.
//!
//! Held tasks go out before tasks released in the same batch (the batch's claims are
//! given back first), so a job's tasks leave its window in about the order they became
//! ready.

use super::{became, BatchOutcome, Change, Fanout, FanoutError, JobShape};
use crate::domain::{TaskKind, TaskRecord, TaskState};
use crate::queue::{Queues, TaskMessage, SEND_CHUNK};
use crate::store::{HeldTask, Store};
use futures::{stream, StreamExt, TryStreamExt};
use std::collections::BTreeMap;

/// Bundles read per round of a refill.
const REFILL_BUNDLES: usize = 4;

/// Concurrent SendMessageBatch calls of one admit or refill.
const SEND_CONCURRENCY: usize = 16;

/// A windowed job, as sending its tasks needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Tasks that may wait in SQS at once when the job starts (the window then follows
    /// its claim rate: see [`crate::store::WindowPolicy`]).
    pub size: u32,
    pub shard_count: u32,
}

/// Send `(pool, message)` pairs, grouped by pool and packed (a hundred tasks a request).
pub async fn send_to_pools(
    queues: &Queues,
    messages: &[(String, TaskMessage)],
) -> Result<(), FanoutError> {
    let mut by_pool: BTreeMap<String, Vec<TaskMessage>> = BTreeMap::new();
    for (pool, m) in messages {
        by_pool.entry(pool.clone()).or_default().push(m.clone());
    }
    let chunks: Vec<(String, Vec<TaskMessage>)> = by_pool
        .iter()
        .flat_map(|(pool, msgs)| {
            msgs.chunks(SEND_CHUNK)
                .map(move |c| (pool.clone(), c.to_vec()))
        })
        .collect();
    stream::iter(chunks)
        .map(|(pool, chunk)| async move { queues.send(&pool, &chunk).await })
        .buffer_unordered(SEND_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Send ready tasks of one windowed job as far as its free slots go and hold the rest.
/// How many were sent (held tasks sent in slots freed meanwhile included).
pub async fn admit(
    store: &Store,
    queues: &Queues,
    job_id: &str,
    window: Window,
    mut ready: Vec<(String, TaskMessage)>,
) -> Result<usize, FanoutError> {
    if ready.is_empty() {
        return Ok(0);
    }
    for (_, m) in ready.iter_mut() {
        m.windowed = true;
    }
    let want = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    let taken = store.take_slots(job_id, window.size, want).await?;
    let later = ready.split_off((taken as usize).min(ready.len()));
    if let Err(e) = send_to_pools(queues, &ready).await {
        store.give_slots(job_id, window.size, taken, 0).await?;
        return Err(e);
    }
    let mut sent = ready.len();
    if !later.is_empty() {
        let held: Vec<HeldTask> = later
            .iter()
            .map(|(pool, m)| HeldTask {
                task_id: m.task_id.clone(),
                shard: m.shard,
                pool: pool.clone(),
                body: serde_json::to_string(m).unwrap_or_default(),
            })
            .collect();
        store
            .hold_tasks(job_id, crate::store::bundle_size(window.size), &held)
            .await?;
        // A slot given back while these were being held found none of them: look again.
        let free = store.slots(job_id).await?.free;
        sent += refill(store, queues, job_id, window, free).await?;
    }
    Ok(sent)
}

/// Send held tasks of a job while it has free slots (`free` as last seen), a bundle at
/// a time (a bundle goes out whole, so the window may be overrun by less than one).
/// How many were sent.
pub async fn refill(
    store: &Store,
    queues: &Queues,
    job_id: &str,
    window: Window,
    mut free: i64,
) -> Result<usize, FanoutError> {
    if free <= 0 {
        return Ok(0);
    }
    // A job ended or being cancelled runs nothing more: what it holds stays held.
    match store.get_job(job_id).await? {
        Some(job) if !job.state.is_terminal() && !job.cancel_requested => {}
        _ => return Ok(0),
    }
    // Each call starts at a shard of its own, so givers of one job running at once
    // mostly read different bundles.
    let from = fastrand::u32(0..window.shard_count.max(1));
    let mut sent = 0;
    while free > 0 {
        let bundles = store
            .held_bundles(job_id, window.shard_count, from, REFILL_BUNDLES)
            .await?;
        if bundles.is_empty() {
            break;
        }
        for bundle in bundles {
            if free <= 0 {
                break;
            }
            if !store.unhold_bundle(job_id, &bundle).await? {
                continue; // another giver took it
            }
            let messages: Vec<(String, TaskMessage)> = bundle
                .tasks
                .iter()
                .filter_map(|h| {
                    let m = serde_json::from_str::<TaskMessage>(&h.body);
                    if let Err(e) = &m {
                        tracing::error!(job_id, task_id = %h.task_id, error = %e, "a held task's message does not parse; dropped");
                    }
                    Some((h.pool.clone(), m.ok()?))
                })
                .collect();
            if let Err(e) = send_to_pools(queues, &messages).await {
                // Back where it was: the retried batch sends it.
                store
                    .hold_tasks(job_id, bundle.tasks.len(), &bundle.tasks)
                    .await?;
                return Err(e);
            }
            let count = u32::try_from(bundle.tasks.len()).unwrap_or(u32::MAX);
            free = store.spend_slots(job_id, window.size, count).await?;
            sent += messages.len();
        }
    }
    Ok(sent)
}

/// A windowed job's tasks made ready by one batch.
struct WindowedReady {
    window: Window,
    /// The earliest record that made one ready (where a retry starts).
    earliest: usize,
    ready: Vec<(String, TaskMessage)>,
}

impl Fanout {
    pub(super) async fn admit(
        &self,
        job_id: &str,
        window: Window,
        ready: Vec<(String, TaskMessage)>,
    ) -> Result<usize, FanoutError> {
        admit(&self.store, &self.queues, job_id, window, ready).await
    }

    /// A batch's claims of windowed tasks give their slots back, and held tasks go out
    /// in them. `claims` are per job: the window, how many, and the earliest record.
    pub(super) async fn give_back(
        &self,
        job_id: &str,
        window: Window,
        claims: u32,
    ) -> Result<usize, FanoutError> {
        let believed = self
            .window_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
            .copied()
            .unwrap_or(window.size);
        let mut slots = self
            .store
            .give_slots(job_id, believed, claims, claims)
            .await?;
        let now = self.store.now();
        if let Some(limit) = self.window_policy.resized(window.size, &slots, now) {
            if let Some(after) = self.store.resize_window(job_id, &slots, limit).await? {
                if after.limit != slots.limit {
                    tracing::debug!(
                        job_id,
                        from = slots.limit,
                        to = after.limit,
                        claimed = slots.claimed,
                        "the job's window follows its claim rate"
                    );
                }
                slots = after;
            }
        }
        if slots.limit > 0 {
            let mut limits = self.window_limits.lock().unwrap_or_else(|p| p.into_inner());
            if limits.len() > 10_000 {
                limits.clear();
            }
            limits.insert(job_id.to_string(), slots.window(window.size));
        }
        if slots.held > 0 && slots.free > 0 {
            return refill(&self.store, &self.queues, job_id, window, slots.free).await;
        }
        Ok(0)
    }

    /// Each windowed task claimed in this batch (it became RUNNING: its message left
    /// SQS) gives its job a slot back. On failure, the earliest record not done.
    pub(super) async fn give_back_claims(
        &self,
        changes: &[Change],
        outcome: &mut BatchOutcome,
    ) -> Result<(), usize> {
        let mut claims: BTreeMap<&str, (u32, usize)> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            match c {
                // A chained child's claim took no slot (it had no message of its own).
                Change::Task(t)
                    if t.task.kind == TaskKind::Command
                        && became(t, TaskState::Running)
                        && !t.task.chained =>
                {
                    let e = claims.entry(t.task.job_id.as_str()).or_insert((0, i));
                    e.0 += 1;
                }
                // Given back by a worker already: refill only.
                Change::SlotFreed { job_id, .. } => {
                    claims.entry(job_id.as_str()).or_insert((0, i));
                }
                _ => {}
            }
        }
        let mut failed: Option<usize> = None;
        for (job_id, (count, earliest)) in claims {
            let given = match self.job_shape(job_id).await {
                Ok(JobShape {
                    window: Some(w), ..
                }) if count == 0 => match self.store.slots(job_id).await {
                    Ok(slots) if slots.held > 0 => {
                        refill(&self.store, &self.queues, job_id, w, slots.free).await
                    }
                    Ok(_) => Ok(0),
                    Err(e) => Err(e.into()),
                },
                Ok(JobShape {
                    window: Some(w), ..
                }) => self.give_back(job_id, w, count).await,
                Ok(_) => Ok(0),
                Err(e) => Err(e),
            };
            match given {
                Ok(n) => outcome.enqueued += n,
                Err(e) => {
                    tracing::warn!(error = %e, job_id, "giving a job's slots back failed; will retry");
                    failed = Some(failed.map_or(earliest, |f| f.min(earliest)));
                }
            }
        }
        match failed {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }

    /// Send the batch's ready tasks (newly RUNNABLE in the stream, or released by it):
    /// a windowed job's through its window, the rest straight to their pools. On
    /// failure, the earliest record whose tasks did not all go.
    pub(super) async fn send_ready(
        &self,
        changes: &[Change],
        released_now: &[(usize, TaskRecord)],
        outcome: &mut BatchOutcome,
    ) -> Result<(), usize> {
        let mut failed: Option<usize> = None;
        let mut by_queue: BTreeMap<String, Vec<(usize, TaskMessage)>> = BTreeMap::new();
        let mut windowed: BTreeMap<String, WindowedReady> = BTreeMap::new();
        let from_stream = changes.iter().enumerate().filter_map(|(i, c)| match c {
            Change::Task(t)
                if became(t, TaskState::Runnable)
                    && !(t.task.enqueued_on_release
                        && matches!(t.old_state, Some(TaskState::Pending) | None)) =>
            {
                Some((i, &t.task))
            }
            _ => None,
        });
        for (i, task) in from_stream.chain(released_now.iter().map(|(i, t)| (*i, t))) {
            if task.kind != TaskKind::Command {
                continue;
            }
            let shape = match self.job_shape(&task.job_id).await {
                Ok(shape) => shape,
                Err(e) => {
                    tracing::warn!(error = %e, job_id = %task.job_id, "reading the job's shape failed; will retry");
                    failed = Some(failed.map_or(i, |f: usize| f.min(i)));
                    continue;
                }
            };
            let message = TaskMessage::for_task(task);
            match shape.window {
                Some(window) => {
                    let job =
                        windowed
                            .entry(task.job_id.clone())
                            .or_insert_with(|| WindowedReady {
                                window,
                                earliest: i,
                                ready: Vec::new(),
                            });
                    job.earliest = job.earliest.min(i);
                    job.ready.push((task.pool_name().to_string(), message));
                }
                None => by_queue
                    .entry(task.pool_name().to_string())
                    .or_default()
                    .push((i, message)),
            }
        }
        for (job_id, w) in windowed {
            match self.admit(&job_id, w.window, w.ready).await {
                Ok(n) => outcome.enqueued += n,
                Err(e) => {
                    tracing::warn!(error = %e, job_id, "sending a windowed job's tasks failed; will retry");
                    failed = Some(failed.map_or(w.earliest, |f: usize| f.min(w.earliest)));
                }
            }
        }
        for (queue, msgs) in by_queue {
            for chunk in msgs.chunks(SEND_CHUNK) {
                let bodies: Vec<TaskMessage> = chunk.iter().map(|(_, m)| m.clone()).collect();
                match self.queues.send(&queue, &bodies).await {
                    Ok(()) => outcome.enqueued += bodies.len(),
                    Err(e) => {
                        // Retried from the earliest record any of these came from (the
                        // chunk mixes released dependents with newly runnable tasks, in
                        // no order): one a retry starts after would never be sent.
                        tracing::warn!(error = %e, queue, "enqueue failed; will retry");
                        let earliest = chunk.iter().map(|(i, _)| *i).min().unwrap_or(0);
                        failed = Some(failed.map_or(earliest, |f: usize| f.min(earliest)));
                    }
                }
            }
        }
        match failed {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }
}
