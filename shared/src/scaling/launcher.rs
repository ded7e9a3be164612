//! The worker launcher: turns a team's need for workers into placed, running taskhosts.
//!
//! It asks placement for workers (quota × cluster capacity), starts one worker per granted
//! slot through a [`WorkerBackend`] (taskhost pods in an EKS cluster, or taskhost
//! processes locally), and gives a slot back if its worker could not be started. Workers
//! renew their slot's lease while they live and release it when they exit; `reap`
//! releases the slots of workers that ended without doing so, and the placement sweeper
//! covers the ones nobody saw end.

use crate::domain::placement::PlacementRequest;
use crate::domain::tiers::Tier;
use crate::store::placement::{ClusterRecord, PlacementOutcome};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// Spot or on-demand capacity for a worker's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    Spot,
    OnDemand,
}

impl CapacityType {
    pub fn as_str(&self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
        }
    }
}

/// Everything a backend needs to start the workers of one placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub team: String,
    /// The worker pool the workers serve (also the taskhost's queue set and tier).
    pub pool: String,
    /// Job queues the taskhost takes tasks from, by priority.
    pub queues: Vec<String>,
    /// The worker's size: what its pod requests (and is limited to).
    pub shape: Tier,
    /// The tier the taskhost serves, when the pool is a tier pool.
    pub tier: Option<Tier>,
    pub gpu_type: Option<String>,
    pub reservation_id: String,
    pub slots: Vec<u32>,
    pub capacity_type: Option<CapacityType>,
    pub instance_type: Option<String>,
    /// The taskhost's configuration (table, queue prefix, region...).
    pub env: BTreeMap<String, String>,
    /// The image and job role the pool's tasks run in (`None`: the deployment's
    /// worker image).
    pub container: Option<crate::domain::containers::Container>,
    /// Serve every container's pools of the queues and shape as well (a worker with no
    /// container runtime, which runs any image's tasks on its host: the local stack's
    /// own workers).
    pub any_container: bool,
}

impl WorkerSpec {
    /// The taskhost's arguments for one slot: what every backend runs.
    pub fn taskhost_args(&self, slot: u32, worker_id: &str) -> Vec<String> {
        let mut args = vec![
            "--queue".into(),
            self.queues.join(","),
            "--team".into(),
            self.team.clone(),
            "--worker-id".into(),
            worker_id.into(),
            "--cpus".into(),
            self.shape.cpu().to_string(),
            "--memory-mib".into(),
            self.shape.memory_mib.to_string(),
            "--gpus".into(),
            self.shape.gpu.to_string(),
            "--reservation".into(),
            self.reservation_id.clone(),
            "--slot".into(),
            slot.to_string(),
        ];
        if let Some(t) = &self.tier {
            args.push("--tier".into());
            args.push(format!("{}:{}:{}", t.cpu(), t.memory_mib, t.gpu));
        }
        if let Some(c) = &self.container {
            args.push("--container".into());
            args.push(c.key());
        } else if self.any_container {
            args.push("--any-container".into());
        }
        args
    }
}

/// How far a worker has got, as its backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerPhase {
    Pending,
    Running,
    /// Exited by itself (idle) or after a drain.
    Succeeded,
    Failed,
    Unknown,
}

impl WorkerPhase {
    pub fn ended(&self) -> bool {
        matches!(self, WorkerPhase::Succeeded | WorkerPhase::Failed)
    }
}

/// A worker a backend started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchedWorker {
    /// The pod's (or process's) name, unique in its cluster.
    pub name: String,
    pub cluster: String,
    pub team: String,
    pub pool: String,
    pub reservation_id: String,
    pub slot: u32,
    pub phase: WorkerPhase,
    /// The node it was scheduled on (Kubernetes: the pod's node name), when it has one.
    #[serde(default)]
    pub node: Option<String>,
}

impl LaunchedWorker {
    /// The worker started for one slot of `spec` in `cluster`.
    pub fn for_slot(
        name: String,
        cluster: &str,
        spec: &WorkerSpec,
        slot: u32,
        phase: WorkerPhase,
    ) -> LaunchedWorker {
        LaunchedWorker {
            name,
            cluster: cluster.to_string(),
            team: spec.team.clone(),
            pool: spec.pool.clone(),
            reservation_id: spec.reservation_id.clone(),
            slot,
            phase,
            node: None,
        }
    }
}

