//! The local stack from the command line: `dev up` (in the background), `dev down`,
//! `dev run` (in the foreground), and `demo` (up, one sample job, summary, down).

use crate::client::Api;
use crate::commands::jobs;
use anyhow::{bail, Context};
use batchplane_local::emulators::{free_port, Emulators};
use batchplane_local::{LocalStack, StackOptions};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// API port (0: any free port).
    #[arg(long, default_value_t = 8750)]
    pub api_port: u16,
    /// DynamoDB Local port (0: any free port).
    #[arg(long, default_value_t = 8751)]
    pub dynamodb_port: u16,
    /// moto (SQS) port (0: any free port).
    #[arg(long, default_value_t = 8752)]
    pub sqs_port: u16,
    /// Local taskhost processes started with the stack (the autoscaler starts more as
    /// queues need them).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// vCPUs each taskhost offers (also the autoscaler's default worker size here).
    /// Default: 4, or this machine's CPUs where it has fewer.
    #[arg(long, default_value_t = batchplane_local::options::machine_worker_cpus())]
    pub worker_cpus: f64,
    /// Memory each taskhost offers, MiB. Default: 4096, or a quarter of the local
    /// cluster where that is less.
    #[arg(long, default_value_t = batchplane_local::options::machine_worker_memory_mib())]
    pub worker_memory_mib: u64,
    /// Task lease, seconds.
    #[arg(long, default_value_t = 30)]
    pub lease_seconds: u64,
    /// A worker for a tier shape's pools, `CPU:MEMORY_MIB[:GPU][xSLOTS]` (e.g. `1:1024x4`:
    /// four 1-vCPU, 1 GiB tasks at once); repeat for more shapes.
    /// Add `@TEAM` to place it for a team other than `default` (`2:8192@vision`); a
    /// worker placement refuses is tried again every second.
    #[arg(long = "pool")]
    pub pools: Vec<batchplane_local::PoolWorkers>,
    /// A local cluster workers are placed in, `NAME:CPU:MEMORY_MIB[:GPU]`; repeat for
    /// more. Default: `local`, this machine's CPUs and three quarters of its memory, so
    /// the autoscaler starts no more work than the machine can run.
    #[arg(long = "cluster")]
    pub clusters: Vec<batchplane_local::LocalCluster>,
    /// Queues the workers serve, comma-separated, in the order they are polled when job
    /// queues do not say otherwise (AWS Batch job queues created later need listing here).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Run the autoscaler every this many seconds (0: off), as a deployment runs it on
    /// its schedule: it places and starts workers for every pool with a backlog (job
    /// queues created later, tier pools, images) in the local clusters; its workers
    /// exit after 30 idle seconds.
    #[arg(long, default_value_t = 2)]
    pub autoscale_seconds: u64,
    /// Where the stack keeps its pid, logs and task output.
    #[arg(long, default_value = ".batchplane/dev")]
    pub state_dir: PathBuf,
    /// Make no one an admin but those `--admin` names. Without it, unsigned requests
    /// (`anonymous`) and the access key in this environment's `AWS_ACCESS_KEY_ID` are
    /// the admin, so the quick start needs no grants whether the CLI signs or not. The local
    /// stack takes the access key id a request is signed with as the caller without
    /// checking the signature.
    #[arg(long)]
    pub strict: bool,
    /// More admins: access key ids or patterns, comma-separated.
    #[arg(long = "admin", value_delimiter = ',')]
    pub admins: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Start the local stack in the background and print the API URL.
    Up(StackArgs),
    /// Stop everything `dev up` started.
    Down {
        #[arg(long, default_value = ".batchplane/dev")]
        state_dir: PathBuf,
    },
    /// Run the local stack in the foreground until interrupted.
    Run(StackArgs),
}

#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    pid: u32,
    api_url: String,
    dynamodb_url: String,
    sqs_url: String,
    table: String,
    queue_prefix: String,
}

const DEFAULT_STATE_DIR: &str = ".batchplane/dev";

