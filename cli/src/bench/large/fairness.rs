//! Fairness side by side: the large DAG runs twice, each time on fresh emulators, once
//! with its release window fixed at its starting size and once following its claim
//! rate, and each time a small job of the same pool is submitted while it runs. How
//! soon the small job starts is what the DAG's waiting messages cost a job behind it.
//! The DAG is cancelled once the small job has finished: what is measured is the wait,
//! not the DAG.

use super::{probe, Fairness, LargeBenchArgs};
use crate::bench::{start_stack_with, write_stack_results};
use crate::commands::pages::{submit_in_pages, PAGE_TASKS};
use batchplane::domain::spec::JobSpec;
use batchplane_local::emulators::{free_port, Emulators};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// One side: the policy, the DAG's window when the small job was submitted, and the
/// small job's times.
#[derive(Debug, Serialize)]
struct Side {
    policy: &'static str,
    window_seconds: f64,
    /// The DAG's window, free slots and held tasks as the small job went in.
    dag_window: i64,
    dag_free: i64,
    dag_held: i64,
    small_job: Fairness,
    /// The DAG's tasks ended a second over the minute after the small job went in (its
    /// throughput beside it: a window too small for its refills would cut it).
    dag_tasks_per_s: f64,
}

/// How long the DAG's throughput is read over, from the small job's submission.
const THROUGHPUT_OVER: Duration = Duration::from_secs(60);

async fn side(
    args: &LargeBenchArgs,
    spec: &JobSpec,
    state: &Path,
    (policy, window_seconds): (&'static str, f64),
) -> anyhow::Result<Side> {
    eprintln!("== {policy} window ({window_seconds} s of claims)");
    let mut emulators = Emulators::start(
        &state.join(format!("emulators-{policy}")),
        free_port()?,
        free_port()?,
    )?;
    let outcome = async {
        let (stack, api) = start_stack_with(
            policy,
            (args.workers, args.worker_cpus),
            &emulators,
            state,
            |o| o.window_seconds = window_seconds,
        )
        .await?;
        let job = submit_in_pages(&api, spec, None, PAGE_TASKS).await?;
        let committed = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.probe_after_s)).await;
        let slots = stack.service.store.slots(&job).await?;
        let waited_s = committed.elapsed().as_secs_f64();
        let from = Instant::now();
        let mut small_job = probe(&api, &job, args.probe_tasks, Duration::ZERO).await?;
        small_job.submitted_after_s += waited_s;
        tokio::time::sleep(THROUGHPUT_OVER.saturating_sub(from.elapsed())).await;
        let view = api.get(&format!("/v1/jobs/{job}")).await?;
        let dag_tasks_per_s = (super::ended(&view) as f64
            - small_job.dag_tasks_ended_before as f64)
            / from.elapsed().as_secs_f64();
        api.post(&format!("/v1/jobs/{job}/cancel"), String::new(), None)
            .await?;
        stack.shutdown().await?;
        anyhow::Ok(Side {
            policy,
            window_seconds,
            dag_window: slots.limit,
            dag_free: slots.free,
            dag_held: slots.held,
            small_job,
            dag_tasks_per_s,
        })
    }
    .await;
    emulators.stop();
    outcome
}

pub(super) async fn run(args: &LargeBenchArgs, spec: &JobSpec, state: &Path) -> anyhow::Result<u8> {
    let fixed = side(args, spec, state, ("fixed", 0.0)).await?;
    let following = side(args, spec, state, ("following", args.window_seconds)).await?;
    let ratio = following.small_job.first_start_ms / fixed.small_job.first_start_ms;
    println!(
        "\nsmall job ({} tasks) beside a {}-task DAG, {} workers × {} vCPUs",
        args.probe_tasks,
        spec.tasks.len(),
        args.workers,
        args.worker_cpus
    );
    println!(
        "| DAG window | its size then (free, held) | first start | last start | finished | DAG tasks/s beside it |"
    );
    println!("|---|---|---|---|---|---|");
    for s in [&fixed, &following] {
        println!(
            "| {} ({} s) | {} ({}, {}) | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} |",
            s.policy,
            s.window_seconds,
            s.dag_window,
            s.dag_free,
            s.dag_held,
            s.small_job.first_start_ms,
            s.small_job.last_start_ms,
            s.small_job.finished_ms,
            s.dag_tasks_per_s
        );
    }
    let throughput = following.dag_tasks_per_s / fixed.dag_tasks_per_s;
    println!("first start, following / fixed: {ratio:.2} (target: under 2,000 ms)");
    println!("DAG tasks/s beside it, following / fixed: {throughput:.2}");
    write_stack_results(
        &args.out.with_extension("fairness.json"),
        (args.workers, args.worker_cpus),
        json!({"result": {"tasks": spec.tasks.len(), "fixed": fixed, "following": following,
            "first_start_ratio": ratio, "dag_throughput_ratio": throughput}}),
    )?;
    Ok(0)
}