/// What can go wrong starting, listing or stopping workers, sorted into what the
/// launcher acts on.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The worker exists already (a retried launch): not an error for the launcher.
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The backend refused us (credentials, RBAC): retrying will not help.
    #[error("not allowed to {action}: {message}")]
    Forbidden { action: String, message: String },
    /// The backend is unavailable or failed; retrying later may help.
    #[error("{action} failed: {message}")]
    Unavailable {
        action: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The request was malformed (a bug or a bad registration).
    #[error("{action} was rejected: {message}")]
    Rejected { action: String, message: String },
}

/// Where workers run. One implementation per kind of cluster: Kubernetes (taskhost
/// pods in an EKS cluster) and local (taskhost processes).
pub trait WorkerBackend: Send + Sync {
    /// Start one worker per slot of `spec` in `cluster`; returns the workers started.
    /// Starting a worker that already exists is not an error (launches are retried).
    fn launch(
        &self,
        cluster: &ClusterRecord,
        spec: &WorkerSpec,
    ) -> impl Future<Output = Result<Vec<LaunchedWorker>, BackendError>> + Send;

    /// The workers of `pool` this backend runs in `cluster` (all pools when `None`),
    /// found by their labels.
    fn list(
        &self,
        cluster: &ClusterRecord,
        pool: Option<&str>,
    ) -> impl Future<Output = Result<Vec<LaunchedWorker>, BackendError>> + Send;

