//! The autoscaler's tick: how many workers each pool gets, which nodes they need, and
//! which nodes can go. The scheduled Lambda (`functions/autoscaler`, every minute), an
//! operator's on-demand invocation and the local stack's timer all run [`Autoscaler::tick`].
//!
//! One tick:
//! 1. takes the tick lease (one tick at a time) and reads the settings and the previous
//!    decision, which carries the backlog cohorts and the idle and cordoned nodes;
//! 2. reaps workers that ended without releasing their placement, and lists the live
//!    ones per pool (running and starting) in every registered cluster;
//! 3. per pool (every worker pool queue, and the pools named in the settings): reads the
//!    backlog (SQS depth; ages from the cohorts), the pool's recent task durations and
//!    start-up times (from the workers' records), and applies worker reuse targeting
//!    with its team's half-life; new workers go through placement (team quota × cluster
//!    capacity) to the cluster's backend;
//! 4. with EC2 configured: gives each (cluster, pool) the nodes its workers need
//!    (launch configs from the compute environments or the settings, ranked by price per
//!    worker; a config that comes back short is marked capacity-limited and the next
//!    one is asked in the same tick), and takes away nodes no worker needs: idle for
//!    `idle_node_seconds`, then cordoned, then terminated on a later tick if still
//!    empty, never a node with a worker on it;
//! 5. writes the decision (inputs, targets, placements, fleets, marks, binding limits,
//!    cordons, terminations) that `batchplane autoscaler history` shows.
//!
//! | file | what it holds |
//! |---|---|
//! | `settings` | the settings, checked field by field, and a pool's worker shape |
//! | `tick` | [`Autoscaler`]: the tick lease, one tick over every pool |
//! | `pools` | a pool's workers: demand, backlog cohorts, reuse targeting, launches |
//! | `nodes` | nodes for the pools: ranked launch configs, cordon and retire |
//! | `decision` | what a tick decided and carries to the next one |
//! | `fleet` | the EC2 seam ([`fleet::Ec2Api`]) and [`fleet::launch_nodes`] |
//! | `launcher` | worker pods or processes, placed within quotas ([`launcher::WorkerBackend`]) |

mod decision;
pub mod fleet;
pub mod launcher;
mod nodes;
mod pools;
mod settings;
mod tick;

pub use decision::{Carried, Decision, FleetDecision, NodeDecision, PoolDecision};
pub use pools::QueueCompute;
pub use settings::{
    misfit, pool_shape, settings_in_force, NodeSettings, PoolSettings, PoolShape, Settings,
    WorkerSize, MAX_COHORTS, TICK_LEASE,
};
pub use tick::{AutoscaleError, Autoscaler, NoEc2};
