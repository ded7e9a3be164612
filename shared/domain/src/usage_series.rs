//! What an attempt used over its life, as a few dozen points: resident memory, CPU and,
//! where there is a GPU, GPU memory and utilisation. The shim samples every 100 ms; the
//! builder folds the samples into at most [`MAX_POINTS`] equal steps, doubling the step
//! (and merging neighbours) whenever the attempt outlives them, so a chart of a
//! ten-second task and of a ten-hour one cost the same few hundred bytes.
//!
//! Only attempts of at least [`MIN_SERIES_MS`] keep a series: over a shorter life the
//! peak and average say everything a chart would, and the task write stays small (a
//! million short tasks would otherwise pay a second write unit each).

use serde::{Deserialize, Serialize};

/// The most points a series keeps.
pub const MAX_POINTS: usize = 60;
/// The step a series starts with: five of the shim's samples.
pub const FIRST_STEP_MS: u64 = 500;
/// How often the shim samples; the shortest time a step's rate is taken over.
pub const SAMPLE_MS: u64 = 100;
/// Attempts shorter than this keep no series.
pub const MIN_SERIES_MS: u64 = 5_000;

/// An attempt's use over its life: point `i` covers `[i·step_ms, (i+1)·step_ms)` from
/// the attempt's start (the last point as much of that as the attempt lived).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSeries {
    pub step_ms: u64,
    /// The most resident memory the task's processes held in each step, MiB.
    pub rss_mib: Vec<u64>,
    /// CPU used in each step, percent of one core (200 = two cores busy).
    pub cpu_percent: Vec<u64>,
    /// Only where the worker has a GPU: the most GPU memory held in each step, MiB, and
    /// the mean SM utilisation NVML reported for the task's processes, percent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_memory_mib: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_percent: Vec<u64>,
}

/// One sample as the shim takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Since the attempt started.
    pub at_ms: u64,
    pub rss_kib: u64,
    /// CPU time the task's processes have used since it started, all of them together.
    pub cpu_seconds: f64,
    /// GPU memory held by the task's processes and the SM utilisation readings NVML
    /// gave for them since the last sample (absent without a GPU).
    pub gpu: Option<GpuSample>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuSample {
    pub memory_bytes: u64,
    pub utilization_sum: u64,
    pub utilization_readings: u64,
}

/// A step's samples, folded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Step {
    rss_peak_kib: u64,
    /// The CPU time used by the end of the step.
    cpu_seconds_at_end: f64,
    gpu_peak_bytes: u64,
    util_sum: u64,
    util_readings: u64,
    sampled: bool,
}

impl Step {
    fn merge(self, later: Step) -> Step {
        if !later.sampled {
            return self;
        }
        Step {
            rss_peak_kib: self.rss_peak_kib.max(later.rss_peak_kib),
            cpu_seconds_at_end: later.cpu_seconds_at_end.max(self.cpu_seconds_at_end),
            gpu_peak_bytes: self.gpu_peak_bytes.max(later.gpu_peak_bytes),
            util_sum: self.util_sum + later.util_sum,
            util_readings: self.util_readings + later.util_readings,
            sampled: true,
        }
    }
}

/// Folds samples into a [`UsageSeries`].
#[derive(Debug, Clone)]
pub struct SeriesBuilder {
    step_ms: u64,
    steps: Vec<Step>,
    gpu: bool,
    last_at_ms: u64,
    /// The most CPU time any sample has seen.
    cpu_seconds: f64,
}

impl Default for SeriesBuilder {
    fn default() -> Self {
        SeriesBuilder::new()
    }
}

impl SeriesBuilder {
    pub fn new() -> SeriesBuilder {
        SeriesBuilder {
            step_ms: FIRST_STEP_MS,
            steps: Vec::new(),
            gpu: false,
            last_at_ms: 0,
            cpu_seconds: 0.0,
        }
    }

