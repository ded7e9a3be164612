//! The pure domain: job specs, validation, the dependency plan and the state machine.
//! No AWS types and no I/O live here.

pub mod access;
pub mod autoscale;
pub mod batch;
pub mod containers;
pub mod count_history;
pub mod environment;
pub mod error;
pub mod graph;
pub mod group_graph;
pub mod ids;
pub mod launch;
pub mod lease;
pub mod limits;
pub mod listing;
pub mod logs;
pub mod placement;
pub mod plan;
pub mod prices;
pub mod records;
pub mod retry;
pub mod spec;
pub mod state;
pub mod team_listing;
pub mod template;
pub mod tiers;
pub mod usage_series;

pub use error::FieldError;
pub use plan::{plan_addition, plan_job, ExistingEdge, PlannedTask, TaskKind, MAX_EDGES};
pub use records::{AttemptRecord, JobRecord, Notify, Paging, Stop, TaskRecord, Usage};
pub use spec::{parse_job_spec, parse_task_list, validate_addition, JobSpec, SpecError, TaskSpec};
pub use state::{JobState, TaskCounts, TaskState, TaskTransition};
