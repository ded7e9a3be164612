//! What a run measured: its timeline (attempts, slots, idle time) and the release
//! latency of each dependency edge.

use crate::client::Api;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[idx])
}

/// Where a job's time went, from its tasks' attempts.
#[derive(Debug, Default, Serialize)]
pub(super) struct Timeline {
    /// Each dependent's start minus its last dependency's end (ms), sorted.
    #[serde(skip)]
    pub(super) release_latencies: Vec<f64>,
    /// Job created → its first task started.
    pub(super) start_ms: f64,
    /// Its last task ended → the job finished.
    pub(super) close_ms: f64,
    /// Tasks each worker ran, fewest and most (an uneven split costs whole rounds).
    pub(super) tasks_per_worker_min: usize,
    pub(super) tasks_per_worker_max: usize,
    /// Mean attempt length, claim to recorded end (ms): the command plus what the
    /// worker spends starting and ending it.
    pub(super) attempt_ms_mean: f64,
    /// Slot time left idle between a worker's first start and last end, per task (ms):
    /// slots × span minus the attempts' time, divided by the tasks the worker ran.
    pub(super) idle_slot_ms_per_task: f64,
}

/// The timeline of a finished job: release latencies, start and close, the split.
pub(super) async fn timeline(
    api: &Api,
    job_id: &str,
    spec: &Value,
    done: &Value,
    slots: f64,
) -> anyhow::Result<Timeline> {
    let mut finished: HashMap<String, i64> = HashMap::new();
    let mut started: HashMap<String, i64> = HashMap::new();
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    // worker → (first start, last end, attempts' total ms)
    let mut spans: HashMap<String, (i64, i64, i64)> = HashMap::new();
    let tasks = spec["tasks"].as_array().cloned().unwrap_or_default();
    for t in &tasks {
        let id = t["id"].as_str().unwrap_or_default();
        let view = api.get(&format!("/v1/jobs/{job_id}/tasks/{id}")).await?;
        if let Some(a) = view["attempts"].as_array().and_then(|a| a.last()) {
            if let (Some(s), Some(f)) = (epoch_ms(&a["started_at"]), epoch_ms(&a["finished_at"])) {
                started.insert(id.to_string(), s);
                finished.insert(id.to_string(), f);
                let span = spans
                    .entry(a["worker_id"].as_str().unwrap_or_default().to_string())
                    .or_insert((s, f, 0));
                span.0 = span.0.min(s);
                span.1 = span.1.max(f);
                span.2 += f - s;
            }
            *per_worker
                .entry(a["worker_id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    let gap = |from: Option<i64>, to: Option<i64>| match (from, to) {
        (Some(a), Some(b)) => (b - a) as f64,
        _ => 0.0,
    };
    Ok(Timeline {
        release_latencies: release_latencies(&tasks, &started, &finished),
        start_ms: gap(
            epoch_ms(&done["created_at"]),
            started.values().min().copied(),
        ),
        close_ms: gap(
            finished.values().max().copied(),
            epoch_ms(&done["finished_at"]),
        ),
        attempt_ms_mean: {
            let total: i64 = spans.values().map(|s| s.2).sum();
            total as f64 / started.len().max(1) as f64
        },
        idle_slot_ms_per_task: {
            let idle: f64 = spans
                .values()
                .map(|&(first, last, busy)| (slots * (last - first) as f64 - busy as f64).max(0.0))
                .sum();
            idle / started.len().max(1) as f64
        },
        tasks_per_worker_min: per_worker.values().min().copied().unwrap_or(0),
        tasks_per_worker_max: per_worker.values().max().copied().unwrap_or(0),
    })
}

/// Dependency release latency: each dependent's start minus its last dependency's end.
pub(super) fn release_latencies(
    tasks: &[Value],
    started: &HashMap<String, i64>,
    finished: &HashMap<String, i64>,
) -> Vec<f64> {
    let mut out = Vec::new();
    for t in tasks {
        let deps: Vec<&str> = t["depends_on"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if deps.is_empty() {
            continue;
        }
        let id = t["id"].as_str().unwrap_or_default();
        let last = deps.iter().filter_map(|d| finished.get(*d)).max();
        if let (Some(last), Some(start)) = (last, started.get(id)) {
            out.push((start - last) as f64);
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

/// An RFC 3339 time of the API as milliseconds since the epoch.
pub(super) fn epoch_ms(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}

/// Server-side makespan: from the first job's creation to the last one's end.
pub(super) fn makespan_s(first: &Value, last: &Value) -> Option<f64> {
    Some((epoch_ms(&last["finished_at"])? - epoch_ms(&first["created_at"])?) as f64 / 1000.0)
}
