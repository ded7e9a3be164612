//! The taskhost's options (flags and their environment variables) and what it offers
//! its tasks when they say nothing: the machine's CPUs, memory and GPUs.

use batchplane::domain::tiers::Tier;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "taskhost",
    about = "Run Batchplane tasks from a queue as unix processes"
)]
pub struct Options {
    /// The Batchplane queues (job queues) to take tasks from, comma-separated. Where a
    /// queue is a registered job queue, higher priority is served first.
    #[arg(long, env = "BATCHPLANE_QUEUE", default_value = "default")]
    pub queue: String,
    /// The team this worker is placed for: it serves only the team's pools, so it runs
    /// only the team's tasks.
    #[arg(long, env = "BATCHPLANE_TEAM", default_value = "default")]
    pub team: String,
    /// This worker's id in attempts and leases (default: host name and pid).
    #[arg(long, env = "BATCHPLANE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// vCPUs this worker offers its tasks (default: the machine's).
    #[arg(long, env = "BATCHPLANE_WORKER_CPUS")]
    pub cpus: Option<f64>,
    /// Memory this worker offers its tasks, in MiB (default: the machine's).
    #[arg(long, env = "BATCHPLANE_WORKER_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    /// GPUs this worker offers its tasks (default: those NVML sees, else none).
    #[arg(long, env = "BATCHPLANE_WORKER_GPUS")]
    pub gpus: Option<u32>,
    /// Serve the pools of this tier shape, `CPU:MEMORY_MIB[:GPU]` (e.g. `2:8192`), of
    /// each queue, instead of the queues' own pools. Without --cpus/--memory-mib the
    /// worker offers one such slot.
    #[arg(long, env = "BATCHPLANE_WORKER_TIER", value_parser = parse_tier)]
    pub tier: Option<batchplane::domain::tiers::Tier>,
    /// Serve the pools of this container (its key, as pool names carry it): the worker
    /// was launched for the tasks of one image and job role.
    #[arg(long, env = "BATCHPLANE_CONTAINER", conflicts_with = "any_container")]
    pub container: Option<String>,
    /// Also serve the pools of every container of its queues and shape, found as they
    /// appear: a worker on a host with no container runtime (the local stack), which
    /// runs every image's tasks on the host and records that the image was not
    /// enforced.
    #[arg(long, env = "BATCHPLANE_ANY_CONTAINER")]
    pub any_container: bool,
    /// With `--any-container`: how often to look for new container pools, in ms.
    #[arg(long, env = "BATCHPLANE_POOL_SCAN_MS", default_value_t = 10_000)]
    pub pool_scan_ms: u64,
    /// This worker runs inside its container's image (a Kubernetes pod of the image,
    /// the taskhost injected): attempts record the image as enforced.
    #[arg(long, env = "BATCHPLANE_IN_IMAGE")]
    pub in_image: bool,
    /// How tasks are held to their memory: a cgroup where the host allows one (auto),
    /// or always rlimit + RSS polling.
    #[arg(
        long,
        env = "BATCHPLANE_MEMORY_ENFORCEMENT",
        value_enum,
        default_value = "auto"
    )]
    pub memory_enforcement: crate::memory::Preference,
    /// The uids attempts run as, `START-END`, one per running attempt (leased host-wide
    /// under --uid-lock-dir), or `none` to run them as the taskhost's own user. A
    /// taskhost that is not root runs them as itself and records `isolation: none`.
    #[arg(long, env = "BATCHPLANE_TASK_UIDS", default_value = "100000-165535", value_parser = parse_uids)]
    pub task_uids: crate::isolation::TaskUids,
    /// Where the taskhosts of this host lease uids (a directory only root may write).
    #[arg(
        long,
        env = "BATCHPLANE_UID_LOCK_DIR",
        default_value = "/tmp/batchplane/uids"
    )]
    pub uid_lock_dir: PathBuf,
    /// Exit after this many seconds with nothing to run (0: never).
    #[arg(long, env = "BATCHPLANE_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub idle_timeout_seconds: u64,
    /// Where each attempt's stdout and stderr are written.
    #[arg(
        long,
        env = "BATCHPLANE_LOG_DIR",
        default_value = "/tmp/batchplane/logs"
    )]
    pub log_dir: PathBuf,
    /// Ship each attempt's stdout and stderr to CloudWatch Logs while it runs
    /// (`cloudwatch`), or keep them in --log-dir only (`off`).
    #[arg(
        long,
        env = "BATCHPLANE_TASK_LOGS",
        value_enum,
        default_value = "cloudwatch"
    )]
    pub task_logs: TaskLogs,
    /// The API URL handed to tasks (so a task can add tasks to its own job).
    #[arg(long, env = "BATCHPLANE_API_URL")]
    pub api_url: Option<String>,
    /// Write this process's AWS request counts here as JSON on exit (benchmarks).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Long-poll wait for an empty queue, in seconds.
    #[arg(long, default_value_t = 2)]
    pub poll_wait_seconds: u64,
    /// Messages to hold beyond free capacity, at most, so a freed slot starts its next
    /// task without a round trip to SQS. Held messages stay invisible to other workers.
    /// Once the worker has seen its tasks' lengths it holds one only for each slot
    /// expected to free within `--prefetch-horizon-ms`.
    #[arg(long, env = "BATCHPLANE_PREFETCH", default_value_t = 4)]
    pub prefetch: usize,
    /// How far ahead of a slot's expected end its next message is fetched. Short: a
    /// message a full worker holds is one an idle worker elsewhere cannot start.
    #[arg(long, env = "BATCHPLANE_PREFETCH_HORIZON_MS", default_value_t = 300)]
    pub prefetch_horizon_ms: u64,
    /// Claim the next task just before a slot frees, when the tasks this worker runs are
    /// steady in length, so the slot starts it without waiting for the claim write.
    #[arg(long, env = "BATCHPLANE_CLAIM_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub claim_ahead: bool,
    /// Run an array child's N_TO_N successor child next, here, once the child succeeds
    /// (depth first, no message of its own), where the successor starts in the same
    /// pool and waits on that array alone. Off: the successor's children go through
    /// SQS and its release window as the stream releases them.
    #[arg(long, env = "BATCHPLANE_CHAIN_SUCCESSORS", default_value_t = true, action = clap::ArgAction::Set)]
    pub chain_successors: bool,
    /// A held message that has not found room this long goes back to the queue, so a
    /// free worker elsewhere can take it. Longer than most short tasks, so a full
    /// worker's next task is usually already in hand when a slot frees.
    #[arg(long, env = "BATCHPLANE_HOLD_MS", default_value_t = 5000)]
    pub hold_ms: u64,
    /// The placement reservation this worker was launched under (`<cluster>.<request>`):
    /// the worker renews its slot's lease each heartbeat and releases it on exit, so
    /// its team's quota is held exactly while it lives.
    #[arg(long, env = "BATCHPLANE_RESERVATION_ID", requires = "slot")]
    pub reservation: Option<String>,
    /// This worker's slot in the reservation.
    #[arg(long, env = "BATCHPLANE_RESERVATION_SLOT")]
    pub slot: Option<u32>,
    /// When the launcher asked for this worker (ms since the epoch): the worker reports
    /// its start-up time, which the autoscaler weighs against queued work.
    #[arg(long, env = "BATCHPLANE_LAUNCHED_AT")]
    pub launched_at: Option<i64>,
}

