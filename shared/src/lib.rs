//! Batchplane's library. The modules follow the data:
//!
//! ```text
//! jobs:     api / aws_batch ──► store (DynamoDB) ──► stream (the table's stream: release,
//!           arrays, counts) ──► queue (SQS, one queue per pool) ──► taskhost (claims and
//!           leases through store)
//! capacity: scaling (the autoscaler's tick) ──► placement (quotas × cluster capacity)
//!           ──► scaling::launcher (worker pods or processes) and scaling::fleet (EC2 nodes)
//! ```
//!
//! `domain` (its own crate, pure) holds every rule these apply; `aws` builds the SDK
//! clients and counts their requests; `metrics` writes CloudWatch's Embedded Metric Format;
//! `config` is read once from the environment. `reconcile` finishes, on a schedule, what
//! a dead writer or a lost message left undone.

pub mod api;
pub mod aws;
pub mod aws_batch;
pub mod config;
pub mod metrics;
pub mod placement;
pub mod queue;
pub mod reconcile;
pub mod scaling;
pub mod store;
pub mod stream;
pub mod telemetry;

/// The pure domain, its own crate so its tests build without the AWS SDK.
pub use batchplane_domain as domain;
pub use domain::{JobState, TaskState};
