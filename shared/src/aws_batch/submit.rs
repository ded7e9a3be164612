//! Submitting jobs: AWS Batch's SubmitJob and the native array path it shares (a single
//! job is an array of one), dependencies between jobs, and cancel/terminate.

use crate::api::{ApiError, Need, Service};
use crate::domain::access::Access;
use crate::domain::batch::{
    child_task_id, substitute_parameters, weighted_window, ArrayJob, DependencyKind, Dependent,
    JobDependency, JobTemplate, MAX_ARRAY_SIZE, MAX_JOB_DEPENDENCIES,
};
use crate::domain::ids::{new_job_id, shard_count_for, task_shard};
use crate::domain::retry::RetryStrategy;
use crate::domain::spec::ArrayJobSpec;
use crate::domain::tiers::Tier;
use crate::domain::{JobRecord, JobState};
use crate::store::arrays::DependencyStatus;
use crate::store::now_ms;
use crate::store::registry::ResourceKind;
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{arn::*, definitions::*, describe::*, wire::*};

impl Service {
    /// The job's team is its `shareIdentifier`, where the caller must be a member, or
    /// the caller's only team.
    pub async fn aws_submit_job(&self, who: &Access, input: &Value) -> Result<Value, ApiError> {
        let name = checked_name(input, "jobName")?;
        check_size(input)?;
        let queue_ref = req_str(input, "jobQueue")?;
        let def_ref = req_str(input, "jobDefinition")?;
        let share = opt_str(input, "shareIdentifier");
        let team = Self::submission_team(who, share, "shareIdentifier")?;
        let def = self
            .job_definition_for(who, def_ref)
            .await?
            .ok_or_else(|| {
                client(format!(
                    "jobDefinition {def_ref} does not exist or is INACTIVE"
                ))
            })?;
        if def["status"] != "ACTIVE" {
            return Err(client(format!("jobDefinition {def_ref} is INACTIVE")));
        }
        let queue = self.enabled_queue(queue_ref, share).await?;
        let (overrides, asked) = super::definitions::container_overrides(input)?;
        let timeout = opt_int(
            &input["timeout"],
            "attemptDurationSeconds",
            "timeout.attemptDurationSeconds",
            1,
            i64::from(u32::MAX),
        )?
        .map(|t| t as u64);
        if let Some(t) = timeout.or_else(|| def["timeout"]["attemptDurationSeconds"].as_u64()) {
            if t < self.min_attempt_seconds {
                return Err(client(format!(
                    "timeout.attemptDurationSeconds {t}: the minimum is {} seconds",
                    self.min_attempt_seconds
                )));
            }
        }
        let (template, parameters) = template_from(
            Some(&def),
            TemplateInput {
                command: command(&overrides),
                env: environment(&overrides, "containerOverrides")?,
                cpu: asked.cpu,
                memory_mib: asked.memory_mib,
                gpus: asked.gpus,
                timeout_seconds: timeout,
                retry: retry_from(input.get("retryStrategy"), "retryStrategy")?,
                parameters: string_map(input.get("parameters"), "parameters")?,
                tiers: Vec::new(),
                // AWS's containerOverrides has no image or role: the definition's.
                image: None,
                job_role_arn: None,
            },
        )?;
        let array_size = match input.get("arrayProperties").and_then(|a| a.get("size")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = v.as_u64().unwrap_or(0);
                if !(2..=u64::from(MAX_ARRAY_SIZE)).contains(&n) {
                    return Err(client(format!(
                        "arrayProperties.size {v} must be 2 to {MAX_ARRAY_SIZE}"
                    )));
                }
                Some(n as u32)
            }
        };
        let mut depends_on = Vec::new();
        let mut sequential = false;
        for (i, d) in input["dependsOn"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let kind = opt_str(d, "type");
            match opt_str(d, "jobId") {
                None | Some("") if kind == Some("SEQUENTIAL") => sequential = true,
                None | Some("") => return Err(client(format!("dependsOn[{i}].jobId is required"))),
                Some(id) => {
                    let dep = JobDependency::parse(id, kind)
                        .map_err(|e| client(format!("dependsOn[{i}]: {e}")))?;
                    if dep.kind == DependencyKind::Sequential {
                        return Err(client(format!(
                            "dependsOn[{i}]: SEQUENTIAL takes no jobId (it orders this job's own children)"
                        )));
                    }
                    depends_on.push(dep);
                }
            }
        }
        let tags = string_map(input.get("tags"), "tags")?;
        let job_id = self
            .submit_array_job(ArraySubmission {
                name: name.clone(),
                team,
                queue: queue.name,
                compute_environment: queue.compute_environment,
                template,
                array_size,
                sequential,
                depends_on,
                job_definition: def["jobDefinitionArn"].as_str().map(String::from),
                share_identifier: share.map(String::from),
                scheduling_priority: opt_int(
                    input,
                    "schedulingPriorityOverride",
                    "schedulingPriorityOverride",
                    0,
                    9999,
                )?
                .unwrap_or(0) as i32,
                weight: queue.weight,
                parameters,
                tags,
                caller: Some(who.principal.id.clone()),
            })
            .await?;
        Ok(json!({"jobArn": arn("job", &job_id), "jobName": name, "jobId": job_id}))
    }

    /// A native single or array job (`POST /v1/jobs` without `tasks:`): the same job as
    /// AWS's SubmitJob makes. `queue` is a job queue when one of that name exists (it
    /// must be ENABLED; its scheduling policy weighs `team`), else a plain worker queue.
    pub async fn submit_native_array(
        &self,
        who: &Access,
        job_id: String,
        spec: ArrayJobSpec,
    ) -> Result<String, ApiError> {
        let def = match &spec.job_definition {
            None => None,
            Some(r) => {
                let d = self.job_definition_for(who, r).await?.ok_or_else(|| {
                    ApiError::bad_request(
                        format!("field `job_definition`: {r} does not exist"),
                        json!({"field": "job_definition"}),
                    )
                })?;
                if d["status"] != "ACTIVE" {
                    return Err(ApiError::bad_request(
                        format!("field `job_definition`: {r} is INACTIVE"),
                        json!({"field": "job_definition"}),
                    ));
                }
                Some(d)
            }
        };
        let queue = if self
            .store
            .get_resource(ResourceKind::JobQueue, &spec.queue)
            .await?
            .is_some()
        {
            self.enabled_queue(&spec.queue, Some(&spec.team)).await?
        } else {
            self.queues.url(&spec.queue).await?;
            super::queues::EnabledQueue {
                name: spec.queue.clone(),
                ..Default::default()
            }
        };
        // Without a definition, the native defaults of a task (1 vCPU, 512 MiB).
        let (cpu, memory_mib) = match def {
            Some(_) => (spec.cpu, spec.memory_mib),
            None => (spec.cpu.or(Some(1.0)), spec.memory_mib.or(Some(512))),
        };
        let (template, parameters) = template_from(
            def.as_ref(),
            TemplateInput {
                command: Some(spec.command.clone()),
                env: spec.env.clone(),
                cpu,
                memory_mib,
                gpus: None,
                timeout_seconds: spec.timeout_seconds,
                retry: spec.retry_strategy.clone(),
                parameters: spec.parameters.clone(),
                tiers: spec.tiers.clone(),
                image: spec.image.clone(),
                job_role_arn: spec.job_role_arn.clone(),
            },
        )?;
        let depends_on = spec
            .depends_on
            .iter()
            .map(|d| JobDependency::parse(&d.job, d.kind.as_deref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ApiError::bad_request(
                    format!("field `depends_on`: {e}"),
                    json!({"field": "depends_on"}),
                )
            })?;
        self.submit_array_job_as(
            job_id,
            ArraySubmission {
                name: spec.name,
                team: spec.team.clone(),
                queue: queue.name,
                compute_environment: queue.compute_environment,
                template,
                array_size: spec.array_size,
                sequential: spec.sequential,
                depends_on,
                job_definition: def.and_then(|d| d["jobDefinitionArn"].as_str().map(String::from)),
                share_identifier: Some(spec.team),
                scheduling_priority: spec.scheduling_priority,
                weight: queue.weight,
                parameters,
                tags: spec.tags,
                caller: Some(who.principal.id.clone()),
            },
        )
        .await
    }

    /// Store an array (or single) job and register its dependencies. Shared by the
    /// AWS-compatible and the native API.
    pub async fn submit_array_job(&self, sub: ArraySubmission) -> Result<String, ApiError> {
        self.submit_array_job_as(new_job_id(now_ms()), sub).await
    }

    /// [`Service::submit_array_job`] under an id chosen by the caller (one an
    /// idempotency key has already claimed).
    pub async fn submit_array_job_as(
        &self,
        job_id: String,
        sub: ArraySubmission,
    ) -> Result<String, ApiError> {
        if sub.sequential && sub.array_size.is_none() {
            return Err(client(
                "dependsOn SEQUENTIAL: only an array job has children to order",
            ));
        }
        if sub.depends_on.len() > MAX_JOB_DEPENDENCIES {
            return Err(client(format!(
                "dependsOn: {} dependencies; at most {MAX_JOB_DEPENDENCIES}",
                sub.depends_on.len()
            )));
        }
        if sub.template.command.is_empty() {
            return Err(client("command is empty"));
        }
        self.check_template_fit(&sub.queue, &sub.team, &sub.template)
            .await?;
        let uses = crate::api::PoolUses::from([(
            sub.template.container.clone(),
            sub.template.tiers.iter().copied().collect(),
        )]);
        self.ensure_pools(&sub.queue, &sub.team, &uses).await?;
        let n_to_n = self.check_dependencies(&sub).await?;
        let gates: Vec<&JobDependency> = sub
            .depends_on
            .iter()
            .filter(|d| d.kind == DependencyKind::Job)
            .collect();
        let now = now_ms();
        let size = sub.array_size.unwrap_or(1);
        let job = JobRecord {
            // Nothing to wait for: RUNNABLE from the first write, one write and one stream
            // hop fewer. With dependencies it waits PENDING until they are registered.
            state: if sub.depends_on.is_empty() {
                JobState::Runnable
            } else {
                JobState::Pending
            },
            created_at: now,
            total_tasks: u64::from(size),
            shard_count: shard_count_for(size as usize),
            array: Some(ArrayJob {
                template: sub.template,
                array_size: sub.array_size,
                sequential: sub.sequential,
                n_to_n,
                gate_count: gates.len() as u32,
                window: weighted_window(self.job_window, sub.weight),
                job_definition: sub.job_definition,
                share_identifier: sub.share_identifier,
                scheduling_priority: sub.scheduling_priority,
                compute_environment: sub.compute_environment,
                parameters: sub.parameters,
                tags: sub.tags,
                caller: sub.caller,
            }),
            ..JobRecord::new(&job_id, &sub.name, &sub.team, &sub.queue)
        };
        self.store.put_job(&job).await?;
        if let Err(e) = self.register_dependencies(&job_id, &sub.depends_on).await {
            let _ = self
                .store
                .fail_job(
                    &job_id,
                    JobState::Failed,
                    &format!(
                        "submission failed while registering dependencies: {}",
                        e.message
                    ),
                )
                .await;
            return Err(e);
        }
        if !sub.depends_on.is_empty() {
            self.store.start_if_gates_met(&job_id).await?;
        }
        tracing::info!(job_id, name = %sub.name, size, "array job submitted");
        Ok(job_id)
    }

    /// Every dependency must name a job that exists, with the right shape: a child that
    /// exists, N_TO_N between arrays of one size (and not with SEQUENTIAL). Returns the
    /// jobs this one depends on N_TO_N.
    async fn check_dependencies(&self, sub: &ArraySubmission) -> Result<Vec<String>, ApiError> {
        let ids: Vec<String> = sub.depends_on.iter().map(|d| d.job_id.clone()).collect();
        let store = self.store.clone();
        let targets: Vec<Result<Option<JobRecord>, ApiError>> = stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move { Ok(store.get_job(&id).await?) }
            })
            .buffered(32)
            .collect()
            .await;
        let mut n_to_n = Vec::new();
        for (i, (d, t)) in sub.depends_on.iter().zip(targets).enumerate() {
            let t = t?.ok_or_else(|| {
                client(format!("dependsOn[{i}]: job {} does not exist", d.job_id))
            })?;
            let size = t.array.as_ref().and_then(|a| a.array_size);
            if let Some(idx) = d.index {
                if size.is_none_or(|s| idx >= s) {
                    return Err(client(format!(
                        "dependsOn[{i}]: job {} has no child {idx}",
                        d.job_id
                    )));
                }
            }
            if d.kind == DependencyKind::NToN {
                if sub.array_size.is_none() || size != sub.array_size {
                    return Err(client(format!(
                        "dependsOn[{i}]: N_TO_N needs two array jobs of the same size ({} is {}, this job {})",
                        d.job_id,
                        size.map_or("not an array".into(), |s| s.to_string()),
                        sub.array_size.map_or("not an array".into(), |s| s.to_string()),
                    )));
                }
                if sub.sequential {
                    return Err(client(
                        "dependsOn: N_TO_N and SEQUENTIAL cannot be combined",
                    ));
                }
                n_to_n.push(d.job_id.clone());
            }
        }
        Ok(n_to_n)
    }

    pub(super) async fn register_dependencies(
        &self,
        job_id: &str,
        deps: &[JobDependency],
    ) -> Result<(), ApiError> {
        if deps.is_empty() {
            return Ok(());
        }
        self.store.put_job_dependencies(job_id, deps).await?;
        let store = self.store.clone();
        let owner = job_id.to_string();
        let results: Vec<Result<(JobDependency, DependencyStatus), ApiError>> =
            stream::iter(deps.to_vec())
                .map(|d| {
                    let (store, job_id) = (store.clone(), owner.clone());
                    async move {
                        let as_dependent = match (d.kind, d.index) {
                            (DependencyKind::NToN, _) => Dependent::NToN(job_id.clone()),
                            (_, Some(index)) => Dependent::Child {
                                job_id: job_id.clone(),
                                index,
                            },
                            _ => Dependent::WholeJob(job_id.clone()),
                        };
                        let status = store.register_dependent(&d, &as_dependent).await?;
                        Ok((d, status))
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
        // Dependencies that had already ended: gates met (or the job failed) here, as
        // many at a time as the registrations, since a job may name thousands.
        let settled: Vec<(JobDependency, DependencyStatus)> = results
            .into_iter()
            .collect::<Result<Vec<_>, ApiError>>()?
            .into_iter()
            .filter(|(_, status)| !matches!(status, DependencyStatus::Waiting))
            .collect();
        let outcomes: Vec<Result<(), ApiError>> = stream::iter(settled)
            .map(|(d, status)| {
                let (store, job_id) = (store.clone(), owner.clone());
                async move {
                    match status {
                        DependencyStatus::Met => {
                            store.meet_gate(&job_id, &d.key()).await?;
                        }
                        DependencyStatus::Failed(_) | DependencyStatus::NoSuchJob
                            if d.kind != DependencyKind::NToN =>
                        {
                            let why = match status {
                                DependencyStatus::Failed(w) => w,
                                _ => format!("job {} does not exist", d.key()),
                            };
                            store
                                .fail_job(&job_id, JobState::Failed, &format!("Dependent {why}"))
                                .await?;
                        }
                        _ => {}
                    }
                    Ok(())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        outcomes.into_iter().collect()
    }

    /// CancelJob (`terminate` false): children not yet running never run; running ones
    /// finish. TerminateJob: running ones are killed too. Either way the job ends FAILED
    /// with the reason given.
    pub async fn aws_cancel_job(
        &self,
        who: &Access,
        input: &Value,
        terminate: bool,
    ) -> Result<Value, ApiError> {
        let id = req_str(input, "jobId")?;
        let reason = req_str(input, "reason")?;
        let job_id = id.split(':').next().unwrap_or(id);
        let missing = || {
            let mut e = client(format!("jobId {id} does not exist"));
            e.details = json!({"missing": id});
            e
        };
        let job = self.store.get_job(job_id).await?.ok_or_else(missing)?;
        Self::require_on_team(who, &job.team, Need::Act, missing)?;
        if job.state.is_terminal() {
            return Ok(json!({}));
        }
        let Some(array) = &job.array else {
            self.cancel_job(who, job_id).await?;
            return Ok(json!({}));
        };
        if !terminate && array.array_size.is_none() && aws_status(&job) == "RUNNING" {
            // As in AWS Batch: CancelJob succeeds but leaves a started job running.
            return Ok(json!({}));
        }
        let stop = if terminate {
            crate::domain::Stop::Terminate
        } else {
            crate::domain::Stop::Cancel
        };
        self.store
            .request_job_cancel(job_id, stop, Some(reason))
            .await?;
        if terminate {
            // Running children are stopped a page at a time through the stream.
            self.store
                .start_work(job_id, crate::store::WorkKind::Cancel)
                .await?;
        }
        // As AWS Batch: the status reason is the caller's reason, as given. An array
        // whose children are running stays PENDING until they have ended (the fanout
        // closes it then); children that had not started never will.
        let (counts, _, _) = self.store.job_counts(job_id).await?;
        if array.array_size.is_none() || !counts.any_running() {
            self.store
                .fail_job(job_id, JobState::Failed, reason)
                .await?;
        }
        tracing::info!(job_id, terminate, reason, "array job stopped");
        Ok(json!({}))
    }

    /// CancelJobs / TerminateJobs: up to 50 jobs, each reported on its own (`successful`
    /// or `errors` with a code), the answer 200 either way. As AWS: a job that cannot
    /// be found counts as done; each job needs the same role its single call needs.
    pub async fn aws_cancel_jobs(
        &self,
        who: &Access,
        input: &Value,
        terminate: bool,
    ) -> Result<Value, ApiError> {
        let ids: Vec<String> = input["jobs"]
            .as_array()
            .ok_or_else(|| client("jobs is required: a list of up to 50 job ids"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| client("jobs: each entry is a job id string"))
            })
            .collect::<Result<_, _>>()?;
        if ids.is_empty() || ids.len() > 50 {
            return Err(client(format!("jobs: {} ids; give 1 to 50", ids.len())));
        }
        let reason = req_str(input, "reason")?;
        let mut successful = Vec::new();
        let mut errors = Vec::new();
        for id in ids {
            let one = json!({"jobId": id, "reason": reason});
            match self.aws_cancel_job(who, &one, terminate).await {
                Ok(_) => successful.push(json!(id)),
                Err(e) if e.details.get("missing").is_some() => successful.push(json!(id)),
                Err(e) => {
                    let code = match e.kind {
                        crate::api::ErrorKind::Forbidden => "AccessDeniedException",
                        k if k.is_client() => "ValidationException",
                        _ => "ServerException",
                    };
                    errors.push(json!({"job": id, "code": code, "message": e.message}));
                }
            }
        }
        Ok(json!({"successful": successful, "errors": errors}))
    }
}

/// What [`Service::submit_array_job`] stores.
#[derive(Debug, Clone)]
pub struct ArraySubmission {
    pub name: String,
    pub team: String,
    pub queue: String,
    /// The job queue's compute environment, when submitted to a job queue.
    pub compute_environment: Option<String>,
    pub template: JobTemplate,
    pub array_size: Option<u32>,
    pub sequential: bool,
    pub depends_on: Vec<JobDependency>,
    pub job_definition: Option<String>,
    pub share_identifier: Option<String>,
    pub scheduling_priority: i32,
    /// The share's weight factor in the queue's scheduling policy.
    pub weight: Option<f64>,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub caller: Option<String>,
}

/// What a submission gives of a job's template; each given field wins over the job
/// definition's.
#[derive(Debug, Default)]
pub struct TemplateInput {
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    /// GPUs (`resourceRequirements` type GPU); none given means the definition's.
    pub gpus: Option<u32>,
    pub timeout_seconds: Option<u64>,
    pub retry: Option<RetryStrategy>,
    pub parameters: BTreeMap<String, String>,
    /// Resource tiers; none given means the definition's (its `batchplane:tiers` tag).
    pub tiers: Vec<Tier>,
    /// The image and job role; none given means the definition's.
    pub image: Option<String>,
    pub job_role_arn: Option<String>,
}

/// A job's template: the definition (if any) under what the submission gives, with
/// `Ref::` parameters substituted. Returns the merged parameters too.
pub(super) fn template_from(
    def: Option<&Value>,
    given: TemplateInput,
) -> Result<(JobTemplate, BTreeMap<String, String>), ApiError> {
    let none = Value::Null;
    let def = def.unwrap_or(&none);
    let container = &def["containerProperties"];
    let defined = resources(container, "containerProperties")?;
    let mut parameters = string_map(def.get("parameters"), "parameters")?;
    parameters.extend(given.parameters);
    let raw = given
        .command
        .filter(|c| !c.is_empty())
        .or_else(|| command(container))
        .ok_or_else(|| {
            client("no command: neither the job definition nor the submission gives one")
        })?;
    let mut env = environment(container, "jobDefinition containerProperties")?;
    env.extend(given.env);
    let retry = match given.retry {
        Some(r) => r,
        None => {
            retry_from(def.get("retryStrategy"), "jobDefinition retryStrategy")?.unwrap_or_default()
        }
    };
    let mut tiers = if given.tiers.is_empty() {
        definition_tiers(def)?
    } else {
        given.tiers
    };
    let (cpu_milli, memory_mib) = match tiers.first() {
        Some(t) => (t.cpu_milli, t.memory_mib),
        None => (
            ((given.cpu.or(defined.cpu).unwrap_or(1.0)) * 1000.0).round() as u32,
            given.memory_mib.or(defined.memory_mib).unwrap_or(2048),
        ),
    };
    // GPUs are honoured by running the job on a pool of workers that have them: the
    // job's one tier is its vCPUs, memory and GPUs (tiers given say their own GPUs).
    let gpus = given.gpus.or(defined.gpus).unwrap_or(0);
    if gpus > 0 && tiers.is_empty() {
        tiers.push(Tier {
            cpu_milli,
            memory_mib,
            gpu: gpus,
        });
    }
    let template = JobTemplate {
        command: substitute_parameters(&raw, &parameters),
        env,
        cpu_milli,
        memory_mib,
        tiers,
        timeout_seconds: given
            .timeout_seconds
            .or_else(|| def["timeout"]["attemptDurationSeconds"].as_u64()),
        retry,
        log: log_config(container, "jobDefinition containerProperties")?,
        container: super::definitions::container_from(
            given.image.as_deref(),
            given.job_role_arn.as_deref(),
            container,
        )?,
    };
    Ok((template, parameters))
}

/// The shard a child's item is on (for callers that know only the index).
pub fn child_shard(job: &JobRecord, index: u32) -> u32 {
    task_shard(&child_task_id(index), job.shard_count)
}
