//! The taskhost: a long-lived worker that runs Batchplane tasks as unix processes.
//! [`worker`] is the worker itself; [`shim`] is the small program each task runs under
//! (`taskhost exec`), which holds it to its memory ([`memory`]), runs it as a user of
//! its own ([`isolation`]) and measures its use ([`sampler`]); [`forecast`] predicts when slots free; [`templates`] makes array
//! children's commands from their job's template and reads queues in priority order;
//! [`logs`] ships each attempt's output to CloudWatch Logs.

pub mod forecast;
pub mod isolation;
pub mod logs;
pub mod memory;
pub mod sampler;
pub mod shim;
pub mod templates;
pub mod worker;
