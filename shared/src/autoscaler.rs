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

use crate::domain::autoscale::{Backlog, PoolDemand, ReuseTargeting};
use crate::domain::launch::{
    rank, surplus_nodes, workers_without_room, Fleet, LaunchConfig, Limits, NodeView, Purchase,
    Strategy, WorkerShape,
};
use crate::domain::placement::PlacementRequest;
use crate::domain::prices::PriceTable;
use crate::domain::tiers::{Tier, WorkerPool};
use crate::launcher::{
    launch_workers, reap, LaunchError, LaunchedWorker, WorkerBackend, WorkerPhase, WorkerSpec,
};
use crate::nodes::{
    launch_nodes, with_spot_prices, Ec2Api, Ec2Error, FleetOutcome, FleetRequest, LaunchContext,
    LaunchNodesError, Node, SpotPrice, TAG_CLUSTER, TAG_POOL, TAG_TEAM,
};
use crate::queue::{QueueError, Queues};
use crate::store::placement::{ClusterRecord, PlacementOutcome};
use crate::store::registry::ResourceKind;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long one tick may hold the tick lease.
pub const TICK_LEASE: Duration = Duration::from_secs(300);
/// Backlog cohorts kept per pool (adjacent ones merge beyond this).
pub const MAX_COHORTS: usize = 32;

/// A worker's size in the settings: `{cpu: 4, memory_mib: 16384, gpu: 0}`.
pub type WorkerSize = Tier;

/// The autoscaler's settings (`PUT /v1/autoscaler/settings`); every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The half-life of reuse targeting for teams not listed in `teams`.
    pub default_half_life_seconds: f64,
    /// Per team (namespace): its reuse targeting.
    pub teams: BTreeMap<String, ReuseTargeting>,
    /// Pools with settings of their own; other pools with a backlog get the defaults.
    pub pools: Vec<PoolSettings>,
    /// The team a pool's workers are placed for when its settings name none.
    pub default_team: String,
    /// The size of a queue's own pool's workers (tier pools size theirs from the tier).
    pub default_worker: WorkerSize,
    /// A worker's start-up (launch to taking work) until workers have reported theirs.
    pub startup_seconds: f64,
    /// A task's duration until the pool's workers have reported some.
    pub default_task_seconds: f64,
    /// The most workers one tick adds to one pool.
    pub max_new_workers_per_pool: u32,
    /// EC2 nodes for the workers; without it the clusters' capacity is fixed.
    pub nodes: Option<NodeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_half_life_seconds: ReuseTargeting::default().half_life_seconds,
            teams: BTreeMap::new(),
            pools: Vec::new(),
            default_team: "default".into(),
            default_worker: Tier {
                cpu_milli: 4000,
                memory_mib: 16384,
                gpu: 0,
            },
            startup_seconds: 60.0,
            default_task_seconds: 30.0,
            max_new_workers_per_pool: 100,
            nodes: None,
        }
    }
}

/// One pool's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// The pool's name (`default`, `default--2cpu-8192mib`).
    pub pool: String,
    #[serde(default)]
    pub team: Option<String>,
    /// A worker's size; a tier pool's default is as many of its tasks as fit the
    /// default worker (one for GPU tiers).
    #[serde(default)]
    pub worker: Option<WorkerSize>,
    #[serde(default)]
    pub max_workers: Option<u32>,
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// Overrides the team's half-life for this pool.
    #[serde(default)]
    pub half_life_seconds: Option<f64>,
}

/// How workers become EC2 nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Per cluster: the launch template its nodes boot from (joins them to the cluster).
    pub launch_templates: BTreeMap<String, String>,
    /// Availability zones to launch in.
    pub zones: Vec<String>,
    /// Instance types (types, families or `optimal`) for pools whose queue has no
    /// compute environment.
    pub instance_types: Vec<String>,
    /// Spot, on-demand or both, for pools whose queue has no compute environment.
    pub purchase: Vec<Purchase>,
    pub strategy: Strategy,
    /// Limits on the whole fleet, and per launch config (`m5.large:us-east-1a:spot`).
    pub limits: Limits,
    pub config_limits: BTreeMap<String, Limits>,
    /// How long a capacity-limited mark holds.
    pub capacity_mark_seconds: u64,
    /// How long a node must have been unneeded before it is cordoned.
    pub idle_node_seconds: u64,
    pub max_nodes_removed_per_tick: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            launch_templates: BTreeMap::new(),
            zones: Vec::new(),
            instance_types: vec!["optimal".into()],
            purchase: vec![Purchase::Spot, Purchase::OnDemand],
            strategy: Strategy::CheapestFirst,
            limits: Limits::default(),
            config_limits: BTreeMap::new(),
            capacity_mark_seconds: 180,
            idle_node_seconds: 300,
            max_nodes_removed_per_tick: 10,
        }
    }
}

