//! What a worker needs to run array children and serve several queues: the jobs'
//! templates (read once, refreshed every few seconds so a cancelled job stops starting
//! children), and the order its queues are polled in.

use batchplane::domain::records::JOB_VIEW_FRESH_FOR_MS;
use batchplane::domain::JobRecord;
use batchplane::queue::{Delivery, QueueError, Queues, TaskMessage};
use batchplane::store::registry::ResourceKind;
use batchplane::store::{ChildSeed, Claim, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a job read is trusted: a cancelled job starts no task after this (its
/// close waits this long and more, `JobRecord::closes_cancelled`).
const FRESH_FOR: Duration = Duration::from_millis(JOB_VIEW_FRESH_FOR_MS as u64);

/// Jobs by id, as last read.
pub struct JobCache {
    store: Store,
    jobs: Mutex<HashMap<String, (Instant, JobRecord)>>,
}

impl JobCache {
    pub fn new(store: Store) -> Self {
        JobCache {
            store,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        if let Some((at, job)) = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
        {
            if at.elapsed() < FRESH_FOR || job.state.is_terminal() {
                return Ok(Some(job.clone()));
            }
        }
        let job = self.store.get_job(job_id).await?;
        if let Some(j) = &job {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if jobs.len() > 1000 {
                jobs.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
            }
            jobs.insert(job_id.to_string(), (Instant::now(), j.clone()));
        }
        Ok(job)
    }
}

/// What the claim of a child writes into its new item.
pub fn seed(job: &JobRecord, m: &TaskMessage, max_attempts: u32) -> Option<ChildSeed> {
    let a = job.array.as_ref()?;
    let index: u32 = m.task_id.parse().ok()?;
    if index >= a.size() {
        return None;
    }
    Some(ChildSeed {
        index,
        queue: job.queue.clone(),
        // Always its team's pool: a retry is queued where the child lives.
        pool: Some(batchplane::stream::arrays::first_pool(job)),
        cpu_milli: a.template.cpu_milli,
        memory_mib: a.template.memory_mib,
        gpu: a.template.tiers.first().map_or(0, |t| t.gpu),
        max_attempts: max_attempts.max(a.template.retry.attempts),
        chained: m.chained,
    })
}

/// A claimed child with what its item does not hold: the template's command,
/// environment, timeout and retry strategy, and the array index variable.
pub fn with_template(claim: Claim, job: &JobRecord) -> Claim {
    let Claim::Claimed(mut task) = claim else {
        return claim;
    };
    if let Some(a) = &job.array {
        batchplane::domain::batch::apply_template(&mut task, a);
    }
    Claim::Claimed(task)
}

/// Queue names, highest job-queue priority first (queues that are not registered job
/// queues count as priority 0; ties keep the order given).
pub async fn by_priority(store: &Store, names: Vec<String>) -> Vec<String> {
    let mut ranked = Vec::new();
    for (i, n) in names.into_iter().enumerate() {
        let priority = match store.get_resource(ResourceKind::JobQueue, &n).await {
            Ok(Some(doc)) => doc["priority"].as_i64().unwrap_or(0),
            _ => 0,
        };
        ranked.push((-priority, i, n));
    }
    ranked.sort();
    ranked.into_iter().map(|(_, _, n)| n).collect()
}

/// Receive from the first queue (in priority order) that has messages. With one queue
/// this is a plain long poll; with several, each is asked without waiting, in order, and
/// an empty round ends in a long poll of at most a second on the first queue, so an idle
/// worker sends about `queues + 1` requests a second and a lower queue's message waits
/// at most a second longer than the first queue's.
pub async fn receive_in_order(
    queues: &Queues,
    urls: &[String],
    want: i32,
    wait: Duration,
    visibility: Duration,
) -> Result<Vec<Delivery>, QueueError> {
    let Some(first) = urls.first() else {
        return Ok(Vec::new());
    };
    if urls.len() == 1 {
        return queues.receive(first, want, wait, visibility).await;
    }
    for url in urls {
        let got = queues
            .receive(url, want, Duration::ZERO, visibility)
            .await?;
        if !got.is_empty() {
            return Ok(got);
        }
    }
    queues
        .receive(first, want, wait.min(Duration::from_secs(1)), visibility)
        .await
}
