//! `batchplane bench-autoscaler`: the autoscaling policies in a discrete-event simulation,
//! driven by the real decision functions — reuse targeting
//! ([`ReuseTargeting::target`] over the [`Backlog`] cohorts the autoscaler tracks), workers
//! per node ([`WorkerShape::per_node`] on a launch config from the shipped price table)
//! and empty-node scale-down ([`surplus_nodes`]).
//!
//! Workload traces: many 1–10 s tasks; heavy-tailed durations; bursts like a pre-launch
//! crunch; a 1,000,000-task DAG. Policies: one task per worker, a fixed pool, Spark-style
//! dynamic allocation (enough workers for every queued and running task, capped) and
//! reuse targeting at several half-lives. Per trace and policy: makespan, p50/p95 queue
//! wait, worker-hours, node-hours, dollars and utilisation; and for the DAG the critical
//! path with stage barriers against eager release. A benchmark of the policies, not of
//! the code: deterministic for a seed, no AWS involved.

mod sim;
mod traces;

use crate::bench::rng::Rng;
use batchplane::domain::launch::{Purchase, WorkerShape};
use batchplane::domain::prices::PriceTable;
use serde::Serialize;
use sim::*;
use std::path::PathBuf;
use traces::*;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Traces to run: short, heavy-tail, burst, dag (the 1,000,000-task DAG).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short,heavy-tail,burst,dag"
    )]
    traces: Vec<String>,
    /// Tasks in the DAG trace.
    #[arg(long, default_value_t = 1_000_000)]
    dag_tasks: usize,
    /// Seconds between autoscaler ticks.
    #[arg(long, default_value_t = 60.0)]
    tick_seconds: f64,
    /// A worker's start-up once its node is up (pod scheduling, image, taskhost).
    #[arg(long, default_value_t = 20.0)]
    worker_start_seconds: f64,
    /// A node's boot time (EC2 launch to joining the cluster).
    #[arg(long, default_value_t = 60.0)]
    node_boot_seconds: f64,
    /// Idle time after which a worker exits (scaling policies).
    #[arg(long, default_value_t = 60.0)]
    worker_idle_seconds: f64,
    /// The most task slots any policy may have at once (workers × slots per worker), so
    /// one-slot and four-slot workers are capped alike.
    #[arg(long, default_value_t = 8000)]
    max_slots: u32,
    /// Node instance type (from the price table), on-demand.
    #[arg(long, default_value = "m6i.8xlarge")]
    instance_type: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "bench-results/autoscaler.json")]
    out: PathBuf,
}

/// The critical path of a DAG with unlimited workers: eager release (a task starts when
/// its own dependencies end) against stage barriers (a stage starts when the stage
/// before has ended).
fn critical_paths(trace: &Trace) -> (f64, f64) {
    let n = trace.tasks.len();
    let mut end = vec![0.0f64; n];
    let mut stage_max = [0.0f64; DAG_STAGES];
    // Tasks are numbered stage by stage, so dependencies come first.
    for i in 0..n {
        let start = trace
            .deps_of(i)
            .iter()
            .map(|&d| end[d as usize])
            .fold(0.0, f64::max);
        end[i] = start + trace.tasks[i].seconds;
        let s = trace.tasks[i].stage as usize;
        stage_max[s] = stage_max[s].max(trace.tasks[i].seconds);
    }
    let eager = end.iter().copied().fold(0.0, f64::max);
    let barrier = stage_max.iter().sum();
    (eager, barrier)
}

#[derive(Serialize)]
struct Report {
    settings: serde_json::Value,
    traces: Vec<serde_json::Value>,
    results: Vec<SimResult>,
    dag_critical_path: Option<serde_json::Value>,
}

