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
    /// Requests made for the fleet's own upkeep (a worker announcing itself, renewing
    /// and giving back its placement), inside [`upkeep`]: they grow with workers and
    /// time, not with tasks, so they are kept apart from the rest (and from its totals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upkeep: Option<Box<RequestCounts>>,
}

impl RequestCounts {
    pub fn merge(&mut self, other: &RequestCounts) {
        self.combine(other, 1.0);
    }

    /// These counts less an earlier snapshot of the same process.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        let mut d = self.clone();
        d.combine(before, -1.0);
        d
    }

    fn combine(&mut self, other: &RequestCounts, sign: f64) {
        for (k, v) in &other.requests {
            let e = self.requests.entry(k.clone()).or_default();
            *e = if sign < 0.0 {
                e.saturating_sub(*v)
            } else {
                *e + v
            };
        }
        for (k, v) in &other.write_units {
            *self.write_units.entry(k.clone()).or_default() += sign * v;
        }
        for (k, v) in &other.read_units {
            *self.read_units.entry(k.clone()).or_default() += sign * v;
        }
        if let Some(u) = &other.upkeep {
            self.upkeep
                .get_or_insert_with(Default::default)
                .combine(u, sign);
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

tokio::task_local! {
    static UPKEEP: ();
}

/// Run `f` with its AWS requests counted as the fleet's upkeep (see
/// [`RequestCounts::upkeep`]).
pub async fn upkeep<F: std::future::Future>(f: F) -> F::Output {
    UPKEEP.scope((), f).await
}

/// The counts a request made now goes to: the upkeep's inside [`upkeep`].
fn with<R>(f: impl FnOnce(&mut RequestCounts) -> R) -> R {
    // A poisoned lock only means a panic elsewhere mid-increment; the counts stay usable.
    let mut guard = global().lock().unwrap_or_else(|p| p.into_inner());
    if UPKEEP.try_with(|_| ()).is_ok() {
        f(guard.upkeep.get_or_insert_with(Default::default))
    } else {
        f(&mut guard)
    }
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
    /// Provisioned capacity: a write unit a second for an hour.
    pub const DYNAMODB_PER_WCU_HOUR: f64 = 0.00065;
    /// Provisioned capacity: a read unit a second for an hour.
    pub const DYNAMODB_PER_RCU_HOUR: f64 = 0.00013;
    /// Share of provisioned capacity a table uses under auto scaling's target tracking
    /// (its default target, 70%): the rest is paid for as headroom.
    pub const PROVISIONED_UTILISATION: f64 = 0.7;
}

/// Dollars for these counts: DynamoDB by capacity units, SQS by request.
pub fn dollars(c: &RequestCounts) -> f64 {
    c.total_write_units() * prices::DYNAMODB_PER_MILLION_WRITES / 1e6
        + c.total_read_units() * prices::DYNAMODB_PER_MILLION_READS / 1e6
        + c.requests_of("SQS") as f64 * prices::SQS_PER_MILLION_REQUESTS / 1e6
}

/// Dollars for these counts with the table in provisioned capacity mode under auto
/// scaling: a unit used for a second costs its unit-hour price over 3,600, divided by the
/// target utilisation (the headroom is paid for too). SQS as in [`dollars`]. A steady
/// load is what this fits; a bursty one pays for capacity it scales down to late.
pub fn dollars_provisioned(c: &RequestCounts) -> f64 {
    let per_unit_second = |hourly: f64| hourly / 3600.0 / prices::PROVISIONED_UTILISATION;
    c.total_write_units() * per_unit_second(prices::DYNAMODB_PER_WCU_HOUR)
        + c.total_read_units() * per_unit_second(prices::DYNAMODB_PER_RCU_HOUR)
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
        // Provisioned: a million write units at 70% of $0.00065 a unit-hour.
        let mut m = RequestCounts::default();
        m.write_units.insert("UpdateItem".into(), 1e6);
        let p = dollars_provisioned(&m);
        assert!((p - 0.00065 * 1e6 / 3600.0 / 0.7).abs() < 1e-9, "{p}");
        assert!(p < dollars(&m) / 2.0);
        let back = b.since(&a);
        assert_eq!(back.requests_of("SQS"), 2);
        assert_eq!(back.total_write_units(), 4.0);
    }

    #[tokio::test]
    async fn upkeep_is_counted_apart() {
        let before = snapshot();
        record_write_units("TestWork", 1.0);
        upkeep(async { record_write_units("TestUpkeep", 2.0) }).await;
        let d = snapshot().since(&before);
        assert_eq!(d.write_units.get("TestUpkeep").copied().unwrap_or(0.0), 0.0);
        assert_eq!(d.write_units["TestWork"], 1.0);
        let u = d.upkeep.expect("upkeep counts");
        assert_eq!(u.write_units["TestUpkeep"], 2.0);
        assert_eq!(u.write_units.get("TestWork").copied().unwrap_or(0.0), 0.0);
    }
}
