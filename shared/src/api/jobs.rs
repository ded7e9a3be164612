//! Jobs: submit (idempotent on a key), look at, cancel.

use crate::domain::containers::Container;
use crate::domain::group_graph::{group_edges, GroupEdge};
use crate::domain::ids::{is_valid_job_id, new_job_id, shard_count_for};
use crate::domain::spec::{parse_submission, Submission};
use crate::domain::tiers::Tier;
use crate::domain::{plan_job, JobRecord};
use crate::store::now_ms;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::domain::access::Access;

/// The worker pools a submission's tasks use: for each container (`None`: the
/// deployment's worker image), the tier shapes of its tasks.
pub type PoolUses = BTreeMap<Option<Container>, BTreeSet<Tier>>;

/// The pools of `tasks`.
/// The edges between the groups of some tasks (`domain::group_graph`).
pub(super) fn group_edges_of(tasks: &[crate::domain::TaskSpec]) -> BTreeSet<GroupEdge> {
    group_edges(
        tasks
            .iter()
            .map(|t| (t.id.as_str(), t.depends_on.as_slice())),
    )
}

pub fn pool_uses(tasks: &[crate::domain::TaskSpec]) -> PoolUses {
    let mut uses = PoolUses::new();
    for t in tasks {
        uses.entry(t.container())
            .or_default()
            .extend(t.tiers.iter().copied());
    }
    uses
}

#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub job_id: String,
    /// False when an `Idempotency-Key` named a job submitted before.
    #[serde(skip)]
    pub created: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub job_id: String,
    pub added: usize,
}

impl Service {
    /// Make sure the queues of the worker pools a submission's tasks use exist, and
    /// that each container they name is stored under its key, before anything of the
    /// job is written: per container, the team's pool of the queue (for tasks without
    /// tiers) and its pool of each tier shape. At most
    /// [`MAX_POOLS_PER_SUBMISSION`](crate::domain::limits::MAX_POOLS_PER_SUBMISSION)
    /// pools beyond the queue's own: each is a queue and, under load, workers.
    pub async fn ensure_pools(
        &self,
        queue: &str,
        team: &str,
        uses: &PoolUses,
    ) -> Result<(), ApiError> {
        use crate::domain::limits::MAX_POOLS_PER_SUBMISSION;
        use crate::domain::tiers::WorkerPool;
        let mut pools: Vec<WorkerPool> = Vec::new();
        for (container, shapes) in uses.iter().chain(
            // The plain pool of the queue always exists: static workers serve it.
            (!uses.contains_key(&None)).then_some((&None, &BTreeSet::new())),
        ) {
            let own = WorkerPool::new(queue, team, None)
                .in_container(container.as_ref().map(|c| c.key()));
            pools.extend(shapes.iter().map(|t| own.of_shape(Some(*t))));
            pools.push(own);
        }
        if pools.len() > MAX_POOLS_PER_SUBMISSION + 1 {
            return Err(ApiError::bad_request(
                format!(
                    "fields `tiers` and `image`: the tasks use {} worker pools (tier shapes in each image); one submission may use at most {}",
                    pools.len() - 1,
                    MAX_POOLS_PER_SUBMISSION
                ),
                json!({"field": "tiers", "pools": pools.len() - 1}),
            ));
        }
        for pool in &pools {
            // Refused here, named, rather than by SQS when the pool is created.
            self.queues.check_name(&pool.name()).map_err(|problem| {
                ApiError::bad_request(
                    format!(
                        "fields `queue` and `team`: team {team}'s pool {}: {problem}",
                        pool.name()
                    ),
                    json!({"field": "queue", "pool": pool.name()}),
                )
            })?;
        }
        for c in uses.keys().flatten() {
            self.check_job_role(c.job_role_arn.as_deref(), "job_role_arn")?;
        }
        for c in uses.keys().flatten() {
            self.store.put_container(c).await?;
        }
        for pool in &pools {
            self.queues.ensure_pool(pool).await?;
        }
        Ok(())
    }