    pub fn push(&mut self, s: Sample) {
        let mut index = (s.at_ms / self.step_ms) as usize;
        while index >= MAX_POINTS {
            self.coarsen();
            index = (s.at_ms / self.step_ms) as usize;
        }
        if self.steps.len() <= index {
            self.steps.resize(index + 1, Step::default());
        }
        // CPU time never runs backwards: a process that ended before its parent reaped it
        // takes its time out of the sum for a moment.
        self.cpu_seconds = self.cpu_seconds.max(s.cpu_seconds);
        let gpu = s.gpu.unwrap_or_default();
        self.gpu |= s.gpu.is_some();
        let st = &mut self.steps[index];
        st.rss_peak_kib = st.rss_peak_kib.max(s.rss_kib);
        st.cpu_seconds_at_end = self.cpu_seconds;
        st.gpu_peak_bytes = st.gpu_peak_bytes.max(gpu.memory_bytes);
        st.util_sum += gpu.utilization_sum;
        st.util_readings += gpu.utilization_readings;
        st.sampled = true;
        self.last_at_ms = self.last_at_ms.max(s.at_ms);
    }

    /// Twice the step, half the points.
    fn coarsen(&mut self) {
        self.step_ms *= 2;
        self.steps = self
            .steps
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => a.merge(*b),
                [a] => *a,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }

