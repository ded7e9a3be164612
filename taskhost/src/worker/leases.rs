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
    let receipts: Vec<(String, String)> = messages.open().cloned().collect();
    if tokio::time::timeout(ctx.lease / 3, extend_all(queues, receipts, ctx.lease))
        .await
        .is_err()
    {
        tracing::warn!("extending message visibility got no answer in time");
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
