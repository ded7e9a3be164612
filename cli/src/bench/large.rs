//! `batchplane bench-large`: a DAG of 100,000 tasks end to end through the local stack,
//! sent in pages exactly as `batchplane submit` sends a file too big for one request,
//! beside the same commands run level by level under `xargs -P` (the floor). While it
//! runs, a small job of the same pool is submitted (fairness: how soon it starts behind
//! the big job's backlog). Then, on fresh emulators, the same DAG is submitted again and
//! cancelled while it runs (how soon the cancel answers, and how soon the job is closed).
//! Prints a table and writes JSON; numbers are measured, not asserted.

use super::measure::{epoch_ms, makespan_s, release_latencies};
use super::scenarios::{floor, task};
use super::{
    finish_stack, result, start_stack, start_stack_with, write_stack_results, Measured,
    ScenarioResult,
};
use crate::client::Api;
use crate::commands::jobs;
use crate::commands::pages::{submit_in_pages, PAGE_TASKS};
use anyhow::Context;
use batchplane::aws::accounting;
use batchplane::domain::spec::{parse_submission, JobSpec, Submission};
use batchplane_local::emulators::{free_port, Emulators};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod fairness;

#[derive(clap::Args, Debug)]
pub struct LargeBenchArgs {
    /// Tasks in the DAG.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Taskhost processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// vCPUs per taskhost; every task asks for 1, so parallelism is workers × this.
    #[arg(long, default_value_t = 4.0)]
    worker_cpus: f64,
    /// One task in this many runs `sleep 0.1`; the others run `true`.
    #[arg(long, default_value_t = 4)]
    sleep_every: usize,
    /// Tasks of the small job submitted while the DAG runs.
    #[arg(long, default_value_t = 4)]
    probe_tasks: usize,
    /// Seconds after the DAG's commit at which the small job is submitted.
    #[arg(long, default_value_t = 60)]
    probe_after_s: u64,
    /// Dependents whose release latency is read back (with their dependencies).
    #[arg(long, default_value_t = 1000)]
    latency_sample: usize,
    /// Tasks of the second DAG that end before it is cancelled.
    #[arg(long, default_value_t = 1000)]
    cancel_after_tasks: u64,
    /// Leave out the cancel run.
    #[arg(long, conflicts_with = "cancel_only")]
    no_cancel: bool,
    /// Only the cancel run (its figures go beside `--out`, as `<out>.cancel.json`).
    #[arg(long, conflicts_with = "fairness_only")]
    cancel_only: bool,
    /// Only the small job beside the DAG, twice side by side: the DAG's window fixed at
    /// its starting size, then following its claim rate (`<out>.fairness.json`).
    #[arg(long, conflicts_with = "no_cancel")]
    fairness_only: bool,
    /// Seconds of its claims a windowed job's window follows (0: fixed).
    #[arg(long, default_value_t = 1.0)]
    window_seconds: f64,
    #[arg(long, default_value = "bench-results/large.json")]
    out: PathBuf,
}

/// Levels of the DAG between its root and its fan-in.
const LEVELS: usize = 8;
/// Dependencies of each fan-in task.
const FAN_IN: usize = 100;

