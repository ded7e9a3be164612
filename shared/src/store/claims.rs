//! Claims and leases: a worker claims a task as its next attempt, keeps it with
//! heartbeats, and reports how the attempt ended; a lapsed lease is taken over.

use super::item::*;
use super::request::{send_if, send_if_current, state_in, StateCondition};
use super::{now_ms, Store, StoreError};
use crate::domain::TaskTransition;
use crate::domain::{AttemptRecord, TaskKind, TaskRecord, TaskState};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::collections::HashMap;
use std::time::Duration;

/// The outcome of trying to claim a task for a worker.
#[derive(Debug)]
pub enum Claim {
    /// The worker holds the task: run it as this attempt.
    Claimed(Box<TaskRecord>),
    /// Nothing to run: the task is held by a live lease, not ready, or gone.
    NotClaimable { reason: String },
    /// Nothing to run: the task has ended, in this state.
    Ended(TaskState),
    /// The previous worker's lease lapsed too often; the task was failed instead.
    Exhausted,
}

/// What a child's first claim writes into its new item.
#[derive(Debug, Clone)]
pub struct ChildSeed {
    pub index: u32,
    pub queue: String,
    /// The first tier's pool, for a job with tiers.
    pub pool: Option<String>,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: u32,
    pub max_attempts: u32,
    /// Claimed straight after its N_TO_N predecessor child by the worker that ran it,
    /// with no message (see [`crate::domain::TaskRecord::chained`]).
    pub chained: bool,
}

/// A task moving up a tier after running out of memory: the next attempt reserves the
/// new tier's resources and is sent to that tier's pool.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub tier: u32,
    pub shape: crate::domain::tiers::Tier,
    pub pool: String,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Held {
        cancel_requested: bool,
        /// When the renewed lease ends (ms, by this worker's clock): the attempt must be
        /// stopped by [`crate::domain::lease::fence_at`] of it unless renewed again.
        lease_expires: i64,
    },
    /// The lease is gone (another worker took the task, or it was finished elsewhere).
    Lost,
}

impl Store {
    /// Claim a task for a worker: RUNNABLE → RUNNING with attempt + 1 and a lease; or,
    /// if the task is RUNNING under a lease that has lapsed (its worker died), take it
    /// over as the next attempt, recording the lost one.
    pub async fn claim_task(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim(job_id, shard, task_id, worker_id, lease, None)
            .await
    }

    /// Claim a child of an array job. Its item does not exist until its first claim,
    /// which creates it (with what the job's template says about it); after that it is
    /// claimed like any task.
    pub async fn claim_child(
        &self,
        job_id: &str,
        shard: u32,
        seed: &ChildSeed,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim(
            job_id,
            shard,
            &seed.index.to_string(),
            worker_id,
            lease,
            Some(seed),
        )
        .await
    }

