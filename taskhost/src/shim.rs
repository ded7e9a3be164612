//! `taskhost exec --report FILE -- ARGV…`: run one task's command as this process's only
//! child, wait for it, and write what it used (exit, signal, CPU user/sys, max RSS) as
//! JSON to FILE. The worker starts each task under this shim, in a process group of its
//! own, so the measurement covers exactly the task's process tree and a kill reaches all
//! of it.

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

/// Run the command and sample its process tree until it exits.
fn run_sampled(
    argv: &[String],
) -> std::io::Result<(std::process::ExitStatus, crate::sampler::Usage)> {
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()?;
    let root = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let mut sampler = crate::sampler::Sampler::new(Some(root));
    loop {
        sampler.sample();
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
    Ok((status, sampler.usage()))
}

pub fn main(args: &[String]) -> i32 {
    let (report_path, argv) = match args {
        [flag, path, sep, argv @ ..] if flag == "--report" && sep == "--" && !argv.is_empty() => {
            (path.clone(), argv.to_vec())
        }
        _ => {
            eprintln!("usage: taskhost exec --report FILE -- COMMAND [ARG…]");
            return 2;
        }
    };
    let mut report = Report::default();
    watch_parent();
    match run_sampled(&argv) {
        Ok((status, usage)) => {
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
    let json = serde_json::to_vec(&report).unwrap_or_default();
    if let Err(e) = std::fs::write(&report_path, json) {
        eprintln!("taskhost exec: cannot write report {report_path}: {e}");
        return 3;
    }
    0
}
