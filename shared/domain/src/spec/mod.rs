//! Job specs as users write them (YAML or JSON, same fields), and their validation.
//! A spec that fails here writes nothing: every check runs before the first store call.

use super::ids::is_valid_task_id;
use super::retry::RetryStrategy;
use super::tiers::{validate_tiers, Tier};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

mod array;
pub use array::{parse_array_job_spec, ArrayJobSpec, JobDependencySpec};

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default = "default_team")]
    pub team: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The retry strategy of every task that does not give its own.
    #[serde(default)]
    pub retry_strategy: Option<RetryStrategy>,
    /// Publish every task state change as an event, not only the job's.
    #[serde(default)]
    pub task_events: bool,
    /// A Step Functions task token: the job reports back to the waiting execution.
    #[serde(default)]
    pub task_token: Option<String>,
    /// The container image of every task that does not name its own.
    #[serde(default)]
    pub image: Option<String>,
    /// The IAM role the tasks' processes act as (AWS Batch's `jobRoleArn`), for every
    /// task that does not name its own; needs an image.
    #[serde(default)]
    pub job_role_arn: Option<String>,
    /// Open the job for pages instead of submitting it whole: its tasks (none or
    /// some) are stored, more come in pages (`PUT /v1/jobs/{id}/pages/{page}`), and
    /// nothing runs before `POST /v1/jobs/{id}/commit`.
    #[serde(default)]
    pub open: bool,
    /// How many tasks an open job will have in all: its tasks are spread over as many
    /// key shards as a job of that size submitted whole (default: the tasks given now).
    #[serde(default)]
    pub expected_tasks: Option<u64>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

/// The longest task token Step Functions hands out.
pub const MAX_TASK_TOKEN: usize = 1024;

/// One task: an argv run as a unix process (no shell unless the argv asks for one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    #[serde(deserialize_with = "scalars_as_strings")]
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "scalar_values_as_strings")]
    pub env: BTreeMap<String, String>,
    /// vCPUs; fractions allowed (default 1).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Default 512.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Worker configs from small to large, instead of `cpu` and `memory_mib`: the task
    /// starts on the first and moves up one on running out of memory.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Attempts and `evaluate_on_exit` rules (AWS Batch's retryStrategy).
    #[serde(default)]
    pub retry_strategy: Option<RetryStrategy>,
    /// The container image the task runs in (its pool's workers run in it); absent,
    /// the deployment's worker image.
    #[serde(default)]
    pub image: Option<String>,
    /// The IAM role the task's processes act as; needs an image.
    #[serde(default)]
    pub job_role_arn: Option<String>,
}

impl TaskSpec {
    /// The container the task runs in (checked by validation).
    pub fn container(&self) -> Option<crate::containers::Container> {
        self.image
            .as_ref()
            .map(|image| crate::containers::Container {
                image: image.clone(),
                job_role_arn: self.job_role_arn.clone(),
            })
    }
}

/// What `POST /v1/jobs` accepts: a DAG of tasks, or one command run once or as an array.
#[derive(Debug, Clone, PartialEq)]
// Made once per request and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Submission {
    Dag(JobSpec),
    Array(Box<ArrayJobSpec>),
}

/// Parse a submission: a document with `tasks:` is a DAG job ([`parse_job_spec`]), any
/// other a single or array job ([`parse_array_job_spec`]).
pub fn parse_submission(text: &str) -> Result<Submission, SpecError> {
    #[derive(Deserialize)]
    struct Probe {
        tasks: Option<serde::de::IgnoredAny>,
    }
    // An unparseable document falls through to the DAG parser, whose errors name lines.
    match parse_document::<Probe>(text) {
        Ok(Probe { tasks: None }) => Ok(Submission::Array(Box::new(parse_array_job_spec(text)?))),
        _ => Ok(Submission::Dag(parse_job_spec(text)?)),
    }
}