impl Settings {
    /// Parse and check settings; the error names the field.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let s: Settings = serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?;
        s.check()?;
        Ok(s)
    }

    /// The settings the deployment was given (`BATCHPLANE_AUTOSCALER_SETTINGS`, JSON),
    /// used until some are stored; the defaults without it.
    pub fn from_env() -> Result<Settings, String> {
        match std::env::var("BATCHPLANE_AUTOSCALER_SETTINGS") {
            Ok(text) if !text.trim().is_empty() => {
                Settings::parse(&text).map_err(|e| format!("BATCHPLANE_AUTOSCALER_SETTINGS: {e}"))
            }
            _ => Ok(Settings::default()),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let half_life_ok = |h: f64| h >= 0.0 && !h.is_nan();
        if !half_life_ok(self.default_half_life_seconds) {
            return Err("default_half_life_seconds must be 0 or more".into());
        }
        for (team, r) in &self.teams {
            if !half_life_ok(r.half_life_seconds) {
                return Err(format!("teams.{team}.half_life_seconds must be 0 or more"));
            }
        }
        for (field, v) in [
            ("startup_seconds", self.startup_seconds),
            ("default_task_seconds", self.default_task_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{field} must be 0 or more"));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            if p.pool.is_empty() {
                return Err(format!("pools[{i}].pool is empty"));
            }
            if !seen.insert(&p.pool) {
                return Err(format!("pools[{i}].pool {:?} is listed twice", p.pool));
            }
            if p.half_life_seconds.is_some_and(|h| !half_life_ok(h)) {
                return Err(format!("pools[{i}].half_life_seconds must be 0 or more"));
            }
        }
        if let Some(n) = &self.nodes {
            if n.zones.is_empty() {
                return Err("nodes.zones: name at least one availability zone".into());
            }
            for (i, t) in n.instance_types.iter().enumerate() {
                if PriceTable::shipped().expand(t).is_empty() {
                    return Err(format!(
                        "nodes.instance_types[{i}]: {t:?} is not in the price table ({})",
                        PriceTable::shipped().as_of
                    ));
                }
            }
        }
        Ok(())
    }

    fn half_life(&self, team: &str, pool: Option<&PoolSettings>) -> ReuseTargeting {
        if let Some(h) = pool.and_then(|p| p.half_life_seconds) {
            return ReuseTargeting {
                half_life_seconds: h,
            };
        }
        self.teams.get(team).copied().unwrap_or(ReuseTargeting {
            half_life_seconds: self.default_half_life_seconds,
        })
    }
}

/// What a pool's workers look like: their size and how many tasks each runs at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolShape {
    pub worker: Tier,
    pub slots: u32,
}

/// A pool's worker size: its settings', or for a tier pool as many of its tasks as fit
/// the default worker (one for GPU tiers), or the default worker for a queue's own pool
/// (its tasks counted at a vCPU each).
pub fn pool_shape(pool: &WorkerPool, settings: &Settings, own: Option<&PoolSettings>) -> PoolShape {
    let d = settings.default_worker;
    match (pool.shape, own.and_then(|p| p.worker)) {
        (Some(t), worker) => {
            let fit = if t.gpu > 0 {
                1
            } else {
                (d.cpu_milli / t.cpu_milli.max(1))
                    .min((d.memory_mib / t.memory_mib.max(1)) as u32)
                    .max(1)
            };
            let worker = worker.unwrap_or(Tier {
                cpu_milli: t.cpu_milli * fit,
                memory_mib: t.memory_mib * u64::from(fit),
                gpu: t.gpu * fit,
            });
            let slots = [
                worker.cpu_milli.checked_div(t.cpu_milli),
                u32::try_from(worker.memory_mib / t.memory_mib.max(1)).ok(),
                worker.gpu.checked_div(t.gpu),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .max(1);
            PoolShape { worker, slots }
        }
        (None, worker) => {
            let worker = worker.unwrap_or(d);
            PoolShape {
                worker,
                slots: (worker.cpu_milli / 1000).max(1),
            }
        }
    }
}

/// One pool's part of a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolDecision {
    pub pool: String,
    pub team: String,
    /// Queued (visible) and in-flight messages, and the oldest cohort's age.
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

#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("autoscaler settings: {0}")]
    Settings(String),
}