/// The API URL of a `dev` stack running from this directory, if any.
pub fn running_api_url() -> Option<String> {
    let text = std::fs::read_to_string(Path::new(DEFAULT_STATE_DIR).join("ready.json")).ok()?;
    let ready: Ready = serde_json::from_str(&text).ok()?;
    alive(ready.pid).then_some(ready.api_url)
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn port(p: u16) -> anyhow::Result<u16> {
    if p == 0 {
        free_port()
    } else {
        Ok(p)
    }
}

/// Start emulators and a stack with the fixed names `dev` uses.
async fn start_stack(args: &StackArgs) -> anyhow::Result<(Emulators, LocalStack)> {
    let state = std::path::absolute(&args.state_dir)?;
    let emulators = Emulators::start(
        &state.join("emulators"),
        port(args.dynamodb_port)?,
        port(args.sqs_port)?,
    )?;
    let mut opts = StackOptions::new(
        &emulators.dynamodb_url,
        &emulators.sqs_url,
        &state.join("logs"),
    )?;
    opts.table = "batchplane".into();
    opts.queue_prefix = "batchplane-".into();
    opts.api_port = args.api_port;
    opts.workers = args.workers;
    opts.worker_cpus = args.worker_cpus;
    opts.worker_memory_mib = args.worker_memory_mib;
    opts.lease_seconds = args.lease_seconds;
    opts.queues = args.queues.clone();
    opts.pools = args.pools.clone();
    if args.autoscale_seconds > 0 {
        opts.autoscale_every = Some(std::time::Duration::from_secs(args.autoscale_seconds));
        opts.idle_timeout_seconds = 30;
    }
    opts.clusters = if args.clusters.is_empty() {
        vec![batchplane_local::options::machine_cluster()]
    } else {
        args.clusters.clone()
    };
    if args.strict {
        opts.admins.clear();
    } else if let Ok(key) = std::env::var("AWS_ACCESS_KEY_ID") {
        // The CLI signs with these credentials when it has them: whoever starts the
        // stack is its admin either way.
        if batchplane::domain::access::check_principal(&key).is_ok() {
            opts.admins.push(key);
        }
    }
    for a in &args.admins {
        batchplane::domain::access::check_principal(a).context("--admin")?;
        opts.admins.push(a.clone());
    }
    let stack = LocalStack::start(opts).await?;
    Ok((emulators, stack))
}

pub async fn run(cmd: &DevCommand) -> anyhow::Result<u8> {
    match cmd {
        DevCommand::Run(args) => run_here(args).await,
        DevCommand::Up(args) => up(args).await,
        DevCommand::Down { state_dir } => down(state_dir).await,
    }
}

/// `dev run`: the stack in this process, until SIGTERM or Ctrl-C.
async fn run_here(args: &StackArgs) -> anyhow::Result<u8> {
    let (mut emulators, stack) = start_stack(args).await?;
    let ready = Ready {
        pid: std::process::id(),
        api_url: stack.api_url.clone(),
        dynamodb_url: stack.opts.dynamodb_url.clone(),
        sqs_url: stack.opts.sqs_url.clone(),
        table: stack.opts.table.clone(),
        queue_prefix: stack.opts.queue_prefix.clone(),
    };
    let ready_path = args.state_dir.join("ready.json");
    std::fs::write(&ready_path, serde_json::to_vec_pretty(&ready)?)?;
    println!("Batchplane local stack is up: API {}", stack.api_url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("stopping");
    let _ = std::fs::remove_file(&ready_path);
    // Workers get five seconds to finish their tasks; a second signal, or ten seconds
    // in all, kills what is left at once.
    let backend = stack.backend.clone();
    let result = tokio::select! {
        r = stack.shutdown_within(Duration::from_secs(5)) => r,
        _ = term.recv() => Err(anyhow::anyhow!("stopped at once on a second signal")),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("stopped at once on a second signal")),
        _ = tokio::time::sleep(Duration::from_secs(10)) => Err(anyhow::anyhow!("the stack did not stop within 10 s; killed")),
    };
    backend.kill_all();
    emulators.stop();
    result?;
    Ok(0)
}

/// `dev up`: `dev run` in the background; returns once its API answers.
async fn up(args: &StackArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.state_dir)?;
    if let Some(url) = running_api_url() {
        println!("already up: API {url}");
        return Ok(0);
    }
    let ready_path = args.state_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready_path);
    let log_path = args.state_dir.join("dev.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["dev", "run"])
        .arg("--api-port")
        .arg(args.api_port.to_string())
        .arg("--dynamodb-port")
        .arg(args.dynamodb_port.to_string())
        .arg("--sqs-port")
        .arg(args.sqs_port.to_string())
        .arg("--workers")
        .arg(args.workers.to_string())
        .arg("--worker-cpus")
        .arg(args.worker_cpus.to_string())
        .arg("--worker-memory-mib")
        .arg(args.worker_memory_mib.to_string())
        .arg("--lease-seconds")
        .arg(args.lease_seconds.to_string())
        .arg("--queues")
        .arg(args.queues.join(","))
        .arg("--autoscale-seconds")
        .arg(args.autoscale_seconds.to_string())
        .args(
            args.pools
                .iter()
                .flat_map(|p| ["--pool".to_string(), p.to_string()]),
        )
        .args(
            args.clusters
                .iter()
                .flat_map(|c| ["--cluster".to_string(), c.to_string()]),
        )
        .arg("--state-dir")
        .arg(&args.state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    std::fs::write(args.state_dir.join("dev.pid"), child.id().to_string())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready_path) {
            let ready: Ready = serde_json::from_str(&text)?;
            println!("Batchplane local stack is up: API {}", ready.api_url);
            println!("  export BATCHPLANE_API_URL={}", ready.api_url);
            println!("  logs: {}", log_path.display());
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the local stack exited ({status}) before it was up:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the local stack was not up after 5 minutes; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `dev down`: stop the background stack, and whatever it could not stop itself.
async fn down(state_dir: &Path) -> anyhow::Result<u8> {
    let pid_path = state_dir.join("dev.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_path) else {
        println!("nothing to stop");
        return Ok(0);
    };
    let pid: u32 = pid.trim().parse().context("dev.pid")?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    // The stack stops itself within ten seconds however loaded; past fifteen its whole
    // process group is killed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if alive(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Whatever the stack could not stop itself (it was killed), stop here.
    let _ = std::process::Command::new("bash")
        .arg(batchplane_local::emulators::script())
        .arg("stop")
        .arg(state_dir.join("emulators"))
        .status();
    let _ = std::fs::remove_file(&pid_path);
    let _ = std::fs::remove_file(state_dir.join("ready.json"));
    println!("stopped");
    Ok(0)
}

/// Up, run one sample job with progress, print its summary and tasks, down.
pub async fn demo(samples: &Path, name: Option<&str>, args: &StackArgs) -> anyhow::Result<u8> {
    let job = jobs::pick_job(samples, name)?;
    let mut args = args.clone();
    // The demo never collides with a running `dev` stack: it takes free ports.
    args.api_port = 0;
    args.dynamodb_port = 0;
    args.sqs_port = 0;
    args.state_dir = args.state_dir.with_file_name("demo");
    eprintln!(
        "starting the local stack (DynamoDB Local, moto, api, fanout, {} taskhosts)…",
        args.workers
    );
    let (mut emulators, stack) = start_stack(&args).await?;
    eprintln!("API {}", stack.api_url);
    let result = async {
        let api = Api::new(&stack.api_url)?;
        let resp = api.post("/v1/jobs", job.to_string(), None).await?;
        let job_id = resp["job_id"].as_str().context("no job_id")?.to_string();
        eprintln!(
            "submitted {} as {job_id}",
            job["name"].as_str().unwrap_or("?")
        );
        let done = jobs::wait_for(&api, &job_id, true).await?;
        jobs::print_summary(&done);
        if done["total_tasks"].as_u64().unwrap_or(0) <= 40 {
            println!();
            jobs::tasks(&api, &job_id, None, jobs::Output::Text).await?;
        }
        Ok::<_, anyhow::Error>(done["state"] == "SUCCEEDED")
    }
    .await;
    eprintln!("stopping the local stack…");
    let stopped = stack.shutdown().await;
    emulators.stop();
    stopped?;
    Ok(if result? { 0 } else { 1 })
}
