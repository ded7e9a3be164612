//! What the chaos run checks at the end, from the tasks' ledger and the API.

use super::client::Api;
use super::{ChaosReport, Jobs};
use crate::ledger;
use crate::LocalStack;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub(super) async fn check(
    api: &Api,
    stack: &LocalStack,
    ledger_file: &Path,
    jobs: &Jobs,
) -> anyhow::Result<ChaosReport> {
    let mut r = ChaosReport::default();
    let ok_runs = check_ledger(&ledger::read(ledger_file), &mut r);
    for (job_id, want) in &jobs.expected {
        check_job(api, (job_id, want), jobs, &ok_runs, &mut r).await?;
    }
    let queues = &stack.service.queues;
    let dlq = queues.url(crate::stack::DEAD_LETTER_QUEUE).await?;
    let (visible, in_flight) = queues.depth(&dlq).await?;
    r.dead_letters_left = visible + in_flight;
    if r.dead_letters_left > 0 {
        r.problems.push(format!(
            "{} messages left in the dead-letter queue",
            r.dead_letters_left
        ));
    }
    Ok(r)
}

/// From the ledger: overlapping executions, and attempts that ran twice. Returns how many
/// times each task's command ran to a successful end.
fn check_ledger(
    runs: &[ledger::Execution],
    r: &mut ChaosReport,
) -> HashMap<(String, String), usize> {
    let mut ok_runs: HashMap<(String, String), usize> = HashMap::new();
    let mut per_attempt: HashMap<(String, String, u32), usize> = HashMap::new();
    for e in runs {
        if e.exit_code == Some(0) {
            *ok_runs
                .entry((e.job_id.clone(), e.task_id.clone()))
                .or_default() += 1;
        }
        *per_attempt
            .entry((e.job_id.clone(), e.task_id.clone(), e.attempt))
            .or_default() += 1;
    }
    let overlaps = ledger::overlaps(runs);
    r.overlapping = overlaps.len();
    if let Some((a, b)) = overlaps.first() {
        r.problems.push(format!(
            "{} executions overlapped, e.g. {}/{} attempts {} and {}",
            overlaps.len(),
            a.job_id,
            a.task_id,
            a.attempt,
            b.attempt
        ));
    }
    let twice: Vec<_> = per_attempt.iter().filter(|(_, n)| **n > 1).collect();
    r.doubled += twice.len();
    if let Some(((j, t, a), n)) = twice.first() {
        r.problems
            .push(format!("{j}/{t} attempt {a} ran {n} times"));
    }
    ok_runs
}

/// One job: it ended as it must, its tasks are final, each SUCCEEDED one has exactly
/// one successful attempt recorded, and its counts equal its tasks' states.
async fn check_job(
    api: &Api,
    (job_id, want): (&String, &&str),
    jobs: &Jobs,
    ok_runs: &HashMap<(String, String), usize>,
    r: &mut ChaosReport,
) -> anyhow::Result<()> {
    let job = api.get(&format!("/v1/jobs/{job_id}")).await?;
    let state = job["state"].as_str().unwrap_or("?");
    if state != *want {
        r.problems.push(format!(
            "job {job_id} ended {state}, not {want}: {}",
            job["reason"]
        ));
    }
    let tasks = api.all_tasks(job_id).await?;
    r.tasks += tasks.len();
    let mut tally: BTreeMap<String, i64> = BTreeMap::new();
    // The first few of each job's, so one job's many do not hide another's few.
    let mut named = 0;
    for t in &tasks {
        let st = t["state"].as_str().unwrap_or("?").to_string();
        *tally.entry(st.clone()).or_default() += 1;
        let id = t["task_id"].as_str().unwrap_or("?");
        let final_ok = match st.as_str() {
            "SUCCEEDED" => true,
            "CANCELLED" => job_id == &jobs.cancelled,
            _ => false,
        };
        if !final_ok {
            r.lost += 1;
            named += 1;
            if named <= 5 {
                r.problems
                    .push(format!("{job_id}/{id} ended {st}: {}", t["status_reason"]));
            }
        }
        if ok_runs
            .get(&(job_id.clone(), id.to_string()))
            .copied()
            .unwrap_or(0)
            > 1
        {
            r.reran_after_kill += 1;
        }
    }
    // Every SUCCEEDED task: exactly one successful attempt recorded.
    let succeeded: Vec<String> = tasks
        .iter()
        .filter(|t| t["state"] == "SUCCEEDED")
        .filter_map(|t| t["task_id"].as_str().map(str::to_string))
        .collect();
    use futures::StreamExt;
    let views: Vec<anyhow::Result<Value>> = futures::stream::iter(succeeded)
        .map(|id| {
            let api = api.clone();
            let job_id = job_id.clone();
            async move { api.get(&format!("/v1/jobs/{job_id}/tasks/{id}")).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for v in views {
        let v = v?;
        let ok = v["attempts"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["exit_code"] == 0).count());
        if ok != 1 {
            r.doubled += 1;
            r.problems.push(format!(
                "{job_id}/{} has {ok} successful attempts recorded",
                v["task_id"]
            ));
        }
    }
    let counts = &job["task_counts"];
    for (st, n) in &tally {
        if counts[st.as_str()].as_i64().unwrap_or(0) != *n {
            r.count_mismatches += 1;
            r.problems.push(format!(
                "job {job_id}: {n} tasks are {st}, its counts say {}",
                counts[st.as_str()]
            ));
        }
    }
    if let Some(m) = counts.as_object() {
        for (st, v) in m {
            if v.as_i64().unwrap_or(0) != 0 && !tally.contains_key(st) {
                r.count_mismatches += 1;
                r.problems
                    .push(format!("job {job_id}: counts say {v} {st}, there are none"));
            }
        }
    }
    Ok(())
}
