//! The integration and end-to-end tests, one module per area, in one binary so the AWS
//! SDK is linked once. They run against DynamoDB Local and moto (started by `make test`;
//! see `shared/testing`), with real taskhost processes where a test needs workers.

mod adapters;
mod arrays;
mod autoscaling;
mod aws_batch;
mod bounds;
mod cancels;
mod chains;
mod chaos;
mod closing;
mod console;
mod contract;
mod count_history;
mod e2e;
mod faults;
mod images;
mod isolation;
mod listing;
mod logs;
mod packs;
mod paged_work;
mod pages;
mod placement;
mod publisher;
mod quotas;
mod tenancy;
mod tiers;
mod triggers;
mod windows;