/// The fields every job spec has: a name of 1 to 256 characters, a team and a queue of
/// 1 to 64 of `[A-Za-z0-9_.-]`.
fn check_job_header(name: &str, team: &str, queue: &str) -> Result<(), SpecError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(invalid(
            "name",
            "field `name`: must be 1 to 256 characters".into(),
        ));
    }
    if !team.is_empty() {
        crate::ids::check_team("team", team)
            .map_err(|e| invalid("team", format!("field `team`: {}", e.problem)))?;
    }
    for (field, value) in [("queue", queue)] {
        if !is_valid_task_id(value) || value.len() > 64 {
            return Err(invalid(
                field,
                format!("field `{field}`: {value:?} must be 1 to 64 of [A-Za-z0-9_.-]"),
            ));
        }
    }
    Ok(())
}

/// A spec's `image` and `job_role_arn`: a role needs an image to run in (or a job
/// definition that may give one). The error is the field and its message.
fn check_container(
    image: Option<&str>,
    role: Option<&str>,
    definition_may_give_image: bool,
) -> Result<(), (&'static str, String)> {
    if let Some(i) = image {
        crate::containers::check_image(i)
            .map_err(|e| ("image", format!("field `image`: {i:?} {e}")))?;
    }
    if let Some(r) = role {
        crate::containers::check_role_arn(r)
            .map_err(|e| ("job_role_arn", format!("field `job_role_arn`: {r:?} {e}")))?;
        if image.is_none() && !definition_may_give_image {
            return Err((
                "job_role_arn",
                "field `job_role_arn`: a job role needs an `image` to run in".into(),
            ));
        }
    }
    Ok(())
}

fn invalid(field: &str, message: String) -> SpecError {
    SpecError::new("InvalidField", message, json!({"field": field}))
}

/// Tasks added to a running job under `tasks:` (a bare list is accepted too).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskList {
    tasks: Vec<TaskSpec>,
}

/// YAML reads `true` or `8080` as a bool or a number; in an argv or an environment
/// they mean the text the user wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl From<Scalar> for String {
    fn from(s: Scalar) -> String {
        match s {
            Scalar::Text(t) => t,
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v: Vec<Scalar> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(String::from).collect())
}

fn scalar_values_as_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v: BTreeMap<String, Scalar> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|(k, v)| (k, String::from(v))).collect())
}

/// No team named: the API puts the job in the caller's team (see
/// [`crate::access::Access::submission_team`]).
fn default_team() -> String {
    String::new()
}
fn default_queue() -> String {
    "default".into()
}
/// A task's CPU and memory when its spec gives neither.
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_MEMORY_MIB: u64 = 512;

impl TaskSpec {
    /// CPU in thousandths of a vCPU (the unit workers count capacity in): the first
    /// tier's, or `cpu`.
    pub fn cpu_milli(&self) -> u32 {
        match self.tiers.first() {
            Some(t) => t.cpu_milli,
            None => (self.cpu.unwrap_or(DEFAULT_CPU) * 1000.0).round() as u32,
        }
    }

    /// Memory the task starts with: the first tier's, or `memory_mib`.
    pub fn memory_mib(&self) -> u64 {
        match self.tiers.first() {
            Some(t) => t.memory_mib,
            None => self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        }
    }
}

/// Why a spec was rejected. `code` is stable for programs; `message` names the task and
/// field for people; `details` carries the same as data (task, field, line, column, cycle).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl SpecError {
    fn new(code: &'static str, message: impl Into<String>, details: Value) -> Self {
        SpecError {
            code,
            message: message.into(),
            details,
        }
    }
}

/// The most tasks one request may carry; bigger jobs grow with `POST /v1/jobs/{id}/tasks`
/// (and, later, array jobs, which are rules rather than lists).
pub const MAX_TASKS_PER_REQUEST: usize = 1_000_000;

/// The most tasks a job opened for pages may declare it will have.
pub const MAX_TASKS_PER_JOB: u64 = 10_000_000;

/// The most bytes of argv and environment one task may carry: a task item must stay
/// well inside DynamoDB's 400 KB, with room for its attempts and edges.
pub const MAX_TASK_BYTES: usize = 64 * 1024;