impl Options {
    /// What this worker offers its tasks: the flags', else its tier's, else the machine's.
    pub fn capacity(&self) -> Tier {
        let cpu = self.cpus.unwrap_or_else(|| match self.tier {
            Some(t) => t.cpu(),
            None => std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
        });
        Tier {
            cpu_milli: (cpu * 1000.0).round() as u32,
            memory_mib: self
                .memory_mib
                .unwrap_or_else(|| self.tier.map_or_else(machine_memory_mib, |t| t.memory_mib)),
            gpu: self
                .gpus
                .unwrap_or_else(|| self.tier.map_or_else(machine_gpus, |t| t.gpu)),
        }
    }

    /// This worker's id: the flag's, else the host name and pid.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

fn parse_uids(text: &str) -> Result<crate::isolation::TaskUids, String> {
    if text == "none" {
        return Ok(crate::isolation::TaskUids(None));
    }
    text.parse().map(|r| crate::isolation::TaskUids(Some(r)))
}

fn parse_tier(text: &str) -> Result<batchplane::domain::tiers::Tier, String> {
    batchplane::domain::tiers::Tier::parse_shape(text)
}

/// GPUs NVML sees here (none where it does not load).
fn machine_gpus() -> u32 {
    nvml_wrapper::Nvml::init()
        .ok()
        .and_then(|n| n.device_count().ok())
        .unwrap_or(0)
}

fn machine_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

/// Where attempts' output goes besides --log-dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskLogs {
    Cloudwatch,
    Off,
}