    async fn claim(
        &self,
        job_id: &str,
        shard: u32,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
        seed: Option<&ChildSeed>,
    ) -> Result<Claim, StoreError> {
        let now = self.now();
        let lease = Lease {
            worker_id,
            now,
            until: now + lease.as_millis() as i64,
            length: lease,
        };
        let k = key(task_pk(job_id, shard), task_sk(task_id));
        let claim = self
            .claim_request(k.clone(), job_id, shard, task_id, seed)
            .expression_attribute_values(":running", s(TaskState::Running.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(worker_id))
            .expression_attribute_values(":lease", n(lease.until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .with_states(TaskTransition::Claim.from());
        match send_if_current(claim).await? {
            Ok(out) => {
                let it = out.attributes().cloned().unwrap_or_default();
                Ok(Claim::Claimed(Box::new(task_from_item(&it)?)))
            }
            Err(None) => Ok(Claim::NotClaimable {
                reason: "no such task".into(),
            }),
            // A claim applied on a try whose answer was lost looks like this too (held by
            // this worker): it is not adopted, since two messages for one task can reach
            // one worker at once and only one of them may run it. Its lease lapses and
            // the task is taken over; nothing runs twice.
            Err(Some(old)) => {
                self.take_over(k, job_id, task_from_item(&old)?, &lease)
                    .await
            }
        }
    }

    /// The claim's write, before the values every claim shares: RUNNABLE → RUNNING as
    /// the next attempt, or, for an array child, its item created RUNNING.
    fn claim_request(
        &self,
        k: Item,
        job_id: &str,
        shard: u32,
        task_id: &str,
        seed: Option<&ChildSeed>,
    ) -> UpdateItemFluentBuilder {
        let claimable = state_in(TaskTransition::Claim.from());
        let req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k));
        let Some(c) = seed else {
            return req
                .update_expression(
                    "SET #state = :running, attempt = attempt + :one, worker_id = :w, lease_expires = :lease, started_at = :now",
                )
                .condition_expression(claimable);
        };
        // A child claimed again (retried, or moved up a tier) keeps what its item says
        // about its resources and pool.
        req.update_expression(format!(
            "SET #state = :running, attempt = if_not_exists(attempt, :zero) + :one, worker_id = :w, lease_expires = :lease, started_at = :now, \
             job_id = :job, task_id = :task, idx = :idx, #shard = :shard, kind = :kind, queue = :queue, \
             cpu_milli = if_not_exists(cpu_milli, :cpu), memory_mib = if_not_exists(memory_mib, :mem), \
             max_attempts = if_not_exists(max_attempts, :max), created_at = if_not_exists(created_at, :now){}{}{}",
            // `pool` is a reserved word.
            if c.pool.is_some() { ", #pool = if_not_exists(#pool, :pool)" } else { "" },
            if c.gpu > 0 { ", gpu = if_not_exists(gpu, :gpu)" } else { "" },
            // A claim through a message takes a window slot: its record gives it back.
            if c.chained { ", chained = :chained" } else { " REMOVE chained" },
        ))
        .set_expression_attribute_values(Some(
            [
                c.pool.as_ref().map(|p| (":pool".to_string(), s(p))),
                (c.gpu > 0).then(|| (":gpu".to_string(), n(c.gpu))),
                c.chained
                    .then(|| (":chained".to_string(), AttributeValue::Bool(true))),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ))
        .condition_expression(format!("attribute_not_exists(#state) OR {claimable}"))
        .set_expression_attribute_names(Some(
            [
                Some(("#shard".to_string(), "shard".to_string())),
                c.pool.as_ref().map(|_| ("#pool".to_string(), "pool".to_string())),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ))
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":job", s(job_id))
        .expression_attribute_values(":task", s(task_id))
        .expression_attribute_values(":idx", n(c.index))
        .expression_attribute_values(":shard", n(shard))
        .expression_attribute_values(":kind", s(TaskKind::Command.as_str()))
        .expression_attribute_values(":queue", s(&c.queue))
        .expression_attribute_values(":cpu", n(c.cpu_milli))
        .expression_attribute_values(":mem", n(c.memory_mib))
        .expression_attribute_values(":max", n(c.max_attempts))
    }

    /// A claim found the task not RUNNABLE: if it is RUNNING under a lease that lapsed
    /// (its worker is gone), take it over as the next attempt, recording the lost one,
    /// or fail it when that was its last attempt.
    async fn take_over(
        &self,
        k: Item,
        job_id: &str,
        task: TaskRecord,
        lease: &Lease<'_>,
    ) -> Result<Claim, StoreError> {
        let now = lease.now;
        if task.state.is_terminal() {
            return Ok(Claim::Ended(task.state));
        }
        if !TaskTransition::TakeOver.from().contains(&task.state) {
            return Ok(Claim::NotClaimable {
                reason: format!("task is {}", task.state),
            });
        }
        // The holder fences itself by `fence_at(expires)`; taking over waits until
        // `takeover_after(expires)`, so the two attempts never overlap.
        let expires = task.lease_expires.unwrap_or(0);
        let free_at = crate::domain::lease::takeover_after(expires, lease.length);
        if free_at >= now {
            return Ok(Claim::NotClaimable {
                reason: format!(
                    "held by worker {} until {}",
                    task.worker_id.as_deref().unwrap_or("?"),
                    free_at
                ),
            });
        }
        let lost = AttemptRecord {
            attempt: task.attempt,
            worker_id: task.worker_id.clone().unwrap_or_default(),
            started_at: task.started_at.unwrap_or(now),
            finished_at: Some(now),
            reason: Some(format!(
                "worker {} lost: lease expired",
                task.worker_id.as_deref().unwrap_or("?")
            )),
            ..Default::default()
        };
        // A cancelled task whose worker is gone ends CANCELLED; it is not run again.
        let exhausted = task.cancel_requested
            || crate::domain::tiers::budgeted_attempts(task.attempt, task.tier)
                >= task.max_attempts;
        let transition = if exhausted {
            TaskTransition::ExhaustLeases
        } else {
            TaskTransition::TakeOver
        };
        // Only while the lapsed attempt is still the one recorded and its lease still
        // lapsed, by the fencing margin.
        let req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .condition_expression(format!(
                "{} AND attempt = :attempt AND lease_expires < :cutoff",
                state_in(transition.from())
            ))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(
                ":cutoff",
                n(now - crate::domain::lease::fence_margin(lease.length).as_millis() as i64),
            )
            .expression_attribute_values(":attempt", n(task.attempt))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":lost", AttributeValue::L(vec![attempt_to_value(&lost)]));
        // Kept as "held": the message stays. The race may have been lost to this very
        // write, applied on a try whose answer was lost; then the lease this worker
        // does not know it holds lapses, and the message lets the task be taken over.
        let lost_race = Claim::NotClaimable {
            reason: format!(
                "held by another worker: a take-over of attempt {} raced",
                task.attempt
            ),
        };
        if exhausted {
            return self.end_lapsed(req, job_id, &task, lost_race).await;
        }
        let taken = req
            .update_expression(
                "SET attempt = attempt + :one, worker_id = :w, lease_expires = :lease, started_at = :now, attempts = list_append(if_not_exists(attempts, :empty), :lost)",
            )
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":w", s(lease.worker_id))
            .expression_attribute_values(":lease", n(lease.until))
            .return_values(ReturnValue::AllNew)
            .with_states(transition.from());
        match send_if(taken).await? {
            Some(out) => {
                let it = out.attributes().cloned().unwrap_or_default();
                Ok(Claim::Claimed(Box::new(task_from_item(&it)?)))
            }
            None => Ok(lost_race),
        }
    }

