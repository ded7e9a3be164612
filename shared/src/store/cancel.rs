//! Moving a task without other changes (a barrier passing, a cancellation) and
//! cancelling one task of a cancelled job.

use super::item::*;
use super::request::{send_if, state_in, StateCondition};
use super::{Store, StoreError};
use crate::domain::TaskTransition;
use crate::domain::{TaskRecord, TaskState};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

impl Store {
    /// Make `transition` to `to` with no other change, if the task is still in one of the
    /// states the transition starts from (false when it is not).
    pub async fn transition(
        &self,
        task: &TaskRecord,
        transition: TaskTransition,
        to: TaskState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        if !transition.allows(to) {
            return Err(StoreError::NotATransition { transition, to });
        }
        let mut values = HashMap::from([(":to".to_string(), s(to.as_str()))]);
        let mut update = "SET #state = :to".to_string();
        if to.is_terminal() {
            update.push_str(", finished_at = :now");
            values.insert(":now".into(), n(self.now()));
        }
        if to == TaskState::Failed {
            // The sparse index of failures.
            update.push_str(", failed_in = :job");
            values.insert(":job".into(), s(&task.job_id));
        }
        if let Some(r) = reason {
            update.push_str(", reason = :reason");
            values.insert(":reason".into(), s(r));
        }
        Ok(send_if(
            self.update_task(task)
                .update_expression(update)
                .condition_expression(state_in(transition.from()))
                .set_expression_attribute_values(Some(values))
                .with_states(transition.from()),
        )
        .await?
        .is_some())
    }

    /// Mark a RUNNABLE task's message as dead-lettered once and sent again; false if it
    /// was before (the next dead letter fails it).
    pub async fn mark_redriven(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        Ok(send_if(
            self.update_task(task)
                .update_expression("SET redriven = :true")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(redriven)")
                .expression_attribute_values(":true", AttributeValue::Bool(true)),
        )
        .await?
        .is_some())
    }

    /// Fail a RUNNABLE task no worker would take, with why.
    pub async fn fail_undeliverable(
        &self,
        task: &TaskRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.transition(
            task,
            TaskTransition::Undeliverable,
            TaskState::Failed,
            Some(reason),
        )
        .await
    }

    /// Cancel one task of a cancelled job: a task that has not started ends CANCELLED; a
    /// running one is flagged so its worker kills it. Returns the state it was left in.
    pub async fn cancel_task(&self, task: &TaskRecord) -> Result<TaskState, StoreError> {
        let mut current = task.clone();
        for _ in 0..3 {
            match current.state {
                st if TaskTransition::Cancel.from().contains(&st) => {
                    if self
                        .transition(
                            &current,
                            TaskTransition::Cancel,
                            TaskState::Cancelled,
                            Some("job cancelled"),
                        )
                        .await?
                    {
                        return Ok(TaskState::Cancelled);
                    }
                }
                st if TaskState::LEASED.contains(&st) => {
                    if send_if(
                        self.update_task(&current)
                            .update_expression("SET cancel_requested = :true")
                            .condition_expression(state_in(&TaskState::LEASED))
                            .expression_attribute_values(":true", AttributeValue::Bool(true))
                            .with_states(&TaskState::LEASED),
                    )
                    .await?
                    .is_some()
                    {
                        return Ok(TaskState::Running);
                    }
                }
                terminal => return Ok(terminal),
            }
            // The task moved under us; look again and act on what it is now.
            match self
                .get_task_in_shard(&current.job_id, current.shard, &current.task_id)
                .await?
            {
                Some(t) => current = t,
                None => return Ok(TaskState::Cancelled),
            }
        }
        Ok(current.state)
    }

    /// [`Store::cancel_task`] by the task's key, for a worker handed a task of a job
    /// being cancelled before the job's cancel walk reached it. `None` where there is no
    /// item (an array child never started).
    pub async fn cancel_task_by_key(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
    ) -> Result<Option<TaskState>, StoreError> {
        match self.get_task_in_shard(job_id, shard, task_id).await? {
            Some(task) => Ok(Some(self.cancel_task(&task).await?)),
            None => Ok(None),
        }
    }
}
