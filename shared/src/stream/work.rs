//! A job's paged work, a page per stream record of its cursor (see
//! [`crate::store::work`]): sending a committed submission's ready tasks, cancelling a
//! job's tasks.

use super::{Fanout, FanoutError, EFFECT_CONCURRENCY};
use crate::domain::{TaskKind, TaskState};
use crate::queue::TaskMessage;
use crate::store::StoreError;
use futures::{stream, StreamExt};
use std::collections::BTreeMap;

impl Fanout {
    /// One page of a job's paged work, then the cursor moved on (its record brings the
    /// next page). Returns how many tasks the page sent.
    pub(super) async fn work_page(
        &self,
        cursor: &crate::store::WorkCursor,
    ) -> Result<usize, FanoutError> {
        use crate::store::WorkKind;
        let shard_count = self.shard_count(&cursor.job_id).await?;
        let (tasks, next) = self.store.work_page(cursor, shard_count).await?;
        let mut sent = 0;
        match cursor.kind {
            WorkKind::Enqueue => {
                let mut by_pool: BTreeMap<String, Vec<TaskMessage>> = BTreeMap::new();
                for t in tasks
                    .iter()
                    .filter(|t| t.kind == TaskKind::Command && t.state == TaskState::Runnable)
                {
                    by_pool
                        .entry(t.pool_name().to_string())
                        .or_default()
                        .push(TaskMessage::for_task(t));
                }
                for (pool, msgs) in by_pool {
                    for chunk in msgs.chunks(10) {
                        self.queues.send(&pool, chunk).await?;
                        sent += chunk.len();
                    }
                }
            }
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
