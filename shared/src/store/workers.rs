//! Live workers, by pool: each taskhost records itself under every pool it serves when
//! it starts and on every heartbeat, and removes itself when it exits. `explain` reads
//! them to say whether anyone serves a task's pool, and whether any worker there is big
//! enough. Items expire by TTL (`expires_at`) so a worker that vanished leaves nothing
//! behind for long. All under one partition (`WORKERS`), `<pool>#<worker id>`: a
//! heartbeat every ten seconds per worker keeps even 5,000 workers well inside one
//! partition's write rate.

use super::item::*;
use super::request::send;
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};

const WORKERS_PK: &str = "WORKERS";

/// A worker as one pool sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub pool: String,
    pub worker_id: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: u32,
    /// Tasks running on it at its last heartbeat.
    pub running: u32,
    /// Tasks it finished, and how long they ran in total (ms).
    #[serde(default)]
    pub tasks_done: u64,
    #[serde(default)]
    pub busy_ms: u64,
    /// How long it took from its launch to taking work (ms), when it knows.
    #[serde(default)]
    pub startup_ms: Option<i64>,
    /// Messages it received and the tasks they carried, in total: how many tasks a
    /// message of its pools carries (a pack carries several), which turns a queue's
    /// depth in messages into tasks.
    #[serde(default)]
    pub messages_in: u64,
    #[serde(default)]
    pub tasks_in: u64,
    pub last_seen: i64,
    /// Seconds since the epoch, DynamoDB's TTL unit.
    pub expires_at: i64,
}

impl Store {
    /// Record (or refresh) a worker under one pool.
    pub async fn put_worker(&self, w: &WorkerRecord) -> Result<(), StoreError> {
        let mut it = key(WORKERS_PK.into(), format!("{}#{}", w.pool, w.worker_id));
        it.insert("pool_name".into(), s(&w.pool));
        it.insert("worker_id".into(), s(&w.worker_id));
        it.insert("cpu_milli".into(), n(w.cpu_milli));
        it.insert("memory_mib".into(), n(w.memory_mib));
        it.insert("gpu".into(), n(w.gpu));
        it.insert("running".into(), n(w.running));
        it.insert("tasks_done".into(), n(w.tasks_done));
        it.insert("busy_ms".into(), n(w.busy_ms));
        if let Some(ms) = w.startup_ms {
            it.insert("startup_ms".into(), n(ms));
        }
        it.insert("messages_in".into(), n(w.messages_in));
        it.insert("tasks_in".into(), n(w.tasks_in));
        it.insert("last_seen".into(), n(w.last_seen));
        it.insert("expires_at".into(), n(w.expires_at));
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    /// Forget a worker under one pool (it is exiting).
    pub async fn delete_worker(&self, pool: &str, worker_id: &str) -> Result<(), StoreError> {
        let _out = send(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(WORKERS_PK.into(), format!("{pool}#{worker_id}")))),
        )
        .await?;
        Ok(())
    }

    /// Workers recorded under pools whose names start with `prefix` (a queue's name
    /// gives its own pool and its tier pools; "" gives every pool), seen at or after
    /// `since` (ms).
    pub async fn workers(&self, prefix: &str, since: i64) -> Result<Vec<WorkerRecord>, StoreError> {
        let items = self
            .query_all(|| {
                let q = self
                    .ddb
                    .query()
                    .expression_attribute_values(":pk", s(WORKERS_PK));
                // DynamoDB refuses an empty string in a key condition: "" means all.
                if prefix.is_empty() {
                    q.key_condition_expression("pk = :pk")
                } else {
                    q.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                        .expression_attribute_values(":prefix", s(prefix))
                }
            })
            .await?;
        let mut found = Vec::new();
        for it in &items {
            let r = Reader::new(it);
            let w = WorkerRecord {
                pool: r.req_s("pool_name")?,
                worker_id: r.req_s("worker_id")?,
                cpu_milli: r.req_n("cpu_milli")?,
                memory_mib: r.req_n("memory_mib")?,
                gpu: r.opt_n("gpu")?.unwrap_or(0),
                running: r.opt_n("running")?.unwrap_or(0),
                tasks_done: r.opt_n("tasks_done")?.unwrap_or(0),
                busy_ms: r.opt_n("busy_ms")?.unwrap_or(0),
                startup_ms: r.opt_n("startup_ms")?,
                messages_in: r.opt_n("messages_in")?.unwrap_or(0),
                tasks_in: r.opt_n("tasks_in")?.unwrap_or(0),
                last_seen: r.req_n("last_seen")?,
                expires_at: r.req_n("expires_at")?,
            };
            if w.last_seen >= since {
                found.push(w);
            }
        }
        Ok(found)
    }
}
