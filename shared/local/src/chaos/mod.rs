//! The chaos run: the local stack with the fault proxy in front of DynamoDB Local and
//! moto (every client goes through it: the API, the fanout, the workers), a mixed
//! workload, faults injected while it runs, and checks of the result from a ledger the
//! tasks keep themselves and from the API.
//!
//! Faults: AWS throttling errors, connection resets before a request and after it was
//! applied (the answer lost), added latency, unprocessed batch entries, SQS deletes
//! acknowledged and not done (the message is delivered again), stream batches delivered
//! cut short then whole, SIGKILL of random taskhosts (each replaced), and SIGSTOP of
//! random taskhosts past their lease (then SIGCONT).
//!
//! The workload: a DAG with fan-out and fan-in (some tasks fail their first attempt and
//! are retried, tasks are added while it runs), an array job with an N_TO_N successor,
//! and a job cancelled while it runs. Submissions and additions that fail retry with the
//! same idempotency key, as a client would.
//!
//! The checks: every task final and every job closed; each job's counts equal its tasks'
//! states; every SUCCEEDED task has exactly one successful attempt recorded and no
//! attempt ran twice; no two executions of a task overlapped in time; nothing left
//! RUNNABLE or in the dead-letter queue.

mod check;
mod client;

use crate::faults::{FaultCounts, FaultPlan, FaultProxy};
use crate::ledger;
use crate::{LocalStack, StackOptions};
use anyhow::{bail, Context};
use client::Api;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to run and which faults to inject, at what rates.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosOptions {
    /// About how many tasks the workload has in all.
    pub tasks: usize,
    pub workers: usize,
    pub worker_cpus: f64,
    pub lease_seconds: u64,
    /// Share of DynamoDB and SQS calls answered with a throttling error.
    pub throttle: f64,
    /// Share cut off before they reach the emulator.
    pub reset: f64,
    /// Share applied and then cut off (the answer lost).
    pub lose_answer: f64,
    /// Share delayed, by up to `latency_max_ms`.
    pub latency: f64,
    pub latency_max_ms: u64,
    /// Share of batch calls with entries left unprocessed.
    pub unprocessed: f64,
    /// Share of SQS deletes acknowledged and not done.
    pub skip_delete: f64,
    /// Share of stream batches first delivered cut short (a function error part-way).
    pub stream_cut_short: f64,
    /// Taskhosts to SIGKILL, and to SIGSTOP past their lease.
    pub kills: u32,
    pub stops: u32,
    /// Also run the workload without faults first, for its makespan.
    pub baseline: bool,
    /// Give up waiting for the workload after this long.
    pub timeout_seconds: u64,
}

impl ChaosOptions {
    /// The small run of the test suite: about 500 tasks, a few of each fault.
    pub fn small() -> ChaosOptions {
        ChaosOptions {
            tasks: 500,
            workers: 3,
            worker_cpus: 2.0,
            lease_seconds: 4,
            throttle: 0.1,
            reset: 0.01,
            lose_answer: 0.01,
            latency: 0.05,
            latency_max_ms: 50,
            unprocessed: 0.2,
            skip_delete: 0.05,
            stream_cut_short: 0.2,
            kills: 4,
            stops: 2,
            baseline: false,
            timeout_seconds: 240,
        }
    }

    fn plan(&self) -> FaultPlan {
        FaultPlan {
            throttle: self.throttle,
            reset: self.reset,
            lose_answer: self.lose_answer,
            latency: self.latency,
            latency_max: Duration::from_millis(self.latency_max_ms),
            unprocessed: self.unprocessed,
            skip_delete: self.skip_delete,
            ..FaultPlan::none()
        }
    }
}

