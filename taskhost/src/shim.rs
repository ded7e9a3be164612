//! `taskhost exec --report FILE [--fence-file FILE] [--memory-limit-mib N]
//! [--memory-enforcement HOW] [--uid UID --workdir DIR] -- ARGV…`: run one task's command as this process's only
//! child, in a cgroup of its own where the host has one (held to its memory limit, see
//! [`crate::memory`]), as its own uid in its own directory (see [`crate::isolation`]),
//! wait for it, and write what it used (exit, signal, CPU user/sys, memory, GPU, whether
//! it ran out of memory) as JSON to FILE.
//!
//! When the task's main process exits, whatever it left behind is killed; so is the
//! whole task when the shim gets SIGTERM (the worker's cancel, timeout or lost lease) or
//! its worker dies: every process of the task's cgroup and every descendant of the shim
//! (it is a child subreaper, so a process that called `setsid` or double-forked is still
//! one), not only the process group. With `--fence-file`, also once the deadline the
//! worker keeps in that file passes (its lease was not renewed: see [`watch_fence`]).

use serde::{Deserialize, Serialize};
use std::os::unix::process::ExitStatusExt;

/// What the shim reports about the task it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub max_rss_kib: u64,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
    /// Resident memory of the task's processes, sampled every 100 ms.
    #[serde(default)]
    pub avg_rss_kib: u64,
    #[serde(default)]
    pub peak_rss_kib: u64,
    /// Present only where a GPU (NVML) is.
    #[serde(default)]
    pub gpu_peak_memory_mib: Option<u64>,
    #[serde(default)]
    pub gpu_utilization_percent: Option<f64>,
    /// Memory, CPU and GPU over the task's life (attempts long enough to chart).
    #[serde(default)]
    pub usage_series: Option<batchplane::domain::usage_series::UsageSeries>,
    /// The task was killed for exceeding its memory limit.
    #[serde(default)]
    pub out_of_memory: bool,
    /// How the limit was held (absent when the task had none).
    #[serde(default)]
    pub memory_enforcement: Option<String>,
    /// The task was killed because its worker's lease was not renewed in time (the
    /// fence file's deadline passed): another worker may take it over.
    #[serde(default)]
    pub fenced: bool,
}

impl Report {
    /// What the shim measured, into the attempt's record.
    pub fn record_into(&self, attempt: &mut batchplane::domain::AttemptRecord) {
        attempt.cpu_user_seconds = Some(self.cpu_user_seconds);
        attempt.cpu_system_seconds = Some(self.cpu_system_seconds);
        attempt.max_rss_kib = Some(self.max_rss_kib);
        attempt.avg_rss_kib = Some(self.avg_rss_kib);
        attempt.peak_rss_kib = Some(self.peak_rss_kib);
        attempt.gpu_peak_memory_mib = self.gpu_peak_memory_mib;
        attempt.gpu_utilization_percent = self.gpu_utilization_percent;
        attempt.usage_series = self.usage_series.clone();
        attempt.memory_enforcement = self.memory_enforcement.clone();
    }
}

/// The memory limit a task runs under (if any), and how it is held.
struct Limit {
    mib: Option<u64>,
    mechanism: crate::memory::Mechanism,
    /// Chosen by this shim (`auto`), not handed down by a worker: what it set up for
    /// the choice is its own to remove.
    chosen_here: bool,
}

fn seconds(tv: nix::sys::time::TimeVal) -> f64 {
    tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6
}

/// CPU time (user and system) of the shim's children that have been waited for.
fn children_cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| seconds(u.user_time()) + seconds(u.system_time()))
        .unwrap_or(0.0)
}

/// The task's cgroup, once made: what [`kill_task`] empties.
static TASK_GROUP: std::sync::OnceLock<crate::memory::TaskGroup> = std::sync::OnceLock::new();

/// Kill every process of the task: its cgroup's, and every descendant of the shim, each
/// stopped first so none forks past the kill.
fn kill_task() {
    if let Some(g) = TASK_GROUP.get() {
        g.kill_all();
    }
    let me = std::process::id() as i32;
    let tree = crate::sampler::Sampler::new(Some(me as u32));
    kill_pids(&tree.task_pids(), me);
}

fn kill_pids(pids: &[i32], except: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for sig in [Signal::SIGSTOP, Signal::SIGKILL] {
        for pid in pids.iter().filter(|p| **p != except) {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }
}

/// If the worker dies (killed, OOM, node lost), take the task down with it, as a pod's
/// containers go with the pod: another worker will run it again after the lease lapses,
/// and two copies must not run at once. On SIGTERM (the worker stopping the attempt),
/// the same, then exit.
fn watch_parent_and_sigterm() {
    // SIGTERM is blocked before any thread starts (so every thread inherits the mask and
    // none takes it by default, which would end the shim and leave the task), and taken
    // here, synchronously. The task's process gets a clean mask from std's spawn.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    if term.thread_block().is_ok() {
        std::thread::spawn(move || {
            if term.wait().is_ok() {
                kill_task();
                std::process::exit(143);
            }
        });
    }
    let parent = nix::unistd::getppid();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if nix::unistd::getppid() != parent {
            kill_task();
            let _ =
                nix::sys::signal::killpg(nix::unistd::getpgrp(), nix::sys::signal::Signal::SIGKILL);
            return;
        }
    });
}

