//! Batchplane's library: the pure job/task domain (`domain`) and the adapters that put it
//! on AWS (`store` for DynamoDB, `queue` for SQS), plus the operations the Lambdas call
//! (`service` for the API, `fanout` for the stream) and the worker's claim/report calls.

pub mod autoscaler;
pub mod aws;
pub mod batch_api;
pub mod config;
pub mod dispatch;
pub mod emf;
pub mod explain;
pub mod fanout;
pub mod launcher;
pub mod metrics;
pub mod nodes;
pub mod placement;
pub mod queue;
pub mod service;
pub mod store;
pub mod telemetry;

/// The pure domain, its own crate so its tests build without the AWS SDK.
pub use batchplane_domain as domain;
pub use domain::{JobState, TaskState};
