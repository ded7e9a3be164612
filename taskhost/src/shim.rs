//! `taskhost exec --report FILE [--memory-limit-mib N --memory-enforcement HOW] -- ARGV…`:
//! run one task's command as this process's only child, hold it to its memory limit
//! (see [`crate::memory`]), wait for it, and write what it used (exit, signal, CPU
//! user/sys, memory, GPU, whether it ran out of memory) as JSON to FILE. The worker
//! starts each task under this shim, in a process group of its own, so the measurement
//! covers exactly the task's process tree and a kill reaches all of it.

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
    /// The task was killed for exceeding its memory limit.
    #[serde(default)]
    pub out_of_memory: bool,
    /// How the limit was held (absent when the task had none).
    #[serde(default)]
    pub memory_enforcement: Option<String>,
}

/// The memory limit a task runs under, and how it is held.
struct Limit {
    mib: u64,
    mechanism: crate::memory::Mechanism,
    /// Chosen by this shim (`auto`), not handed down by a worker: what it set up for
    /// the choice is its own to remove.
    chosen_here: bool,
}

fn seconds(tv: nix::sys::time::TimeVal) -> f64 {
    tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6
}

/// If the worker dies (killed, OOM, node lost), take the task down with it, as a pod's
/// containers go with the pod: another worker will run it again after the lease lapses,
/// and two copies must not run at once. The shim leads the task's process group, so
/// killing the group kills the whole task.
fn watch_parent() {
    let parent = nix::unistd::getppid();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if nix::unistd::getppid() != parent {
            let _ =
                nix::sys::signal::killpg(nix::unistd::getpgrp(), nix::sys::signal::Signal::SIGKILL);
            return;
        }
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
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for sig in [Signal::SIGSTOP, Signal::SIGKILL] {
        for pid in sampler.task_pids() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Run the command under its limit and sample its process tree until it exits.
fn run_sampled(argv: &[String], limit: Option<&Limit>) -> std::io::Result<Outcome> {
    use crate::memory::{Mechanism, TaskGroup};
    let group = match limit {
        Some(Limit { mib, mechanism, .. }) if *mechanism != Mechanism::Poll => {
            TaskGroup::enter(mechanism, *mib).ok()
        }
        _ => None,
    };
    let poll_limit_kib = match (limit, &group) {
        (Some(l), None) => {
            // No cgroup: the RSS poll below holds the limit; RLIMIT_DATA is the backstop.
            let backstop = crate::memory::data_backstop_bytes(l.mib);
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_DATA,
                backstop,
                backstop,
            );
            Some(l.mib * 1024)
        }
        _ => None,
    };
    let spawned = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn();
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
    let (out_of_memory, enforcement) = match (&group, limit) {
        (Some(g), Some(l)) => {
            let oom = g.oom_killed();
            g.remove();
            (oom, Some(l.mechanism.name()))
        }
        (None, Some(_)) => (polled_out, Some(crate::memory::POLL)),
        _ => (false, None),
    };
    Ok(Outcome {
        status,
        usage: sampler.usage(),
        out_of_memory,
        enforcement,
    })
}

/// Parse `--report FILE [--memory-limit-mib N --memory-enforcement HOW] -- ARGV…`.
fn parse(args: &[String]) -> Result<(String, Option<Limit>, Vec<String>), String> {
    let mut report = None;
    let mut limit_mib = None;
    let mut mechanism = None;
    let mut chosen_here = false;
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
                    (Some(mib), mechanism) => Some(Limit {
                        mib,
                        mechanism: mechanism.unwrap_or(crate::memory::Mechanism::Poll),
                        chosen_here,
                    }),
                    (None, Some(_)) => {
                        return Err("--memory-enforcement needs --memory-limit-mib".into())
                    }
                    (None, None) => None,
                };
                return Ok((report, limit, argv));
            }
            "--report" => report = Some(value()?),
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
    let (report_path, limit, argv) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("taskhost exec: {e}");
            eprintln!("usage: taskhost exec --report FILE [--memory-limit-mib N --memory-enforcement HOW] -- COMMAND [ARG…]");
            return 2;
        }
    };
    let mut report = Report::default();
    watch_parent();
    // Orphans of the task stay below the shim, where the memory poll can see them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    match run_sampled(&argv, limit.as_ref()) {
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
