//! The local stack: the same handlers as in AWS, with the event plumbing done here.
//! It starts DynamoDB Local and moto (or uses ones already running), creates the table
//! and queues, serves the api router over HTTP, polls the DynamoDB stream and hands each
//! batch to the fanout handler as a Lambda event, and runs taskhosts as processes.

pub mod backend;
pub mod chaos;
pub mod emulators;
pub mod faults;
mod launching;
pub mod ledger;
pub mod options;
pub mod stack;
pub mod streams;

pub use options::{LocalCluster, PoolWorkers, StackOptions, WorkerEndpoints};
pub use stack::LocalStack;
