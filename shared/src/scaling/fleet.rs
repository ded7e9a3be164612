//! Nodes for worker pools: the EC2 calls the autoscaler makes, behind a narrow seam
//! ([`Ec2Api`]: CreateFleet of type `instant` with a launch template and one override,
//! DescribeSpotPriceHistory, DescribeInstances of the nodes it launched,
//! TerminateInstances), and [`launch_nodes`], which walks a pool's ranked launch configs:
//! it asks for the nodes a config may have under the limits, and when EC2 gives fewer
//! than asked (or refuses with InsufficientInstanceCapacity or a spot limit) it marks that
//! config capacity-limited in the store, with an expiry, and asks the next config for the
//! rest in the same tick. The SDK implementation lives in the `batchplane-ec2` crate, so
//! only the crates that call EC2 build its SDK.

use crate::domain::launch::{plan_nodes, Fleet, LaunchConfig, Limits, Purchase, WorkerShape};
use crate::store::capacity::CapacityMark;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// Tags every node the autoscaler launches carries (cost accounting and discovery).
/// `batchplane:managed` holds the deployment's name (its table), so two deployments in
/// one account never see, or retire, each other's nodes.
pub const TAG_MANAGED: &str = "batchplane:managed";
pub const TAG_CLUSTER: &str = "batchplane:cluster";
pub const TAG_TEAM: &str = "batchplane:team";
pub const TAG_POOL: &str = "batchplane:pool";
pub const TAG_LAUNCH_CONFIG: &str = "batchplane:launch-config";

/// What can go wrong calling EC2, sorted into what the autoscaler acts on.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// No capacity for this config now (InsufficientInstanceCapacity, a spot limit):
    /// mark it and try the next.
    #[error("{operation}: no capacity: {code}: {message}")]
    NoCapacity {
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("{operation} failed: {code}: {message}")]
    Request {
        operation: &'static str,
        code: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// EC2 error codes that mean "this launch config has no capacity now".
pub fn is_capacity_error(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "InsufficientCapacity"
            | "InsufficientHostCapacity"
            | "InsufficientReservedInstanceCapacity"
            | "MaxSpotInstanceCountExceeded"
            | "SpotMaxPriceTooLow"
            | "UnfulfillableCapacity"
            | "InstanceLimitExceeded"
            | "VcpuLimitExceeded"
    )
}

/// One instant fleet: `nodes` instances of one launch config from a launch template.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRequest {
    pub launch_template: String,
    pub config: LaunchConfig,
    pub nodes: u64,
    /// Tags on every instance (cost accounting: team, pool).
    pub tags: BTreeMap<String, String>,
}

/// What an instant fleet gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetOutcome {
    pub instance_ids: Vec<String>,
    /// Errors EC2 reported for the fleet, `(code, message)`.
    pub errors: Vec<(String, String)>,
}

/// A spot price for one instance type in one zone.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub instance_type: String,
    pub zone: String,
    pub dollars_per_hour: f64,
}

/// The EC2 calls the autoscaler makes.
pub trait Ec2Api: Send + Sync {
    /// Launch an instant fleet; instances EC2 could not give come back as errors.
    fn create_fleet(
        &self,
        request: &FleetRequest,
    ) -> impl Future<Output = Result<FleetOutcome, Ec2Error>> + Send;

    /// Current spot prices (Linux/UNIX) for these instance types.
    fn spot_prices(
        &self,
        instance_types: &[String],
    ) -> impl Future<Output = Result<Vec<SpotPrice>, Ec2Error>> + Send;

    /// The running and pending instances whose [`TAG_MANAGED`] is `deployment`.
    fn nodes(&self, deployment: &str) -> impl Future<Output = Result<Vec<Node>, Ec2Error>> + Send;

    /// Terminate instances (scale-down; their taskhosts have drained).
    fn terminate(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// A node the autoscaler launched, as DescribeInstances shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub purchase: Purchase,
    /// The name the node registers under in its cluster (EKS: the private DNS name).
    pub name: String,
    pub launched_at: i64,
    pub tags: BTreeMap<String, String>,
}

impl Node {
    /// The launch config it came from (`type:zone:spot|on-demand`): its tag, or what
    /// DescribeInstances says.
    pub fn launch_config(&self) -> String {
        if let Some(k) = self.tags.get(TAG_LAUNCH_CONFIG) {
            return k.clone();
        }
        LaunchConfig {
            instance_type: self.instance_type.clone(),
            zone: self.zone.clone(),
            purchase: self.purchase,
            cpu_milli: 0,
            memory_mib: 0,
            gpus: 0,
            price_per_hour: 0.0,
            reserved: false,
            capacity_score: None,
        }
        .key()
    }

    pub fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map_or("", String::as_str)
    }
}

