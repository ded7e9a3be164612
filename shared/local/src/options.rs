//! What a local stack is made of: its options (emulators, table and queue names, workers,
//! pools, clusters), the local clusters' capacity and the default team's quota.

use crate::streams::PollerOptions;
use anyhow::bail;
use batchplane::domain::placement::Resources;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What each default local cluster may hold: generous, since local workers share one
/// machine and placement here is about quotas and enable/disable, not real capacity.
pub(crate) static LOCAL_CLUSTER_CAPACITY: std::sync::LazyLock<Resources> =
    std::sync::LazyLock::new(|| Resources {
        cpu_milli: 256_000,
        memory_mib: 1024 * 1024,
        gpus: [(batchplane::domain::placement::ANY_GPU.to_string(), 16)].into(),
    });

/// This machine's CPUs and memory (MiB), as `dev` sizes its cluster by them.
pub fn machine() -> (u32, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kib| kib / 1024);
    (cpus, memory_mib)
}

/// The one local cluster of `dev`: this machine's CPUs and three quarters of its memory
/// (the rest is for the emulators and the stack itself), so the autoscaler cannot
/// place more work than the machine can run.
pub fn machine_cluster() -> LocalCluster {
    let (cpus, memory_mib) = machine();
    LocalCluster {
        name: "local".into(),
        capacity: Resources {
            cpu_milli: u64::from(cpus) * 1000,
            memory_mib: memory_mib * 3 / 4,
            ..Default::default()
        },
    }
}

/// A `dev` worker's vCPUs: 4, or the machine's CPUs where it has fewer.
pub fn machine_worker_cpus() -> f64 {
    f64::from(machine().0.min(4))
}

/// A `dev` worker's memory: 4 GiB, or a quarter of what the machine's cluster holds.
pub fn machine_worker_memory_mib() -> u64 {
    (machine_cluster().capacity.memory_mib / 4).clamp(512, 4096)
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub dynamodb_url: String,
    pub sqs_url: String,
    /// Table and queue-name prefix: unique per stack, so stacks can share emulators.
    pub table: String,
    pub queue_prefix: String,
    pub queues: Vec<String>,
    /// 0: any free port.
    pub api_port: u16,
    pub workers: usize,
    pub worker_cpus: f64,
    pub worker_memory_mib: u64,
    pub lease_seconds: u64,
    /// 0: workers never exit for idleness.
    pub idle_timeout_seconds: u64,
    pub log_dir: PathBuf,
    pub taskhost: PathBuf,
    pub poller: PollerOptions,
    /// Where workers write their request counts on exit (benchmarks).
    pub metrics_dir: Option<PathBuf>,
    /// Children of one array job queued at once.
    pub job_window: u32,
    /// Seconds of its claims a windowed job's window follows (0: fixed at `job_window`).
    pub window_seconds: f64,
    /// The shortest attempt timeout a job may ask for (AWS Batch's 60 s unless a test
    /// wants a timeout to fire quickly).
    pub min_attempt_seconds: u64,
    /// Tier pools to run a worker for, each with how many tasks of its shape the worker
    /// runs at once: the worker serves that shape's pool of every queue.
    pub pools: Vec<PoolWorkers>,
    /// The local "clusters" workers are placed in (each a capacity; all on this machine).
    pub clusters: Vec<LocalCluster>,
    /// The team the stack's own workers are placed for (given a quota if it has none).
    pub team: String,
    /// Run the autoscaler this often (the scheduled Lambda's minute, shortened); its
    /// workers are placed in the local clusters. `None`: only the fixed workers.
    pub autoscale_every: Option<Duration>,
    /// Who the API takes the caller to be: the signing key id (`AccessKeyId`, the
    /// default), or that and API Gateway's refusal of signatures for other services
    /// (`ApiGatewayKeyId`).
    pub identity: batchplane::config::IdentitySource,
    /// The deployment's admins: principals (here, access key ids) or patterns.
    /// Default `anonymous`, so unsigned requests may do everything; empty: nobody.
    pub admins: Vec<String>,
    /// The taskhosts' `--task-uids` (`START-END` or `none`); `None`: their default.
    pub task_uids: Option<String>,
    /// The taskhosts' `--memory-enforcement` (`auto` or `poll`); `None`: their default.
    pub memory_enforcement: Option<String>,
    /// The taskhosts' `--hold-ms` (how long a task waits in a full worker before it is
    /// handed back); `None`: their default.
    pub worker_hold_ms: Option<u64>,
    /// The taskhosts' `--chain-successors` (run an array child's N_TO_N successor
    /// child next, on the same worker); default on.
    pub chain_successors: bool,
    /// Receives after which a pool's message is dead-lettered (AWS: 100).
    pub max_receives: u32,
    /// How often the reconciler runs (the autoscaler's schedule in AWS), in seconds.
    pub reconcile_every_seconds: u64,
    /// The job roles tasks may name, as a deployment's `JobRoleServiceAccounts` lists
    /// them; `None` (the default): any role, recorded and not assumed.
    pub job_roles: Option<std::collections::BTreeSet<String>>,
    /// Where workers started from now on reach DynamoDB and SQS, when not where the
    /// stack does (a fault proxy in front of some workers only). `None`: the same.
    pub worker_endpoints: Option<WorkerEndpoints>,
}