/// Parse a job spec from YAML or JSON text and validate it completely.
pub fn parse_job_spec(text: &str) -> Result<JobSpec, SpecError> {
    let mut spec: JobSpec = parse_document(text)?;
    if let Some(default) = &spec.retry_strategy {
        default.validate().map_err(|e| {
            SpecError::new(
                "InvalidField",
                format!("field {e}"),
                json!({"field": e.field}),
            )
        })?;
        for t in &mut spec.tasks {
            if t.retry_strategy.is_none() {
                t.retry_strategy = Some(default.clone());
            }
        }
    }
    check_container(spec.image.as_deref(), spec.job_role_arn.as_deref(), true)
        .map_err(|(field, problem)| invalid(field, problem))?;
    for t in &mut spec.tasks {
        if t.image.is_none() {
            t.image = spec.image.clone();
        }
        if t.job_role_arn.is_none() {
            t.job_role_arn = spec.job_role_arn.clone();
        }
    }
    check_job_header(&spec.name, &spec.team, &spec.queue)?;
    if let Some(t) = &spec.task_token {
        if t.is_empty() || t.len() > MAX_TASK_TOKEN {
            return Err(invalid(
                "task_token",
                format!(
                    "field `task_token`: {} characters; a task token has 1 to {MAX_TASK_TOKEN}",
                    t.len()
                ),
            ));
        }
    }
    match spec.expected_tasks {
        Some(_) if !spec.open => {
            return Err(invalid(
                "expected_tasks",
                "field `expected_tasks`: only an open job (`open: true`) takes it".into(),
            ))
        }
        Some(n) if n == 0 || n > MAX_TASKS_PER_JOB => {
            return Err(invalid(
                "expected_tasks",
                format!("field `expected_tasks`: {n} must be 1 to {MAX_TASKS_PER_JOB}"),
            ))
        }
        _ => {}
    }
    // An open job may start empty: its tasks come in pages.
    if !(spec.open && spec.tasks.is_empty()) {
        validate_tasks(&spec.tasks, &HashSet::new())?;
    }
    Ok(spec)
}

/// Parse tasks to add to an existing job (a list, or a document with `tasks:`). Validate
/// them with [`validate_addition`] once the job's existing ids are known.
pub fn parse_task_list(text: &str) -> Result<Vec<TaskSpec>, SpecError> {
    let first = text
        .lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with('-') || first.starts_with('[') {
        parse_document::<Vec<TaskSpec>>(text)
    } else {
        Ok(parse_document::<TaskList>(text)?.tasks)
    }
}

/// Validate tasks added to a job. `existing` holds those of the ids the new tasks use
/// (their own ids and their dependencies) that the job already has: new tasks may depend
/// on them but may not reuse them.
pub fn validate_addition(tasks: &[TaskSpec], existing: &HashSet<String>) -> Result<(), SpecError> {
    validate_tasks(tasks, existing)
}

fn parse_document<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(SpecError::new(
            "ParseError",
            "the spec is empty",
            json!({"line": 1, "column": 1}),
        ));
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| {
            SpecError::new(
                "ParseError",
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
                json!({"line": e.line(), "column": e.column(), "format": "json"}),
            )
        })
    } else {
        crate::limits::yaml_from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = if line > 0 && !e.to_string().contains(" at line ") {
                format!("invalid YAML at line {line} column {column}: {e}")
            } else {
                format!("invalid YAML: {e}")
            };
            SpecError::new(
                "ParseError",
                message,
                json!({"line": line, "column": column, "format": "yaml"}),
            )
        })
    }
}

fn task_error(code: &'static str, task: &str, field: &str, what: String) -> SpecError {
    SpecError::new(
        code,
        format!("task {task:?}, field `{field}`: {what}"),
        json!({"task": task, "field": field}),
    )
}