/// Set once the fence has killed the task.
static FENCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How often the fence file is read.
const FENCE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Self-fencing, done here rather than in the worker so that it holds even when the
/// worker cannot act (stopped, stalled, or cut off from DynamoDB): the worker writes into
/// `file` the time (ms since the epoch) by which the attempt must be gone unless its
/// lease is renewed, and rewrites it at each renewal. Once that time passes, the whole
/// task is killed. An unreadable file keeps the last deadline read.
fn watch_fence(file: std::path::PathBuf) {
    let read = |f: &std::path::Path| -> Option<i64> {
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    };
    let mut deadline = read(&file);
    std::thread::spawn(move || loop {
        if let Some(d) = read(&file) {
            deadline = Some(d);
        }
        let now = chrono::Utc::now().timestamp_millis();
        if deadline.is_some_and(|d| now >= d) {
            FENCED.store(true, std::sync::atomic::Ordering::SeqCst);
            kill_task();
            return;
        }
        std::thread::sleep(FENCE_POLL);
    });
}

/// What running the task came to.
struct Outcome {
    status: std::process::ExitStatus,
    usage: crate::sampler::Usage,
    out_of_memory: bool,
    /// The mechanism that held the limit (a cgroup may fail for one task: then polling).
    enforcement: Option<&'static str>,
}

/// Kill the task's processes: stop them all first, so none forks past the kill.
fn kill_tree(sampler: &crate::sampler::Sampler) {
    kill_pids(&sampler.task_pids(), std::process::id() as i32);
}

/// Who the task runs as, and where.
#[derive(Debug, Default)]
struct RunAs {
    uid: Option<u32>,
    workdir: Option<String>,
}

/// Run the command under its limit and sample its process tree until it exits.
fn run_sampled(argv: &[String], limit: Option<&Limit>, run_as: &RunAs) -> std::io::Result<Outcome> {
    use crate::memory::{Mechanism, TaskGroup};
    use std::os::unix::process::CommandExt;
    let group = match limit {
        Some(Limit { mib, mechanism, .. }) if *mechanism != Mechanism::Poll => {
            TaskGroup::enter(mechanism, *mib).ok()
        }
        _ => None,
    };
    if let Some(g) = &group {
        let _ = TASK_GROUP.set(g.clone());
    }
    let poll_limit_kib = match (limit.and_then(|l| l.mib), &group) {
        (Some(mib), None) => {
            // No cgroup: the RSS poll below holds the limit; RLIMIT_DATA is the backstop.
            let backstop = crate::memory::data_backstop_bytes(mib);
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_DATA,
                backstop,
                backstop,
            );
            Some(mib * 1024)
        }
        _ => None,
    };
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let Some(uid) = run_as.uid {
        // std drops the supplementary groups too when root switches uid.
        command.uid(uid).gid(uid);
    }
    if let Some(dir) = &run_as.workdir {
        command.current_dir(dir);
    }
    let spawned = command.spawn();
    if let Some(g) = &group {
        g.leave();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(g) = &group {
                g.remove();
            }
            return Err(e);
        }
    };
    let root = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let mut sampler = crate::sampler::Sampler::new(Some(root));
    let mut polled_out = false;
    loop {
        let rss = sampler.sample();
        if let Some(max) = poll_limit_kib {
            if rss > max && !polled_out {
                polled_out = true;
                kill_tree(&sampler);
            }
        }
        if rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_ok()
        {
            break;
        }
    }
    let status = waiter
        .join()
        .map_err(|_| std::io::Error::other("the waiting thread panicked"))??;
    sampler.close(children_cpu_seconds());
    // The main process is gone: so is anything it left running.
    let leftovers = crate::sampler::Sampler::new(Some(std::process::id()));
    kill_tree(&leftovers);
    let limited = limit.filter(|l| l.mib.is_some());
    let (out_of_memory, enforcement) = match (&group, limited) {
        (Some(g), Some(l)) => (g.oom_killed(), Some(l.mechanism.name())),
        (None, Some(_)) => (polled_out, Some(crate::memory::POLL)),
        _ => (false, None),
    };
    if let Some(g) = &group {
        g.remove();
    }
    Ok(Outcome {
        status,
        usage: sampler.usage(),
        out_of_memory,
        enforcement,
    })
}

