//! A delivered task's claim, and what a message whose task is not claimed becomes:
//! dropped, left to come back, or the carrier of a chained successor child.

use super::attempt::Started;
use super::messages::Receipt;
use super::Ctx;
use batchplane::domain::{TaskRecord, TaskState};
use batchplane::queue::{Queues, TaskMessage};
use batchplane::store::Claim;
use std::sync::Arc;

/// Claim a delivered task: the task to run, or what became of its message instead. A
/// message for a task another live worker holds is made visible again when that lease
/// would lapse, so a dead holder's task returns.
pub(super) async fn claim(
    ctx: &Arc<Ctx>,
    receipt: &Receipt,
    m: &TaskMessage,
    queues: &Queues,
) -> Result<TaskRecord, Started> {
    let (url, handle) = receipt;
    if let Some(outcome) = stop_if_cancelled(ctx, m).await {
        return Err(outcome);
    }
    let claim = if m.array_child {
        // A child's command is its job's template; a job that has ended (cancelled,
        // or failed by a dependency) starts no more children.
        match ctx.jobs.get(&m.job_id).await {
            Ok(Some(job)) if !job.state.is_terminal() && !job.cancel_requested => {
                match crate::templates::seed(&job, m, ctx.max_attempts) {
                    Some(seed) => ctx
                        .store
                        .claim_child(&m.job_id, m.shard, &seed, &ctx.worker_id, ctx.lease)
                        .await
                        .map(|c| crate::templates::with_template(c, &job)),
                    None => return Err(Started::Drop),
                }
            }
            // A cancelled job starts no more children, but one already running whose
            // worker died is ended (CANCELLED) by the claim's take-over path; and a
            // child of an ended job may carry its chained successor child (`chain`),
            // which the claim's answer (ended) leads to. The claim below never creates
            // a child.
            Ok(Some(job)) if job.cancel_requested || job.state.is_terminal() => ctx
                .store
                .claim_task(&m.job_id, m.shard, &m.task_id, &ctx.worker_id, ctx.lease)
                .await
                .map(|c| crate::templates::with_template(c, &job)),
            Ok(_) => return Err(Started::Drop),
            Err(e) => {
                tracing::warn!(error = %e, job_id = %m.job_id, "reading the job failed; the message will come back");
                return Err(Started::Later);
            }
        }
    } else {
        ctx.store
            .claim_task(&m.job_id, m.shard, &m.task_id, &ctx.worker_id, ctx.lease)
            .await
    };
    match claim {
        Ok(Claim::Claimed(task)) => Ok(*task),
        Ok(Claim::NotClaimable { reason }) => {
            tracing::debug!(job_id = %m.job_id, task_id = %m.task_id, reason, "not claimed");
            if reason.starts_with("held by") {
                let _ = queues
                    .extend(url, std::slice::from_ref(handle), ctx.lease)
                    .await;
                return Err(Started::Later);
            }
            if m.windowed {
                give_back_slot(ctx, m).await;
            }
            Err(Started::Drop)
        }
        Ok(Claim::Ended(state)) => {
            tracing::debug!(job_id = %m.job_id, task_id = %m.task_id, %state, "not claimed: ended");
            if m.windowed {
                give_back_slot(ctx, m).await;
            }
            Err(carried_on(ctx, m, state).await)
        }
        Ok(Claim::Exhausted) => Err(Started::Drop),
        Err(e) => {
            tracing::warn!(error = %e, task_id = %m.task_id, "claim failed; the message will come back");
            Err(Started::Later)
        }
    }
}

/// A delivered child that had already succeeded: its message carries the child's chained
/// successor, if it has one (see `chain`). Where the jobs cannot be read now, the
/// message comes back: it may be all that stands for that child.
async fn carried_on(ctx: &Ctx, m: &TaskMessage, state: TaskState) -> Started {
    match m.task_id.parse::<u32>() {
        Ok(index) if m.array_child && state == TaskState::Succeeded => {
            match super::chain::successor(ctx, &m.job_id, index).await {
                Ok(Some(next)) => Started::Chain(next),
                Ok(None) => Started::Drop,
                Err(e) => {
                    tracing::warn!(error = %e, job_id = %m.job_id, "reading the jobs of a chain failed; the message will come back");
                    Started::Later
                }
            }
        }
        _ => Started::Drop,
    }
}

/// The window slot a message took frees no other way when nothing claims its task.
async fn give_back_slot(ctx: &Ctx, m: &TaskMessage) {
    if let Err(e) = ctx.store.give_back_unclaimed(&m.job_id).await {
        tracing::warn!(error = %e, job_id = %m.job_id, "giving a window slot back failed; the reconciler will");
    }
}

/// A delivered task of a cancelled job (closed or not) is not started. Until the job's
/// walk (minutes for a million tasks) reaches it, the worker cancels it as the walk would.
/// A running one (its worker died) goes on to the claim, whose take-over ends it
/// CANCELLED. `None`: claim as usual (also where the job cannot be read now: the claim
/// decides, and the walk still comes).
async fn stop_if_cancelled(ctx: &Arc<Ctx>, m: &TaskMessage) -> Option<Started> {
    let job = ctx.jobs.get(&m.job_id).await.ok().flatten()?;
    if !job.cancel_requested {
        return None;
    }
    let store = &ctx.store;
    match store
        .cancel_task_by_key(&m.job_id, m.shard, &m.task_id)
        .await
    {
        Ok(Some(state)) if TaskState::LEASED.contains(&state) => None,
        Ok(_) => Some(Started::Drop),
        Err(e) => {
            tracing::warn!(error = %e, job_id = %m.job_id, "cancelling a task of a cancelled job failed; the message will come back");
            Some(Started::Later)
        }
    }
}