/// What the run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    pub options: Option<ChaosOptions>,
    /// Faults injected, by kind (the proxies' counts, kills and stops).
    pub faults: BTreeMap<String, u64>,
    pub calls_forwarded: u64,
    pub tasks: usize,
    /// Tasks not in a final state, or that failed although nothing asked them to.
    pub lost: usize,
    /// SUCCEEDED tasks with more than one successful attempt recorded, or an attempt
    /// that ran more than once.
    pub doubled: usize,
    /// Tasks whose command ran to a successful end more than once: a worker killed
    /// between its task's exit and the record of it (at-least-once, recorded once).
    pub reran_after_kill: usize,
    pub overlapping: usize,
    pub count_mismatches: usize,
    pub dead_letters_left: u64,
    pub makespan_s: f64,
    pub baseline_makespan_s: Option<f64>,
    /// What was wrong, in words (empty: the run passed).
    pub problems: Vec<String>,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as a table, for a terminal and the README.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        for (kind, n) in &self.faults {
            rows.push((format!("faults: {kind}"), n.to_string()));
        }
        rows.push(("calls forwarded".into(), self.calls_forwarded.to_string()));
        rows.push(("tasks".into(), self.tasks.to_string()));
        rows.push(("lost".into(), self.lost.to_string()));
        rows.push(("doubled".into(), self.doubled.to_string()));
        rows.push(("overlapping".into(), self.overlapping.to_string()));
        rows.push(("count mismatches".into(), self.count_mismatches.to_string()));
        rows.push((
            "dead letters left".into(),
            self.dead_letters_left.to_string(),
        ));
        rows.push((
            "re-run after a kill (recorded once)".into(),
            self.reran_after_kill.to_string(),
        ));
        let makespan = match self.baseline_makespan_s {
            Some(b) => format!(
                "{:.1} s ({:.2}× the fault-free {:.1} s)",
                self.makespan_s,
                self.makespan_s / b.max(0.001),
                b
            ),
            None => format!("{:.1} s", self.makespan_s),
        };
        rows.push(("makespan".into(), makespan));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
        let mut out = format!(
            "| {:width$} | value |\n|{}|-------|\n",
            "",
            "-".repeat(width + 2)
        );
        for (k, v) in rows {
            out.push_str(&format!("| {k:width$} | {v} |\n"));
        }
        out
    }
}

/// Run the chaos workload on emulators at `dynamodb_url` / `sqs_url`, keeping its
/// files under `dir`.
pub async fn run(
    dynamodb_url: &str,
    sqs_url: &str,
    dir: &Path,
    taskhost: Option<PathBuf>,
    opts: &ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    let mut report = ChaosReport {
        options: Some(opts.clone()),
        ..Default::default()
    };
    if opts.baseline {
        let base = one_run(
            dynamodb_url,
            sqs_url,
            &dir.join("baseline"),
            taskhost.clone(),
            &opts.calm(),
        )
        .await?;
        report.baseline_makespan_s = Some(baseline_makespan(&base)?);
    }
    let faulted = one_run(dynamodb_url, sqs_url, &dir.join("faulted"), taskhost, opts).await?;
    Ok(ChaosReport {
        baseline_makespan_s: report.baseline_makespan_s,
        ..faulted
    })
}

/// [`run`], with the baseline and the faulted run each against emulators of their own
/// (started under `dir`): a DynamoDB Local that has just held the baseline's ten
/// thousand tasks and their stream answered the faulted run's first requests slowly
/// enough (past 10 s) to fail its submission.
pub async fn run_isolated(dir: &Path, opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    use crate::emulators::{free_port, Emulators};
    let fresh = |name: &str| {
        Emulators::start(
            &dir.join(format!("emulators-{name}")),
            free_port()?,
            free_port()?,
        )
    };
    let mut baseline = None;
    if opts.baseline {
        let mut emulators = fresh("baseline")?;
        let base = one_run(
            &emulators.dynamodb_url,
            &emulators.sqs_url,
            &dir.join("baseline"),
            None,
            &opts.calm(),
        )
        .await;
        emulators.stop();
        baseline = Some(baseline_makespan(&base?)?);
    }
    let mut emulators = fresh("faulted")?;
    let faulted = one_run(
        &emulators.dynamodb_url,
        &emulators.sqs_url,
        &dir.join("faulted"),
        None,
        opts,
    )
    .await;
    emulators.stop();
    Ok(ChaosReport {
        baseline_makespan_s: baseline,
        ..faulted?
    })
}

/// The fault-free run's makespan, if it passed its own checks.
fn baseline_makespan(base: &ChaosReport) -> anyhow::Result<f64> {
    if !base.problems.is_empty() {
        bail!(
            "the fault-free baseline run failed its checks: {:?}",
            base.problems
        );
    }
    Ok(base.makespan_s)
}

impl ChaosOptions {
    /// The same workload with no fault at all.
    pub fn calm(&self) -> ChaosOptions {
        ChaosOptions {
            throttle: 0.0,
            reset: 0.0,
            lose_answer: 0.0,
            latency: 0.0,
            unprocessed: 0.0,
            skip_delete: 0.0,
            stream_cut_short: 0.0,
            kills: 0,
            stops: 0,
            ..self.clone()
        }
    }
}

