//! `batchplane`: submit and inspect jobs, run the local stack, run the benchmark.

mod bench;
mod client;
mod commands;
mod console;

use commands::{access, admin, autoscaler, dev, jobs, logs, repro};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "batchplane",
    version,
    about = "Batchplane: a serverless control plane for batch work"
)]
struct Cli {
    /// The API's base URL (default: $BATCHPLANE_API_URL, else the running `dev` stack).
    #[arg(long, global = true, env = "BATCHPLANE_API_URL")]
    api_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit the jobs in a YAML or JSON file (several are separated by `---`).
    Submit {
        file: PathBuf,
        /// Wait for the jobs to finish, showing progress; exit 0 only if all SUCCEEDED.
        #[arg(long)]
        wait: bool,
        /// Submitting again with the same key returns the same job (in a file of several
        /// jobs, the nth job's key is KEY-n, counting from 0).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// In a file of several jobs, only the one with this name.
        #[arg(long)]
        job: Option<String>,
        /// Check the file as the API would (every job, every task, dependencies and
        /// cycles) and say how long that took, sending nothing.
        #[arg(long)]
        dry_run: bool,
        /// A DAG of more tasks than this is sent in pages of this many (opened, paged,
        /// committed; nothing runs before the commit), with progress on stderr.
        #[arg(long, default_value_t = commands::pages::PAGE_TASKS)]
        page_tasks: usize,
    },
    /// The jobs you may see, newest first, filtered by team, queue, state and name.
    Jobs(commands::listing::JobsArgs),
    /// The web console: a loopback server for its pages, forwarding their API calls
    /// signed with your credentials (as the CLI's own are). Prints its URL.
    Console(console::ConsoleArgs),
    /// Show a job: state, times, counts of tasks by state.
    Status {
        job: String,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// List a job's tasks, optionally only those in one state.
    Tasks {
        job: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Everything about one task: argv, env, every attempt, logs.
    Task {
        job: String,
        task: String,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Print a task's output for its last attempt (or --attempt N), from CloudWatch
    /// Logs; -f follows a running attempt until it ends. Where CloudWatch has nothing,
    /// the attempt's files: stdout, and stderr too with --stderr.
    Logs {
        job: String,
        task: String,
        #[arg(long)]
        attempt: Option<u32>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        stderr: bool,
    },
    /// The exact command line and environment a task ran with, shell-quoted; with --run,
    /// run it here.
    Repro {
        job: String,
        task: String,
        #[arg(long)]
        run: bool,
    },
    /// Why a job (or one of its tasks) is not running: dependencies, queue position,
    /// worker pools, job queue state, each from recorded state.
    Explain {
        job: String,
        task: Option<String>,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Requested versus used CPU and memory of a job's measured attempts, or (--team)
    /// of a team's jobs that finished in the last --days days.
    Usage {
        #[arg(required_unless_present = "team")]
        job: Option<String>,
        #[arg(long, conflicts_with = "job")]
        team: Option<String>,
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Cancel a job: waiting tasks end CANCELLED, running ones are killed.
    Cancel { job: String },
    /// Add tasks (a YAML or JSON list, or `tasks:`) to a running job.
    Add { job: String, file: PathBuf },
    /// Teams and their quotas: a used/limit table per team; `teams set` creates a team
    /// or replaces its quota.
    Teams {
        #[command(subcommand)]
        command: Option<admin::TeamsCommand>,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Clusters workers are placed in: a used/capacity table per cluster; register,
    /// enable, disable.
    Clusters {
        #[command(subcommand)]
        command: Option<admin::ClustersCommand>,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Who may do what: the grants (admins only); `grant`, `revoke`, `whoami`.
    Access {
        #[command(subcommand)]
        command: Option<access::AccessCommand>,
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Launch configs marked capacity-limited (EC2 gave fewer nodes than asked), with
    /// the reason and when the mark expires.
    Capacity {
        #[arg(short = 'o', long, default_value = "text")]
        output: jobs::Output,
    },
    /// Job templates that EventBridge events submit (list; put, show, submit).
    Templates {
        #[command(subcommand)]
        command: Option<autoscaler::TemplatesCommand>,
    },
    /// The autoscaler: its decisions tick by tick (`history`) and its settings.
    Autoscaler {
        #[command(subcommand)]
        command: autoscaler::AutoscalerCommand,
    },
    /// The local stack.
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
    },
    /// Start the local stack, run a sample job with progress, print its summary, stop.
    Demo {
        /// The sample file; its first job runs.
        #[arg(long, default_value = "samples.yaml")]
        samples: PathBuf,
        /// Which job in the file to run (by name; default the first).
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        stack: dev::StackArgs,
    },
    /// Benchmark the local stack against `xargs -P` and write JSON.
    Bench(bench::BenchArgs),
    /// Run a workload on the local stack under sustained faults (throttling, resets,
    /// lost answers, unprocessed batches, redelivered messages and stream batches, killed
    /// and stopped taskhosts) and check that nothing was lost, doubled or overlapped;
    /// prints a table, writes JSON, exits 1 if a check failed.
    Chaos(commands::chaos::ChaosArgs),
    /// Simulate a workload with and without resource tiers: reserved versus used
    /// memory-hours; prints a table and writes JSON.
    BenchTiers(bench::tiers::TierBenchArgs),
    /// Simulate the autoscaling policies on workload traces (a benchmark of the policy:
    /// makespan, waits, worker- and node-hours, dollars, utilisation); writes JSON.
    BenchAutoscaler(bench::autoscaler::SimArgs),
    /// Placement throughput and latency (p50/p99) under contention from N concurrent
    /// callers, DynamoDB requests per grant, beside a floor of plain conditional writes;
    /// prints a table and writes JSON.
    BenchPlacement(bench::placement::PlacementBenchArgs),
    /// ListJobs' questions against a queue with no history and with 10,000 finished
    /// jobs, each from its own index beside a read of the whole queue; prints a table and
    /// writes JSON.
    BenchListing(bench::listing::ListingBenchArgs),
    /// Replay a million-task job's writes at 11,600 tasks/s through the store's key
    /// functions: the busiest partition key of each item kind against DynamoDB's 1,000
    /// WCU per partition; prints a table and writes JSON.
    BenchKeys(bench::keys::KeysBenchArgs),
    /// A million-task DAG checked by the CLI and sent in pages through the local stack's
    /// API, beside the same items written with plain BatchWriteItem at the same
    /// concurrency; prints a table and writes JSON.
    BenchPages(bench::pages::PagesBenchArgs),
    /// A 100,000-task DAG end to end through the local stack, sent in pages, beside
    /// `xargs -P`; a small job submitted while it runs; the same DAG cancelled while it
    /// runs; prints a table and writes JSON.
    BenchLarge(bench::large::LargeBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        batchplane::telemetry::init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let api = || -> anyhow::Result<client::Api> {
        let url = match &cli.api_url {
            Some(u) => u.clone(),
            None => dev::running_api_url().ok_or_else(|| {
                anyhow::anyhow!("no API URL: pass --api-url, set BATCHPLANE_API_URL, or start the local stack with `batchplane dev up`")
            })?,
        };
        client::Api::new(&url)
    };
    match &cli.command {
        Command::Submit {
            file,
            job,
            dry_run: true,
            ..
        } => jobs::dry_run(file, job.as_deref()),
        Command::Submit {
            file,
            wait,
            idempotency_key,
            job,
            dry_run: false,
            page_tasks,
        } => {
            jobs::submit(
                &api()?,
                file,
                job.as_deref(),
                *wait,
                idempotency_key.as_deref(),
                *page_tasks,
            )
            .await
        }
        Command::Jobs(args) => commands::listing::list(&api()?, args).await,
        Command::Console(args) => console::run(api()?, args).await,
        Command::Status { job, output } => jobs::status(&api()?, job, *output).await,
        Command::Tasks { job, state, output } => {
            jobs::tasks(&api()?, job, state.as_deref(), *output).await
        }
        Command::Task { job, task, output } => jobs::task(&api()?, job, task, *output).await,
        Command::Logs {
            job,
            task,
            attempt,
            follow,
            stderr,
        } => logs::logs(&api()?, job, task, *attempt, *follow, *stderr).await,
        Command::Cancel { job } => jobs::cancel(&api()?, job).await,
        Command::Explain { job, task, output } => {
            jobs::explain(&api()?, job, task.as_deref(), *output).await
        }
        Command::Usage {
            job,
            team,
            days,
            output,
        } => match (job, team) {
            (Some(job), _) => jobs::usage(&api()?, job, *output).await,
            (None, Some(team)) => jobs::team_usage(&api()?, team, *days, *output).await,
            (None, None) => anyhow::bail!("give a JOB or --team TEAM"),
        },
        Command::Repro { job, task, run } => {
            let api = api()?;
            repro::run(&api, api.base(), job, task, *run).await
        }
        Command::Add { job, file } => jobs::add(&api()?, job, file).await,
        Command::Teams { command, output } => {
            admin::teams(&api()?, command.as_ref(), *output).await
        }
        Command::Clusters { command, output } => {
            admin::clusters(&api()?, command.as_ref(), *output).await
        }
        Command::Capacity { output } => admin::capacity(&api()?, *output).await,
        Command::Access { command, output } => {
            access::run(&api()?, command.as_ref(), *output).await
        }
        Command::Autoscaler { command } => autoscaler::run(&api()?, command).await,
        Command::Templates { command } => autoscaler::templates(&api()?, command.as_ref()).await,
        Command::Dev { command } => dev::run(command).await,
        Command::Demo {
            samples,
            job,
            stack,
        } => interruptible(dev::demo(samples, job.as_deref(), stack)).await,
        Command::Bench(args) => interruptible(bench::run(args)).await,
        Command::Chaos(args) => interruptible(commands::chaos::run(args)).await,
        Command::BenchTiers(args) => bench::tiers::run(args),
        Command::BenchAutoscaler(args) => bench::autoscaler::run(args),
        Command::BenchPlacement(args) => interruptible(bench::placement::run(args)).await,
        Command::BenchListing(args) => interruptible(bench::listing::run(args)).await,
        Command::BenchKeys(args) => bench::keys::run(args),
        Command::BenchPages(args) => interruptible(bench::pages::run(args)).await,
        Command::BenchLarge(args) => interruptible(bench::large::run(args)).await,
    }
}

/// A command that starts emulators and workers, stopped by SIGTERM or Ctrl-C by being
/// dropped: its stacks kill their workers and its emulators stop on the way out, so
/// nothing it started outlives it.
async fn interruptible(
    command: impl std::future::Future<Output = anyhow::Result<u8>>,
) -> anyhow::Result<u8> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = command => r,
        _ = term.recv() => {
            eprintln!("stopped by SIGTERM: stopping what it started");
            Ok(143)
        }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: stopping what it started");
            Ok(130)
        }
    }
}
