//! A stream batch's part of its jobs' counts: by state, and, for a DAG, by group;
//! each record's once however often the batch is retried (see
//! `Store::add_batch_deltas`). A job seen starting is marked started; one whose tasks
//! ended may be closed.

use super::{BatchOutcome, Change, Fanout, FanoutError};
use crate::domain::{TaskKind, TaskState, Usage};
use crate::store::{GroupRecordCounts, RecordCounts};
use std::collections::HashMap;

impl Fanout {
    pub(super) async fn record_counts(
        &self,
        done: &[Change],
        outcome: &mut BatchOutcome,
    ) -> Result<(), FanoutError> {
        let Some(first) = done.first() else {
            return Ok(());
        };
        // Keyed by the batch's first record, each record's part kept apart: a retry of
        // this batch adds only the records it had not counted (see `add_batch_counts`).
        let batch_start = first.sequence_number();
        let mut per_job: HashMap<String, (Vec<RecordCounts>, Option<i64>, bool)> = HashMap::new();
        let mut by_group: HashMap<String, Vec<GroupRecordCounts>> = HashMap::new();
        for c in done {
            let Change::Task(t) = c else { continue };
            if t.task.kind != TaskKind::Command || t.old_state == Some(t.task.state) {
                continue;
            }
            let entry = per_job.entry(t.task.job_id.clone()).or_default();
            let mut part = RecordCounts {
                sequence_number: t.sequence_number.clone(),
                ..Default::default()
            };
            if let Some(old) = t.old_state {
                part.counts.add(old, -1);
            }
            part.counts.add(t.task.state, 1);
            // A DAG's counts by group too (an array's children are one group, its own).
            if t.task.index.is_none() {
                by_group
                    .entry(t.task.job_id.clone())
                    .or_default()
                    .push(GroupRecordCounts {
                        sequence_number: t.sequence_number.clone(),
                        group: crate::domain::graph::group_of(&t.task.task_id),
                        counts: part.counts.clone(),
                        // Once it ran: its start; once it ended, its finish too.
                        started_at: (t.task.state == TaskState::Running
                            || t.task.state.is_terminal())
                        .then_some(t.task.started_at)
                        .flatten(),
                        finished_at: t
                            .task
                            .state
                            .is_terminal()
                            .then_some(t.task.finished_at)
                            .flatten(),
                    });
            }
            // A task seen running, or seen only once it had ended (its RUNNING record may
            // have come in a batch whose counts were already recorded), started the job.
            let started_at = match t.task.state {
                TaskState::Running => Some(t.task.started_at.unwrap_or_else(crate::store::now_ms)),
                st if st.is_terminal() => t.task.started_at,
                _ => None,
            };
            if let Some(at) = started_at {
                entry.1 = Some(entry.1.map_or(at, |x: i64| x.min(at)));
            }
            if t.task.state.is_terminal() {
                entry.2 = true;
            }
            // An attempt that ran to its end (finished, or failed and retried) is measured.
            if t.old_state == Some(TaskState::Running) {
                if let Some(u) = t
                    .task
                    .attempts
                    .last()
                    .and_then(|a| Usage::of_attempt(t.task.cpu_milli, t.task.memory_mib, a))
                {
                    part.usage.add(&u);
                }
            }
            entry.0.push(part);
        }
        for (job_id, (parts, started, finished_some)) in per_job {
            if parts.is_empty() {
                continue;
            }
            self.store
                .add_batch_counts(&job_id, batch_start, &parts)
                .await?;
            if let Some(groups) = by_group.get(&job_id) {
                self.store
                    .add_batch_group_counts(&job_id, batch_start, groups)
                    .await?;
            }
            if let Some(at) = started {
                let known = self
                    .started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&job_id);
                if !known {
                    self.store.mark_job_started(&job_id, at).await?;
                    let mut set = self.started.lock().unwrap_or_else(|p| p.into_inner());
                    if set.len() > 10_000 {
                        set.clear();
                    }
                    set.insert(job_id.clone());
                }
            }
            if finished_some {
                if let Some(state) = self.close_if_done(&job_id).await? {
                    outcome.jobs_finished.push((job_id.clone(), state));
                }
            }
        }
        Ok(())
    }
}
