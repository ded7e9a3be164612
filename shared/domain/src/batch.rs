//! Array jobs and job dependencies: AWS Batch's job model, as rules.
//!
//! An *array job* runs one container template `size` times; child `i` is task `i` of the
//! job. Its children are not written at submission: a child's item is created by the
//! claim that starts it, so a child costs two writes (claim, finish) plus its share of a
//! count batch. A job that is not an array is an array of one without the index
//! variable.
//!
//! Dependencies between jobs are rules stored on the jobs, never expanded into per-child
//! edges:
//! - `Job`: on a whole job (it must succeed), or with `index` on one child of an array;
//! - `NToN`: child `i` waits for child `i` of an array of the same size;
//! - `Sequential`: child `i` waits for child `i - 1` of its own array.

use super::retry::RetryStrategy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// AWS Batch's limit is 10,000; ours is a million.
pub const MAX_ARRAY_SIZE: u32 = 1_000_000;
/// A job's dependencies, in all. AWS Batch allows 20.
pub const MAX_JOB_DEPENDENCIES: usize = 10_000;

/// What every child of a job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTemplate {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The first tier's, when there are tiers.
    pub cpu_milli: u32,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<super::tiers::Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub retry: RetryStrategy,
    /// The job definition's `logConfiguration` (awslogs), if it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<super::logs::LogConfig>,
    /// The image and job role the children run in (`None`: the deployment's worker
    /// image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<super::containers::Container>,
}

impl JobTemplate {
    /// The pool a child of team `team` runs in on tier `tier` (the first without tiers).
    pub fn pool(&self, queue: &str, team: &str, tier: u32) -> super::tiers::WorkerPool {
        super::tiers::WorkerPool::for_task(queue, team, &self.tiers, tier)
            .in_container(self.container.as_ref().map(|c| c.key()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DependencyKind {
    Job,
    NToN,
    Sequential,
}

impl DependencyKind {
    pub fn aws_type(self) -> Option<&'static str> {
        match self {
            DependencyKind::Job => None,
            DependencyKind::NToN => Some("N_TO_N"),
            DependencyKind::Sequential => Some("SEQUENTIAL"),
        }
    }
}

/// One dependency of a job, as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDependency {
    pub job_id: String,
    /// A dependency on one child of an array (`<job>:<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub kind: DependencyKind,
}

impl JobDependency {
    /// Parse AWS's `{jobId, type}`: `jobId` may name an array child (`<job>:<index>`).
    pub fn parse(job_id: &str, kind: Option<&str>) -> Result<JobDependency, String> {
        let kind = match kind {
            None | Some("") => DependencyKind::Job,
            Some("N_TO_N") => DependencyKind::NToN,
            Some("SEQUENTIAL") => DependencyKind::Sequential,
            Some(other) => return Err(format!("type {other:?} is not one of N_TO_N, SEQUENTIAL")),
        };
        let (job, index) = match job_id.rsplit_once(':') {
            Some((job, i)) => (
                job,
                Some(
                    i.parse::<u32>()
                        .map_err(|_| format!("jobId {job_id:?}: {i:?} is not an array index"))?,
                ),
            ),
            None => (job_id, None),
        };
        if index.is_some() && kind != DependencyKind::Job {
            return Err(format!(
                "jobId {job_id:?}: a dependency on one array child cannot be {}",
                kind.aws_type().unwrap_or("")
            ));
        }
        Ok(JobDependency {
            job_id: job.to_string(),
            index,
            kind,
        })
    }

    /// The name it is released under on the job it depends on: `<job>` or `<job>:<i>`.
    pub fn key(&self) -> String {
        match self.index {
            Some(i) => format!("{}:{i}", self.job_id),
            None => self.job_id.clone(),
        }
    }
}

/// How a dependent is registered on the job it waits for (a string in a set, so
/// registering twice changes nothing): `<dependent>` for a whole-job wait,
/// `<dependent>@N` for N_TO_N, `<dependent>@<index>` for a wait on one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependent {
    WholeJob(String),
    NToN(String),
    Child { job_id: String, index: u32 },
}

impl Dependent {
    pub fn encode(&self) -> String {
        match self {
            Dependent::WholeJob(j) => j.clone(),
            Dependent::NToN(j) => format!("{j}@N"),
            Dependent::Child { job_id, index } => format!("{job_id}@{index}"),
        }
    }
    pub fn decode(s: &str) -> Option<Dependent> {
        match s.split_once('@') {
            None => Some(Dependent::WholeJob(s.to_string())),
            Some((j, "N")) => Some(Dependent::NToN(j.to_string())),
            Some((j, i)) => Some(Dependent::Child {
                job_id: j.to_string(),
                index: i.parse().ok()?,
            }),
        }
    }
}

/// The shape-only parts of an array job, kept on its job item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayJob {
    pub template: JobTemplate,
    /// `None` for a single job (one child, no array index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_size: Option<u32>,
    /// Child `i` waits for child `i - 1`.
    #[serde(default)]
    pub sequential: bool,
    /// Jobs whose child `i` gates this job's child `i`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub n_to_n: Vec<String>,
    /// Dependencies that must all be met before any child starts (whole jobs and
    /// single children), by key.
    #[serde(default)]
    pub gate_count: u32,
    /// How many children may be queued at once: this job's share of the workers.
    pub window: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_identifier: Option<String>,
    #[serde(default)]
    pub scheduling_priority: i32,
    /// The compute environment its job queue places it in (`AWS_BATCH_CE_NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_environment: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Where the submission came from (`aws` or `native`), and who signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl ArrayJob {
    pub fn size(&self) -> u32 {
        self.array_size.unwrap_or(1)
    }
    /// Whether children start by a dispatch cursor (no per-child rule holds them).
    pub fn dispatched_by_cursor(&self) -> bool {
        !self.sequential && self.n_to_n.is_empty()
    }
}