/// DynamoDB and SQS endpoints for workers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEndpoints {
    pub dynamodb_url: String,
    pub sqs_url: String,
}

/// A local cluster: a name and what placement may put there.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCluster {
    pub name: String,
    pub capacity: Resources,
}

impl std::str::FromStr for LocalCluster {
    type Err = String;

    /// `NAME:CPU:MEMORY_MIB[:GPU]`, e.g. `local-a:64:262144`.
    fn from_str(text: &str) -> Result<LocalCluster, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || format!("{text:?}: expected NAME:CPU:MEMORY_MIB[:GPU]");
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        batchplane::domain::placement::check_label("cluster name", parts[0], 40)
            .map_err(|e| e.to_string())?;
        let cpu: f64 = parts[1].parse().map_err(|_| bad())?;
        let mut capacity = Resources {
            cpu_milli: (cpu * 1000.0).round() as u64,
            memory_mib: parts[2].parse().map_err(|_| bad())?,
            ..Default::default()
        };
        if let Some(g) = parts.get(3) {
            capacity.gpus.insert(
                batchplane::domain::placement::ANY_GPU.into(),
                g.parse().map_err(|_| bad())?,
            );
        }
        Ok(LocalCluster {
            name: parts[0].into(),
            capacity,
        })
    }
}

impl std::fmt::Display for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.name,
            batchplane::domain::placement::vcpus(self.capacity.cpu_milli),
            self.capacity.memory_mib
        )?;
        let gpus: u64 = self.capacity.gpus.values().sum();
        if gpus > 0 {
            write!(f, ":{gpus}")?;
        }
        Ok(())
    }
}

/// One worker for a tier shape, offering `slots` times the shape, placed for `team`
/// (the stack's team when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolWorkers {
    pub shape: batchplane::domain::tiers::Tier,
    pub slots: u32,
    pub team: Option<String>,
}

