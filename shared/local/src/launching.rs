//! The local stack's worker launching: placement requests for its workers and pools, the
//! loop that retries refused ones and reaps ended workers, and the autoscaler's timer.

use crate::backend::LocalBackend;
use anyhow::{bail, Context};
use batchplane::api::Service;
use batchplane::domain::placement::PlacementRequest;
use batchplane::scaling::launcher::{launch_workers, WorkerSpec};
use batchplane::store::placement::PlacementOutcome;
use batchplane::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::options::*;

/// What the stack's worker requests are made of.
#[derive(Clone)]
pub(crate) struct WorkerSpecs {
    pub(crate) opts: StackOptions,
    pub(crate) env: Vec<(String, String)>,
}

impl WorkerSpecs {
    pub(crate) fn spec(
        &self,
        team: &str,
        pool: String,
        shape: batchplane::domain::tiers::Tier,
    ) -> WorkerSpec {
        WorkerSpec {
            team: team.to_string(),
            pool,
            queues: self.opts.queues.clone(),
            shape,
            tier: None,
            gpu_type: None,
            reservation_id: String::new(),
            slots: Vec::new(),
            capacity_type: None,
            instance_type: None,
            env: self
                .env
                .iter()
                .cloned()
                // A new image's pool is served within a second of its first job.
                .chain([("BATCHPLANE_POOL_SCAN_MS".to_string(), "1000".to_string())])
                .collect(),
            container: None,
            // The stack's own workers run any image's tasks (on this host).
            any_container: true,
        }
    }

