//! One autoscaler tick: the tick lease, then every pool's workers and nodes.

use super::fleet::{Ec2Api, Ec2Error, FleetOutcome, FleetRequest, Node, SpotPrice};
use super::launcher::{reap, LaunchedWorker, WorkerBackend};
use super::{decision::*, settings::*};
use crate::domain::tiers::WorkerPool;
use crate::queue::{QueueError, Queues};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("autoscaler settings: {0}")]
    Settings(#[source] crate::domain::FieldError),
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
pub(super) struct PoolWork {
    pub(super) pool: WorkerPool,
    pub(super) name: String,
    pub(super) team: String,
    pub(super) shape: PoolShape,
    pub(super) gpu_type: Option<String>,
    pub(super) max_workers: Option<u32>,
    /// The container the pool's name carries the key of.
    pub(super) container: Option<crate::domain::containers::Container>,
}

impl<B: WorkerBackend, E: Ec2Api> Autoscaler<'_, B, E> {
    /// The container a pool's workers run in (`Some(None)`: the deployment's image);
    /// `None`, with the reason in the decision, when its key names no stored container.
    async fn pool_container(
        &self,
        pool: &WorkerPool,
        name: &str,
        decision: &mut Decision,
    ) -> Option<Option<crate::domain::containers::Container>> {
        let key = match &pool.container {
            None => return Some(None),
            Some(key) => key,
        };
        match self.store.container(key).await {
            Ok(Some(c)) => Some(Some(c)),
            Ok(None) => {
                decision.errors.push(format!(
                    "pool {name}: no container is stored under key {key}; its workers cannot be started"
                ));
                None
            }
            Err(e) => {
                decision
                    .errors
                    .push(format!("pool {name}: reading its container: {e}"));
                None
            }
        }
    }

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

    pub(super) async fn run(&self, tick_id: &str, now: i64) -> Result<Decision, AutoscaleError> {
        let settings = super::settings::settings_in_force(self.store).await?;
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
            // A queue's own SQS queue (a job queue's marker) is no pool: only team pools
            // carry tasks.
            let Some(pool) = WorkerPool::parse(&name) else {
                continue;
            };
            let Some(container) = self.pool_container(&pool, &name, &mut decision).await else {
                continue;
            };
            let shape = pool_shape(&pool, &settings, own);
            let ce_max = limits_by_queue
                .get(&pool.queue)
                .and_then(|ce| ce.max_vcpus)
                .map(|v| (u64::from(v) * 1000 / u64::from(shape.worker.cpu_milli.max(1))) as u32);
            let work = PoolWork {
                // A pool's workers are placed on its own team's quota.
                team: pool.team.clone(),
                gpu_type: own.and_then(|p| p.gpu_type.clone()),
                max_workers: match (own.and_then(|p| p.max_workers), ce_max) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                pool,
                name,
                shape,
                container,
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
}