/// Apply current spot prices to spot launch configs (the lowest price seen for the type
/// in the config's zone); on-demand configs keep their list price.
pub fn with_spot_prices(configs: &mut [LaunchConfig], prices: &[SpotPrice]) {
    for c in configs.iter_mut().filter(|c| c.purchase == Purchase::Spot) {
        if let Some(p) = prices
            .iter()
            .filter(|p| p.instance_type == c.instance_type && p.zone == c.zone)
            .map(|p| p.dollars_per_hour)
            .min_by(f64::total_cmp)
        {
            c.price_per_hour = p;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchNodesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

/// What one pool's node launch did this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodesLaunched {
    /// `(launch config, instance ids)` in the order asked.
    pub fleets: Vec<(String, Vec<String>)>,
    /// Configs marked capacity-limited this tick, with the reason.
    pub marked: Vec<(String, String)>,
    pub unplaced_workers: u64,
    pub binding_limits: Vec<String>,
}

/// Everything [`launch_nodes`] needs besides the pool's shape and worker count.
pub struct LaunchContext<'a, E: Ec2Api> {
    pub store: &'a Store,
    pub ec2: &'a E,
    pub launch_template: &'a str,
    /// Ranked best first (see `domain::launch::rank`); marked configs are skipped.
    pub ranked: Vec<LaunchConfig>,
    pub global: Fleet,
    pub global_limits: Limits,
    pub per_config: BTreeMap<String, Fleet>,
    pub config_limits: BTreeMap<String, Limits>,
    /// How long a capacity-limited mark holds (default 3 minutes).
    pub mark_for: Duration,
    pub tags: BTreeMap<String, String>,
}

/// Get nodes for `workers` workers of `shape`: one config at a time in rank order, under
/// the limits; a config that comes back short is marked capacity-limited and the rest is
/// asked of the next config, in the same tick.
pub async fn launch_nodes<E: Ec2Api>(
    ctx: &mut LaunchContext<'_, E>,
    shape: &WorkerShape,
    workers: u64,
) -> Result<NodesLaunched, LaunchNodesError> {
    let mut done = NodesLaunched::default();
    let marks: BTreeSet<String> = ctx
        .store
        .capacity_marks(ctx.store.now())
        .await?
        .into_iter()
        .map(|m| m.launch_config)
        .collect();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut left = workers;
    while left > 0 {
        let candidates: Vec<&LaunchConfig> = ctx
            .ranked
            .iter()
            .filter(|c| !marks.contains(&c.key()) && !tried.contains(&c.key()))
            .collect();
        let plan = plan_nodes(
            left,
            shape,
            &candidates,
            &mut ctx.global.clone(),
            &ctx.global_limits,
            &mut ctx.per_config.clone(),
            &ctx.config_limits,
        );
        for l in &plan.binding_limits {
            if !done.binding_limits.contains(l) {
                done.binding_limits.push(l.clone());
            }
        }
        let Some(first) = plan.requests.first() else {
            break;
        };
        let Some(config) = candidates
            .iter()
            .find(|c| c.key() == first.launch_config)
            .map(|c| (*c).clone())
        else {
            break;
        };
        let key = config.key();
        tried.insert(key.clone());
        let asked = first.nodes;
        let outcome = match ctx
            .ec2
            .create_fleet(&FleetRequest {
                launch_template: ctx.launch_template.to_string(),
                config: config.clone(),
                nodes: asked,
                tags: {
                    let mut tags = ctx.tags.clone();
                    tags.insert(TAG_MANAGED.into(), ctx.store.table().to_string());
                    tags.insert(TAG_LAUNCH_CONFIG.into(), key.clone());
                    tags
                },
            })
            .await
        {
            Ok(o) => o,
            Err(Ec2Error::NoCapacity { code, message, .. }) => FleetOutcome {
                instance_ids: Vec::new(),
                errors: vec![(code, message)],
            },
            Err(e) => return Err(e.into()),
        };
        let got = outcome.instance_ids.len() as u64;
        let per_node = shape.per_node(&config);
        left = left.saturating_sub(got * per_node);
        for f in [
            &mut ctx.global,
            ctx.per_config.entry(key.clone()).or_default(),
        ] {
            f.nodes += got;
            f.added_this_tick += got;
            f.dollars_per_hour += got as f64 * config.price_per_hour;
        }
        if got > 0 {
            done.fleets
                .push((key.clone(), outcome.instance_ids.clone()));
        }
        if got < asked {
            let why = match outcome.errors.first() {
                Some((code, message)) => format!("{code}: {message} (got {got} of {asked})"),
                None => format!("got {got} of {asked} instances"),
            };
            let now = ctx.store.now();
            ctx.store
                .mark_capacity_limited(&CapacityMark {
                    launch_config: key.clone(),
                    reason: why.clone(),
                    marked_at: now,
                    until: now + ctx.mark_for.as_millis() as i64,
                })
                .await?;
            tracing::warn!(launch_config = %key, reason = %why, "launch config came back short; trying the next");
            done.marked.push((key, why));
        }
    }
    done.unplaced_workers = left;
    Ok(done)
}