    pub(crate) fn request(
        &self,
        team: &str,
        pool: &str,
        shape: batchplane::domain::tiers::Tier,
    ) -> PlacementRequest {
        PlacementRequest {
            request_id: format!("local-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            team: team.to_string(),
            pool: pool.to_string(),
            cpu: shape.cpu(),
            memory_mib: shape.memory_mib,
            gpu: shape.gpu,
            gpu_type: None,
            workers: 1,
            allow_partial: false,
        }
    }

    /// A worker of the stack's own size for its queues' own pool.
    pub(crate) fn general(&self) -> (PlacementRequest, WorkerSpec) {
        let shape = batchplane::domain::tiers::Tier {
            cpu_milli: (self.opts.worker_cpus * 1000.0).round() as u32,
            memory_mib: self.opts.worker_memory_mib,
            gpu: 0,
        };
        let team = &self.opts.team;
        let pool = batchplane::domain::tiers::WorkerPool::new(
            self.opts
                .queues
                .first()
                .cloned()
                .unwrap_or_else(|| "default".into()),
            team.clone(),
            None,
        )
        .name();
        (
            self.request(team, &pool, shape),
            self.spec(team, pool.clone(), shape),
        )
    }

    /// A worker for one tier shape's pool.
    pub(crate) fn pool(&self, p: &PoolWorkers) -> (PlacementRequest, WorkerSpec) {
        let shape = batchplane::domain::tiers::Tier {
            cpu_milli: p.shape.cpu_milli * p.slots,
            memory_mib: p.shape.memory_mib * u64::from(p.slots),
            gpu: p.shape.gpu * p.slots,
        };
        let team = p.team.as_deref().unwrap_or(&self.opts.team);
        let pool = batchplane::domain::tiers::WorkerPool::new(
            self.opts
                .queues
                .first()
                .cloned()
                .unwrap_or_else(|| "default".into()),
            team,
            Some(p.shape),
        )
        .name();
        let mut spec = self.spec(team, pool.clone(), shape);
        spec.tier = Some(p.shape);
        (self.request(team, &pool, shape), spec)
    }
}

pub(crate) async fn launch_one(
    store: &Store,
    backend: &LocalBackend,
    request: &PlacementRequest,
    spec: &WorkerSpec,
) -> anyhow::Result<Option<u32>> {
    let launched = launch_workers(store, backend, request, spec, LOCAL_RESERVATION_LEASE)
        .await
        .with_context(|| {
            format!(
                "launching a worker for team {} pool {}",
                request.team, request.pool
            )
        })?;
    if let Some((cluster, e)) = launched.failed.first() {
        bail!("starting a worker in local cluster {cluster}: {e}");
    }
    match (&launched.outcome, launched.workers.first()) {
        (PlacementOutcome::Granted { .. }, Some(w)) => Ok(backend.pid_of(&w.name)),
        (PlacementOutcome::Refused { reason, .. }, _) => {
            tracing::warn!(team = %request.team, pool = %request.pool, reason, "placement refused a local worker");
            Ok(None)
        }
        (PlacementOutcome::Granted { .. }, None) => Ok(None),
    }
}

/// What the launcher loop needs from the stack.
pub(crate) struct LauncherParts {
    pub(crate) service: Arc<batchplane::api::Service>,
    pub(crate) reconcile_every: u64,
    pub(crate) store: Store,
    pub(crate) backend: Arc<LocalBackend>,
    pub(crate) waiting: Arc<std::sync::Mutex<Vec<PoolWorkers>>>,
    pub(crate) specs: WorkerSpecs,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Every second: try the refused pool workers again (a raised quota or an enabled
/// cluster lets them start), release the placements of workers that died without doing
/// so, drain the workers of disabled clusters, every ten seconds sweep lapsed reservations
/// (the placement function's schedule in AWS), and reconcile every
/// `reconcile_every_seconds` (the autoscaler's schedule in AWS).
pub(crate) async fn launcher_loop(mut parts: LauncherParts) {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = parts.stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tick += 1;
        parts.backend.reap_exited();
        let waiting: Vec<PoolWorkers> = parts
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in waiting {
            let (request, spec) = parts.specs.pool(&p);
            match launch_one(&parts.store, &parts.backend, &request, &spec).await {
                Ok(Some(pid)) => {
                    tracing::info!(pid, pool = %request.pool, team = %request.team, "a refused pool worker was placed");
                    parts
                        .waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|w| w != &p);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "launching a waiting pool worker failed"),
            }
        }
        match parts.store.clusters().await {
            Ok(clusters) => {
                for c in clusters.iter().filter(|c| c.kind == "local") {
                    if let Err(e) =
                        batchplane::scaling::launcher::reap(&parts.store, parts.backend.as_ref(), c)
                            .await
                    {
                        tracing::warn!(error = %e, cluster = %c.name, "reaping ended workers failed");
                    }
                    if let Err(e) =
                        batchplane::scaling::launcher::drain_if_disabled(parts.backend.as_ref(), c)
                            .await
                    {
                        tracing::warn!(error = %e, cluster = %c.name, "draining a disabled cluster failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading clusters failed"),
        }
        if tick.is_multiple_of(10) {
            if let Err(e) = parts
                .store
                .sweep_reservations(batchplane::store::now_ms())
                .await
            {
                tracing::warn!(error = %e, "sweeping reservations failed");
            }
        }
        if tick.is_multiple_of(parts.reconcile_every.max(1)) {
            let queues = &parts.service.queues;
            batchplane::reconcile::Reconciler {
                store: &parts.store,
                queues,
                dead_letter_queue: queues.dead_letter_queue(),
            }
            .run(batchplane::store::now_ms())
            .await;
        }
    }
}

/// The autoscaler on a timer (EventBridge's schedule in AWS), with the local clusters'
/// fixed capacity (no EC2 nodes).
pub(crate) async fn autoscaler_loop(
    service: Arc<Service>,
    backend: Arc<LocalBackend>,
    worker_env: std::collections::BTreeMap<String, String>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let autoscaler = batchplane::scaling::Autoscaler::<_, batchplane::scaling::NoEc2> {
            store: &service.store,
            queues: &service.queues,
            backend: backend.as_ref(),
            ec2: None,
            worker_env: worker_env.clone(),
            reservation_lease: LOCAL_RESERVATION_LEASE,
        };
        if let Err(e) = autoscaler.tick(batchplane::store::now_ms()).await {
            tracing::warn!(error = %e, "autoscaler tick failed");
        }
    }
}
