//! This worker in the pools' worker records (what `explain` and the autoscaler read),
//! and the placement slot it renews while it lives and gives back when it exits.

use batchplane::domain::tiers::Tier;
use batchplane::store::{now_ms, Store};
use std::time::Duration;

/// This worker in the pools' worker records (what `explain` reads).
pub(super) struct Announce {
    /// The placement slot this worker holds, if it was placed.
    pub(super) reservation: Option<(String, u32)>,
    pub(super) reservation_lease: Duration,
    pub(super) pools: Vec<String>,
    pub(super) worker_id: String,
    /// What the worker offers its tasks.
    pub(super) capacity: Tier,
    pub(super) lease: Duration,
    /// Tasks this worker finished and the time they ran, in total.
    pub(super) tasks_done: std::sync::atomic::AtomicU64,
    pub(super) busy_ms: std::sync::atomic::AtomicU64,
    /// Messages received and the tasks they carried.
    pub(super) messages_in: std::sync::atomic::AtomicU64,
    pub(super) tasks_in: std::sync::atomic::AtomicU64,
    /// From its launch (`BATCHPLANE_LAUNCHED_AT`) to taking work, when it was launched.
    pub(super) startup_ms: Option<i64>,
}

impl Announce {
    pub(super) fn task_ended(&self, ran: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.tasks_done.fetch_add(1, Relaxed);
        self.busy_ms.fetch_add(ran.as_millis() as u64, Relaxed);
    }

    pub(super) fn received(&self, got: &[batchplane::queue::Delivery]) {
        use std::sync::atomic::Ordering::Relaxed;
        let tasks: usize = got.iter().map(|d| d.tasks.len()).sum();
        self.messages_in.fetch_add(got.len() as u64, Relaxed);
        self.tasks_in.fetch_add(tasks as u64, Relaxed);
    }

    /// Record this worker again and renew its placement; false once the placement is
    /// gone (released or swept), when the worker should drain and exit. Its requests
    /// are the fleet's upkeep in the request counts, not any task's.
    pub(super) async fn refresh(&self, store: &Store, running: u32) -> bool {
        batchplane::aws::accounting::upkeep(self.record(store, running)).await
    }

    pub(super) async fn record(&self, store: &Store, running: u32) -> bool {
        let now = now_ms();
        let mut placed = true;
        if let Some((id, slot)) = &self.reservation {
            let until = now + self.reservation_lease.as_millis() as i64;
            match store.renew_slot(id, *slot, until).await {
                Ok(live) => placed = live,
                Err(e) => {
                    tracing::warn!(error = %e, reservation_id = %id, slot, "renewing this worker's placement failed")
                }
            }
        }
        for pool in &self.pools {
            let record = batchplane::store::workers::WorkerRecord {
                pool: pool.clone(),
                worker_id: self.worker_id.clone(),
                cpu_milli: self.capacity.cpu_milli,
                memory_mib: self.capacity.memory_mib,
                gpu: self.capacity.gpu,
                running,
                tasks_done: self.tasks_done.load(std::sync::atomic::Ordering::Relaxed),
                busy_ms: self.busy_ms.load(std::sync::atomic::Ordering::Relaxed),
                startup_ms: self.startup_ms,
                messages_in: self.messages_in.load(std::sync::atomic::Ordering::Relaxed),
                tasks_in: self.tasks_in.load(std::sync::atomic::Ordering::Relaxed),
                last_seen: now,
                expires_at: now / 1000 + 3 * self.lease.as_secs() as i64,
            };
            if let Err(e) = store.put_worker(&record).await {
                tracing::warn!(error = %e, pool, "recording this worker failed");
            }
        }
        placed
    }

    /// Give back the placement and remove the worker's records (upkeep, as above).
    pub(super) async fn forget(&self, store: &Store) {
        batchplane::aws::accounting::upkeep(self.remove(store)).await
    }

    pub(super) async fn remove(&self, store: &Store) {
        if let Some((id, slot)) = &self.reservation {
            match store.release_slots(id, Some(&[*slot]), None).await {
                Ok(n) => {
                    tracing::info!(reservation_id = %id, slot, released = n, "placement released")
                }
                Err(e) => tracing::warn!(error = %e, reservation_id = %id, slot,
                    "releasing this worker's placement failed; the sweeper reclaims it when its lease lapses"),
            }
        }
        for pool in &self.pools {
            if let Err(e) = store.delete_worker(pool, &self.worker_id).await {
                tracing::warn!(error = %e, pool, "removing this worker's record failed");
            }
        }
    }
}
