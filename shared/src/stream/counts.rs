//! A stream batch's part of its jobs' counts: by state, and, for a DAG, by group;
//! each record's once however often the batch is retried (see
//! `Store::add_batch_deltas`). A job seen starting is marked started; one whose tasks
//! ended may be closed.

use super::{BatchOutcome, Change, Fanout, FanoutError};
use crate::domain::{TaskKind, TaskState, Usage};
use crate::store::{GroupRecordCounts, RecordCounts};
use std::collections::HashMap;

/// What a stream batch saw of one job.
#[derive(Default)]
struct JobPart {
    /// Each record's part of its counts.
    parts: Vec<RecordCounts>,
    /// When the first task seen running started.
    started: Option<i64>,
    /// Some task was seen in a final state.
    finished_some: bool,
    /// Tasks seen reaching a final state (for the job's tally, `Store::add_ended`).
    ended: u64,
}

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
        let mut per_job: HashMap<String, JobPart> = HashMap::new();
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
                entry.started = Some(entry.started.map_or(at, |x: i64| x.min(at)));
            }
            if t.task.state.is_terminal() {
                entry.finished_some = true;
                if !t.old_state.is_some_and(|o| o.is_terminal()) {
                    entry.ended += 1;
                }
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
            entry.parts.push(part);
        }
        for (job_id, job) in per_job {
            let JobPart {
                parts,
                started,
                finished_some,
                ended,
            } = job;
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
                self.mark_started(&job_id, at).await?;
            }
            if finished_some {
                // After its counts: a tally that reaches the total finds them all.
                let tally = match ended {
                    0 => None,
                    n => Some(self.store.add_ended(&job_id, n).await?),
                };
                if let Some(state) =
                    super::jobs::close_if_tally_allows(&self.store, &job_id, tally).await?
                {
                    outcome.jobs_finished.push((job_id.clone(), state));
                }
            }
        }
        Ok(())
    }

    /// Mark a job started, once for all the batches this fanout sees.
    async fn mark_started(&self, job_id: &str, at: i64) -> Result<(), FanoutError> {
        let known = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(job_id);
        if !known {
            self.store.mark_job_started(job_id, at).await?;
            let mut set = self.started.lock().unwrap_or_else(|p| p.into_inner());
            if set.len() > 10_000 {
                set.clear();
            }
            set.insert(job_id.to_string());
        }
        Ok(())
    }
}
