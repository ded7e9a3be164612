//! Keeping what the worker holds: every running task's lease (learning of cancellations
//! and lost leases on the way) and the visibility of its messages, held ones included.

use super::messages::Messages;
use super::{Ctx, Kill, Running};
use batchplane::queue::Queues;
use batchplane::store::Heartbeat;
use std::collections::HashMap;
use std::time::Duration;

/// Extend every running attempt's lease (learning of cancellations and lost leases),
/// and keep their messages, and held ones, invisible to other workers. A renewal that
/// fails or hangs past a third of the lease changes nothing: the attempt's own fence
/// (`attempt::fence_due` and the shim's fence file) stops it before its old lease ends.
pub(super) async fn keep_alive(
    ctx: &Ctx,
    running: &HashMap<String, Running>,
    messages: &Messages,
    queues: &Queues,
) {
    let beats = running.values().map(|r| async move {
        let beat = tokio::time::timeout(
            ctx.lease / 3,
            ctx.store.heartbeat(&r.task, &ctx.worker_id, ctx.lease),
        )
        .await;
        match beat {
            Ok(Ok(Heartbeat::Held {
                cancel_requested,
                lease_expires,
            })) => {
                r.lease.send_if_modified(|until| {
                    let later = lease_expires > *until;
                    if later {
                        *until = lease_expires;
                    }
                    later
                });
                if cancel_requested {
                    let _ = r.kill.send(Some(Kill::Cancelled));
                }
            }
            Ok(Ok(Heartbeat::Lost)) => {
                tracing::warn!(task_id = %r.task.task_id, attempt = r.task.attempt, "lease lost; stopping the task");
                let _ = r.kill.send(Some(Kill::LeaseLost));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, task_id = %r.task.task_id, "heartbeat failed")
            }
            Err(_) => {
                tracing::warn!(task_id = %r.task.task_id, "heartbeat got no answer in time")
            }
        }
    });
    futures::future::join_all(beats).await;
    if tokio::time::timeout(ctx.lease / 3, stop_cancelled_jobs(ctx, running))
        .await
        .is_err()
    {
        tracing::warn!("reading running tasks' jobs got no answer in time");
    }
    let receipts: Vec<(String, String)> = messages.open().cloned().collect();
    if tokio::time::timeout(ctx.lease / 3, extend_all(queues, receipts, ctx.lease))
        .await
        .is_err()
    {
        tracing::warn!("extending message visibility got no answer in time");
    }
}

/// Stop the running tasks of cancelled jobs. A job's cancel reaches its tasks by its
/// walk, which flags each running one for its heartbeat; a big job's walk takes minutes,
/// and the job closes once nothing of it runs, so the worker also looks at the job
/// itself (read at most every few seconds per job). Arrays are left to their walk:
/// AWS Batch's CancelJob does not stop a running child.
async fn stop_cancelled_jobs(ctx: &Ctx, running: &HashMap<String, Running>) {
    let jobs: std::collections::BTreeSet<&str> =
        running.values().map(|r| r.task.job_id.as_str()).collect();
    for job_id in jobs {
        let job = match ctx.jobs.get(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, job_id, "reading a running task's job failed");
                continue;
            }
        };
        if !job.cancel_requested || job.array.is_some() {
            continue;
        }
        for r in running.values().filter(|r| r.task.job_id == job_id) {
            let _ = r.kill.send(Some(Kill::Cancelled));
        }
    }
}

/// Receipts grouped by the queue they belong to.
pub(super) fn by_queue(
    items: Vec<(String, String)>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (url, r) in items {
        m.entry(url).or_default().push(r);
    }
    m
}

pub(super) async fn extend_all(queues: &Queues, items: Vec<(String, String)>, by: Duration) {
    for (url, receipts) in by_queue(items) {
        if let Err(e) = queues.extend(&url, &receipts, by).await {
            tracing::warn!(error = %e, "changing message visibility failed");
        }
    }
}