/// The DAG: a root; [`LEVELS`] levels, the first fanned out from the root and each task
/// of the next depending on two of the level before (`i` and `i + 1`); fan-in tasks of
/// [`FAN_IN`] dependencies each over the last level; a sink depending on every fan-in
/// task. Returns the spec and its levels of commands (for the floor).
fn large_dag(n: usize, sleep_every: usize) -> (Value, Vec<Vec<String>>) {
    let n = n.max(LEVELS + 3);
    let fan_in = ((n - 2) / LEVELS).div_ceil(FAN_IN).max(1);
    let middle = n - 2 - fan_in;
    let mut widths = [middle / LEVELS; LEVELS];
    widths[LEVELS - 1] += middle % LEVELS;
    let mut k = 0usize;
    let mut command = || {
        k += 1;
        if sleep_every > 0 && k.is_multiple_of(sleep_every) {
            "sleep 0.1"
        } else {
            "true"
        }
    };
    let mut tasks = Vec::with_capacity(n);
    let mut levels: Vec<Vec<String>> = Vec::new();
    let mut level = |tasks: &mut Vec<Value>, ids: Vec<(String, Vec<String>)>| {
        let mut cmds = Vec::with_capacity(ids.len());
        for (id, deps) in ids {
            let cmd = command();
            cmds.push(cmd.to_string());
            tasks.push(task(&id, cmd, &deps));
        }
        levels.push(cmds);
    };
    level(&mut tasks, vec![("root".into(), Vec::new())]);
    let mut prev: Vec<String> = vec!["root".into()];
    for (l, &w) in widths.iter().enumerate() {
        let ids: Vec<String> = (0..w).map(|i| format!("l{l}-{i}")).collect();
        let entries = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut deps = vec![prev[i % prev.len()].clone()];
                let next = &prev[(i + 1) % prev.len()];
                if next != &deps[0] {
                    deps.push(next.clone());
                }
                (id.clone(), deps)
            })
            .collect();
        level(&mut tasks, entries);
        prev = ids;
    }
    let group = prev.len().div_ceil(fan_in);
    let fan_ids: Vec<String> = (0..fan_in).map(|g| format!("in-{g}")).collect();
    let entries = fan_ids
        .iter()
        .enumerate()
        .map(|(g, id)| {
            let deps: Vec<String> = prev.iter().skip(g * group).take(group).cloned().collect();
            (id.clone(), deps)
        })
        .collect();
    level(&mut tasks, entries);
    level(&mut tasks, vec![("sink".into(), fan_ids)]);
    let spec = json!({"name": "bench-large", "tasks": tasks});
    (spec, levels)
}

/// The small job submitted while the DAG runs.
#[derive(Debug, Serialize)]
struct Fairness {
    tasks: usize,
    /// After the DAG's commit.
    submitted_after_s: f64,
    /// Tasks of the DAG ended when it was submitted.
    dag_tasks_ended_before: u64,
    /// Created → its first task started (target: under 2 s).
    first_start_ms: f64,
    /// Created → its last task started.
    last_start_ms: f64,
    /// Created → finished.
    finished_ms: f64,
}

/// The second DAG, cancelled while it runs.
#[derive(Debug, Serialize)]
struct Cancel {
    tasks: usize,
    submit_s: f64,
    /// Its tasks that had ended when the cancel was sent.
    ended_before: u64,
    /// The cancel request's round trip (target: at once).
    answer_ms: f64,
    /// Cancel sent → the job CANCELLED (target: within a minute).
    closed_s: Option<f64>,
    /// Cancel sent → none of its tasks running any more.
    none_running_s: Option<f64>,
    /// Claims in the workers' logs stamped after the cancel was sent (a worker's view of
    /// the job may be 2 s old), and how long after it the last one came.
    claims_after: usize,
    last_claim_after_s: Option<f64>,
    /// Its tasks' final counts.
    counts: Value,
}

#[derive(Debug, Serialize)]
struct Report {
    tasks: usize,
    spec_bytes: usize,
    /// The CLI's whole-file check.
    check_s: f64,
    pages: usize,
    /// Open, pages, commit.
    submit_s: f64,
    /// Commit → the job finished (client side, polled every quarter second).
    run_s: f64,
    /// Tasks a second over `run_s`.
    run_tasks_per_s: f64,
    /// Dependents whose release latency was read back.
    latency_sample: usize,
    dag: ScenarioResult,
    fairness: Option<Fairness>,
    cancel: Option<Cancel>,
}

fn spec_of(value: &Value) -> anyhow::Result<(JobSpec, f64)> {
    let started = Instant::now();
    let text = value.to_string();
    match parse_submission(&text).map_err(|e| anyhow::anyhow!(e.message))? {
        Submission::Dag(spec) => Ok((spec, started.elapsed().as_secs_f64())),
        Submission::Array(_) => anyhow::bail!("the generated spec is not a DAG"),
    }
}

