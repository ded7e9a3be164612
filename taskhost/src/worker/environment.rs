//! The environment a task's process gets: a few of the worker's variables, the task's
//! own, and what Batchplane and AWS Batch set in every container.

use batchplane::domain::TaskRecord;

/// The environment a task runs with: the worker's `PATH`, `LANG` and `TZ`, its own
/// working directory as `HOME` and `TMPDIR`, the task's own variables, and Batchplane's
/// (so a task can find its job and the API). Nothing else of the worker's — its
/// credentials least of all — reaches the task.
pub fn task_environment(
    task: &TaskRecord,
    api_url: Option<&str>,
    workdir: Option<&std::path::Path>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "LANG", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    if let Some(dir) = workdir {
        let dir = dir.display().to_string();
        env.push(("HOME".into(), dir.clone()));
        env.push(("TMPDIR".into(), dir));
    }
    env.extend(task.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("BATCHPLANE_JOB_ID".into(), task.job_id.clone()));
    env.push(("BATCHPLANE_TASK_ID".into(), task.task_id.clone()));
    env.push(("BATCHPLANE_ATTEMPT".into(), task.attempt.to_string()));
    // AWS Batch's names, so a container moved off AWS Batch finds what it expects.
    let aws_id = match task.index {
        Some(i) if task.env.contains_key("AWS_BATCH_JOB_ARRAY_INDEX") => {
            format!("{}:{i}", task.job_id)
        }
        _ => task.job_id.clone(),
    };
    env.push(("AWS_BATCH_JOB_ID".into(), aws_id));
    env.push(("AWS_BATCH_JOB_ATTEMPT".into(), task.attempt.to_string()));
    env.push(("AWS_BATCH_JQ_NAME".into(), task.queue.clone()));
    // An array child carries its size and its queue's compute environment; a task of
    // no job queue is placed in its worker pool, which stands in for one.
    if !task.env.contains_key("AWS_BATCH_CE_NAME") {
        env.push(("AWS_BATCH_CE_NAME".into(), task.pool_name().to_string()));
    }
    env.push(("AWS_EXECUTION_ENV".into(), "AWS_ECS_EC2".into()));
    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(region) = region {
        env.push(("AWS_REGION".into(), region.clone()));
        env.push(("AWS_DEFAULT_REGION".into(), region));
    }
    if let Some(url) = api_url {
        env.push(("BATCHPLANE_API_URL".into(), url.to_string()));
    }
    env
}
