//! CloudWatch metrics as Embedded Metric Format log lines: a function prints one JSON
//! object to stdout, CloudWatch Logs turns it into metrics (no PutMetricData call, no
//! SDK, nothing to batch or retry). Namespace `Batchplane`.
//!
//! Metrics: `TasksReleased`, `TasksStarted`, `TasksSucceeded`, `TasksFailed` per queue
//! and `ReleaseLatency` (a task's end to its dependents' release, ms) from the fanout;
//! `QueueBacklog` and `WorkersLaunched` per pool, `PlacementRefusals` per team and
//! `CapacityLimitedMarks` from the autoscaler and placement.
//!
//! Lines are printed where CloudWatch Logs collects stdout (in Lambda, or with
//! `BATCHPLANE_EMF=1`); elsewhere they go to the debug log.

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "Batchplane";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// One EMF line: `dimensions` name the series, `metrics` are (name, unit, values) —
/// several values of one metric in one line are allowed (a latency per task).
pub fn line(at_ms: i64, dimensions: &[(&str, &str)], metrics: &[(&str, Unit, Vec<f64>)]) -> Value {
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": metrics.iter().map(|(n, u, _)| json!({"Name": n, "Unit": u.as_str()})).collect::<Vec<_>>(),
            }]
        }),
    );
    for (k, v) in dimensions {
        root.insert((*k).to_string(), json!(v));
    }
    for (n, _, values) in metrics {
        let v = if values.len() == 1 {
            json!(values[0])
        } else {
            json!(values)
        };
        root.insert((*n).to_string(), v);
    }
    Value::Object(root)
}

/// Whether metric lines go to stdout: in Lambda, or when `BATCHPLANE_EMF=1`; read once.
fn to_stdout() -> bool {
    static TO_STDOUT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TO_STDOUT.get_or_init(|| {
        std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
            || std::env::var("BATCHPLANE_EMF").is_ok_and(|v| v == "1")
    })
}

/// Emit one line (metrics without values are left out; nothing left, nothing printed).
pub fn emit(dimensions: &[(&str, &str)], metrics: &[(&str, Unit, Vec<f64>)]) {
    let metrics: Vec<(&str, Unit, Vec<f64>)> = metrics
        .iter()
        .filter(|(_, _, v)| !v.is_empty())
        .cloned()
        .collect();
    if metrics.is_empty() {
        return;
    }
    let l = line(crate::store::now_ms(), dimensions, &metrics);
    if to_stdout() {
        println!("{l}");
    } else {
        tracing::debug!(emf = %l, "metrics");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_its_metrics_and_carries_dimensions_and_values() {
        let l = line(
            1_795_348_800_000,
            &[("Queue", "default")],
            &[
                ("TasksReleased", Unit::Count, vec![3.0]),
                ("ReleaseLatency", Unit::Milliseconds, vec![120.0, 80.0]),
            ],
        );
        let cw = &l["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Batchplane");
        assert_eq!(cw["Dimensions"], json!([["Queue"]]));
        assert_eq!(
            cw["Metrics"][1],
            json!({"Name": "ReleaseLatency", "Unit": "Milliseconds"})
        );
        assert_eq!(l["_aws"]["Timestamp"], 1_795_348_800_000i64);
        assert_eq!(l["Queue"], "default");
        assert_eq!(l["TasksReleased"], 3.0);
        assert_eq!(l["ReleaseLatency"], json!([120.0, 80.0]));
    }
}
