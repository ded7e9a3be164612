//! What a job item's change does: the job is re-listed under its new status, and a
//! job whose tasks have all ended (or a stopped array with no child running) is closed.

use super::{Fanout, FanoutError, JobChange};
use crate::domain::{JobState, TaskState};
use crate::store::EndedTally;

impl Fanout {
    /// A job item changed: list it under its new status, and close a job that an
    /// addition's take-back left complete.
    pub(super) async fn job_effects(&self, j: &JobChange) -> Result<(), FanoutError> {
        let status = crate::domain::listing::listing_keys(&j.job).status;
        if j.listed_as.as_deref() != Some(status.as_str()) {
            self.store.relist_job(&j.job).await?;
        }
        // An addition that raised the total and then wrote nothing took it back.
        if !j.job.state.is_terminal()
            && j.old_job
                .as_ref()
                .is_some_and(|old| old.total_tasks > j.job.total_tasks)
        {
            self.close_if_done(&j.job.job_id).await?;
        }
        Ok(())
    }

    /// Close a job whose tasks are all finished ([`close_if_done`]).
    pub async fn close_if_done(&self, job_id: &str) -> Result<Option<JobState>, FanoutError> {
        close_if_done(&self.store, job_id).await
    }
}

/// Close a job whose tasks are all finished, or a cancelled one of which nothing runs,
/// and fold its count items now and then: the fanout does on the records that end its
/// tasks, the reconciler for a cancel that settled after its last record.
pub async fn close_if_done(
    store: &crate::store::Store,
    job_id: &str,
) -> Result<Option<JobState>, FanoutError> {
    close_if_tally_allows(store, job_id, None).await
}

/// [`close_if_done`], told the job's ended-task tally after a batch added its endings
/// (`Store::add_ended`): a checked tally below the job's total says it is not done, and
/// its count items are not read. A tally not yet checked is checked against them.
pub(super) async fn close_if_tally_allows(
    store: &crate::store::Store,
    job_id: &str,
    tally: Option<EndedTally>,
) -> Result<Option<JobState>, FanoutError> {
    let Some(job) = store.get_job(job_id).await? else {
        return Ok(None);
    };
    if job.state.is_terminal() {
        // Closed by an earlier try of this batch that stopped before the team's
        // rollup: add it now (the rollup counts a job once).
        let (_, usage, _) = store.job_counts(job_id).await?;
        store
            .add_team_usage(
                &job.team,
                job_id,
                job.finished_at.unwrap_or_else(crate::store::now_ms),
                &usage,
            )
            .await?;
        return Ok(None);
    }
    // A job being stopped may close with tasks left: its counts decide.
    let stopping = job.cancel_requested || job.stopped_at.is_some();
    if let Some(t) = tally {
        if t.checked && t.ended < job.total_tasks && !stopping {
            return Ok(None);
        }
    }
    let (counts, usage, items) = store.job_counts(job_id).await?;
    if let Some(t) = tally.filter(|t| !t.checked) {
        store.check_tally(job_id, &t, counts.terminal()).await?;
    }
    if items > 50 {
        // A batch writes a counts item and a counts-by-group item for a DAG: they pile
        // up together.
        store.fold_counts(job_id).await?;
        store.fold_group_counts(job_id).await?;
    }
    if let Some(why) = crate::domain::batch::stopped_array_ends(&job, &counts) {
        let closed = store.fail_job(job_id, JobState::Failed, why).await?;
        if closed {
            store
                .add_team_usage(&job.team, job_id, crate::store::now_ms(), &usage)
                .await?;
        }
        return Ok(closed.then_some(JobState::Failed));
    }
    let state = if job.closes_cancelled(&counts, crate::store::now_ms()) {
        // Nothing of it runs or can start: what its walk has not yet written is
        // cancelled all the same (readers see it so, `JobRecord::shown_task_state`).
        Some(JobState::Cancelled)
    } else {
        JobState::final_state(&counts, job.total_tasks, job.cancel_requested)
    };
    let Some(state) = state else {
        return Ok(None);
    };
    if state != JobState::Cancelled && waits_on_a_predecessor(store, &job).await? {
        // Its predecessor closes next and then closes it (`release_job_dependents`).
        return Ok(None);
    }
    let reason = match state {
        JobState::Failed => Some(format!(
            "{} of {} tasks failed",
            counts.get(TaskState::Failed),
            job.total_tasks
        )),
        JobState::Cancelled => Some("cancelled by request".to_string()),
        _ => None,
    };
    let closed = store
        .close_job(
            job_id,
            &[JobState::Submitted, JobState::Pending, JobState::Runnable],
            state,
            reason.as_deref(),
            job.total_tasks,
        )
        .await?;
    if closed {
        tracing::info!(job_id, state = %state, "job finished");
        store
            .add_team_usage(&job.team, job_id, crate::store::now_ms(), &usage)
            .await?;
    }
    Ok(closed.then_some(state))
}

/// Whether an N_TO_N dependent whose children have all ended must still wait for a job
/// it depends on to close. A worker runs a successor's child straight after its
/// predecessor's (depth first), so the dependent's last child can end before the stream
/// has closed the predecessor; a dependent never ends before what it depends on.
async fn waits_on_a_predecessor(
    store: &crate::store::Store,
    job: &crate::domain::JobRecord,
) -> Result<bool, FanoutError> {
    let Some(a) = &job.array else {
        return Ok(false);
    };
    for pred in &a.n_to_n {
        if store
            .get_job(pred)
            .await?
            .is_some_and(|p| !p.state.is_terminal())
        {
            return Ok(true);
        }
    }
    Ok(false)
}