/// Fill in what a child's item does not hold: the template's command, environment,
/// timeout, retry strategy and tiers, and the array index variable.
pub fn apply_template(task: &mut super::TaskRecord, a: &ArrayJob) {
    let t = &a.template;
    task.command = t.command.clone();
    task.env = t.env.clone();
    task.timeout_seconds = t.timeout_seconds;
    task.retry = t.retry.clone();
    task.tiers = t.tiers.clone();
    task.log = t.log.clone();
    task.definition = a.job_definition.clone();
    if let Some(size) = a.array_size {
        if let Some(i) = task.index {
            task.env
                .insert("AWS_BATCH_JOB_ARRAY_INDEX".into(), i.to_string());
            task.env
                .insert("AWS_BATCH_JOB_ARRAY_SIZE".into(), size.to_string());
        }
    }
    if let Some(ce) = &a.compute_environment {
        task.env.insert("AWS_BATCH_CE_NAME".into(), ce.clone());
    }
}

/// Task id of child `i`.
pub fn child_task_id(index: u32) -> String {
    index.to_string()
}

/// AWS job id of a child: `<parent>:<index>` for arrays, the parent's own id otherwise.
pub fn child_aws_id(job_id: &str, array: bool, index: u32) -> String {
    if array {
        format!("{job_id}:{index}")
    } else {
        job_id.to_string()
    }
}

/// `Ref::name` in a command becomes the parameter's value, as AWS Batch does: an
/// argument that is exactly `Ref::name` is replaced; an unknown name is left as is.
pub fn substitute_parameters(
    command: &[String],
    parameters: &BTreeMap<String, String>,
) -> Vec<String> {
    command
        .iter()
        .map(|arg| {
            arg.strip_prefix("Ref::")
                .and_then(|name| parameters.get(name))
                .cloned()
                .unwrap_or_else(|| arg.clone())
        })
        .collect()
}

/// A window scaled by a share's weight: AWS Batch gives a lower `weightFactor` a larger
/// share, so the window is `base / weight`, kept within 1..=16 × base.
pub fn weighted_window(base: u32, weight_factor: Option<f64>) -> u32 {
    let w = weight_factor.filter(|w| *w > 0.0).unwrap_or(1.0);
    let scaled = (f64::from(base) / w).round();
    scaled.clamp(1.0, f64::from(base) * 16.0) as u32
}

/// The state of an array job's child that no worker has claimed yet (it has no item):
/// FAILED once the job has ended, RUNNABLE while the job's cursor is releasing children,
/// PENDING while it waits on a dependency or a predecessor.
pub fn unborn_child_state(job: &super::JobRecord) -> super::TaskState {
    use super::{JobState, TaskState};
    if job.state.is_terminal() {
        TaskState::Failed
    } else if job.state == JobState::Runnable
        && job.array.as_ref().is_some_and(|a| a.dispatched_by_cursor())
    {
        TaskState::Runnable
    } else {
        TaskState::Pending
    }
}

/// An array job's children by state, counting those not yet claimed as
/// [`unborn_child_state`] says. Other jobs' counts are returned as they are.
pub fn child_counts(job: &super::JobRecord, counts: &super::TaskCounts) -> super::TaskCounts {
    let mut all = counts.clone();
    if job.array.is_none() {
        return all;
    }
    let materialized: u64 = super::TaskState::ALL.iter().map(|s| counts.get(*s)).sum();
    let unborn = job.total_tasks.saturating_sub(materialized);
    all.add(unborn_child_state(job), unborn as i64);
    all
}

