//! A pool's workers: demand from its queue and backlog cohorts, reuse targeting, and
//! placement-bound launches.

use super::fleet::Ec2Api;
use super::launcher::{
    launch_workers, LaunchError, LaunchedWorker, WorkerBackend, WorkerPhase, WorkerSpec,
};
use crate::domain::autoscale::PoolDemand;
use crate::domain::launch::{LaunchConfig, Purchase, Strategy};
use crate::domain::placement::PlacementRequest;
use crate::domain::prices::PriceTable;
use crate::queue::QueueError;
use crate::store::placement::PlacementOutcome;
use crate::store::registry::ResourceKind;
use std::collections::BTreeMap;

use super::{decision::*, settings::*, tick::*};

impl<B: WorkerBackend, E: Ec2Api> Autoscaler<'_, B, E> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn scale_pool(
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
        let (messages, in_flight) = match self.queues.url(name).await {
            Ok(url) => self.queues.depth(&url).await?,
            Err(QueueError::NoSuchQueue { .. }) => (0, 0),
            Err(e) => return Err(e.into()),
        };
        // A message may carry several tasks: the depth is counted in tasks at the size
        // the pool's workers have been receiving.
        let queued = (messages as f64 * tasks_per_message(records, name)).round() as u64;
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
        let (mean_task_seconds, startup_seconds) = observed(records, name, settings);
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
        self.launch_for_pool(work, &mut d, decision).await?;
        Ok(Some(d))
    }

    /// Ask placement for the pool's `d.asked` workers and start those granted; what came
    /// of it goes into `d` (and failures into the tick's errors).
    async fn launch_for_pool(
        &self,
        work: &PoolWork,
        d: &mut PoolDecision,
        decision: &mut Decision,
    ) -> Result<(), AutoscaleError> {
        let name = &work.name;
        let request = PlacementRequest {
            request_id: format!("autoscaler-{}-{}", decision.tick_id, short(name)),
            team: work.team.clone(),
            pool: name.clone(),
            cpu: work.shape.worker.cpu(),
            memory_mib: work.shape.worker.memory_mib,
            gpu: work.shape.worker.gpu,
            gpu_type: work.gpu_type.clone(),
            workers: d.asked,
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
            container: work.container.clone(),
            any_container: false,
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
                tracing::info!(pool = %name, team = %work.team, queued = d.queued, wanted = d.wanted, asked = d.asked, granted = d.granted,
                    launched = d.launched, refused = d.refused.as_deref().unwrap_or(""), "autoscaler: workers");
            }
            Err(LaunchError::Store(e)) => return Err(e.into()),
            Err(e) => decision
                .errors
                .push(format!("launching workers for {name}: {e}")),
        }
        Ok(())
    }

    /// Per queue: the launch configs and vCPU limit of its compute environments.
    pub(super) async fn compute_environment_limits(
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
}

/// A queue's compute: launch configs and the vCPU limit of its compute environments.
#[derive(Debug, Clone, Default)]
pub struct QueueCompute {
    pub configs: Vec<LaunchConfig>,
    pub max_vcpus: Option<u32>,
    pub strategy: Option<Strategy>,
}

/// A short stable tag for a pool name in request ids.
pub(super) fn short(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// What the pool's workers have reported: the mean task length and the mean start-up
/// time, each the settings' default until a worker has reported one.
/// Tasks a message of the pool has carried to its workers (1 before any has received).
fn tasks_per_message(records: &[crate::store::workers::WorkerRecord], pool: &str) -> f64 {
    let (messages, tasks) = records
        .iter()
        .filter(|r| r.pool == pool)
        .fold((0u64, 0u64), |(m, t), r| {
            (m + r.messages_in, t + r.tasks_in)
        });
    if messages == 0 {
        1.0
    } else {
        (tasks as f64 / messages as f64).clamp(1.0, crate::queue::PACK as f64)
    }
}

fn observed(
    records: &[crate::store::workers::WorkerRecord],
    pool: &str,
    settings: &Settings,
) -> (f64, f64) {
    let pool_records: Vec<_> = records.iter().filter(|r| r.pool == pool).collect();
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
    (mean_task_seconds, startup_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::workers::WorkerRecord;

    fn worker(pool: &str, messages_in: u64, tasks_in: u64) -> WorkerRecord {
        WorkerRecord {
            pool: pool.into(),
            worker_id: "w".into(),
            cpu_milli: 4000,
            memory_mib: 4096,
            gpu: 0,
            running: 0,
            tasks_done: 0,
            busy_ms: 0,
            startup_ms: None,
            messages_in,
            tasks_in,
            last_seen: 0,
            expires_at: 0,
        }
    }

    #[test]
    fn a_queues_depth_counts_the_tasks_its_packs_carry() {
        assert_eq!(tasks_per_message(&[], "p"), 1.0, "nothing seen yet");
        let seen = [worker("p", 10, 60), worker("p", 10, 100), worker("q", 5, 5)];
        assert_eq!(tasks_per_message(&seen, "p"), 8.0);
        assert_eq!(tasks_per_message(&seen, "q"), 1.0);
        let odd = [worker("p", 1, 500)];
        assert_eq!(
            tasks_per_message(&odd, "p"),
            10.0,
            "never more than a pack holds"
        );
    }
}
