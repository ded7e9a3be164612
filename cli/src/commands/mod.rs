//! The CLI's commands, one file per area: `jobs` (submit, status, tasks, logs, cancel,
//! add, usage; output formats), `repro`, `admin` (teams, clusters, capacity), `autoscaler`
//! (settings, decisions, templates), `access` (grants) and `dev` (the local stack).

pub mod access;
pub mod admin;
pub mod autoscaler;
pub mod chaos;
pub mod dev;
pub mod jobs;
pub mod listing;
pub mod logs;
pub mod pages;
pub mod repro;