    /// Stop a worker: it stops taking tasks, finishes the ones it runs, and exits (its
    /// slot is released by the worker, or by `reap`). Stopping one that is gone is not an
    /// error.
    fn terminate(
        &self,
        cluster: &ClusterRecord,
        worker: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Mark a node unschedulable so no new worker lands on it (the first step of taking
    /// an idle node away). Cordoning a node that is gone is not an error.
    fn cordon(
        &self,
        cluster: &ClusterRecord,
        node: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster {cluster}: {source}")]
    Backend {
        cluster: String,
        #[source]
        source: BackendError,
    },
}

/// What one launch did.
#[derive(Debug)]
pub struct Launched {
    pub outcome: PlacementOutcome,
    pub workers: Vec<LaunchedWorker>,
    /// Clusters whose workers could not be started (their slots were given back).
    pub failed: Vec<(String, BackendError)>,
}

/// Ask placement for `request.workers` workers and start them. `spec` gives everything
/// but the reservation and slots, which come from the grant. Slots whose worker could
/// not be started are released again, so a failed launch holds no quota.
pub async fn launch_workers<B: WorkerBackend>(
    store: &Store,
    backend: &B,
    request: &PlacementRequest,
    spec: &WorkerSpec,
    lease: Duration,
) -> Result<Launched, LaunchError> {
    let outcome = store.place(request, lease).await?;
    let mut launched = Launched {
        outcome,
        workers: Vec::new(),
        failed: Vec::new(),
    };
    let PlacementOutcome::Granted { placements, .. } = &launched.outcome else {
        return Ok(launched);
    };
    let clusters = store.clusters().await?;
    for p in placements.clone() {
        let Some(cluster) = clusters.iter().find(|c| c.name == p.cluster) else {
            continue;
        };
        let mut spec = spec.clone();
        spec.env.insert(
            "BATCHPLANE_LAUNCHED_AT".into(),
            crate::store::now_ms().to_string(),
        );
        spec.reservation_id = p.reservation_id.clone();
        spec.slots = p.slots.clone();
        match backend.launch(cluster, &spec).await {
            Ok(workers) => launched.workers.extend(workers),
            Err(e) => {
                tracing::warn!(cluster = %p.cluster, reservation_id = %p.reservation_id, error = %e,
                    "starting workers failed; giving their placement back");
                store
                    .release_slots(&p.reservation_id, Some(&p.slots), None)
                    .await?;
                launched.failed.push((p.cluster.clone(), e));
            }
        }
    }
    Ok(launched)
}

/// Release the slots of workers that ended without releasing (crashed, OOM-killed,
/// evicted), and remove what is left of them. Returns the slots released.
pub async fn reap<B: WorkerBackend>(
    store: &Store,
    backend: &B,
    cluster: &ClusterRecord,
) -> Result<u32, LaunchError> {
    let workers = backend
        .list(cluster, None)
        .await
        .map_err(|source| LaunchError::Backend {
            cluster: cluster.name.clone(),
            source,
        })?;
    let mut released = 0;
    for w in workers.iter().filter(|w| w.phase.ended()) {
        released += store
            .release_slots(&w.reservation_id, Some(&[w.slot]), None)
            .await?;
        backend
            .terminate(cluster, &w.name)
            .await
            .map_err(|source| LaunchError::Backend {
                cluster: cluster.name.clone(),
                source,
            })?;
    }
    Ok(released)
}

/// Drain a disabled cluster: ask each of its live workers to stop (they stop taking
/// tasks, finish the ones they run, release their slots and exit). Returns how many were
/// asked. Does nothing for an enabled cluster.
pub async fn drain_if_disabled<B: WorkerBackend>(
    backend: &B,
    cluster: &ClusterRecord,
) -> Result<u32, LaunchError> {
    if cluster.enabled {
        return Ok(0);
    }
    let backend_error = |source| LaunchError::Backend {
        cluster: cluster.name.clone(),
        source,
    };
    let workers = backend.list(cluster, None).await.map_err(backend_error)?;
    let mut asked = 0;
    for w in workers.iter().filter(|w| !w.phase.ended()) {
        backend
            .terminate(cluster, &w.name)
            .await
            .map_err(backend_error)?;
        asked += 1;
    }
    if asked > 0 {
        tracing::info!(cluster = %cluster.name, workers = asked, "cluster disabled: draining its workers");
    }
    Ok(asked)
}

/// A pod or process name for a worker: `bp-<pool>-<request>-<slot>`, lower case, at
/// most 63 characters of `[a-z0-9-]` (a Kubernetes name and label value).
pub fn worker_name(pool: &str, reservation_id: &str, slot: u32) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    };
    let request = reservation_id
        .split_once('.')
        .map_or(reservation_id, |(_, r)| r);
    let tail = format!("-{}-{slot}", short_hash(reservation_id));
    let mut head = format!("bp-{}-{}", clean(pool), clean(request));
    head.truncate(63 - tail.len());
    let name = format!("{}{tail}", head.trim_end_matches('-'));
    name.replace("--", "-")
}

fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_kubernetes_names_and_unique_per_slot() {
        let a = worker_name(
            "default--2cpu-8192mib",
            "east.autoscaler-2026-11-22T10-00",
            0,
        );
        let b = worker_name(
            "default--2cpu-8192mib",
            "east.autoscaler-2026-11-22T10-00",
            1,
        );
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{n}"
            );
            assert!(!n.contains("--"), "{n}");
        }
        let long = worker_name(&"p".repeat(80), &format!("c.{}", "r".repeat(64)), 999);
        assert!(long.len() <= 63 && long.ends_with("-999"), "{long}");
    }

    #[test]
    fn taskhost_args_carry_the_reservation_slot_and_tier() {
        let spec = WorkerSpec {
            team: "research".into(),
            pool: "default--t-research--2cpu-8192mib".into(),
            queues: vec!["default".into(), "low".into()],
            shape: Tier::parse_shape("2:8192").unwrap(),
            tier: Some(Tier::parse_shape("2:8192").unwrap()),
            gpu_type: None,
            reservation_id: "east.r1".into(),
            slots: vec![0, 1],
            capacity_type: None,
            instance_type: None,
            env: BTreeMap::new(),
            container: None,
            any_container: false,
        };
        let args = spec.taskhost_args(1, "w1").join(" ");
        assert!(
            args.contains("--queue default,low --team research"),
            "{args}"
        );
        assert!(args.contains("--reservation east.r1 --slot 1"), "{args}");
        assert!(args.contains("--tier 2:8192:0"), "{args}");
    }
}
