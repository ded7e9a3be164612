//! Samples a running task's process tree (the shim's process group): resident memory,
//! peak and average, and, where NVIDIA's NVML library loads, the GPU memory and SM
//! utilisation of the task's own processes. With no GPU the GPU figures are absent, not
//! zero.

use batchplane::domain::usage_series::{GpuSample, Sample, SeriesBuilder, UsageSeries};
use nvml_wrapper::enums::device::UsedGpuMemory;
use std::collections::HashSet;
use std::time::Instant;

/// What the samples add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub peak_rss_kib: u64,
    pub avg_rss_kib: u64,
    /// Present only where NVML is.
    pub gpu: Option<GpuUsage>,
    /// The same over the task's life, for attempts long enough to chart.
    pub series: Option<UsageSeries>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuUsage {
    /// GPUs NVML sees on this machine.
    pub devices: u32,
    /// The most GPU memory the task's processes held at once, MiB.
    pub peak_memory_mib: u64,
    /// Mean SM utilisation of the task's processes over the samples NVML kept, percent
    /// (0 when the task never used a GPU).
    pub utilization_percent: f64,
}

pub struct Sampler {
    /// The task's own process (the shim's child).
    root: Option<i32>,
    pgid: i32,
    me: i32,
    page_kib: u64,
    rss_sum: u128,
    samples: u64,
    peak_rss_kib: u64,
    nvml: Option<nvml_wrapper::Nvml>,
    gpu_peak_bytes: u64,
    util_sum: u64,
    util_samples: u64,
    last_util_ts: Option<u64>,
    clock_ticks: f64,
    started: Instant,
    series: SeriesBuilder,
}

impl Sampler {
    pub fn new(root: Option<u32>) -> Sampler {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        Sampler {
            root: root.map(|p| p as i32),
            pgid: nix::unistd::getpgrp().as_raw(),
            me: std::process::id() as i32,
            page_kib: (page / 1024).max(1),
            rss_sum: 0,
            samples: 0,
            peak_rss_kib: 0,
            // Loads libnvidia-ml at run time; absent on machines without a GPU.
            nvml: nvml_wrapper::Nvml::init().ok(),
            gpu_peak_bytes: 0,
            util_sum: 0,
            util_samples: 0,
            last_util_ts: None,
            clock_ticks: nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .filter(|t| *t > 0)
                .unwrap_or(100) as f64,
            started: Instant::now(),
            series: SeriesBuilder::new(),
        }
    }

    /// The task's processes: its root and every descendant, found through
    /// `/proc/<pid>/task/<tid>/children` (a few small reads); where the kernel lacks
    /// those files, every process in the shim's process group.
    pub fn task_pids(&self) -> Vec<i32> {
        let Some(root) = self.root else {
            return Vec::new();
        };
        if !std::path::Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
            return self.group_pids();
        }
        let mut pids = vec![root];
        let mut i = 0;
        while i < pids.len() {
            let pid = pids[i];
            i += 1;
            let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in threads.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        pids
    }

    fn group_pids(&self) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != self.me)
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        // After the command name in parentheses: state, ppid, pgrp, …
                        let rest = &stat[stat.rfind(')')? + 2..];
                        rest.split_whitespace().nth(2)?.parse::<i32>().ok()
                    })
                    == Some(self.pgid)
            })
            .collect()
    }

    fn rss_kib(&self, pid: i32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * self.page_kib)
            .unwrap_or(0)
    }

    /// CPU time a process and its reaped children have used, seconds (`/proc/<pid>/stat`:
    /// utime, stime, cutime, cstime).
    fn cpu_seconds(&self, pid: i32) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 2..];
                let ticks: u64 = rest
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum();
                Some(ticks as f64 / self.clock_ticks)
            })
            .unwrap_or(0.0)
    }

    /// Take one sample; returns the task's resident memory now, KiB.
    pub fn sample(&mut self) -> u64 {
        let pids = self.task_pids();
        let rss: u64 = pids.iter().map(|p| self.rss_kib(*p)).sum();
        self.rss_sum += u128::from(rss);
        self.samples += 1;
        self.peak_rss_kib = self.peak_rss_kib.max(rss);
        let cpu_seconds = pids.iter().map(|p| self.cpu_seconds(*p)).sum();
        let gpu = self.sample_gpu(&pids);
        self.series.push(Sample {
            at_ms: self.started.elapsed().as_millis() as u64,
            rss_kib: rss,
            cpu_seconds,
            gpu,
        });
        rss
    }

    /// The task's processes have all ended, having used `cpu_seconds` in all (as the
    /// shim's `getrusage` counts it): the series ends there.
    pub fn close(&mut self, cpu_seconds: f64) {
        let gpu = self.nvml.as_ref().map(|_| GpuSample::default());
        self.series.push(Sample {
            at_ms: self.started.elapsed().as_millis() as u64,
            rss_kib: 0,
            cpu_seconds,
            gpu,
        });
    }

    /// GPU memory and utilisation of the task's processes now (none without NVML).
    fn sample_gpu(&mut self, pids: &[i32]) -> Option<GpuSample> {
        let nvml = self.nvml.as_ref()?;
        let ours: HashSet<u32> = pids.iter().map(|p| *p as u32).collect();
        let mut reading = GpuSample::default();
        let mut newest = self.last_util_ts;
        for i in 0..nvml.device_count().unwrap_or(0) {
            let Ok(dev) = nvml.device_by_index(i) else {
                continue;
            };
            for p in dev.running_compute_processes().unwrap_or_default() {
                if let (true, UsedGpuMemory::Used(b)) = (ours.contains(&p.pid), p.used_gpu_memory) {
                    reading.memory_bytes += b;
                }
            }
            for s in dev
                .process_utilization_stats(self.last_util_ts)
                .unwrap_or_default()
            {
                if ours.contains(&s.pid) {
                    reading.utilization_sum += u64::from(s.sm_util);
                    reading.utilization_readings += 1;
                }
                newest = Some(newest.map_or(s.timestamp, |n: u64| n.max(s.timestamp)));
            }
        }
        self.last_util_ts = newest;
        self.gpu_peak_bytes = self.gpu_peak_bytes.max(reading.memory_bytes);
        self.util_sum += reading.utilization_sum;
        self.util_samples += reading.utilization_readings;
        Some(reading)
    }

    pub fn usage(&self) -> Usage {
        Usage {
            peak_rss_kib: self.peak_rss_kib,
            avg_rss_kib: if self.samples == 0 {
                0
            } else {
                (self.rss_sum / u128::from(self.samples)) as u64
            },
            gpu: self.nvml.as_ref().map(|nvml| GpuUsage {
                devices: nvml.device_count().unwrap_or(0),
                peak_memory_mib: self.gpu_peak_bytes.div_ceil(1024 * 1024),
                utilization_percent: if self.util_samples == 0 {
                    0.0
                } else {
                    self.util_sum as f64 / self.util_samples as f64
                },
            }),
            series: self
                .series
                .clone()
                .finish(self.started.elapsed().as_millis() as u64),
        }
    }
}