/// No EC2: the type of `Autoscaler::ec2` when clusters have fixed capacity (the local
/// stack). It has no values, so its methods can never run.
pub enum NoEc2 {}

impl Ec2Api for NoEc2 {
    async fn create_fleet(&self, _: &FleetRequest) -> Result<FleetOutcome, Ec2Error> {
        match *self {}
    }
    async fn spot_prices(&self, _: &[String]) -> Result<Vec<SpotPrice>, Ec2Error> {
        match *self {}
    }
    async fn nodes(&self, _: &str) -> Result<Vec<Node>, Ec2Error> {
        match *self {}
    }
    async fn terminate(&self, _: &[String]) -> Result<(), Ec2Error> {
        match *self {}
    }
}

/// Everything a tick works with.
pub struct Autoscaler<'a, B: WorkerBackend, E: Ec2Api> {
    pub store: &'a Store,
    pub queues: &'a Queues,
    pub backend: &'a B,
    /// EC2, when nodes are the autoscaler's to manage.
    pub ec2: Option<&'a E>,
    /// The taskhost's environment (table, queue prefix, region...).
    pub worker_env: BTreeMap<String, String>,
    /// How long a worker's placement holds without a renewal.
    pub reservation_lease: Duration,
}

/// A pool's work for this tick.
struct PoolWork {
    pool: WorkerPool,
    name: String,
    team: String,
    shape: PoolShape,
    gpu_type: Option<String>,
    max_workers: Option<u32>,
}

