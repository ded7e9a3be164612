//! Keeping what the worker holds: every running task's lease (learning of cancellations
//! and lost leases on the way) and the visibility of its messages, held ones included.

use super::{Ctx, Held, Kill, Running};
use batchplane::queue::Queues;
use batchplane::store::Heartbeat;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Extend every running task's lease (learning of cancellations and lost leases), and
/// keep their messages, and held ones, invisible to other workers.
pub(super) async fn keep_alive(
    ctx: &Ctx,
    running: &HashMap<String, Running>,
    held: &VecDeque<Held>,
    queues: &Queues,
) {
    let beats = running.values().map(|r| async move {
        match ctx
            .store
            .heartbeat(&r.task, &ctx.worker_id, ctx.lease)
            .await
        {
            Ok(Heartbeat::Held {
                cancel_requested: true,
            }) => {
                let _ = r.kill.send(Some(Kill::Cancelled));
            }
            Ok(Heartbeat::Held { .. }) => {}
            Ok(Heartbeat::Lost) => {
                tracing::warn!(task_id = %r.task.task_id, "lease lost; stopping the task");
                let _ = r.kill.send(Some(Kill::LeaseLost));
            }
            Err(e) => tracing::warn!(error = %e, task_id = %r.task.task_id, "heartbeat failed"),
        }
    });
    futures::future::join_all(beats).await;
    let receipts: Vec<(String, String)> = running
        .values()
        .map(|r| (r.queue_url.clone(), r.receipt.clone()))
        .chain(held.iter().map(Held::receipt))
        .collect();
    extend_all(queues, receipts, ctx.lease).await;
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
