//! Refusing what can never run: a task that asks for more than any worker of its pool
//! has would wait RUNNABLE forever (AWS Batch's own well-known trap), so a submission
//! or an addition with one is refused, naming the task and the resource. What slips
//! past this (the settings shrank a pool's workers after the submission) is caught by
//! the reconciler's dead-letter path, which fails the task with its size.

use super::{ApiError, Service};
use crate::domain::spec::TaskSpec;
use crate::domain::tiers::{Tier, WorkerPool};
use crate::scaling::{misfit, settings_in_force, Settings};
use serde_json::json;

/// Why a task of `cpu_milli`/`memory_mib` on `tiers` can never run: the field to blame
/// and the reason. Tiered tasks are checked tier by tier, each against its own pool.
fn first_misfit(
    settings: &Settings,
    queue: &str,
    team: &str,
    (cpu_milli, memory_mib): (u32, u64),
    tiers: &[Tier],
) -> Option<(String, String)> {
    if tiers.is_empty() {
        let need = Tier {
            cpu_milli,
            memory_mib,
            gpu: 0,
        };
        let why = misfit(&WorkerPool::new(queue, team, None), need, settings)?;
        let field = if why.contains("vCPU (") {
            "cpu"
        } else {
            "memory_mib"
        };
        return Some((field.to_string(), why));
    }
    tiers.iter().enumerate().find_map(|(i, t)| {
        let why = misfit(&WorkerPool::new(queue, team, Some(*t)), *t, settings)?;
        Some((format!("tiers[{i}]"), why))
    })
}

impl Service {
    /// The autoscaler's settings, for sizing pools' workers; `None` (and nothing is
    /// refused) if they cannot be read, since the reconciler still fails what no
    /// worker takes.
    async fn sizing_settings(&self) -> Option<Settings> {
        match settings_in_force(&self.store).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "the autoscaler's settings could not be read; tasks are not checked against pool sizes");
                None
            }
        }
    }

    /// Refuse the first of `tasks` (listed under `field`, e.g. `tasks`) that no worker
    /// of its pool can hold.
    pub(super) async fn check_tasks_fit(
        &self,
        queue: &str,
        team: &str,
        field: &str,
        tasks: &[TaskSpec],
    ) -> Result<(), ApiError> {
        let Some(settings) = self.sizing_settings().await else {
            return Ok(());
        };
        for (i, t) in tasks.iter().enumerate() {
            let resources = (t.cpu_milli(), t.memory_mib());
            if let Some((f, why)) = first_misfit(&settings, queue, team, resources, &t.tiers) {
                return Err(ApiError::bad_request(
                    format!("field `{field}[{i}].{f}` (task {}): it {why}", t.id),
                    json!({"field": format!("{field}[{i}].{f}"), "task_id": t.id}),
                ));
            }
        }
        Ok(())
    }

    /// Refuse an array (or single) job whose children no worker of their pool can hold.
    pub(crate) async fn check_template_fit(
        &self,
        queue: &str,
        team: &str,
        template: &crate::domain::batch::JobTemplate,
    ) -> Result<(), ApiError> {
        let Some(settings) = self.sizing_settings().await else {
            return Ok(());
        };
        let resources = (template.cpu_milli, template.memory_mib);
        match first_misfit(&settings, queue, team, resources, &template.tiers) {
            Some((f, why)) => Err(ApiError::bad_request(
                format!("field `{f}`: the job {why}"),
                json!({"field": f}),
            )),
            None => Ok(()),
        }
    }
}