/// Ended tasks of a job view.
fn ended(job: &Value) -> u64 {
    batchplane::TaskState::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| job["task_counts"][s.as_str()].as_u64().unwrap_or(0))
        .sum()
}

/// Each task's last attempt: (started, finished) in ms since the epoch.
async fn attempt_times(
    api: &Api,
    job_id: &str,
    ids: impl IntoIterator<Item = String>,
) -> anyhow::Result<HashMap<String, (Option<i64>, Option<i64>)>> {
    futures::stream::iter(ids)
        .map(|id| async move {
            let view = api.get(&format!("/v1/jobs/{job_id}/tasks/{id}")).await?;
            let last = view["attempts"].as_array().and_then(|a| a.last()).cloned();
            let times = last.map_or((None, None), |a| {
                (epoch_ms(&a["started_at"]), epoch_ms(&a["finished_at"]))
            });
            anyhow::Ok((id, times))
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}

/// Release latency of up to `sample` dependents spread evenly over the DAG.
async fn sampled_latencies(
    api: &Api,
    job_id: &str,
    spec: &Value,
    sample: usize,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let dependents: Vec<&Value> = spec["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["depends_on"].as_array().is_some_and(|d| !d.is_empty()))
        .collect();
    let step = dependents.len().div_ceil(sample.max(1)).max(1);
    let chosen: Vec<Value> = dependents.into_iter().step_by(step).cloned().collect();
    let mut ids: Vec<String> = Vec::new();
    for t in &chosen {
        ids.push(t["id"].as_str().unwrap_or_default().to_string());
        for d in t["depends_on"].as_array().into_iter().flatten() {
            ids.push(d.as_str().unwrap_or_default().to_string());
        }
    }
    ids.sort();
    ids.dedup();
    let times = attempt_times(api, job_id, ids).await?;
    let started = times
        .iter()
        .filter_map(|(id, t)| Some((id.clone(), t.0?)))
        .collect();
    let finished = times
        .iter()
        .filter_map(|(id, t)| Some((id.clone(), t.1?)))
        .collect();
    Ok((
        release_latencies(&chosen, &started, &finished),
        chosen.len(),
    ))
}

/// Submit the small job once the DAG has run `after`, and time it.
async fn probe(api: &Api, dag: &str, n: usize, after: Duration) -> anyhow::Result<Fairness> {
    let committed = Instant::now();
    tokio::time::sleep(after).await;
    let view = api.get(&format!("/v1/jobs/{dag}")).await?;
    let tasks: Vec<Value> = (0..n)
        .map(|i| task(&format!("p{i}"), "true", &[]))
        .collect();
    let spec = json!({"name": "bench-large-probe", "tasks": tasks});
    let submitted_after_s = committed.elapsed().as_secs_f64();
    let resp = api.post("/v1/jobs", spec.to_string(), None).await?;
    let id = resp["job_id"].as_str().context("job_id")?.to_string();
    let done = jobs::wait_for(api, &id, false).await?;
    let created = epoch_ms(&done["created_at"]).context("probe created_at")?;
    let times = attempt_times(api, &id, (0..n).map(|i| format!("p{i}"))).await?;
    let starts: Vec<i64> = times.values().filter_map(|t| t.0).collect();
    let since = |t: Option<i64>| t.map_or(f64::NAN, |t| (t - created) as f64);
    Ok(Fairness {
        tasks: n,
        submitted_after_s,
        dag_tasks_ended_before: ended(&view),
        first_start_ms: since(starts.iter().min().copied()),
        last_start_ms: since(starts.iter().max().copied()),
        finished_ms: since(epoch_ms(&done["finished_at"])),
    })
}

/// The DAG end to end, with the small job beside it.
async fn run_dag(
    args: &LargeBenchArgs,
    value: &Value,
    spec: &JobSpec,
    emulators: &Emulators,
    state: &Path,
    floor_s: f64,
) -> anyhow::Result<(ScenarioResult, f64, f64, usize, Option<Fairness>)> {
    let parallelism = (args.workers as f64 * args.worker_cpus).floor() as usize;
    let (stack, api) = start_stack_with(
        "large",
        (args.workers, args.worker_cpus),
        emulators,
        state,
        |o| o.window_seconds = args.window_seconds,
    )
    .await?;
    let before = accounting::snapshot();
    let started = Instant::now();
    let job = submit_in_pages(&api, spec, None, PAGE_TASKS)
        .await
        .context("the paged submission")?;
    let submit_s = started.elapsed().as_secs_f64();
    eprintln!("   submitted {job} in {submit_s:.1} s");
    let committed = Instant::now();
    let after = Duration::from_secs(args.probe_after_s);
    let (done, fairness) = tokio::join!(jobs::wait_for(&api, &job, true), async {
        if args.probe_tasks == 0 {
            return None;
        }
        match probe(&api, &job, args.probe_tasks, after).await {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("   the small job: {e:#}");
                None
            }
        }
    });
    let done = done?;
    let run_s = committed.elapsed().as_secs_f64();
    let in_process = accounting::snapshot().since(&before);
    anyhow::ensure!(
        done["state"] == "SUCCEEDED",
        "the DAG ended {}",
        done["state"]
    );
    eprintln!("   ran in {run_s:.1} s; reading back release latencies");
    let (latencies, sampled) = sampled_latencies(&api, &job, value, args.latency_sample).await?;
    let (counts, items) = finish_stack(stack, in_process).await?;
    let dag = result(Measured {
        name: "dag-large".into(),
        tasks: spec.tasks.len(),
        parallelism,
        makespan_s: makespan_s(&done, &done).unwrap_or(submit_s + run_s),
        floor_s,
        latencies,
        timeline: None,
        counts,
        submit_ms: vec![submit_s * 1000.0],
        items,
    });
    Ok((dag, submit_s, run_s, sampled, fairness))
}

/// The DAG again, cancelled once `cancel_after_tasks` of it have ended.
async fn run_cancel(
    args: &LargeBenchArgs,
    spec: &JobSpec,
    emulators: &Emulators,
    state: &Path,
) -> anyhow::Result<Cancel> {
    let (stack, api) =
        start_stack("cancel", (args.workers, args.worker_cpus), emulators, state).await?;
    let started = Instant::now();
    let job = submit_in_pages(&api, spec, None, PAGE_TASKS).await?;
    let submit_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut view = api.get(&format!("/v1/jobs/{job}")).await?;
    while ended(&view) < args.cancel_after_tasks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        view = api.get(&format!("/v1/jobs/{job}")).await?;
    }
    let ended_before = ended(&view);
    eprintln!("   cancelling {job} with {ended_before} tasks ended");
    let sent = Instant::now();
    let sent_at = chrono::Utc::now();
    api.post(&format!("/v1/jobs/{job}/cancel"), String::new(), None)
        .await?;
    let answer_ms = sent.elapsed().as_secs_f64() * 1000.0;
    let (mut closed_s, mut none_running_s) = (None, None);
    let give_up = Instant::now() + Duration::from_secs(600);
    while closed_s.is_none() && Instant::now() < give_up {
        view = api.get(&format!("/v1/jobs/{job}")).await?;
        let running = view["task_counts"]["RUNNING"].as_u64().unwrap_or(0)
            + view["task_counts"]["STARTING"].as_u64().unwrap_or(0);
        if none_running_s.is_none() && running == 0 {
            none_running_s = Some(sent.elapsed().as_secs_f64());
        }
        if view["state"] == "CANCELLED" {
            closed_s = Some(sent.elapsed().as_secs_f64());
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    stack.shutdown().await?;
    let late = claims_after(&state.join("cancel").join("workers"), sent_at)?;
    Ok(Cancel {
        tasks: spec.tasks.len(),
        submit_s,
        ended_before,
        answer_ms,
        closed_s,
        none_running_s,
        claims_after: late.len(),
        last_claim_after_s: late
            .iter()
            .max()
            .map(|at| (*at - sent_at).num_milliseconds() as f64 / 1000.0),
        counts: view["task_counts"].clone(),
    })
}

/// When each claim in the workers' logs under `dir` came, of those after `after`.
fn claims_after(
    dir: &Path,
    after: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<chrono::DateTime<chrono::Utc>>> {
    let mut late = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        late.extend(
            text.lines()
                .filter(|l| l.contains("task claimed"))
                .filter_map(log_time)
                .filter(|at| *at > after),
        );
    }
    Ok(late)
}

/// The time a worker's log line starts with (its colours stripped).
fn log_time(line: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut parts = line.split('\u{1b}');
    let mut plain = parts.next().unwrap_or_default().to_string();
    // Each escape runs to its `m`.
    for part in parts {
        plain.push_str(part.find('m').map_or(part, |i| &part[i + 1..]));
    }
    let stamp = plain.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

pub async fn run(args: &LargeBenchArgs) -> anyhow::Result<u8> {
    let parallelism = (args.workers as f64 * args.worker_cpus).floor() as usize;
    let (value, levels) = large_dag(args.tasks, args.sleep_every);
    let spec_bytes = value.to_string().len();
    let (spec, check_s) = spec_of(&value)?;
    eprintln!(
        "== a {}-task DAG ({:.1} MB, checked in {check_s:.1} s), parallelism {parallelism}",
        spec.tasks.len(),
        spec_bytes as f64 / 1e6
    );
    let state = std::env::temp_dir().join(format!("batchplane-bench-large-{}", std::process::id()));
    if args.cancel_only {
        let mut emulators =
            Emulators::start(&state.join("emulators-cancel"), free_port()?, free_port()?)?;
        let outcome = run_cancel(args, &spec, &emulators, &state).await;
        emulators.stop();
        let cancel = outcome?;
        print_cancel(&cancel);
        write_stack_results(
            &args.out.with_extension("cancel.json"),
            (args.workers, args.worker_cpus),
            json!({"result": {"cancel": cancel}}),
        )?;
        return Ok(0);
    }
    if args.fairness_only {
        return fairness::run(args, &spec, &state).await;
    }
    let floor_s = floor(&levels, parallelism)?;
    eprintln!("   xargs -P {parallelism}: {floor_s:.1} s");
    let mut emulators = Emulators::start(&state.join("emulators-dag"), free_port()?, free_port()?)?;
    let outcome = run_dag(args, &value, &spec, &emulators, &state, floor_s).await;
    emulators.stop();
    let (dag, submit_s, run_s, sampled, fairness) = outcome?;
    // The DAG's figures, kept before the cancel run in case it fails.
    let partial = args.out.with_extension("dag.json");
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &partial,
        serde_json::to_vec_pretty(
            &json!({"submit_s": submit_s, "run_s": run_s, "dag": &dag, "fairness": &fairness}),
        )?,
    )?;
    let cancel = if args.no_cancel {
        None
    } else {
        eprintln!(
            "== the same DAG, cancelled once {} tasks have ended",
            args.cancel_after_tasks
        );
        emulators = Emulators::start(&state.join("emulators-cancel"), free_port()?, free_port()?)?;
        let outcome = run_cancel(args, &spec, &emulators, &state).await;
        emulators.stop();
        Some(outcome?)
    };
    let report = Report {
        tasks: spec.tasks.len(),
        spec_bytes,
        check_s,
        pages: spec.tasks.len().div_ceil(PAGE_TASKS),
        submit_s,
        run_s,
        run_tasks_per_s: spec.tasks.len() as f64 / run_s,
        latency_sample: sampled,
        dag,
        fairness,
        cancel,
    };
    print_report(&report);
    write_stack_results(
        &args.out,
        (args.workers, args.worker_cpus),
        json!({"result": report}),
    )?;
    Ok(0)
}

fn print_report(r: &Report) {
    let d = &r.dag;
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0} ms"));
    let sqs: f64 = d
        .requests_per_task
        .iter()
        .filter(|(k, _)| k.starts_with("SQS."))
        .map(|(_, v)| v)
        .sum();
    println!("| tasks | check | paged submission | run (commit → end) | tasks/s | `xargs -P {}` | release p50 / p99 | WCU/task | RCU/task | SQS req/task | $ per M (on demand) | $ per M (provisioned) |", d.parallelism);
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} s | {:.1} s ({} pages) | {:.1} s | {:.1} | {:.1} s | {} / {} | {:.2} | {:.2} | {:.2} | ${:.2} | ${:.2} |",
        r.tasks,
        r.check_s,
        r.submit_s,
        r.pages,
        r.run_s,
        r.run_tasks_per_s,
        d.floor_makespan_s,
        ms(d.release_latency_p50_ms),
        ms(d.release_latency_p99_ms),
        d.dynamodb_write_units_per_task,
        d.dynamodb_read_units_per_task,
        sqs,
        d.dollars_per_million_tasks,
        d.dollars_per_million_tasks_provisioned
    );
    let mut by: Vec<(&String, &f64)> = d.requests_per_task.iter().collect();
    by.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    println!("requests/task: {}", parts.join(", "));
    let mut wcu: Vec<(&String, &f64)> = d.write_units_per_task_by_operation.iter().collect();
    wcu.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = wcu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    println!(
        "write units/task: {}; Lambda invocations/task {:.3}; items left {}",
        parts.join(", "),
        d.lambda_invocations_per_task,
        d.items_in_table.unwrap_or(0)
    );
    if let Some(f) = &r.fairness {
        println!(
            "small job ({} tasks) submitted {:.0} s after the commit, {} of the DAG's tasks ended: first start {:.0} ms, last start {:.0} ms, finished {:.0} ms after it was created",
            f.tasks, f.submitted_after_s, f.dag_tasks_ended_before, f.first_start_ms, f.last_start_ms, f.finished_ms
        );
    }
    if let Some(c) = &r.cancel {
        print_cancel(c);
    }
}

