//! Where a task's output goes in CloudWatch Logs, named as AWS Batch names it: group
//! `/aws/batch/job` (or the job definition's `logConfiguration`), one stream per
//! attempt, `<prefix>/default/<attempt id>` — the prefix being the job definition's
//! name (or its `awslogs-stream-prefix`), `batchplane` for a task of a native DAG. The
//! name depends only on the task and its attempt, so DescribeJobs can show it as soon
//! as the attempt is RUNNING, before anything was shipped.

use serde::{Deserialize, Serialize};

/// AWS Batch's log group.
pub const DEFAULT_LOG_GROUP: &str = "/aws/batch/job";

/// The first part of a stream's name for tasks with no job definition.
pub const NATIVE_STREAM_PREFIX: &str = "batchplane";

/// A job definition's `logConfiguration` (the `awslogs` driver), as a job keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_prefix: Option<String>,
}

/// One attempt's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    pub group: String,
    pub stream: String,
}

/// CloudWatch Logs refuses `:` and `*` in a stream's name.
fn clean(part: &str) -> String {
    part.chars()
        .map(|c| if c == ':' || c == '*' { '-' } else { c })
        .collect()
}

/// The stream of attempt `attempt` of task `task_id` of `job_id`. `definition` is the
/// job definition's ARN or name, when the job has one.
pub fn log_target(
    config: Option<&LogConfig>,
    definition: Option<&str>,
    job_id: &str,
    task_id: &str,
    attempt: u32,
) -> LogTarget {
    let definition_name = definition.map(|d| {
        // `arn:…:job-definition/<name>:<revision>` or `<name>[:<revision>]`
        let tail = d.rsplit('/').next().unwrap_or(d);
        tail.split(':').next().unwrap_or(tail).to_string()
    });
    let prefix = config
        .and_then(|c| c.stream_prefix.clone())
        .or(definition_name)
        .unwrap_or_else(|| NATIVE_STREAM_PREFIX.to_string());
    LogTarget {
        group: config
            .and_then(|c| c.group.clone())
            .unwrap_or_else(|| DEFAULT_LOG_GROUP.to_string()),
        stream: clean(&format!("{prefix}/default/{job_id}.{task_id}.{attempt}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named_as_aws_batch_names_them() {
        let arn = "arn:aws:batch:us-east-1:000000000000:job-definition/render:3";
        let t = log_target(None, Some(arn), "j-1-a", "7", 2);
        assert_eq!(t.group, "/aws/batch/job");
        assert_eq!(t.stream, "render/default/j-1-a.7.2");
        let dag = log_target(None, None, "j-1-a", "build.x", 1);
        assert_eq!(dag.stream, "batchplane/default/j-1-a.build.x.1");
        let own = LogConfig {
            group: Some("/team/vision".into()),
            stream_prefix: Some("vision:nightly".into()),
        };
        let t = log_target(Some(&own), Some(arn), "j-1-a", "0", 1);
        assert_eq!(t.group, "/team/vision");
        assert_eq!(
            t.stream, "vision-nightly/default/j-1-a.0.1",
            "no ':' in a stream name"
        );
    }
}