impl<B: WorkerBackend, E: Ec2Api> Autoscaler<'_, B, E> {
    /// Run one tick at `now` (ms). `None` when another tick holds the lease.
    pub async fn tick(&self, now: i64) -> Result<Option<Decision>, AutoscaleError> {
        let tick_id = format!(
            "{}-{}",
            chrono::DateTime::from_timestamp_millis(now)
                .unwrap_or_default()
                .format("%Y%m%dT%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        if !self
            .store
            .acquire_tick(&tick_id, now, now + TICK_LEASE.as_millis() as i64)
            .await?
        {
            tracing::info!("another autoscaler tick is running; skipping this one");
            return Ok(None);
        }
        let result = self.run(&tick_id, now).await;
        if let Err(e) = self.store.release_tick(&tick_id).await {
            tracing::warn!(error = %e, "releasing the tick lease failed; it lapses by itself");
        }
        result.map(Some)
    }

    async fn run(&self, tick_id: &str, now: i64) -> Result<Decision, AutoscaleError> {
        let settings: Settings = match self.store.autoscaler_settings().await? {
            Some(s) => s,
            None => Settings::from_env().map_err(AutoscaleError::Settings)?,
        };
        settings.check().map_err(AutoscaleError::Settings)?;
        let previous: Option<Decision> = self.store.decisions(1).await?.into_iter().next();
        let carried_before = previous.map(|d| d.carried).unwrap_or_default();
        let mut decision = Decision {
            tick_id: tick_id.to_string(),
            at: now,
            ..Decision::default()
        };

        // Workers, by pool, in every cluster (ended ones reaped first).
        let clusters = self.store.clusters().await?;
        let mut workers: Vec<LaunchedWorker> = Vec::new();
        for c in &clusters {
            if let Err(e) = reap(self.store, self.backend, c).await {
                decision
                    .errors
                    .push(format!("reaping cluster {}: {e}", c.name));
            }
            match self.backend.list(c, None).await {
                Ok(ws) => workers.extend(ws.into_iter().filter(|w| !w.phase.ended())),
                Err(e) => decision
                    .errors
                    .push(format!("listing workers in cluster {}: {e}", c.name)),
            }
        }
        let records = self.store.workers("", now - 15 * 60 * 1000).await?;

        // The pools: every worker pool queue, and those the settings name.
        let mut names: BTreeSet<String> = self.queues.list().await?.into_iter().collect();
        names.extend(settings.pools.iter().map(|p| p.pool.clone()));
        let limits_by_queue = self.compute_environment_limits(&settings).await?;
        for name in names {
            let own = settings.pools.iter().find(|p| p.pool == name);
            let pool = WorkerPool::parse(&name);
            let shape = pool_shape(&pool, &settings, own);
            let ce_max = limits_by_queue
                .get(&pool.queue)
                .and_then(|ce| ce.max_vcpus)
                .map(|v| (u64::from(v) * 1000 / u64::from(shape.worker.cpu_milli.max(1))) as u32);
            let work = PoolWork {
                team: own
                    .and_then(|p| p.team.clone())
                    .unwrap_or_else(|| settings.default_team.clone()),
                gpu_type: own.and_then(|p| p.gpu_type.clone()),
                max_workers: match (own.and_then(|p| p.max_workers), ce_max) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                pool,
                name,
                shape,
            };
            let d = self
                .scale_pool(
                    &work,
                    &settings,
                    &carried_before,
                    &mut decision,
                    &workers,
                    &records,
                    now,
                )
                .await?;
            if let Some(d) = d {
                decision.pools.push(d);
            }
        }

        // Nodes.
        if let (Some(ns), Some(ec2)) = (&settings.nodes, self.ec2) {
            // The workers just started count: they need room too.
            let mut all = workers;
            for c in &clusters {
                match self.backend.list(c, None).await {
                    Ok(ws) => {
                        for w in ws.into_iter().filter(|w| !w.phase.ended()) {
                            if !all
                                .iter()
                                .any(|x| x.name == w.name && x.cluster == w.cluster)
                            {
                                all.push(w);
                            }
                        }
                    }
                    Err(e) => decision
                        .errors
                        .push(format!("listing workers in cluster {}: {e}", c.name)),
                }
            }
            let nd = self
                .scale_nodes(
                    ec2,
                    ns,
                    &settings,
                    &clusters,
                    &all,
                    &limits_by_queue,
                    &carried_before,
                    &mut decision,
                    now,
                )
                .await?;
            decision.nodes = Some(nd);
        }
        decision.took_ms = crate::store::now_ms() - now;
        self.store.put_decision(now, tick_id, &decision).await?;
        emit_metrics(&decision);
        Ok(decision)
    }

    #[allow(clippy::too_many_arguments)]
    async fn scale_pool(
        &self,
        work: &PoolWork,
        settings: &Settings,
        before: &Carried,
        decision: &mut Decision,
        workers: &[LaunchedWorker],
        records: &[crate::store::workers::WorkerRecord],
        now: i64,
    ) -> Result<Option<PoolDecision>, AutoscaleError> {
        let name = &work.name;
        let (queued, in_flight) = match self.queues.url(name).await {
            Ok(url) => self.queues.depth(&url).await?,
            Err(QueueError::NoSuchQueue { .. }) => (0, 0),
            Err(e) => return Err(e.into()),
        };
        let mut backlog = before.backlogs.get(name).cloned().unwrap_or_default();
        backlog.update(queued, now);
        backlog.compact(MAX_COHORTS);
        let mine: Vec<&LaunchedWorker> = workers.iter().filter(|w| &w.pool == name).collect();
        let live = mine
            .iter()
            .filter(|w| w.phase == WorkerPhase::Running)
            .count() as u32;
        let starting = mine.len() as u32 - live;
        if queued == 0 && in_flight == 0 && mine.is_empty() {
            return Ok(None);
        }
        if queued > 0 {
            decision
                .carried
                .backlogs
                .insert(name.clone(), backlog.clone());
        }
        let pool_records: Vec<_> = records.iter().filter(|r| &r.pool == name).collect();
        let done: u64 = pool_records.iter().map(|r| r.tasks_done).sum();
        let busy: u64 = pool_records.iter().map(|r| r.busy_ms).sum();
        let mean_task_seconds = if done > 0 {
            busy as f64 / done as f64 / 1000.0
        } else {
            settings.default_task_seconds
        };
        let startups: Vec<i64> = pool_records.iter().filter_map(|r| r.startup_ms).collect();
        let startup_seconds = if startups.is_empty() {
            settings.startup_seconds
        } else {
            startups.iter().sum::<i64>() as f64 / startups.len() as f64 / 1000.0
        };
        let own = settings.pools.iter().find(|p| &p.pool == name);
        let reuse = settings.half_life(&work.team, own);
        let demand = PoolDemand {
            queued: backlog.ages(now),
            live_workers: live,
            starting_workers: starting,
            slots_per_worker: work.shape.slots,
            mean_task_seconds,
            startup_seconds,
        };
        let target = reuse.target(&demand);
        let mut d = PoolDecision {
            pool: name.clone(),
            team: work.team.clone(),
            queued,
            in_flight,
            oldest_seconds: demand.queued.first().map_or(0.0, |q| q.age_seconds),
            live_workers: live,
            starting_workers: starting,
            slots_per_worker: work.shape.slots,
            mean_task_seconds,
            startup_seconds,
            half_life_seconds: reuse.half_life_seconds,
            weight: target.weight,
            absorbed: target.absorbed,
            wanted: target.new_workers,
            ..PoolDecision::default()
        };
        let mut asked = target.new_workers;
        if asked > settings.max_new_workers_per_pool {
            asked = settings.max_new_workers_per_pool;
            d.limited_by = Some(format!(
                "max_new_workers_per_pool {}",
                settings.max_new_workers_per_pool
            ));
        }
        if let Some(max) = work.max_workers {
            let room = max.saturating_sub(live + starting);
            if room < asked {
                asked = room;
                d.limited_by = Some(format!("max_workers {max}"));
            }
        }
        d.asked = asked;
        if asked == 0 {
            return Ok(Some(d));
        }
        let request = PlacementRequest {
            request_id: format!("autoscaler-{}-{}", decision.tick_id, short(name)),
            team: work.team.clone(),
            pool: name.clone(),
            cpu: work.shape.worker.cpu(),
            memory_mib: work.shape.worker.memory_mib,
            gpu: work.shape.worker.gpu,
            gpu_type: work.gpu_type.clone(),
            workers: asked,
            allow_partial: true,
        };
        let spec = WorkerSpec {
            team: work.team.clone(),
            pool: name.clone(),
            queues: vec![work.pool.queue.clone()],
            shape: work.shape.worker,
            tier: work.pool.shape,
            gpu_type: work.gpu_type.clone(),
            reservation_id: String::new(),
            slots: Vec::new(),
            capacity_type: None,
            instance_type: None,
            env: self.worker_env.clone(),
        };
        match launch_workers(
            self.store,
            self.backend,
            &request,
            &spec,
            self.reservation_lease,
        )
        .await
        {
            Ok(launched) => {
                d.granted = launched.outcome.granted_workers();
                d.launched = launched.workers.len() as u32;
                if let PlacementOutcome::Refused { reason, .. } = &launched.outcome {
                    d.refused = Some(reason.clone());
                }
                for (cluster, e) in &launched.failed {
                    decision
                        .errors
                        .push(format!("starting workers for {name} in {cluster}: {e}"));
                }
                tracing::info!(pool = %name, team = %work.team, queued, wanted = d.wanted, asked, granted = d.granted,
                    launched = d.launched, refused = d.refused.as_deref().unwrap_or(""), "autoscaler: workers");
            }
            Err(LaunchError::Store(e)) => return Err(e.into()),
            Err(e) => decision
                .errors
                .push(format!("launching workers for {name}: {e}")),
        }
        Ok(Some(d))
    }

    /// Per queue: the launch configs and vCPU limit of its compute environments.
    async fn compute_environment_limits(
        &self,
        settings: &Settings,
    ) -> Result<BTreeMap<String, QueueCompute>, AutoscaleError> {
        let mut out = BTreeMap::new();
        let zones = settings
            .nodes
            .as_ref()
            .map(|n| n.zones.clone())
            .unwrap_or_default();
        for q in self
            .store
            .list_resources(ResourceKind::JobQueue, "")
            .await?
        {
            let Some(name) = q["jobQueueName"].as_str() else {
                continue;
            };
            let mut compute = QueueCompute::default();
            let order = q["computeEnvironmentOrder"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for entry in order {
                let Some(ce) = entry["computeEnvironment"].as_str() else {
                    continue;
                };
                let ce = ce.rsplit('/').next().unwrap_or(ce);
                let Some(doc) = self
                    .store
                    .get_resource(ResourceKind::ComputeEnvironment, ce)
                    .await?
                else {
                    continue;
                };
                if doc["state"] == "DISABLED" {
                    continue;
                }
                let cr = &doc["computeResources"];
                if let Some(v) = cr["maxvCpus"].as_u64() {
                    compute.max_vcpus = Some(compute.max_vcpus.unwrap_or(0) + v as u32);
                }
                let purchase = if cr["type"] == "SPOT" {
                    Purchase::Spot
                } else {
                    Purchase::OnDemand
                };
                if cr["allocationStrategy"] == "SPOT_CAPACITY_OPTIMIZED" {
                    compute.strategy = Some(Strategy::SpotCapacityOptimized);
                }
                for t in cr["instanceTypes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                {
                    for i in PriceTable::shipped().expand(t) {
                        for z in &zones {
                            if let Some(c) =
                                PriceTable::shipped().launch_config(&i.name, z, purchase)
                            {
                                if !compute
                                    .configs
                                    .iter()
                                    .any(|x: &LaunchConfig| x.key() == c.key())
                                {
                                    compute.configs.push(c);
                                }
                            }
                        }
                    }
                }
            }
            out.insert(name.to_string(), compute);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn scale_nodes(
        &self,
        ec2: &E,
        ns: &NodeSettings,
        settings: &Settings,
        clusters: &[ClusterRecord],
        workers: &[LaunchedWorker],
        compute: &BTreeMap<String, QueueCompute>,
        before: &Carried,
        decision: &mut Decision,
        now: i64,
    ) -> Result<NodeDecision, AutoscaleError> {
        let mut nd = NodeDecision::default();
        let nodes = match ec2.nodes(self.store.table()).await {
            Ok(n) => n,
            Err(e) => {
                decision.errors.push(format!("listing nodes: {e}"));
                decision.carried.idle_since = before.idle_since.clone();
                decision.carried.cordoned = before.cordoned.clone();
                return Ok(nd);
            }
        };
        // Launch configs: the settings' (for queues without compute environments).
        let table = PriceTable::shipped();
        let mut default_configs = Vec::new();
        for t in &ns.instance_types {
            for i in table.expand(t) {
                for z in &ns.zones {
                    for p in &ns.purchase {
                        if let Some(c) = table.launch_config(&i.name, z, *p) {
                            default_configs.push(c);
                        }
                    }
                }
            }
        }
        // Spot prices, once for every spot type in play.
        let spot_types: BTreeSet<String> = default_configs
            .iter()
            .chain(compute.values().flat_map(|c| c.configs.iter()))
            .filter(|c| c.purchase == Purchase::Spot)
            .map(|c| c.instance_type.clone())
            .collect();
        let prices = if spot_types.is_empty() {
            Vec::new()
        } else {
            match ec2
                .spot_prices(&spot_types.into_iter().collect::<Vec<_>>())
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    decision
                        .errors
                        .push(format!("spot prices (list prices used): {e}"));
                    Vec::new()
                }
            }
        };
        with_spot_prices(&mut default_configs, &prices);
        let price_of = |key: &str| -> f64 {
            default_configs
                .iter()
                .chain(compute.values().flat_map(|c| c.configs.iter()))
                .find(|c| c.key() == key)
                .map_or(0.0, |c| c.price_per_hour)
        };
        let mut global = Fleet::default();
        let mut per_config: BTreeMap<String, Fleet> = BTreeMap::new();
        for n in &nodes {
            let key = n.launch_config();
            let price = price_of(&key).max(table.get(&n.instance_type).map_or(0.0, |i| {
                if n.purchase == Purchase::Spot {
                    0.0
                } else {
                    i.on_demand_per_hour
                }
            }));
            for f in [&mut global, per_config.entry(key).or_default()] {
                f.nodes += 1;
                f.dollars_per_hour += price;
            }
        }
        nd.nodes = global.nodes;
        nd.dollars_per_hour = global.dollars_per_hour;

        // Per (cluster, pool): nodes it needs and nodes it can give up.
        let mut groups: BTreeSet<(String, String)> = workers
            .iter()
            .map(|w| (w.cluster.clone(), w.pool.clone()))
            .collect();
        groups.extend(
            nodes
                .iter()
                .map(|n| (n.tag(TAG_CLUSTER).to_string(), n.tag(TAG_POOL).to_string())),
        );
        let mut surplus_all: Vec<(&Node, String)> = Vec::new();
        for (cluster, pool_name) in groups {
            let pool = WorkerPool::parse(&pool_name);
            let own = settings.pools.iter().find(|p| p.pool == pool_name);
            let shape = pool_shape(&pool, settings, own);
            let ws = WorkerShape {
                cpu_milli: u64::from(shape.worker.cpu_milli),
                memory_mib: shape.worker.memory_mib,
                gpus: shape.worker.gpu,
            };
            let qc = compute.get(&pool.queue).filter(|c| !c.configs.is_empty());
            let mut configs = qc.map_or_else(|| default_configs.clone(), |c| c.configs.clone());
            with_spot_prices(&mut configs, &prices);
            let strategy = qc.and_then(|c| c.strategy).unwrap_or(ns.strategy);
            let mine: Vec<&LaunchedWorker> = workers
                .iter()
                .filter(|w| w.cluster == cluster && w.pool == pool_name)
                .collect();
            let theirs: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.tag(TAG_CLUSTER) == cluster && n.tag(TAG_POOL) == pool_name)
                .collect();
            let views: Vec<NodeView> = theirs
                .iter()
                .filter(|n| !before.cordoned.contains_key(&n.instance_id))
                .map(|n| {
                    let holds = configs
                        .iter()
                        .find(|c| c.key() == n.launch_config())
                        .cloned()
                        .or_else(|| table.launch_config(&n.instance_type, &n.zone, n.purchase))
                        .map_or(0, |c| ws.per_node(&c));
                    NodeView {
                        id: n.instance_id.clone(),
                        holds,
                        busy: mine.iter().any(|w| {
                            w.node
                                .as_deref()
                                .is_some_and(|x| x == n.name || x == n.instance_id)
                        }),
                        price_per_hour: price_of(&n.launch_config()),
                    }
                })
                .collect();
            let count = mine.len() as u64;
            let short = workers_without_room(&views, count);
            if short > 0 {
                let Some(template) = ns.launch_templates.get(&cluster) else {
                    decision.errors.push(format!(
                        "cluster {cluster}: {short} workers of {pool_name} need nodes, but nodes.launch_templates names no template for it"
                    ));
                    continue;
                };
                let team = mine
                    .first()
                    .map_or_else(|| settings.default_team.clone(), |w| w.team.clone());
                let limited = self
                    .store
                    .capacity_marks(now)
                    .await?
                    .into_iter()
                    .map(|m| m.launch_config)
                    .collect();
                let ranked: Vec<LaunchConfig> = rank(&configs, &ws, strategy, &limited)
                    .into_iter()
                    .cloned()
                    .collect();
                let mut ctx = LaunchContext {
                    store: self.store,
                    ec2,
                    launch_template: template,
                    ranked,
                    global,
                    global_limits: ns.limits,
                    per_config: per_config.clone(),
                    config_limits: ns.config_limits.clone(),
                    mark_for: Duration::from_secs(ns.capacity_mark_seconds),
                    tags: BTreeMap::from([
                        (TAG_CLUSTER.to_string(), cluster.clone()),
                        (TAG_POOL.to_string(), pool_name.clone()),
                        (TAG_TEAM.to_string(), team),
                    ]),
                };
                match launch_nodes(&mut ctx, &ws, short).await {
                    Ok(done) => {
                        for (key, ids) in done.fleets {
                            nd.fleets.push(FleetDecision {
                                cluster: cluster.clone(),
                                pool: pool_name.clone(),
                                launch_config: key,
                                instance_ids: ids,
                            });
                        }
                        nd.marked.extend(done.marked);
                        for l in done.binding_limits {
                            if !nd.binding_limits.contains(&l) {
                                nd.binding_limits.push(l);
                            }
                        }
                        nd.unplaced_workers += done.unplaced_workers;
                    }
                    Err(LaunchNodesError::Store(e)) => return Err(e.into()),
                    Err(LaunchNodesError::Ec2(e)) => decision
                        .errors
                        .push(format!("nodes for {pool_name} in {cluster}: {e}")),
                }
                global = ctx.global;
                per_config = ctx.per_config;
            }
            for id in surplus_nodes(&views, count) {
                if let Some(n) = theirs.iter().find(|n| n.instance_id == id) {
                    surplus_all.push((n, cluster.clone()));
                }
            }
            // Cordoned nodes go once nothing runs on them.
            for n in theirs
                .iter()
                .filter(|n| before.cordoned.contains_key(&n.instance_id))
            {
                let busy = mine.iter().any(|w| {
                    w.node
                        .as_deref()
                        .is_some_and(|x| x == n.name || x == n.instance_id)
                });
                if busy {
                    decision
                        .carried
                        .cordoned
                        .insert(n.instance_id.clone(), before.cordoned[&n.instance_id]);
                } else {
                    nd.terminated.push(n.instance_id.clone());
                }
            }
        }

        // Unneeded nodes: idle for a while, then cordoned; terminated on a later tick.
        let idle_for = ns.idle_node_seconds as i64 * 1000;
        for (n, cluster) in surplus_all {
            let since = before
                .idle_since
                .get(&n.instance_id)
                .copied()
                .unwrap_or(now);
            if now - since < idle_for || now - n.launched_at < idle_for {
                decision
                    .carried
                    .idle_since
                    .insert(n.instance_id.clone(), since);
                continue;
            }
            let Some(c) = clusters.iter().find(|c| c.name == cluster) else {
                // The cluster is gone: nothing can run there; the node goes now.
                nd.terminated.push(n.instance_id.clone());
                continue;
            };
            match self.backend.cordon(c, &n.name).await {
                Ok(()) => {
                    nd.cordoned.push(n.instance_id.clone());
                    decision.carried.cordoned.insert(n.instance_id.clone(), now);
                }
                Err(e) => {
                    decision
                        .errors
                        .push(format!("cordoning node {} in {cluster}: {e}", n.name));
                    decision
                        .carried
                        .idle_since
                        .insert(n.instance_id.clone(), since);
                }
            }
        }
        let max = ns.max_nodes_removed_per_tick;
        if nd.terminated.len() as u64 > max {
            for id in nd.terminated.split_off(max as usize) {
                decision
                    .carried
                    .cordoned
                    .insert(id.clone(), before.cordoned.get(&id).copied().unwrap_or(now));
            }
            nd.binding_limits
                .push(format!("global max_nodes_removed_per_tick {max}"));
        }
        if !nd.terminated.is_empty() {
            match ec2.terminate(&nd.terminated).await {
                Ok(()) => {
                    tracing::info!(nodes = ?nd.terminated, "autoscaler: idle nodes terminated")
                }
                Err(e) => {
                    decision
                        .errors
                        .push(format!("terminating {:?}: {e}", nd.terminated));
                    for id in nd.terminated.drain(..) {
                        decision
                            .carried
                            .cordoned
                            .insert(id.clone(), before.cordoned.get(&id).copied().unwrap_or(now));
                    }
                }
            }
        }
        Ok(nd)
    }
}

/// A decision's metrics (EMF): backlog and workers launched per pool, refusals per
/// team, capacity-limited marks.
fn emit_metrics(d: &Decision) {
    use crate::emf::{emit, Unit};
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

/// A queue's compute: launch configs and the vCPU limit of its compute environments.
#[derive(Debug, Clone, Default)]
pub struct QueueCompute {
    pub configs: Vec<LaunchConfig>,
    pub max_vcpus: Option<u32>,
    pub strategy: Option<Strategy>,
}

/// A short stable tag for a pool name in request ids.
fn short(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_bad_fields_are_named() {
        let s = Settings::parse("{}").expect("an empty document is the defaults");
        assert_eq!(s, Settings::default());
        let e = Settings::parse(r#"{"teams": {"vision": {"half_life_seconds": -1}}}"#).unwrap_err();
        assert!(e.contains("teams.vision.half_life_seconds"), "{e}");
        let e = Settings::parse(
            r#"{"nodes": {"zones": ["us-east-1a"], "instance_types": ["m5.large", "zz9.huge"]}}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("nodes.instance_types[1]") && e.contains("zz9.huge"),
            "{e}"
        );
        let e = Settings::parse(r#"{"nodes": {}}"#).unwrap_err();
        assert!(e.contains("nodes.zones"), "{e}");
        let e = Settings::parse(r#"{"pools": [{"pool": "a"}, {"pool": "a"}]}"#).unwrap_err();
        assert!(e.contains("pools[1].pool"), "{e}");
        let e = Settings::parse(r#"{"half_life": 3}"#).unwrap_err();
        assert!(e.contains("unknown field `half_life`"), "{e}");
    }

    #[test]
    fn pool_shapes_come_from_the_tier_or_the_default_worker() {
        let s = Settings::default();
        let own = pool_shape(&WorkerPool::parse("default"), &s, None);
        assert_eq!((own.worker, own.slots), (s.default_worker, 4));
        // 1 vCPU, 2 GiB tasks: four fit a 4 vCPU, 16 GiB default worker.
        let tier = pool_shape(&WorkerPool::parse("default--1cpu-2048mib"), &s, None);
        assert_eq!(tier.slots, 4);
        assert_eq!(
            (tier.worker.cpu_milli, tier.worker.memory_mib),
            (4000, 8192)
        );
        // GPU tiers get one task a worker.
        let gpu = pool_shape(&WorkerPool::parse("default--8cpu-32768mib-1gpu"), &s, None);
        assert_eq!((gpu.slots, gpu.worker.gpu), (1, 1));
        // A pool's own worker size wins, its slots follow from the tier.
        let p = PoolSettings {
            pool: "default--1cpu-2048mib".into(),
            team: None,
            worker: Some(Tier::parse_shape("8:16384").unwrap()),
            max_workers: None,
            gpu_type: None,
            half_life_seconds: None,
        };
        let sized = pool_shape(&WorkerPool::parse(&p.pool), &s, Some(&p));
        assert_eq!(sized.slots, 8);
    }
}
