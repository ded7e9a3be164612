//! `batchplane chaos`: the local stack under sustained faults, checked from a ledger the
//! tasks keep (see `batchplane_local::chaos`). Prints a table, writes JSON, and exits 1
//! when a check failed.

use batchplane_local::chaos::{ChaosOptions, ChaosReport};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// About how many tasks the workload has.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, default_value_t = 2.0)]
    pub worker_cpus: f64,
    #[arg(long, default_value_t = 6)]
    pub lease_seconds: u64,
    /// Share of DynamoDB and SQS calls throttled (AWS's own error shapes).
    #[arg(long, default_value_t = 0.3)]
    pub throttle: f64,
    /// Share of calls cut off before they reach the emulator.
    #[arg(long, default_value_t = 0.01)]
    pub reset: f64,
    /// Share applied and then cut off, the answer lost.
    #[arg(long, default_value_t = 0.01)]
    pub lose_answer: f64,
    /// Share delayed, by up to --latency-max-ms.
    #[arg(long, default_value_t = 0.05)]
    pub latency: f64,
    #[arg(long, default_value_t = 200)]
    pub latency_max_ms: u64,
    /// Share of batch calls answered with entries unprocessed.
    #[arg(long, default_value_t = 0.2)]
    pub unprocessed: f64,
    /// Share of SQS deletes acknowledged and not done (the message comes again).
    #[arg(long, default_value_t = 0.05)]
    pub skip_delete: f64,
    /// Share of stream batches delivered cut short, then whole.
    #[arg(long, default_value_t = 0.2)]
    pub stream_cut_short: f64,
    /// Taskhosts to SIGKILL.
    #[arg(long, default_value_t = 100)]
    pub kills: u32,
    /// Taskhosts to SIGSTOP past their lease, then SIGCONT.
    #[arg(long, default_value_t = 50)]
    pub stops: u32,
    /// Skip the fault-free run the makespan is compared with.
    #[arg(long)]
    pub no_baseline: bool,
    #[arg(long, default_value_t = 3600)]
    pub timeout_seconds: u64,
    #[arg(long, default_value = "bench-results/chaos.json")]
    pub out: PathBuf,
}

pub async fn run(args: &ChaosArgs) -> anyhow::Result<u8> {
    let opts = ChaosOptions {
        tasks: args.tasks,
        workers: args.workers,
        worker_cpus: args.worker_cpus,
        lease_seconds: args.lease_seconds,
        throttle: args.throttle,
        reset: args.reset,
        lose_answer: args.lose_answer,
        latency: args.latency,
        latency_max_ms: args.latency_max_ms,
        unprocessed: args.unprocessed,
        skip_delete: args.skip_delete,
        stream_cut_short: args.stream_cut_short,
        kills: args.kills,
        stops: args.stops,
        baseline: !args.no_baseline,
        timeout_seconds: args.timeout_seconds,
    };
    let state = std::env::temp_dir().join(format!("batchplane-chaos-{}", std::process::id()));
    eprintln!(
        "== chaos: about {} tasks, {} kills, {} stops, {:.0}% throttled",
        opts.tasks,
        opts.kills,
        opts.stops,
        opts.throttle * 100.0
    );
    let report: ChaosReport = batchplane_local::chaos::run_isolated(&state, &opts).await?;
    print!("{}", report.table());
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("wrote {}", args.out.display());
    Ok(if report.passed() { 0 } else { 1 })
}
