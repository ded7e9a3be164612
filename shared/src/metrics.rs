//! Request accounting: every AWS request this process makes, by service and operation,
//! and the DynamoDB write units they consumed. Benchmarks read these to report AWS
//! requests and dollars per task; they are process-wide because SDK clients are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Counts of requests and DynamoDB capacity, keyed `Service.Operation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestCounts {
    pub requests: BTreeMap<String, u64>,
    /// DynamoDB write capacity units consumed, by operation (failed conditions count 1).
    pub write_units: BTreeMap<String, f64>,
    /// DynamoDB read capacity units consumed, by operation.
    pub read_units: BTreeMap<String, f64>,
}

impl RequestCounts {
    pub fn merge(&mut self, other: &RequestCounts) {
        for (k, v) in &other.requests {
            *self.requests.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.write_units {
            *self.write_units.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.read_units {
            *self.read_units.entry(k.clone()).or_default() += v;
        }
    }
    pub fn total_write_units(&self) -> f64 {
        self.write_units.values().sum()
    }
    pub fn total_read_units(&self) -> f64 {
        self.read_units.values().sum()
    }
    pub fn requests_of(&self, service: &str) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| k.split('.').next() == Some(service))
            .map(|(_, v)| v)
            .sum()
    }
}

fn global() -> &'static Mutex<RequestCounts> {
    static COUNTS: OnceLock<Mutex<RequestCounts>> = OnceLock::new();
    COUNTS.get_or_init(|| Mutex::new(RequestCounts::default()))
}

fn with<R>(f: impl FnOnce(&mut RequestCounts) -> R) -> R {
    // A poisoned lock only means a panic elsewhere mid-increment; the counts stay usable.
    let mut guard = global().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

pub fn record_request(service: &str, operation: &str) {
    with(|c| {
        *c.requests
            .entry(format!("{service}.{operation}"))
            .or_default() += 1
    });
}

pub fn record_write_units(operation: &str, units: f64) {
    with(|c| *c.write_units.entry(operation.to_string()).or_default() += units);
}

pub fn record_read_units(operation: &str, units: f64) {
    with(|c| *c.read_units.entry(operation.to_string()).or_default() += units);
}

/// A copy of this process's counts so far.
pub fn snapshot() -> RequestCounts {
    with(|c| c.clone())
}

/// List prices (us-east-1, late 2026) used to turn counts into dollars.
pub mod prices {
    pub const DYNAMODB_PER_MILLION_WRITES: f64 = 0.625;
    pub const DYNAMODB_PER_MILLION_READS: f64 = 0.125;
    pub const SQS_PER_MILLION_REQUESTS: f64 = 0.40;
    pub const LAMBDA_PER_MILLION_REQUESTS: f64 = 0.20;
}

/// Dollars for these counts: DynamoDB by capacity units, SQS by request.
pub fn dollars(c: &RequestCounts) -> f64 {
    c.total_write_units() * prices::DYNAMODB_PER_MILLION_WRITES / 1e6
        + c.total_read_units() * prices::DYNAMODB_PER_MILLION_READS / 1e6
        + c.requests_of("SQS") as f64 * prices::SQS_PER_MILLION_REQUESTS / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_price() {
        let mut a = RequestCounts::default();
        a.requests.insert("SQS.SendMessageBatch".into(), 2);
        a.write_units.insert("PutItem".into(), 4.0);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.requests_of("SQS"), 4);
        assert_eq!(b.total_write_units(), 8.0);
        let d = dollars(&b);
        assert!((d - (8.0 * 0.625 + 4.0 * 0.40) / 1e6).abs() < 1e-12);
    }
}