pub fn run(args: &SimArgs) -> anyhow::Result<u8> {
    let Some(instance) = PriceTable::shipped().get(&args.instance_type) else {
        anyhow::bail!(
            "--instance-type {}: not in the price table",
            args.instance_type
        );
    };
    let traces = traces_of(args)?;
    let node_config = PriceTable::shipped()
        .launch_config(&instance.name, "us-east-1a", Purchase::OnDemand)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--instance-type {}: the price table has no on-demand launch config for it in us-east-1a",
                instance.name
            )
        })?;
    println!(
        "nodes: {} on-demand ${}/h (price table {}), {} workers of {SLOTS} slots a node; worker start {} s, node boot {} s, tick {} s",
        instance.name,
        instance.on_demand_per_hour,
        PriceTable::shipped().as_of,
        WorkerShape {
            cpu_milli: 1000 * u64::from(SLOTS),
            memory_mib: 4096 * u64::from(SLOTS),
            gpus: 0
        }
        .per_node(&node_config),
        args.worker_start_seconds,
        args.node_boot_seconds,
        args.tick_seconds
    );
    print_header();
    let mut results = Vec::new();
    let mut dag_cp = None;
    for trace in &traces {
        let policies = [
            Policy::OnePerTask,
            Policy::Fixed(trace.fixed_workers.min(args.max_slots / SLOTS)),
            Policy::Dynamic,
            Policy::Reuse(10.0),
            Policy::Reuse(60.0),
            Policy::Reuse(300.0),
        ];
        let mut runs: Vec<(Policy, Release)> =
            policies.iter().map(|p| (*p, Release::Eager)).collect();
        if trace.name == "dag" {
            runs.push((Policy::Reuse(60.0), Release::Barrier));
            let (eager, barrier) = critical_paths(trace);
            println!(
                "dag critical path with unlimited workers: eager release {eager:.0} s, stage barriers {barrier:.0} s ({:.2}x)",
                barrier / eager
            );
            dag_cp = Some(
                serde_json::json!({"eager_seconds": eager, "barrier_seconds": barrier, "ratio": barrier / eager}),
            );
        }
        for (policy, release) in runs {
            let r = Sim::new(trace, args, policy, release).run();
            anyhow::ensure!(
                r.completed == r.tasks,
                "{} under {}: {} of {} tasks ran",
                r.trace,
                r.policy,
                r.completed,
                r.tasks
            );
            print_row(&r);
            results.push(r);
        }
    }
    let report = Report {
        settings: serde_json::json!({
            "tick_seconds": args.tick_seconds,
            "worker_start_seconds": args.worker_start_seconds,
            "node_boot_seconds": args.node_boot_seconds,
            "worker_idle_seconds": args.worker_idle_seconds,
            "max_slots": args.max_slots,
            "instance_type": args.instance_type,
            "price_per_hour": instance.on_demand_per_hour,
            "price_table_as_of": PriceTable::shipped().as_of,
            "slots_per_worker": SLOTS,
            "seed": args.seed,
        }),
        traces: traces
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "about": t.about, "tasks": t.tasks.len(), "fixed_workers": t.fixed_workers}))
            .collect(),
        results,
        dag_critical_path: dag_cp,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    Ok(0)
}

/// The traces `--traces` names, made from the seed.
fn traces_of(args: &SimArgs) -> anyhow::Result<Vec<Trace>> {
    let mut rng = Rng::new(args.seed);
    args.traces
        .iter()
        .map(|t| {
            Ok(match t.as_str() {
                "short" => short_trace(&mut rng),
                "heavy-tail" => heavy_tail_trace(&mut rng),
                "burst" => burst_trace(&mut rng),
                "dag" => dag_trace(&mut rng, args.dag_tasks),
                other => {
                    anyhow::bail!("--traces: {other:?} is not one of short, heavy-tail, burst, dag")
                }
            })
        })
        .collect()
}

fn print_header() {
    println!(
        "{:<10} {:<22} {:>7} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>6} {:>7} {:>7}",
        "trace",
        "policy",
        "release",
        "makespan",
        "wait p50",
        "wait p95",
        "worker-h",
        "node-h",
        "$",
        "util",
        "peak",
        "sim s"
    );
}

fn print_row(r: &SimResult) {
    println!(
        "{:<10} {:<22} {:>7} {:>9.0}s {:>8.1}s {:>8.1}s {:>10.1} {:>9.1} {:>9.2} {:>5.0}% {:>7} {:>7.1}",
        r.trace,
        r.policy,
        r.release,
        r.makespan_seconds,
        r.wait_p50_seconds,
        r.wait_p95_seconds,
        r.worker_hours,
        r.node_hours,
        r.dollars,
        r.utilisation * 100.0,
        r.peak_workers,
        r.simulated_in_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimArgs,
    }

    fn args() -> SimArgs {
        Cli::parse_from(["sim"]).args
    }

    #[test]
    fn every_task_runs_once_and_the_accounts_add_up() {
        let a = args();
        let mut rng = Rng::new(3);
        let trace = dag_trace(&mut rng, 2_000);
        for policy in [
            Policy::OnePerTask,
            Policy::Fixed(20),
            Policy::Dynamic,
            Policy::Reuse(60.0),
        ] {
            for release in [Release::Eager, Release::Barrier] {
                let r = Sim::new(&trace, &a, policy, release).run();
                assert_eq!(r.completed, 2_000, "{r:?}");
                assert_eq!(r.completed, r.tasks);
                assert!(r.makespan_seconds > 0.0, "{r:?}");
                assert!(r.utilisation > 0.0 && r.utilisation <= 1.0 + 1e-9, "{r:?}");
                assert!(r.node_hours > 0.0 && r.worker_hours > 0.0, "{r:?}");
                assert!(r.peak_workers <= a.max_slots, "{r:?}");
            }
        }
    }

    #[test]
    fn barriers_never_shorten_the_critical_path() {
        let mut rng = Rng::new(5);
        let trace = dag_trace(&mut rng, 5_000);
        let (eager, barrier) = critical_paths(&trace);
        assert!(barrier >= eager, "{eager} {barrier}");
    }

    #[test]
    fn a_longer_half_life_starts_fewer_workers_for_short_tasks() {
        let a = args();
        let mut rng = Rng::new(9);
        let trace = short_trace(&mut rng);
        let eager = Sim::new(&trace, &a, Policy::Reuse(10.0), Release::Eager).run();
        let patient = Sim::new(&trace, &a, Policy::Reuse(300.0), Release::Eager).run();
        assert!(
            patient.worker_hours <= eager.worker_hours,
            "{eager:?} {patient:?}"
        );
    }
}