impl std::fmt::Display for PoolWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}x{}",
            self.shape.cpu(),
            self.shape.memory_mib,
            self.shape.gpu,
            self.slots
        )?;
        if let Some(t) = &self.team {
            write!(f, "@{t}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PoolWorkers {
    type Err = String;

    /// `CPU:MEMORY_MIB[:GPU][xSLOTS][@TEAM]`, e.g. `1:1024x4`, `2:8192@vision`.
    fn from_str(full: &str) -> Result<PoolWorkers, String> {
        let (text, team) = match full.split_once('@') {
            Some((t, team)) if !team.is_empty() => (t, Some(team.to_string())),
            Some(_) => return Err(format!("{full:?}: a team name must follow '@'")),
            None => (full, None),
        };
        let (shape, slots) = match text.rsplit_once('x') {
            Some((s, n)) => (
                s,
                n.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{text:?}: slots {n:?} must be a positive count"))?,
            ),
            None => (text, 1),
        };
        Ok(PoolWorkers {
            shape: batchplane::domain::tiers::Tier::parse_shape(shape)?,
            slots,
            team,
        })
    }
}

impl StackOptions {
    /// How the stack's fanout sizes windowed jobs' windows.
    pub fn window_policy(&self) -> batchplane::store::WindowPolicy {
        batchplane::store::WindowPolicy {
            seconds: self.window_seconds,
        }
    }

    /// Defaults for a stack on the given emulators, with names unique to this stack.
    pub fn new(dynamodb_url: &str, sqs_url: &str, log_dir: &Path) -> anyhow::Result<StackOptions> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Ok(StackOptions {
            dynamodb_url: dynamodb_url.into(),
            sqs_url: sqs_url.into(),
            table: format!("batchplane-{}", &id[..8]),
            queue_prefix: format!("bp{}-", &id[..8]),
            queues: vec!["default".into()],
            api_port: 0,
            workers: 2,
            worker_cpus: 4.0,
            worker_memory_mib: 4096,
            lease_seconds: 30,
            idle_timeout_seconds: 0,
            log_dir: log_dir.to_path_buf(),
            taskhost: taskhost_exe()?,
            poller: PollerOptions::default(),
            metrics_dir: None,
            job_window: 256,
            window_seconds: 1.0,
            min_attempt_seconds: 60,
            pools: Vec::new(),
            clusters: vec![
                LocalCluster {
                    name: "local-a".into(),
                    capacity: LOCAL_CLUSTER_CAPACITY.clone(),
                },
                LocalCluster {
                    name: "local-b".into(),
                    capacity: LOCAL_CLUSTER_CAPACITY.clone(),
                },
            ],
            team: "default".into(),
            autoscale_every: None,
            identity: batchplane::config::IdentitySource::AccessKeyId,
            admins: vec![batchplane::domain::access::ANONYMOUS.into()],
            task_uids: None,
            memory_enforcement: None,
            worker_endpoints: None,
            max_receives: batchplane::queue::MAX_RECEIVES,
            worker_hold_ms: None,
            chain_successors: true,
            reconcile_every_seconds: 10,
            job_roles: None,
        })
    }
}

/// The quota the stack's team gets when it has none.
pub(crate) fn local_team_quota() -> Resources {
    Resources {
        cpu_milli: 512_000,
        memory_mib: 2 * 1024 * 1024,
        gpus: [(batchplane::domain::placement::ANY_GPU.to_string(), 32)].into(),
    }
}

/// How long a local worker's placement holds without a renewal.
pub(crate) const LOCAL_RESERVATION_LEASE: Duration = Duration::from_secs(300);

/// The taskhost binary: `BATCHPLANE_TASKHOST`, or beside the running executable (for
/// `target/debug/batchplane`), or one folder up (for test binaries in `target/debug/deps`).
pub fn taskhost_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATCHPLANE_TASKHOST") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("taskhost");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the taskhost binary near {}; build it (cargo build -p batchplane-taskhost) or set BATCHPLANE_TASKHOST",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dev`'s cluster is this machine, and its default worker fits in it: the
    /// autoscaler cannot place more than the machine runs, and can place one worker.
    #[test]
    fn the_dev_cluster_is_this_machine_and_its_worker_fits() {
        let (cpus, memory_mib) = machine();
        let cluster = machine_cluster();
        assert_eq!(cluster.capacity.cpu_milli, u64::from(cpus) * 1000);
        assert!(cluster.capacity.memory_mib < memory_mib);
        assert!(cluster.capacity.gpus.is_empty());
        let worker_milli = (machine_worker_cpus() * 1000.0) as u64;
        assert!(worker_milli <= cluster.capacity.cpu_milli && worker_milli >= 1000);
        assert!(machine_worker_memory_mib() <= cluster.capacity.memory_mib);
        assert!(machine_worker_memory_mib() <= 4096);
    }
}