    /// Claim `key` for `job_id`; the job it already names, if a submission with it was
    /// accepted before. A key held by a submission still being written is a 409; one
    /// held by a submission that died is taken over (or, if that job did commit, is
    /// its answer).
    pub(super) async fn claim_idempotency(
        &self,
        team: &str,
        key: Option<&str>,
        job_id: &str,
    ) -> Result<Option<Submitted>, ApiError> {
        use crate::store::KeyClaim;
        let Some(k) = key else { return Ok(None) };
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::bad_request(
                "header Idempotency-Key: must be 1 to 256 characters",
                json!({"header": "Idempotency-Key"}),
            ));
        }
        let existing = |job_id: String| {
            Ok(Some(Submitted {
                job_id,
                created: false,
            }))
        };
        let in_progress = |held_by: &str| {
            ApiError::new(
                ErrorKind::Conflict,
                "SubmissionInProgress",
                format!("header Idempotency-Key: a submission with this key (job {held_by}) is still being written; try again in a minute"),
                json!({"header": "Idempotency-Key", "job_id": held_by}),
            )
        };
        match self.store.claim_idempotency_key(team, k, job_id).await? {
            KeyClaim::Claimed => Ok(None),
            KeyClaim::Bound(j) => existing(j),
            KeyClaim::Held {
                job_id: held_by,
                lapsed: false,
            } => Err(in_progress(&held_by)),
            KeyClaim::Held {
                job_id: held_by,
                lapsed: true,
            } => {
                // Its submission died: after its commit (then the key is its job's),
                // or before (then this one tries again).
                let committed = self
                    .store
                    .get_job(&held_by)
                    .await?
                    .is_some_and(|j| !j.uncommitted);
                if committed {
                    self.store.bind_idempotency_key(team, k, &held_by).await?;
                    return existing(held_by);
                }
                if self
                    .store
                    .take_over_idempotency_key(team, k, &held_by, job_id)
                    .await?
                {
                    Ok(None)
                } else {
                    Err(in_progress(&held_by))
                }
            }
        }
    }

    /// After a submission failed: give its key back (so a retry tries again) and close
    /// its job as FAILED (it never committed, so nothing of it ran). Best effort: the
    /// key's hold lapses and the reconciler closes the job if these do not get through.
    async fn abandon_submission(&self, team: &str, key: Option<&str>, job_id: &str, why: &str) {
        if let Some(k) = key {
            if let Err(e) = self.store.release_idempotency_key(team, k, job_id).await {
                tracing::warn!(error = %e, job_id, "letting go of the idempotency key failed; its hold will lapse");
            }
        }
        let reason = format!("the submission failed and nothing of it ran: {why}");
        if let Err(e) = self.store.abandon_job(job_id, &reason, i64::MAX).await {
            tracing::warn!(error = %e, job_id, "closing an abandoned submission failed; the reconciler will");
        }
    }

    /// Validate, then store a job: the job item (SUBMITTED), its tasks in batches, then
    /// the job marked PENDING. A spec that fails validation writes nothing; a store
    /// failure part-way marks the job FAILED with the cause.
    pub async fn submit_job(
        &self,
        who: &Access,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ApiError> {
        let team_of =
            |named: &str| Self::submission_team(who, (!named.is_empty()).then_some(named), "team");
        let spec = match parse_submission(body)? {
            Submission::Dag(mut spec) => {
                spec.team = team_of(&spec.team)?;
                spec
            }
            Submission::Array(mut spec) => {
                spec.team = team_of(&spec.team)?;
                let job_id = new_job_id(now_ms());
                if let Some(existing) = self
                    .claim_idempotency(&spec.team, idempotency_key, &job_id)
                    .await?
                {
                    return Ok(existing);
                }
                let team = spec.team.clone();
                let job_id = match self.submit_native_array(who, job_id.clone(), *spec).await {
                    Ok(id) => id,
                    Err(e) => {
                        if let Some(k) = idempotency_key {
                            if let Err(undo) =
                                self.store.release_idempotency_key(&team, k, &job_id).await
                            {
                                tracing::warn!(error = %undo, job_id, "letting go of the idempotency key failed; its hold will lapse");
                            }
                        }
                        return Err(e);
                    }
                };
                if let Some(k) = idempotency_key {
                    self.store.bind_idempotency_key(&team, k, &job_id).await?;
                }
                return Ok(Submitted {
                    job_id,
                    created: true,
                });
            }
        };
        self.queues.url(&spec.queue).await?;
        self.check_tasks_fit(&spec.queue, &spec.team, "tasks", &spec.tasks)
            .await?;
        self.ensure_pools(&spec.queue, &spec.team, &pool_uses(&spec.tasks))
            .await?;
        let now = now_ms();
        let job_id = new_job_id(now);
        if let Some(existing) = self
            .claim_idempotency(&spec.team, idempotency_key, &job_id)
            .await?
        {
            return Ok(existing);
        }
        let plan = plan_job(&spec.tasks);
        let shard_count = match spec.expected_tasks {
            Some(n) => shard_count_for(usize::try_from(n).unwrap_or(usize::MAX)),
            None => shard_count_for(plan.len()),
        };
        let job = JobRecord {
            created_at: now,
            total_tasks: spec.tasks.len() as u64,
            shard_count,
            uncommitted: true,
            notify: crate::domain::Notify {
                task_events: spec.task_events,
                task_token: spec.task_token.clone(),
            },
            paging: crate::domain::Paging {
                open: spec.open,
                last_page_at: None,
                page_edges: false,
            },
            dag_window: Some(self.job_window),
            ..JobRecord::new(&job_id, &spec.name, &spec.team, &spec.queue)
        };
        let edges = group_edges_of(&spec.tasks);
        self.write_and_commit(&job, &plan, &edges, idempotency_key, !spec.open)
            .await?;
        if let Some(k) = idempotency_key {
            self.store
                .bind_idempotency_key(&spec.team, k, &job_id)
                .await?;
        }
        tracing::info!(job_id, name = %spec.name, tasks = spec.tasks.len(), open = spec.open, "job submitted");
        Ok(Submitted {
            job_id,
            created: true,
        })
    }

    /// Write a submitted job and its tasks, then (with `commit`; a job opened for pages
    /// commits later) commit it. Nothing is sent to a queue before the commit: a
    /// submission that fails or dies part-way runs nothing, and is closed (here, or by
    /// the reconciler).
    async fn write_and_commit(
        &self,
        job: &JobRecord,
        plan: &[crate::domain::PlannedTask],
        edges: &BTreeSet<GroupEdge>,
        idempotency_key: Option<&str>,
        commit: bool,
    ) -> Result<(), ApiError> {
        let job_id = job.job_id.as_str();
        let written = async {
            self.store.put_job(job).await?;
            self.store.add_group_edges(job_id, edges).await?;
            self.store
                .write_staged_tasks(
                    job_id,
                    job.shard_count,
                    (&job.queue, &job.team),
                    self.max_attempts,
                    plan,
                )
                .await?;
            if commit {
                self.store.commit_job(job_id).await
            } else {
                Ok(true)
            }
        }
        .await;
        match written {
            Ok(true) => {}
            Ok(false) => {
                let why = "it took too long and was closed as abandoned";
                self.abandon_submission(&job.team, idempotency_key, job_id, why)
                    .await;
                return Err(ApiError::new(
                    ErrorKind::Busy,
                    "SubmissionAbandoned",
                    format!("job {job_id}: {why}; submit again"),
                    json!({"job_id": job_id}),
                ));
            }
            Err(e) => {
                self.abandon_submission(
                    &job.team,
                    idempotency_key,
                    job_id,
                    &format!("writing it failed: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
        Ok(())
    }

    pub(crate) async fn job(&self, job_id: &str) -> Result<JobRecord, ApiError> {
        if !is_valid_job_id(job_id) {
            return Err(ApiError::not_found(format!("no job {job_id:?}")));
        }
        self.store
            .get_job(job_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job {job_id:?}")))
    }

    pub async fn get_job(&self, who: &Access, job_id: &str) -> Result<JobView, ApiError> {
        let job = self.job_for(who, job_id, Need::View).await?;
        let (counts, usage, _) = self.store.job_counts(job_id).await?;
        let mut view = job_view(&job, &counts);
        view.usage = usage;
        Ok(view)
    }

    /// Cancel a job: tasks not yet running end CANCELLED, running ones are flagged and
    /// killed by their workers within a heartbeat; the job ends CANCELLED.
    pub async fn cancel_job(&self, who: &Access, job_id: &str) -> Result<JobView, ApiError> {
        let job = self.job_for(who, job_id, Need::Act).await?;
        if job.state.is_terminal() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "JobFinished",
                format!("job {job_id} already ended {}", job.state),
                json!({"job_id": job_id, "state": job.state}),
            ));
        }
        self.store
            .request_job_cancel(job_id, crate::domain::Stop::Cancel, None)
            .await?;
        // The tasks are cancelled a page at a time through the stream (a job may have a
        // million); the job is CANCELLED once they all are.
        self.store
            .start_work(job_id, crate::store::WorkKind::Cancel)
            .await?;
        tracing::info!(job_id, "job cancel requested");
        self.get_job(who, job_id).await
    }
}