fn validate_tasks(tasks: &[TaskSpec], existing: &HashSet<String>) -> Result<(), SpecError> {
    if tasks.is_empty() {
        return Err(SpecError::new(
            "InvalidField",
            "field `tasks`: a job needs at least one task",
            json!({"field": "tasks"}),
        ));
    }
    if tasks.len() > MAX_TASKS_PER_REQUEST {
        return Err(SpecError::new(
            "TooManyTasks",
            format!(
                "field `tasks`: {} tasks in one request; at most {MAX_TASKS_PER_REQUEST}",
                tasks.len()
            ),
            json!({"field": "tasks", "limit": MAX_TASKS_PER_REQUEST}),
        ));
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if !is_valid_task_id(&t.id) {
            return Err(SpecError::new(
                "InvalidTaskId",
                format!(
                    "tasks[{i}], field `id`: {:?} must be 1 to 128 of [A-Za-z0-9_.-]",
                    t.id
                ),
                json!({"task": t.id, "index": i, "field": "id"}),
            ));
        }
        if index.insert(&t.id, i).is_some() || existing.contains(&t.id) {
            return Err(SpecError::new(
                "DuplicateTaskId",
                format!("tasks[{i}], field `id`: task id {:?} is used twice", t.id),
                json!({"task": t.id, "index": i, "field": "id"}),
            ));
        }
        validate_task_fields(t)?;
        let mut seen = HashSet::new();
        for dep in &t.depends_on {
            if !seen.insert(dep) {
                return Err(task_error(
                    "DuplicateDependency",
                    &t.id,
                    "depends_on",
                    format!("{dep:?} is listed twice"),
                ));
            }
        }
    }
    validate_dependencies(tasks, &index, existing)?;
    if let Some(cycle) = find_cycle(tasks, &index) {
        let path = cycle.join(" -> ");
        return Err(SpecError::new(
            "DependencyCycle",
            format!(
                "task {:?}, field `depends_on`: dependency cycle {path}",
                cycle[0]
            ),
            json!({"task": cycle[0], "field": "depends_on", "cycle": cycle}),
        ));
    }
    Ok(())
}

/// One task's own fields: its command, resources or tiers, timeout, retry strategy,
/// size and environment.
fn validate_task_fields(t: &TaskSpec) -> Result<(), SpecError> {
    if t.command.is_empty() || t.command[0].is_empty() {
        return Err(task_error(
            "EmptyCommand",
            &t.id,
            "command",
            "the command is empty; give an argv such as [sh, -c, \"echo hi\"]".into(),
        ));
    }
    if let Some(cpu) = t.cpu {
        if !(cpu.is_finite() && cpu > 0.0 && cpu <= 1024.0) {
            return Err(task_error(
                "InvalidField",
                &t.id,
                "cpu",
                format!("{cpu} must be more than 0 and at most 1024 vCPUs"),
            ));
        }
    }
    if let Some(mem) = t.memory_mib {
        if mem == 0 || mem > 4 * 1024 * 1024 {
            return Err(task_error(
                "InvalidField",
                &t.id,
                "memory_mib",
                format!("{mem} must be 1 to 4194304"),
            ));
        }
    }
    if !t.tiers.is_empty() && (t.cpu.is_some() || t.memory_mib.is_some()) {
        return Err(task_error(
            "InvalidField",
            &t.id,
            "tiers",
            "give either `tiers` or `cpu`/`memory_mib`: with tiers, each tier says both".into(),
        ));
    }
    validate_tiers(&t.tiers).map_err(|e| task_error("InvalidField", &t.id, &e.field, e.problem))?;
    if t.timeout_seconds == Some(0) {
        return Err(task_error(
            "InvalidField",
            &t.id,
            "timeout_seconds",
            "must be at least 1".into(),
        ));
    }
    if let Some(r) = &t.retry_strategy {
        r.validate()
            .map_err(|e| task_error("InvalidField", &t.id, &e.field, e.problem))?;
    }
    let size: usize = t.command.iter().map(String::len).sum::<usize>()
        + t.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_TASK_BYTES {
        return Err(task_error(
            "InvalidField",
            &t.id,
            "command",
            format!(
                "command and env together are {size} bytes; at most {MAX_TASK_BYTES} (pass large inputs as files)"
            ),
        ));
    }
    // The whole task, as its item stores it (its dependencies go through barriers, so
    // they are bounded apart).
    if let Ok(mut whole) = serde_json::to_value(t) {
        if let Some(m) = whole.as_object_mut() {
            m.remove("depends_on");
        }
        crate::limits::check_document_size("", &whole, 2 * MAX_TASK_BYTES)
            .map_err(|e| task_error("InvalidField", &t.id, &e.field, e.problem))?;
    }
    if let Some(problem) = crate::environment::check_names(t.env.keys()) {
        return Err(task_error("InvalidField", &t.id, "env", problem));
    }
    check_container(t.image.as_deref(), t.job_role_arn.as_deref(), false).map_err(
        |(field, problem)| {
            let problem = problem
                .trim_start_matches(&format!("field `{field}`: "))
                .to_string();
            task_error("InvalidField", &t.id, field, problem)
        },
    )?;
    Ok(())
}