/// The reason an array stopped by CancelJob or TerminateJob ends with, once no child of
/// it is running (children that had not started never will); `None` while one runs, or
/// for a job that was not stopped so.
pub fn stopped_array_ends<'a>(
    job: &'a super::records::JobRecord,
    counts: &super::state::TaskCounts,
) -> Option<&'a str> {
    let parent = job.array.as_ref().is_some_and(|a| a.array_size.is_some());
    (parent && job.cancel_requested && job.stopped_by.is_some() && !counts.any_running())
        .then(|| job.stop_reason.as_deref().unwrap_or("stopped by request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_parse_like_aws() {
        let d = JobDependency::parse("abc", None).unwrap();
        assert_eq!(d.kind, DependencyKind::Job);
        let d = JobDependency::parse("abc:7", None).unwrap();
        assert_eq!((d.job_id.as_str(), d.index), ("abc", Some(7)));
        assert_eq!(d.key(), "abc:7");
        assert_eq!(
            JobDependency::parse("abc", Some("N_TO_N")).unwrap().kind,
            DependencyKind::NToN
        );
        assert!(JobDependency::parse("abc", Some("ALL"))
            .unwrap_err()
            .contains("ALL"));
        assert!(JobDependency::parse("abc:x", None).is_err());
        assert!(JobDependency::parse("abc:1", Some("N_TO_N")).is_err());
    }

    #[test]
    fn dependents_round_trip() {
        for d in [
            Dependent::WholeJob("j1".into()),
            Dependent::NToN("j2".into()),
            Dependent::Child {
                job_id: "j3".into(),
                index: 42,
            },
        ] {
            assert_eq!(Dependent::decode(&d.encode()), Some(d));
        }
        assert_eq!(Dependent::decode("j@x"), None);
    }

    #[test]
    fn parameters_substitute_whole_arguments() {
        let params = BTreeMap::from([("in".to_string(), "s3://b/k".to_string())]);
        let cmd: Vec<String> = ["cat", "Ref::in", "Ref::missing", "xRef::in"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            substitute_parameters(&cmd, &params),
            ["cat", "s3://b/k", "Ref::missing", "xRef::in"]
        );
    }

    #[test]
    fn weights_scale_windows_inversely() {
        assert_eq!(weighted_window(100, None), 100);
        assert_eq!(weighted_window(100, Some(0.5)), 200);
        assert_eq!(weighted_window(100, Some(4.0)), 25);
        assert_eq!(weighted_window(100, Some(0.0001)), 1600);
        assert_eq!(weighted_window(100, Some(1000.0)), 1);
    }

    #[test]
    fn a_stopped_array_ends_when_no_child_runs() {
        use crate::records::{JobRecord, Stop};
        use crate::state::{TaskCounts, TaskState};
        let array: ArrayJob = serde_json::from_value(serde_json::json!({
            "template": {"command": ["true"], "cpu_milli": 1000, "memory_mib": 64},
            "array_size": 4,
            "window": 1,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut job = JobRecord {
            array: Some(array),
            ..JobRecord::new("j", "n", "t", "q")
        };
        let mut running = TaskCounts::default();
        running.add(TaskState::Running, 1);
        let idle = TaskCounts::default();
        assert_eq!(stopped_array_ends(&job, &idle), None, "not stopped");
        job.cancel_requested = true;
        job.stopped_by = Some(Stop::Cancel);
        job.stop_reason = Some("not needed".into());
        assert_eq!(
            stopped_array_ends(&job, &running),
            None,
            "a child still runs"
        );
        assert_eq!(stopped_array_ends(&job, &idle), Some("not needed"));
        if let Some(a) = job.array.as_mut() {
            a.array_size = None;
        }
        assert_eq!(
            stopped_array_ends(&job, &idle),
            None,
            "a single job closes at once"
        );
    }

    #[test]
    fn cursor_dispatch_only_without_child_rules() {
        let t = JobTemplate {
            command: vec!["true".into()],
            env: Default::default(),
            cpu_milli: 1000,
            memory_mib: 512,
            tiers: Vec::new(),
            timeout_seconds: None,
            retry: Default::default(),
            log: None,
            container: None,
        };
        let mut a = ArrayJob {
            template: t,
            array_size: Some(10),
            sequential: false,
            n_to_n: vec![],
            gate_count: 0,
            window: 100,
            job_definition: None,
            share_identifier: None,
            scheduling_priority: 0,
            compute_environment: None,
            parameters: Default::default(),
            tags: Default::default(),
            caller: None,
        };
        assert!(a.dispatched_by_cursor());
        a.sequential = true;
        assert!(!a.dispatched_by_cursor());
        assert_eq!(a.size(), 10);
    }
}
