//! Single and array jobs as the native API takes them (a spec without `tasks:`), and
//! their validation.

use super::*;

/// One command run once or as an array (AWS Batch's single and array jobs), as the
/// native API takes it: a spec without `tasks:`. The command and resources come from
/// `job_definition` when it names one, with the fields given here winning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayJobSpec {
    pub name: String,
    #[serde(default = "default_team")]
    pub team: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Children, 2 to 1,000,000; absent for a single job.
    #[serde(default)]
    pub array_size: Option<u32>,
    /// Children run one after another, in index order (AWS's SEQUENTIAL).
    #[serde(default)]
    pub sequential: bool,
    /// A registered job definition, `name` (latest active revision) or `name:revision`.
    #[serde(default)]
    pub job_definition: Option<String>,
    /// Values for `Ref::name` in the command.
    #[serde(default, deserialize_with = "scalar_values_as_strings")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "scalars_as_strings")]
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "scalar_values_as_strings")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Worker configs from small to large (see [`TaskSpec::tiers`]); the job
    /// definition's `batchplane:tiers` tag when not given.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(default)]
    pub depends_on: Vec<JobDependencySpec>,
    #[serde(default)]
    pub scheduling_priority: i32,
    #[serde(default, deserialize_with = "scalar_values_as_strings")]
    pub tags: BTreeMap<String, String>,
    /// The container image the job's tasks run in (the job definition's when not
    /// given); absent, the deployment's worker image.
    #[serde(default)]
    pub image: Option<String>,
    /// The IAM role the tasks act as (the job definition's `jobRoleArn` when not given).
    #[serde(default)]
    pub job_role_arn: Option<String>,
}

/// `{job: <job id>}` (the whole job), `{job: <job id>:<index>}` (one child), or
/// `{job: <array job id>, type: N_TO_N}` (child i waits for child i).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDependencySpec {
    pub job: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// Parse and check a single or array job spec; nothing is stored before this passes.
pub fn parse_array_job_spec(text: &str) -> Result<ArrayJobSpec, SpecError> {
    use crate::batch::{DependencyKind, JobDependency, MAX_ARRAY_SIZE, MAX_JOB_DEPENDENCIES};
    let spec: ArrayJobSpec = parse_document(text)?;
    check_job_header(&spec.name, &spec.team, &spec.queue)?;
    if let Some(n) = spec.array_size {
        if !(2..=MAX_ARRAY_SIZE).contains(&n) {
            return Err(invalid(
                "array_size",
                format!("field `array_size`: {n} must be 2 to {MAX_ARRAY_SIZE}"),
            ));
        }
    }
    if spec.sequential && spec.array_size.is_none() {
        return Err(invalid(
            "sequential",
            "field `sequential`: only an array job (with `array_size`) has children to order"
                .into(),
        ));
    }
    if let Some(problem) = crate::environment::check_names(spec.env.keys()) {
        return Err(invalid("env", format!("field `env`: {problem}")));
    }
    check_container(
        spec.image.as_deref(),
        spec.job_role_arn.as_deref(),
        spec.job_definition.is_some(),
    )
    .map_err(|(field, problem)| invalid(field, problem))?;
    if spec.job_definition.is_none() && spec.command.is_empty() {
        return Err(invalid(
            "command",
            "field `command`: required (an argv) unless `job_definition` gives one".into(),
        ));
    }
    if let Some(cpu) = spec.cpu {
        if !(cpu > 0.0 && cpu <= 1024.0) {
            return Err(invalid(
                "cpu",
                format!("field `cpu`: {cpu} must be in (0, 1024]"),
            ));
        }
    }
    if spec.memory_mib == Some(0) {
        return Err(invalid(
            "memory_mib",
            "field `memory_mib`: must be at least 1".into(),
        ));
    }
    if !spec.tiers.is_empty() && (spec.cpu.is_some() || spec.memory_mib.is_some()) {
        return Err(invalid(
            "tiers",
            "field `tiers`: give either `tiers` or `cpu`/`memory_mib`: with tiers, each tier says both".into(),
        ));
    }
    validate_tiers(&spec.tiers).map_err(|e| invalid(&e.field, format!("field {e}")))?;
    if let Some(r) = &spec.retry_strategy {
        r.validate()
            .map_err(|e| invalid(&e.field, format!("field {e}")))?;
    }
    if spec.depends_on.len() > MAX_JOB_DEPENDENCIES {
        return Err(invalid(
            "depends_on",
            format!(
                "field `depends_on`: {} dependencies; at most {MAX_JOB_DEPENDENCIES}",
                spec.depends_on.len()
            ),
        ));
    }
    for (i, d) in spec.depends_on.iter().enumerate() {
        let dep = JobDependency::parse(&d.job, d.kind.as_deref()).map_err(|e| {
            invalid(
                &format!("depends_on[{i}]"),
                format!("field `depends_on[{i}]`: {e}"),
            )
        })?;
        if dep.kind == DependencyKind::Sequential {
            return Err(invalid(
                &format!("depends_on[{i}]"),
                format!(
                    "field `depends_on[{i}]`: SEQUENTIAL is `sequential: true`, not a dependency"
                ),
            ));
        }
    }
    // What the job item keeps of it: its template and what it was submitted with.
    let stored = json!({
        "name": spec.name, "command": spec.command, "env": spec.env,
        "parameters": spec.parameters, "tags": spec.tags,
        "retry_strategy": spec.retry_strategy, "tiers": spec.tiers,
        "job_definition": spec.job_definition,
    });
    crate::limits::check_document_size("", &stored, crate::limits::MAX_DOCUMENT_BYTES)
        .map_err(|e| invalid(&e.field, format!("field `{}`: {}", e.field, e.problem)))?;
    Ok(spec)
}
