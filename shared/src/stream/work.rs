//! A job's paged work, a page per stream record of its cursor (see
//! [`crate::store::work`]): sending a committed submission's ready tasks, cancelling a
//! job's tasks, failing the rest of a SEQUENTIAL array, sweeping an N_TO_N array.

use super::{Fanout, FanoutError, EFFECT_CONCURRENCY};
use crate::domain::{JobState, TaskKind, TaskState};
use crate::queue::TaskMessage;
use crate::store::StoreError;
use futures::{stream, StreamExt};

impl Fanout {
    /// One page of a job's paged work, then the cursor moved on (its record brings the
    /// next page). Returns how many tasks the page sent.
    pub(super) async fn work_page(
        &self,
        cursor: &crate::store::WorkCursor,
    ) -> Result<usize, FanoutError> {
        use crate::store::WorkKind;
        if cursor.kind.by_index() {
            return self.index_page(cursor).await;
        }
        let shape = self.job_shape(&cursor.job_id).await?;
        let (tasks, next) = self.store.work_page(cursor, shape.shard_count).await?;
        let mut sent = 0;
        match cursor.kind {
            WorkKind::Enqueue => {
                let ready: Vec<(String, TaskMessage)> = tasks
                    .iter()
                    .filter(|t| t.kind == TaskKind::Command && t.state == TaskState::Runnable)
                    .map(|t| (t.pool_name().to_string(), TaskMessage::for_task(t)))
                    .collect();
                sent += match shape.window {
                    Some(w) => self.admit(&cursor.job_id, w, ready).await?,
                    None => {
                        super::window::send_to_pools(&self.queues, &ready).await?;
                        ready.len()
                    }
                };
            }
            WorkKind::FailSequence | WorkKind::SweepNToN => {}
            WorkKind::Cancel => {
                let results: Vec<Result<TaskState, StoreError>> =
                    stream::iter(tasks.into_iter().filter(|t| !t.state.is_terminal()))
                        .map(|t| {
                            let store = self.store.clone();
                            async move { store.cancel_task(&t).await }
                        })
                        .buffer_unordered(EFFECT_CONCURRENCY)
                        .collect()
                        .await;
                for r in results {
                    r?;
                }
            }
        }
        self.store.advance_work(cursor, next.as_ref()).await?;
        Ok(sent)
    }
}

impl Fanout {
    /// One page of a walk over an array's children by index.
    async fn index_page(&self, cursor: &crate::store::WorkCursor) -> Result<usize, FanoutError> {
        use crate::store::WorkKind;
        let job = self.store.get_job(&cursor.job_id).await?;
        let live = job
            .as_ref()
            .filter(|j| !j.state.is_terminal() && !j.cancel_requested);
        let (Some(job), Some(a)) = (live, live.and_then(|j| j.array.as_ref())) else {
            // The job is gone or closed: nothing is left to send or fail.
            self.store.advance_work(cursor, None).await?;
            return Ok(0);
        };
        let (range, next) = cursor.index_page(a.size());
        let sent = match cursor.kind {
            WorkKind::FailSequence => {
                let job_id = &job.job_id;
                let indexes: Vec<u32> = range.collect();
                let prev = |i: u32| format!("Dependent job {job_id}:{} did not succeed", i - 1);
                self.fail_children(job, &indexes, prev).await?;
                0
            }
            WorkKind::SweepNToN if job.state == JobState::Runnable => {
                self.sweep_n_to_n_page(job, range).await?
            }
            _ => 0,
        };
        self.store.advance_work(cursor, next.as_ref()).await?;
        Ok(sent)
    }
}