/// Every dependency names a task of the job (new or stored), and none its own task.
fn validate_dependencies(
    tasks: &[TaskSpec],
    index: &HashMap<&str, usize>,
    existing: &HashSet<String>,
) -> Result<(), SpecError> {
    for t in tasks {
        for dep in &t.depends_on {
            if dep == &t.id {
                return Err(SpecError::new(
                    "DependencyCycle",
                    format!(
                        "task {:?}, field `depends_on`: depends on itself (cycle: {} -> {})",
                        t.id, t.id, t.id
                    ),
                    json!({"task": t.id, "field": "depends_on", "cycle": [t.id, t.id]}),
                ));
            }
            if !index.contains_key(dep.as_str()) && !existing.contains(dep) {
                return Err(task_error(
                    "UnknownDependency",
                    &t.id,
                    "depends_on",
                    format!("depends on {dep:?}, which is not a task of this job"),
                ));
            }
        }
    }
    Ok(())
}

/// A cycle among the new tasks as a path `a -> b -> ... -> a` (each depends on the next),
/// found with an iterative depth-first search so a million-task chain cannot overflow
/// the stack. Existing tasks cannot be on a cycle: they never depend on new ones.
fn find_cycle(tasks: &[TaskSpec], index: &HashMap<&str, usize>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; tasks.len()];
    // (task, next dependency to look at)
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for start in 0..tasks.len() {
        if mark[start] != Mark::New {
            continue;
        }
        stack.push((start, 0));
        mark[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &tasks[node].depends_on;
            if *next < deps.len() {
                let dep = &deps[*next];
                *next += 1;
                let Some(&d) = index.get(dep.as_str()) else {
                    continue; // an existing task
                };
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::OnPath;
                        stack.push((d, 0));
                    }
                    Mark::OnPath => {
                        let from = stack.iter().position(|(n, _)| *n == d).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| tasks[*n].id.clone())
                            .collect();
                        cycle.push(tasks[d].id.clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIAMOND: &str = r#"
name: diamond
team: research
tasks:
  - id: a
    command: [sh, -c, "echo a"]
  - id: b
    command: [echo, b]
    depends_on: [a]
  - id: c
    command: [echo, c]
    depends_on: [a]
    env: {K: v}
    cpu: 0.5
    memory_mib: 64
    timeout_seconds: 30
  - id: d
    command: [echo, d]
    depends_on: [b, c]
"#;

    #[test]
    fn parses_yaml_with_defaults() {
        let spec = parse_job_spec(DIAMOND).unwrap();
        assert_eq!(spec.name, "diamond");
        assert_eq!(spec.team, "research");
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.tasks.len(), 4);
        assert_eq!(spec.tasks[0].cpu_milli(), 1000);
        assert_eq!(spec.tasks[0].memory_mib(), 512);
        assert_eq!(spec.tasks[2].cpu_milli(), 500);
        assert_eq!(spec.tasks[2].env["K"], "v");
        assert_eq!(spec.tasks[3].depends_on, vec!["b", "c"]);
    }

    #[test]
    fn json_and_yaml_mean_the_same() {
        let yaml = parse_job_spec(DIAMOND).unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        assert_eq!(parse_job_spec(&json).unwrap(), yaml);
    }

    fn err(text: &str) -> SpecError {
        parse_job_spec(text).unwrap_err()
    }

    #[test]
    fn unknown_dependency_names_task_and_field() {
        let e = err("name: x\ntasks:\n - {id: a, command: [true], depends_on: [zz]}\n");
        assert_eq!(e.code, "UnknownDependency");
        assert!(
            e.message.contains("\"a\"")
                && e.message.contains("depends_on")
                && e.message.contains("zz"),
            "{}",
            e.message
        );
        assert_eq!(e.details["task"], "a");
    }

    #[test]
    fn duplicate_id() {
        let e = err("name: x\ntasks:\n - {id: a, command: [true]}\n - {id: a, command: [true]}\n");
        assert_eq!(e.code, "DuplicateTaskId");
        assert_eq!(e.details["index"], 1);
    }

    #[test]
    fn bad_id() {
        let e = err("name: x\ntasks:\n - {id: 'a b', command: [true]}\n");
        assert_eq!(e.code, "InvalidTaskId");
        assert!(e.message.contains("tasks[0]"));
    }

    #[test]
    fn empty_command() {
        let e = err("name: x\ntasks:\n - {id: a, command: []}\n");
        assert_eq!(e.code, "EmptyCommand");
        assert_eq!(e.details["field"], "command");
    }

    #[test]
    fn cycle_gives_its_path() {
        let e = err(
            "name: x\ntasks:\n - {id: a, command: [true], depends_on: [c]}\n - {id: b, command: [true], depends_on: [a]}\n - {id: c, command: [true], depends_on: [b]}\n - {id: d, command: [true]}\n",
        );
        assert_eq!(e.code, "DependencyCycle");
        let cycle: Vec<String> = serde_json::from_value(e.details["cycle"].clone()).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        assert!(e.message.contains(" -> "));
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let e = err("name: x\ntasks:\n - {id: a, command: [true], depends_on: [a]}\n");
        assert_eq!(e.code, "DependencyCycle");
    }

    #[test]
    fn long_chain_has_no_cycle_and_no_stack_overflow() {
        let tasks: Vec<TaskSpec> = (0..200_000)
            .map(|i| TaskSpec {
                id: format!("t{i}"),
                command: vec!["true".into()],
                env: Default::default(),
                cpu: Some(1.0),
                memory_mib: Some(1),
                tiers: Vec::new(),
                timeout_seconds: None,
                depends_on: if i > 0 {
                    vec![format!("t{}", i - 1)]
                } else {
                    vec![]
                },
                retry_strategy: None,
                image: None,
                job_role_arn: None,
            })
            .collect();
        validate_tasks(&tasks, &HashSet::new()).unwrap();
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() {
        let e = err("name: x\ntasks:\n  - id: a\n    command: [true\n");
        assert_eq!(e.code, "ParseError");
        assert!(e.details["line"].as_u64().unwrap() >= 4, "{:?}", e.details);
        assert!(e.message.contains("line"), "{}", e.message);
    }

    #[test]
    fn json_syntax_error_has_line_and_column() {
        let e = err("{\"name\": \"x\",\n \"tasks\": [}\n");
        assert_eq!(e.code, "ParseError");
        assert_eq!(e.details["line"], 2);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = err("name: x\ntasks:\n - {id: a, command: [true], dependson: [b]}\n");
        assert_eq!(e.code, "ParseError");
        assert!(e.message.contains("dependson"), "{}", e.message);
    }

    #[test]
    fn oversized_task_is_rejected_before_it_reaches_the_store() {
        let big = "x".repeat(MAX_TASK_BYTES);
        let e = err(&format!(
            "name: x\ntasks:\n - {{id: a, command: [echo, {big}]}}\n"
        ));
        assert_eq!(e.code, "InvalidField");
        assert!(
            e.message.contains("\"a\"") && e.message.contains("bytes"),
            "{}",
            e.message
        );
    }

    #[test]
    fn retry_strategy_defaults_from_the_job_and_is_checked() {
        let spec = parse_job_spec(
            "name: x\nretry_strategy: {attempts: 3}\ntasks:\n - {id: a, command: ['true']}\n - {id: b, command: ['true'], retry_strategy: {attempts: 1}}\n",
        )
        .unwrap();
        assert_eq!(spec.tasks[0].retry_strategy.as_ref().unwrap().attempts, 3);
        assert_eq!(spec.tasks[1].retry_strategy.as_ref().unwrap().attempts, 1);
        let e =
            err("name: x\ntasks:\n - {id: a, command: ['true'], retry_strategy: {attempts: 0}}\n");
        assert_eq!(e.details["field"], "retry_strategy.attempts");
        assert!(
            e.message.contains("\"a\"") && e.message.contains("attempts"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_name() {
        let e = err("tasks:\n - {id: a, command: [true]}\n");
        assert!(e.message.contains("name"), "{}", e.message);
    }

    #[test]
    fn additions_may_depend_on_existing_but_not_reuse_ids() {
        let existing: HashSet<String> = ["a".to_string()].into();
        let added = parse_task_list("- {id: b, command: [true], depends_on: [a]}\n").unwrap();
        validate_addition(&added, &existing).unwrap();
        assert_eq!(added[0].depends_on, vec!["a"]);
        let wrapped = parse_task_list("tasks:\n - {id: b, command: [true]}\n").unwrap();
        assert_eq!(wrapped.len(), 1);
        let reused = parse_task_list("- {id: a, command: [true]}\n").unwrap();
        let e = validate_addition(&reused, &existing).unwrap_err();
        assert_eq!(e.code, "DuplicateTaskId");
        let dangling = parse_task_list("- {id: c, command: [true], depends_on: [zz]}\n").unwrap();
        assert_eq!(
            validate_addition(&dangling, &existing).unwrap_err().code,
            "UnknownDependency"
        );
    }

    #[test]
    fn yaml_scalars_in_argv_and_env_stay_text() {
        let spec = parse_job_spec(
            "name: x\ntasks:\n - {id: a, command: [true], env: {PORT: 8080, ON: yes}}\n",
        )
        .unwrap();
        assert_eq!(spec.tasks[0].command, vec!["true"]);
        assert_eq!(spec.tasks[0].env["PORT"], "8080");
    }

    #[test]
    fn a_spec_without_tasks_is_a_single_or_array_job() {
        let Submission::Array(a) = parse_submission(
            "name: render\narray_size: 1000\ncommand: [render, 7]\nsequential: true\n\
             depends_on: [{job: j-1-a, type: N_TO_N}, {job: 'j-1-b:3'}]\n",
        )
        .unwrap() else {
            panic!("not an array job")
        };
        assert_eq!(a.array_size, Some(1000));
        assert_eq!(a.command, vec!["render", "7"]);
        assert!(a.sequential);
        assert_eq!(a.depends_on[0].kind.as_deref(), Some("N_TO_N"));
        assert_eq!(a.depends_on[1].job, "j-1-b:3");
        assert!(matches!(
            parse_submission(DIAMOND).unwrap(),
            Submission::Dag(_)
        ));
        // Neither shape: the DAG parser's error, which names the missing field.
        let e = parse_submission("name: x\ntasks: 3\n").unwrap_err();
        assert_eq!(e.code, "ParseError", "{}", e.message);
    }

    #[test]
    fn array_job_specs_are_checked_field_by_field() {
        for (text, field) in [
            ("name: ''\ncommand: [true]", "name"),
            ("name: x\nqueue: 'a b'\ncommand: [true]", "queue"),
            (
                "name: x\narray_size: 1000001\ncommand: [true]",
                "array_size",
            ),
            ("name: x\nsequential: true\ncommand: [true]", "sequential"),
            ("name: x", "command"),
            ("name: x\ncommand: [true]\nmemory_mib: 0", "memory_mib"),
            (
                "name: x\ncommand: [true]\nretry_strategy: {attempts: 11}",
                "retry_strategy.attempts",
            ),
            (
                "name: x\ncommand: [true]\ndepends_on: [{job: 'j:x'}]",
                "depends_on[0]",
            ),
            (
                "name: x\ncommand: [true]\ndepends_on: [{job: j, type: SEQUENTIAL}]",
                "depends_on[0]",
            ),
        ] {
            let e = parse_array_job_spec(text).unwrap_err();
            assert_eq!(e.details["field"], field, "{text}: {}", e.message);
        }
        // With a job definition the command may come from it.
        let ok = parse_array_job_spec("name: x\njob_definition: render:2\n").unwrap();
        assert_eq!(ok.job_definition.as_deref(), Some("render:2"));
    }
}