async fn one_run(
    dynamodb_url: &str,
    sqs_url: &str,
    dir: &Path,
    taskhost: Option<PathBuf>,
    opts: &ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    std::fs::create_dir_all(dir)?;
    let ddb = FaultProxy::start(dynamodb_url, FaultPlan::none()).await?;
    let sqs = FaultProxy::start(sqs_url, FaultPlan::none()).await?;
    let mut so = StackOptions::new(&ddb.url, &sqs.url, &dir.join("stack"))?;
    so.workers = opts.workers;
    so.worker_cpus = opts.worker_cpus;
    so.worker_memory_mib = 16 * 1024;
    so.lease_seconds = opts.lease_seconds;
    so.reconcile_every_seconds = 5;
    so.poller.retry_cut_short = opts.stream_cut_short;
    if let Some(t) = taskhost {
        so.taskhost = t;
    }
    let mut stack = LocalStack::start(so).await.context("starting the stack")?;
    let ledger_file = dir.join("ledger");
    std::fs::write(&ledger_file, "")?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Tasks run as uids of their own: the ledger must be open to all of them.
        std::fs::set_permissions(&ledger_file, std::fs::Permissions::from_mode(0o666))?;
    }
    let api = Api::new(&stack.api_url);
    ddb.set_plan(opts.plan());
    sqs.set_plan(opts.plan());

    let started = Instant::now();
    let jobs = workload(api.clone(), ledger_file.clone(), opts.tasks).await?;
    let mut faults = Injector::new(opts);
    let deadline = started + Duration::from_secs(opts.timeout_seconds);
    let mut timed_out = false;
    loop {
        if api.all_closed(&jobs).await? {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        faults.step(&mut stack, opts).await;
    }
    let makespan_s = started.elapsed().as_secs_f64();
    let (kills, stops) = faults.wake_all(&stack);
    // The checks read through calm proxies.
    let (dcounts, scounts) = (ddb.counts(), sqs.counts());
    ddb.set_plan(FaultPlan::none());
    sqs.set_plan(FaultPlan::none());
    let mut report = check::check(&api, &stack, &ledger_file, &jobs).await?;
    if timed_out {
        report.problems.insert(
            0,
            format!(
                "the workload did not finish within {} s",
                opts.timeout_seconds
            ),
        );
    }
    report.options = Some(opts.clone());
    report.makespan_s = makespan_s;
    report.calls_forwarded = dcounts.forwarded + scounts.forwarded;
    add_faults(&mut report.faults, "dynamodb", &dcounts);
    add_faults(&mut report.faults, "sqs", &scounts);
    report
        .faults
        .insert("taskhost SIGKILL".into(), u64::from(kills));
    report
        .faults
        .insert("taskhost SIGSTOP past lease".into(), u64::from(stops));
    if kills < opts.kills || stops < opts.stops {
        report.problems.push(format!(
            "the workload ended before every fault was injected: {kills} of {} kills, {stops} of {} stops",
            opts.kills, opts.stops
        ));
    }
    stack.shutdown_and_delete().await?;
    Ok(report)
}

/// Kills and stops taskhosts while the workload runs, spread over it.
struct Injector {
    kills: u32,
    stops: u32,
    /// Stopped workers and since when.
    stopped: Vec<(u32, Instant)>,
    stop_for: Duration,
    every: Duration,
    next: Instant,
}

impl Injector {
    fn new(opts: &ChaosOptions) -> Injector {
        let lease = Duration::from_secs(opts.lease_seconds);
        // The run's length guessed at thirty tasks a second, so that every fault is in
        // before it ends.
        let faults = u64::from(opts.kills + opts.stops).max(1);
        let every = Duration::from_millis(((opts.tasks as u64 * 33) / faults).clamp(500, 20_000));
        Injector {
            kills: 0,
            stops: 0,
            stopped: Vec::new(),
            // Past the lease and both fencing margins: the task is taken over meanwhile.
            stop_for: lease
                + 2 * batchplane::domain::lease::fence_margin(lease)
                + Duration::from_secs(1),
            every,
            next: Instant::now() + every,
        }
    }

    /// Wake the stopped workers whose time is up; when the next fault is due, SIGKILL a
    /// random worker (and start a replacement) or SIGSTOP one.
    async fn step(&mut self, stack: &mut LocalStack, opts: &ChaosOptions) {
        use nix::sys::signal::Signal;
        let stop_for = self.stop_for;
        self.stopped.retain(|(pid, since)| {
            let due = since.elapsed() >= stop_for;
            if due {
                let _ = stack.signal_worker(*pid, Signal::SIGCONT);
            }
            !due
        });
        if Instant::now() < self.next || (self.kills >= opts.kills && self.stops >= opts.stops) {
            return;
        }
        self.next = Instant::now() + self.every;
        let candidates: Vec<u32> = stack
            .worker_pids()
            .into_iter()
            .filter(|p| !self.stopped.iter().any(|(s, _)| s == p))
            .collect();
        if candidates.len() < 2 {
            return;
        }
        let pid = candidates[fastrand::usize(..candidates.len())];
        if self.kills < opts.kills && (self.stops >= opts.stops || fastrand::bool()) {
            if stack.signal_worker(pid, Signal::SIGKILL).is_ok() {
                self.kills += 1;
                if let Err(e) = stack.spawn_worker().await {
                    tracing::warn!(error = %format!("{e:#}"), "replacing a killed worker failed");
                }
            }
        } else if self.stops < opts.stops && stack.signal_worker(pid, Signal::SIGSTOP).is_ok() {
            self.stops += 1;
            self.stopped.push((pid, Instant::now()));
        }
    }