fn print_cancel(c: &Cancel) {
    let s = |v: Option<f64>| v.map_or("not within 10 min".to_string(), |x| format!("{x:.1} s"));
    println!(
        "cancel of the {}-task DAG with {} tasks ended: answered in {:.0} ms, none running after {}, CANCELLED after {}; {} claims after it (the last {}); counts {}",
        c.tasks, c.ended_before, c.answer_ms, s(c.none_running_s), s(c.closed_s),
        c.claims_after, s(c.last_claim_after_s), c.counts
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_log_line_gives_its_time() {
        let line =
            "\u{1b}[2m2026-12-06T23:27:31.808047Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m task claimed";
        let at = log_time(line).expect("a time");
        assert_eq!(at.to_rfc3339(), "2026-12-06T23:27:31.808047+00:00");
        assert_eq!(
            log_time("2026-12-06T23:27:31Z INFO task claimed").map(|t| t.timestamp()),
            Some(1796599651)
        );
        assert!(log_time("no time here").is_none());
    }

    #[test]
    fn the_dag_has_the_tasks_asked_for_and_checks() {
        for n in [11, 1_000, 10_007, 100_000] {
            let (value, levels) = large_dag(n, 4);
            let (spec, _) = spec_of(&value).expect("a valid DAG");
            assert_eq!(spec.tasks.len(), n);
            assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), n);
            assert_eq!(levels.len(), LEVELS + 3);
            let sink = spec.tasks.last().expect("sink");
            assert_eq!(sink.id, "sink");
            for t in &spec.tasks {
                assert_eq!(t.depends_on.is_empty(), t.id == "root", "{}", t.id);
                assert!(
                    t.depends_on.len() <= FAN_IN.max(2) || t.id == "sink",
                    "{}",
                    t.id
                );
            }
        }
        let (value, _) = large_dag(1_000, 4);
        let sleeps = value["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["command"][2] == "sleep 0.1")
            .count();
        assert_eq!(sleeps, 250);
    }
}
