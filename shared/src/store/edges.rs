//! Dependencies between tasks: releasing finished dependencies into a waiting task,
//! failing the dependents of a failed one, and adding a dependent to a running job.

use super::item::*;
use super::request::{send_if, send_if_current, state_in, StateCondition};
use super::{Store, StoreError};
use crate::domain::TaskTransition;
use crate::domain::{TaskRecord, TaskState};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

impl Store {
    /// Release one finished dependency into a waiting task; see [`Store::release_edges`].
    pub async fn release_edge(
        &self,
        dependent: &TaskRecord,
        dep: &str,
    ) -> Result<bool, StoreError> {
        self.release_edges(dependent, &[dep.to_string()], false)
            .await
    }

    /// Release finished dependencies into a waiting task, and make the task RUNNABLE
    /// when they were the last. Idempotent: dependencies are added to a set, and the
    /// transition is conditional on PENDING. `dependent` is the task as last read.
    /// Usually one write, however many dependencies it carries: the write that
    /// completes the set also sets RUNNABLE. Returns whether the task became RUNNABLE.
    /// With `enqueue_follows` the caller sends the task's message itself when it does
    /// (one stream hop less between a dependency's end and its dependent's start), and
    /// the write marks the task `enqueued` so the stream's record of it sends nothing.
    pub async fn release_edges(
        &self,
        dependent: &TaskRecord,
        deps: &[String],
        enqueue_follows: bool,
    ) -> Result<bool, StoreError> {
        let runnable = if enqueue_follows {
            "#state = :runnable, enqueued = :true"
        } else {
            "#state = :runnable"
        };
        let release = state_in(TaskTransition::Release.from());
        if !TaskTransition::Release.from().contains(&dependent.state) || deps.is_empty() {
            return Ok(false);
        }
        let k = key(
            task_pk(&dependent.job_id, dependent.shard),
            task_sk(&dependent.task_id),
        );
        let new: Vec<String> = deps
            .iter()
            .filter(|d| !dependent.deps_done.contains(d))
            .cloned()
            .collect();
        let completes = dependent
            .deps
            .iter()
            .all(|d| deps.contains(d) || dependent.deps_done.contains(d));
        let set = AttributeValue::Ss(if new.is_empty() {
            deps.to_vec()
        } else {
            new.clone()
        });
        if completes {
            // The last edges, as far as we saw: add them and release in one write,
            // provided nobody changed the set since we read it.
            let size_cond = if dependent.deps_done.is_empty() {
                "attribute_not_exists(deps_done)".to_string()
            } else {
                "size(deps_done) = :seen".to_string()
            };
            let mut req = self
                .ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k.clone()))
                .update_expression(format!("ADD deps_done :d SET {runnable}"))
                .condition_expression(format!("{release} AND {size_cond}"))
                .expression_attribute_values(":d", set.clone())
                .expression_attribute_values(":runnable", s(TaskState::Runnable.as_str()))
                .with_states(TaskTransition::Release.from());
            if !dependent.deps_done.is_empty() {
                req = req.expression_attribute_values(":seen", n(dependent.deps_done.len()));
            }
            if enqueue_follows {
                req = req.expression_attribute_values(":true", AttributeValue::Bool(true));
            }
            if send_if(req).await?.is_some() {
                return Ok(true);
            }
        } else if new.is_empty() {
            return Ok(false);
        }
        // Not the last edges (or a race): add them and look at what the set became.
        let added = send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .update_expression("ADD deps_done :d")
                .condition_expression(&release)
                .expression_attribute_values(":d", set)
                .return_values(ReturnValue::AllNew)
                .with_states(TaskTransition::Release.from()),
        )
        .await?;
        let now = match added.as_ref().and_then(|out| out.attributes()) {
            Some(it) => task_from_item(it)?,
            None => return Ok(false),
        };
        if !now.all_deps_done() {
            return Ok(false);
        }
        let mut req = self
            .update_task(&now)
            .update_expression(format!("SET {runnable}"))
            .condition_expression(release)
            .expression_attribute_values(":runnable", s(TaskState::Runnable.as_str()))
            .with_states(TaskTransition::Release.from());
        if enqueue_follows {
            req = req.expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        Ok(send_if(req).await?.is_some())
    }

    /// End a waiting task because a dependency did not succeed: FAILED where the
    /// dependency failed, CANCELLED where it was cancelled (a task is cancelled only by
    /// its job's cancel or terminate, which would cancel this one too).
    pub async fn fail_dependent(
        &self,
        dependent: &TaskRecord,
        root: &str,
        dependency_ended: TaskState,
    ) -> Result<bool, StoreError> {
        let (to, reason) = match dependency_ended {
            TaskState::Cancelled => (TaskState::Cancelled, format!("dependency {root} cancelled")),
            _ => (TaskState::Failed, format!("dependency {root} failed")),
        };
        let mut update =
            "SET #state = :to, reason = :reason, failed_dependency = :root, finished_at = :now"
                .to_string();
        let mut req = self.update_task(dependent);
        if to == TaskState::Failed {
            // The sparse index of failures.
            update.push_str(", failed_in = :job");
            req = req.expression_attribute_values(":job", s(&dependent.job_id));
        }
        Ok(send_if(
            req.update_expression(update)
                .condition_expression(state_in(TaskTransition::FailDependent.from()))
                .expression_attribute_values(":to", s(to.as_str()))
                .expression_attribute_values(":reason", s(&reason))
                .expression_attribute_values(":root", s(root))
                .expression_attribute_values(":now", n(self.now()))
                .with_states(TaskTransition::FailDependent.from()),
        )
        .await?
        .is_some())
    }

    /// Add a new dependent to a stored task that has not finished. If it has, the
    /// condition fails and the caller releases (or fails) the new task itself.
    pub async fn append_dependent(
        &self,
        job_id: &str,
        shard_count: u32,
        from: &str,
        to: &str,
    ) -> Result<Result<(), TaskRecord>, StoreError> {
        let shard = crate::domain::ids::task_shard(from, shard_count);
        // Only a task that has not finished can take a new dependent.
        let appended = send_if_current(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(task_pk(job_id, shard), task_sk(from))))
                .update_expression(
                    "SET dependents = list_append(if_not_exists(dependents, :empty), :to)",
                )
                // Once: a retry of a write that was applied (its answer lost) must not
                // list the dependent twice.
                .condition_expression(format!(
                    "{} AND (attribute_not_exists(dependents) OR NOT contains(dependents, :to_one))",
                    state_in(&TaskState::OPEN)
                ))
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(":to", list_s(&[to.to_string()]))
                .expression_attribute_values(":to_one", s(to))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .with_states(&TaskState::OPEN),
        )
        .await?;
        match appended {
            Ok(_) => Ok(Ok(())),
            Err(Some(it)) => {
                let task = task_from_item(&it)?;
                if task.dependents.iter().any(|d| d == to) {
                    return Ok(Ok(()));
                }
                Ok(Err(task))
            }
            Err(None) => Err(StoreError::ConditionFailed {
                operation: "UpdateItem",
                current: None,
            }),
        }
    }
}