    /// A lapsed lease that ends the task instead of a take-over: CANCELLED if its job
    /// was cancelled, else FAILED (it was the last attempt). `req` is the take-over's
    /// conditional update, without its update expression.
    async fn end_lapsed(
        &self,
        req: UpdateItemFluentBuilder,
        job_id: &str,
        task: &TaskRecord,
        lost_race: Claim,
    ) -> Result<Claim, StoreError> {
        let from = TaskTransition::ExhaustLeases.from();
        if task.cancel_requested {
            let cancelled = req
                .update_expression(
                    "SET #state = :cancelled, reason = :reason, finished_at = :now, attempts = list_append(if_not_exists(attempts, :empty), :lost) REMOVE lease_expires",
                )
                .expression_attribute_values(":cancelled", s(TaskState::Cancelled.as_str()))
                .expression_attribute_values(":reason", s("job cancelled; its worker was lost"))
                .with_states(from);
            return Ok(match send_if(cancelled).await? {
                Some(_) => Claim::NotClaimable {
                    reason: "cancelled: its worker was lost".into(),
                },
                None => lost_race,
            });
        }
        let reason = format!(
            "worker lost on attempt {} of {}; no attempts left",
            task.attempt, task.max_attempts
        );
        let failed = req
            .update_expression(
                "SET #state = :failed, reason = :reason, finished_at = :now, failed_in = :job, attempts = list_append(if_not_exists(attempts, :empty), :lost) REMOVE lease_expires",
            )
            .expression_attribute_values(":job", s(job_id))
            .expression_attribute_values(":failed", s(TaskState::Failed.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .with_states(from);
        Ok(match send_if(failed).await? {
            Some(_) => Claim::Exhausted,
            None => lost_race,
        })
    }

    /// Extend a held lease; tells the worker whether the task was cancelled meanwhile.
    pub async fn heartbeat(
        &self,
        task: &TaskRecord,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let lease_expires = self.now() + lease.as_millis() as i64;
        let held = send_if(
            self.update_task(task)
                .update_expression("SET lease_expires = :lease")
                .condition_expression(holder_condition())
                .expression_attribute_values(":lease", n(lease_expires))
                .expression_attribute_values(":attempt", n(task.attempt))
                .expression_attribute_values(":w", s(worker_id))
                .return_values(ReturnValue::AllNew)
                .with_states(TaskTransition::Finish.from()),
        )
        .await?;
        Ok(match held {
            Some(out) => Heartbeat::Held {
                cancel_requested: out
                    .attributes()
                    .map(|it| Reader::new(it).bool("cancel_requested"))
                    .unwrap_or(false),
                lease_expires,
            },
            None => Heartbeat::Lost,
        })
    }

    /// Record how an attempt ended. Only the worker that holds this attempt can; `true`
    /// also when an earlier try of this same write was applied.
    pub async fn finish_attempt(
        &self,
        task: &TaskRecord,
        worker_id: &str,
        state: TaskState,
        reason: Option<&str>,
        record: &AttemptRecord,
        escalation: Option<&Escalation>,
    ) -> Result<bool, StoreError> {
        // A retried attempt goes back to RUNNABLE (the stream re-queues it); only a
        // terminal state closes the task.
        let mut sets = vec![
            "#state = :to",
            "attempts = list_append(if_not_exists(attempts, :empty), :rec)",
        ];
        let mut values: HashMap<String, AttributeValue> = HashMap::new();
        if let Some(e) = escalation {
            sets.push(
                "tier = :tier, cpu_milli = :cpu, memory_mib = :mem, gpu = :gpu, #pool = :pool",
            );
            values.insert(":tier".into(), n(e.tier));
            values.insert(":cpu".into(), n(e.shape.cpu_milli));
            values.insert(":mem".into(), n(e.shape.memory_mib));
            values.insert(":gpu".into(), n(e.shape.gpu));
            values.insert(":pool".into(), s(&e.pool));
        }
        if state == TaskState::Failed {
            // The sparse index of failures: `tasks --state FAILED` is a query.
            sets.push("failed_in = :job");
            values.insert(":job".into(), s(&task.job_id));
        }
        let mut req = self
            .update_task(task)
            .condition_expression(holder_condition())
            .set_expression_attribute_values(Some(values))
            .set_expression_attribute_names(Some(
                [
                    Some(("#state".to_string(), "state".to_string())),
                    escalation.map(|_| ("#pool".to_string(), "pool".to_string())),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ))
            .expression_attribute_values(":to", s(state.as_str()))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":rec", AttributeValue::L(vec![attempt_to_value(record)]))
            .expression_attribute_values(":attempt", n(task.attempt))
            .expression_attribute_values(":w", s(worker_id));
        if state.is_terminal() {
            sets.push("finished_at = :now");
            req = req
                .expression_attribute_values(":now", n(record.finished_at.unwrap_or_else(now_ms)));
        }
        if let Some(r) = reason {
            sets.push("reason = :reason");
            req = req.expression_attribute_values(":reason", s(r));
        }
        if let Some(code) = record.exit_code {
            sets.push("exit_code = :code");
            req = req.expression_attribute_values(":code", n(code));
        }
        let update = format!("SET {} REMOVE lease_expires", sets.join(", "));
        if !TaskTransition::Finish.allows(state) {
            return Err(StoreError::NotATransition {
                transition: TaskTransition::Finish,
                to: state,
            });
        }
        let req = req
            .update_expression(update)
            .with_states(TaskTransition::Finish.from());
        if send_if(req).await?.is_some() {
            return Ok(true);
        }
        // The condition failed. Either someone else holds the task now, or this very
        // write was applied on an earlier try whose answer was lost (the SDK sent it
        // again): then the attempt is in the task's record, as written.
        let now = self
            .get_task_in_shard(&task.job_id, task.shard, &task.task_id)
            .await?;
        Ok(now.is_some_and(|t| {
            t.attempts.iter().any(|a| {
                a.attempt == record.attempt
                    && a.worker_id == record.worker_id
                    && a.started_at == record.started_at
                    && a.finished_at == record.finished_at
            })
        }))
    }
}

/// Who may renew a lease or finish an attempt: the worker holding this attempt.
fn holder_condition() -> String {
    format!(
        "{} AND attempt = :attempt AND worker_id = :w",
        state_in(TaskTransition::Finish.from())
    )
}

/// The lease a claim asks for.
struct Lease<'a> {
    worker_id: &'a str,
    now: i64,
    until: i64,
    length: Duration,
}