    /// Wake every stopped worker; the kills and stops made.
    fn wake_all(&mut self, stack: &LocalStack) -> (u32, u32) {
        for (pid, _) in self.stopped.drain(..) {
            let _ = stack.signal_worker(pid, nix::sys::signal::Signal::SIGCONT);
        }
        (self.kills, self.stops)
    }
}

fn add_faults(into: &mut BTreeMap<String, u64>, service: &str, counts: &FaultCounts) {
    for (kind, ops) in &counts.by_kind {
        for (op, n) in ops {
            // moto's proxy carries the taskhosts' CloudWatch Logs calls beside SQS's.
            let service = match op.as_str() {
                "CreateLogGroup" | "CreateLogStream" | "PutLogEvents" => "cloudwatch logs",
                _ => service,
            };
            *into.entry(format!("{service} {kind}")).or_default() += n;
        }
    }
}

/// The jobs of a workload and what each must end as.
#[derive(Debug, Clone)]
pub(super) struct Jobs {
    /// (job id, the state it must end in)
    pub(super) expected: Vec<(String, &'static str)>,
    /// The job that was cancelled: its tasks may end CANCELLED.
    pub(super) cancelled: String,
}

async fn workload(api: Api, ledger_file: PathBuf, tasks: usize) -> anyhow::Result<Jobs> {
    let width = (tasks / 4).max(4);
    let array = (tasks / 5).max(2);
    let added = (tasks / 20).max(1);
    let cmd = |fail: u32| ledger::task_command(&ledger_file, 2, 100, fail);
    // The DAG: root, a fan-out of `width` tasks each with a child, a fan-in sink; every
    // tenth task of the fan-out fails its first attempt and is retried.
    let mut dag = vec![json!({"id": "root", "command": cmd(0), "cpu": 0.5})];
    for i in 0..width {
        let fail = u32::from(i % 10 == 0);
        dag.push(
            json!({"id": format!("m{i}"), "command": cmd(fail), "cpu": 0.5, "depends_on": ["root"],
            "retry_strategy": {"attempts": 2}}),
        );
        dag.push(json!({"id": format!("c{i}"), "command": cmd(0), "cpu": 0.5, "depends_on": [format!("m{i}")]}));
    }
    let children: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
    dag.push(json!({"id": "sink", "command": cmd(0), "cpu": 0.5, "depends_on": children}));
    let dag_job = api
        .submit(&json!({"name": "chaos-dag", "tasks": dag}), "chaos-dag")
        .await?;
    // Tasks added while it runs, in additions of up to a hundred.
    let extra: Vec<Value> = (0..added)
        .map(|i| json!({"id": format!("a{i}"), "command": cmd(0), "cpu": 0.5, "depends_on": [format!("m{}", i % width)]}))
        .collect();
    for chunk in extra.chunks(100) {
        api.add_tasks(&dag_job, chunk).await?;
    }
    let command = cmd(0);
    let first = api
        .submit(
            &json!({"name": "chaos-array", "array_size": array, "command": command.clone(), "cpu": 0.5}),
            "chaos-array",
        )
        .await?;
    let second = api
        .submit(
            &json!({"name": "chaos-n-to-n", "array_size": array, "command": command, "cpu": 0.5,
                "depends_on": [{"job": first, "type": "N_TO_N"}]}),
            "chaos-n-to-n",
        )
        .await?;
    let long: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("l{i}"), "command": ledger::task_command(&ledger_file, 50, 100, 0), "cpu": 0.5}))
        .collect();
    let doomed = api
        .submit(
            &json!({"name": "chaos-cancelled", "tasks": long}),
            "chaos-cancelled",
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.cancel(&doomed).await?;
    Ok(Jobs {
        expected: vec![
            (dag_job, "SUCCEEDED"),
            (first, "SUCCEEDED"),
            (second, "SUCCEEDED"),
            (doomed.clone(), "CANCELLED"),
        ],
        cancelled: doomed,
    })
}