    /// The series, once the attempt has lived `life_ms`; `None` when that is shorter
    /// than [`MIN_SERIES_MS`] or nothing was sampled.
    pub fn finish(mut self, life_ms: u64) -> Option<UsageSeries> {
        if life_ms < MIN_SERIES_MS || self.steps.is_empty() {
            return None;
        }
        // A step nobody sampled (the machine stalled) carries its neighbour's figures.
        for i in 1..self.steps.len() {
            if !self.steps[i].sampled {
                self.steps[i] = Step {
                    util_sum: 0,
                    util_readings: 0,
                    ..self.steps[i - 1]
                };
            }
        }
        let step_ms = self.step_ms;
        let end_ms = life_ms.max(self.last_at_ms);
        let mut cpu_before = 0.0;
        let mut series = UsageSeries {
            step_ms,
            ..Default::default()
        };
        for (i, st) in self.steps.iter().enumerate() {
            let begins = i as u64 * step_ms;
            let lasted = (end_ms.min(begins + step_ms))
                .saturating_sub(begins)
                .max(SAMPLE_MS);
            series.rss_mib.push(st.rss_peak_kib.div_ceil(1024));
            let used = (st.cpu_seconds_at_end - cpu_before).max(0.0);
            cpu_before = cpu_before.max(st.cpu_seconds_at_end);
            series
                .cpu_percent
                .push((used * 100_000.0 / lasted as f64).round() as u64);
            if self.gpu {
                series
                    .gpu_memory_mib
                    .push(st.gpu_peak_bytes.div_ceil(1024 * 1024));
                series
                    .gpu_percent
                    .push(st.util_sum.checked_div(st.util_readings).unwrap_or(0));
            }
        }
        Some(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, rss_mib: u64, cpu_seconds: f64) -> Sample {
        Sample {
            at_ms,
            rss_kib: rss_mib * 1024,
            cpu_seconds,
            gpu: None,
        }
    }

    #[test]
    fn a_short_attempt_keeps_no_series() {
        let mut b = SeriesBuilder::new();
        b.push(sample(100, 10, 0.1));
        assert_eq!(b.finish(MIN_SERIES_MS - 1), None);
        assert_eq!(SeriesBuilder::new().finish(MIN_SERIES_MS), None);
    }

    #[test]
    fn each_step_keeps_its_peak_memory_and_the_cpu_it_used() {
        let mut b = SeriesBuilder::new();
        // One core busy for the first second, idle the rest; memory climbs to 300 MiB.
        for i in 0..60u64 {
            let at = i * SAMPLE_MS;
            let cpu = (at.min(1000) as f64) / 1000.0;
            b.push(sample(at, 10 + 5 * i, cpu));
        }
        let s = b.finish(6_000).unwrap();
        assert_eq!(s.step_ms, FIRST_STEP_MS);
        assert_eq!(s.rss_mib.len(), 12);
        assert_eq!(s.rss_mib[0], 30, "the peak of the samples at 0 to 400 ms");
        assert_eq!(*s.rss_mib.last().unwrap(), 305);
        // The first step's last sample (400 ms) has seen 0.4 s used; the second's 0.9 s;
        // the third's all of it.
        assert_eq!(s.cpu_percent[..3], [80, 100, 20]);
        assert!(s.cpu_percent[3..].iter().all(|c| *c == 0), "{s:?}");
        assert!(s.gpu_memory_mib.is_empty() && s.gpu_percent.is_empty());
    }

    #[test]
    fn a_long_attempt_doubles_its_step_and_never_passes_the_cap() {
        let mut b = SeriesBuilder::new();
        // Ten hours at one sample a second, half a core all along, memory a sawtooth.
        let hours = 10 * 3600;
        for sec in 0..hours {
            b.push(sample(sec * 1000, sec % 100, sec as f64 / 2.0));
        }
        let s = b.finish(hours * 1000).unwrap();
        assert!(s.rss_mib.len() <= MAX_POINTS && s.rss_mib.len() > MAX_POINTS / 2);
        assert_eq!(s.step_ms % FIRST_STEP_MS, 0);
        assert!(s.step_ms * s.rss_mib.len() as u64 >= hours * 1000);
        assert!(s.rss_mib.iter().all(|m| *m == 99), "each step saw a peak");
        // The last step is partial: its rate is over the time it covered.
        assert!(s.cpu_percent.iter().all(|c| (49..=51).contains(c)), "{s:?}");
    }

    #[test]
    fn cpu_time_that_seems_to_run_backwards_counts_as_none() {
        let mut b = SeriesBuilder::new();
        for (at, cpu) in [(0, 0.0), (1000, 1.0), (2000, 0.4), (3000, 1.5), (5500, 1.5)] {
            b.push(sample(at, 1, cpu));
        }
        let s = b.finish(6_000).unwrap();
        let total: u64 = s.cpu_percent.iter().map(|c| c * FIRST_STEP_MS).sum();
        assert_eq!(total, 150_000, "1.5 s over the life, never more: {s:?}");
        assert_eq!(s.cpu_percent[2], 200);
        assert_eq!(s.cpu_percent[4], 0, "the dip to 0.4 s is no use at all");
    }

    #[test]
    fn unsampled_steps_carry_their_neighbours_memory() {
        let mut b = SeriesBuilder::new();
        b.push(sample(0, 50, 0.0));
        b.push(sample(5_900, 70, 0.0));
        let s = b.finish(6_000).unwrap();
        assert_eq!(s.rss_mib.len(), 12);
        assert!(s.rss_mib[..11].iter().all(|m| *m == 50), "{s:?}");
        assert_eq!(s.rss_mib.last(), Some(&70));
    }

    #[test]
    fn gpu_steps_keep_peak_memory_and_mean_utilisation() {
        let mut b = SeriesBuilder::new();
        for i in 0..60u64 {
            b.push(Sample {
                gpu: Some(GpuSample {
                    memory_bytes: (i + 1) * 1024 * 1024,
                    utilization_sum: if i < 30 { 180 } else { 0 },
                    utilization_readings: 2,
                }),
                ..sample(i * 100, 1, 0.0)
            });
        }
        let s = b.finish(6_000).unwrap();
        assert_eq!(s.gpu_memory_mib.len(), s.rss_mib.len());
        assert_eq!(s.gpu_memory_mib[0], 5);
        assert_eq!(s.gpu_percent[0], 90);
        assert_eq!(*s.gpu_percent.last().unwrap(), 0);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<UsageSeries>(&json).unwrap(), s);
    }
}
