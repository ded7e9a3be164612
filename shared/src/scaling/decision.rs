//! What one tick decided, per pool and per node group, and the state it carries to the
//! next tick; recorded in the table and sent out as metrics.

use crate::domain::autoscale::Backlog;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One pool's part of a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolDecision {
    pub pool: String,
    pub team: String,
    /// Queued (visible) tasks, from the messages waiting and the tasks a message has
    /// been carrying; in-flight messages; the oldest cohort's age.
    pub queued: u64,
    pub in_flight: u64,
    pub oldest_seconds: f64,
    pub live_workers: u32,
    pub starting_workers: u32,
    pub slots_per_worker: u32,
    pub mean_task_seconds: f64,
    pub startup_seconds: f64,
    pub half_life_seconds: f64,
    /// Reuse targeting's answer: Σ w_i, the tasks existing workers absorb, workers wanted.
    pub weight: f64,
    pub absorbed: u64,
    pub wanted: u32,
    /// What was asked of placement after the pool's limits, and what bound.
    pub asked: u32,
    pub limited_by: Option<String>,
    pub granted: u32,
    pub launched: u32,
    pub refused: Option<String>,
}

/// Nodes launched for one (cluster, pool) from one launch config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDecision {
    pub cluster: String,
    pub pool: String,
    pub launch_config: String,
    pub instance_ids: Vec<String>,
}

/// The nodes' part of a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDecision {
    /// Managed nodes before this tick, and what they cost an hour.
    pub nodes: u64,
    pub dollars_per_hour: f64,
    pub fleets: Vec<FleetDecision>,
    /// Launch configs marked capacity-limited this tick, with EC2's reason.
    pub marked: Vec<(String, String)>,
    pub binding_limits: Vec<String>,
    /// Workers no node could be found for this tick.
    pub unplaced_workers: u64,
    pub cordoned: Vec<String>,
    pub terminated: Vec<String>,
}

/// What the next tick needs from this one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    pub backlogs: BTreeMap<String, Backlog>,
    /// Nodes found unneeded, since when (ms).
    pub idle_since: BTreeMap<String, i64>,
    /// Nodes cordoned, when (ms), to be terminated once empty.
    pub cordoned: BTreeMap<String, i64>,
}

/// One tick's decision record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub tick_id: String,
    pub at: i64,
    pub took_ms: i64,
    pub pools: Vec<PoolDecision>,
    pub nodes: Option<NodeDecision>,
    /// What failed this tick (a cluster that could not be listed, EC2 errors); the tick
    /// goes on with the rest.
    pub errors: Vec<String>,
    pub carried: Carried,
}

/// A decision's metrics (EMF): backlog and workers launched per pool, refusals per
/// team, capacity-limited marks.
pub(super) fn emit_metrics(d: &Decision) {
    use crate::metrics::{emit, Unit};
    for p in &d.pools {
        emit(
            &[("Pool", &p.pool)],
            &[
                ("QueueBacklog", Unit::Count, vec![p.queued as f64]),
                ("WorkersLaunched", Unit::Count, vec![f64::from(p.launched)]),
            ],
        );
        if p.refused.is_some() {
            emit(
                &[("Team", &p.team)],
                &[("PlacementRefusals", Unit::Count, vec![1.0])],
            );
        }
    }
    if let Some(n) = &d.nodes {
        emit(
            &[("Service", "autoscaler")],
            &[
                (
                    "CapacityLimitedMarks",
                    Unit::Count,
                    vec![n.marked.len() as f64],
                ),
                (
                    "NodesLaunched",
                    Unit::Count,
                    vec![n.fleets.iter().map(|f| f.instance_ids.len()).sum::<usize>() as f64],
                ),
                (
                    "NodesTerminated",
                    Unit::Count,
                    vec![n.terminated.len() as f64],
                ),
            ],
        );
    }
}