/// What the shim is asked to do.
struct Invocation {
    report: String,
    fence: Option<std::path::PathBuf>,
    limit: Option<Limit>,
    run_as: RunAs,
    argv: Vec<String>,
}

/// Parse `--report FILE [--memory-limit-mib N] [--memory-enforcement HOW] [--uid UID
/// --workdir DIR] -- ARGV…`.
fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut report = None;
    let mut fence = None;
    let mut limit_mib = None;
    let mut mechanism = None;
    let mut chosen_here = false;
    let mut run_as = RunAs::default();
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .cloned()
                .ok_or(format!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--" => {
                let argv = args[i + 1..].to_vec();
                if argv.is_empty() {
                    return Err("no command after --".into());
                }
                let report = report.ok_or("--report is required")?;
                let limit = match (limit_mib, mechanism) {
                    (None, None) => None,
                    (mib, mechanism) => Some(Limit {
                        mib,
                        mechanism: mechanism.unwrap_or(crate::memory::Mechanism::Poll),
                        chosen_here,
                    }),
                };
                if run_as.uid == Some(0) {
                    return Err("--uid 0: a task never runs as root".into());
                }
                return Ok(Invocation {
                    report,
                    fence,
                    limit,
                    run_as,
                    argv,
                });
            }
            "--uid" => {
                run_as.uid = Some(value()?.parse::<u32>().map_err(|e| format!("--uid: {e}"))?)
            }
            "--workdir" => run_as.workdir = Some(value()?),
            "--report" => report = Some(value()?),
            "--fence-file" => fence = Some(std::path::PathBuf::from(value()?)),
            "--memory-limit-mib" => {
                limit_mib = Some(
                    value()?
                        .parse::<u64>()
                        .map_err(|e| format!("--memory-limit-mib: {e}"))?,
                )
            }
            // `auto`: choose here, as a worker would (a task run by hand, or a test).
            "--memory-enforcement" => {
                let v = value()?;
                chosen_here = v == "auto";
                mechanism = Some(if v == "auto" {
                    crate::memory::detect(crate::memory::Preference::Auto).0
                } else {
                    crate::memory::Mechanism::from_arg(&v)?
                })
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        i += 2;
    }
    Err("no command (give it after --)".into())
}

pub fn main(args: &[String]) -> i32 {
    let Invocation {
        report: report_path,
        fence,
        limit,
        run_as,
        argv,
    } = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("taskhost exec: {e}");
            eprintln!("usage: taskhost exec --report FILE [--fence-file FILE] [--memory-limit-mib N] [--memory-enforcement HOW] [--uid UID --workdir DIR] -- COMMAND [ARG…]");
            return 2;
        }
    };
    let mut report = Report::default();
    // Orphans of the task stay below the shim, where the memory poll and the kill see
    // them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    watch_parent_and_sigterm();
    if let Some(file) = fence {
        watch_fence(file);
    }
    match run_sampled(&argv, limit.as_ref(), &run_as) {
        Ok(Outcome {
            status,
            usage,
            out_of_memory,
            enforcement,
        }) => {
            report.out_of_memory = out_of_memory;
            report.memory_enforcement = enforcement.map(str::to_string);
            report.avg_rss_kib = usage.avg_rss_kib;
            report.peak_rss_kib = usage.peak_rss_kib;
            report.usage_series = usage.series;
            if let Some(gpu) = usage.gpu {
                report.gpu_peak_memory_mib = Some(gpu.peak_memory_mib);
                report.gpu_utilization_percent = Some(gpu.utilization_percent);
            }
            report.exit_code = status.code();
            report.signal = status.signal();
            if let Ok(usage) =
                nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            {
                report.cpu_user_seconds = seconds(usage.user_time());
                report.cpu_system_seconds = seconds(usage.system_time());
                // Linux reports ru_maxrss in KiB.
                report.max_rss_kib = usage.max_rss().max(0) as u64;
            }
        }
        Err(e) => {
            report.spawn_error = Some(match e.kind() {
                std::io::ErrorKind::NotFound => format!("command not found: {}", argv[0]),
                std::io::ErrorKind::PermissionDenied => format!("permission denied: {}", argv[0]),
                _ => format!("could not start {}: {e}", argv[0]),
            });
        }
    }
    report.fenced = FENCED.load(std::sync::atomic::Ordering::SeqCst);
    // A worker's mechanism outlives this task; one chosen here does not.
    if let Some(l) = limit.as_ref().filter(|l| l.chosen_here) {
        l.mechanism.release();
    }
    let json = serde_json::to_vec(&report).unwrap_or_default();
    if let Err(e) = std::fs::write(&report_path, json) {
        eprintln!("taskhost exec: cannot write report {report_path}: {e}");
        return 3;
    }
    0
}
