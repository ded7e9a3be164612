//! Team quotas, cluster capacities and worker reservations, held with DynamoDB
//! transactions.
//!
//! Items:
//! - `TEAM#<team>` / `QUOTA`: `limit_<r>` and `used_<r>` per resource (`cpu_milli`,
//!   `memory_mib`, `gpu_<type>`), `workers@<cluster>` (the team's workers there) and
//!   `refused@<pool>` (the last refusal for that pool, removed by the next grant).
//!   `TEAMS` / `<team>` lists the teams.
//! - `CLUSTERS` / `<name>`: registration, `enabled`, `capacity_<r>` and `used_<r>`.
//! - `RESERVATIONS#<cluster>#<shard>` / `<reservation id>`: one per (grant, cluster): the
//!   team, pool, per-worker resources, the live worker slots (`slots`, a number set) and
//!   one lease per slot (`lease_<slot>`, ms). A worker renews its slot's lease; releasing
//!   a slot, or the sweeper finding its lease expired, returns the slot's resources.
//! - `PLACEMENT#<request id>` / `REQUEST`: what a request was granted, so asking again
//!   returns the same grant (TTL one day).
//!
//! A grant is one transaction: the team's usage goes up under the condition that it stays
//! within the limit read (and the limit is still that), each cluster's usage likewise
//! within its capacity (and the cluster still enabled), and the reservations and the
//! request record are put. A release is one transaction too, conditioned on the slot
//! still being live, so it happens once whoever (worker, launcher, sweeper) asks.

mod clusters;
mod grants;
mod items;
mod reservations;
mod teams;

use super::item::*;
use super::request::send;
use super::{Store, StoreError};
use crate::domain::placement::{ClusterLoad, Refusal, Resources, TeamQuota};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::Update;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

const TEAMS_PK: &str = "TEAMS";

const QUOTA_SK: &str = "QUOTA";

const CLUSTERS_PK: &str = "CLUSTERS";

/// Reservations of one cluster are spread over this many partitions, so lease renewals
/// of thousands of workers stay inside each partition's write rate.
const RESERVATION_SHARDS: u32 = 4;

/// How many times a grant or release is tried when its transaction loses a race.
const MAX_TRIES: u32 = 16;

fn team_pk(team: &str) -> String {
    format!("TEAM#{team}")
}

fn reservation_pk(cluster: &str, reservation_id: &str) -> String {
    // FNV-1a: stable across processes and releases (unlike std's hasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in reservation_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("RESERVATIONS#{cluster}#{}", h % RESERVATION_SHARDS)
}

/// `<cluster>.<request id>`: a reservation id says which cluster's partitions hold it.
pub fn reservation_id(cluster: &str, request_id: &str) -> String {
    format!("{cluster}.{request_id}")
}

fn cluster_of(reservation_id: &str) -> Option<&str> {
    reservation_id.split_once('.').map(|(c, _)| c)
}

/// A registered cluster: where its API is, what it may hold, what it holds now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    /// `eks` (pods through the Kubernetes API) or `local` (processes on this machine).
    pub kind: String,
    #[serde(default)]
    pub region: String,
    /// The EKS cluster's own name (what its tokens are minted for).
    #[serde(default)]
    pub eks_cluster_name: String,
    /// The Kubernetes API server's URL.
    #[serde(default)]
    pub endpoint: String,
    /// The API server's CA bundle, base64 PEM as EKS's DescribeCluster gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// The namespace worker pods go to.
    #[serde(default)]
    pub namespace: String,
    pub enabled: bool,
    pub capacity: Resources,
    #[serde(default)]
    pub used: Resources,
    #[serde(default)]
    pub updated_at: i64,
}

impl ClusterRecord {
    pub fn load(&self) -> ClusterLoad {
        ClusterLoad {
            name: self.name.clone(),
            enabled: self.enabled,
            capacity: self.capacity.clone(),
            used: self.used.clone(),
        }
    }
}

/// A team's quota with the last refusals per pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    #[serde(flatten)]
    pub quota: TeamQuota,
    /// Whether an operator set a quota (a team refused for having none has a record
    /// holding just the refusal).
    #[serde(skip)]
    pub quota_set: bool,
    /// Pool → the last refusal for it, until a grant for that pool clears it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refusals: BTreeMap<String, RecordedRefusal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRefusal {
    #[serde(flatten)]
    pub refusal: Refusal,
    /// When (ms).
    pub at: i64,
}

/// Workers granted in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub cluster: String,
    pub count: u32,
    pub reservation_id: String,
    /// The slots, one per worker: a worker names `(reservation_id, slot)` when it renews
    /// or releases.
    pub slots: Vec<u32>,
}

/// What a request got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PlacementOutcome {
    Granted {
        request_id: String,
        placements: Vec<Placement>,
        /// When the slots' leases lapse unless renewed (ms).
        lease_expires_at: i64,
        /// DynamoDB requests this answer took (reads, the transaction, its retries).
        requests: u32,
    },
    Refused {
        request_id: String,
        code: String,
        reason: String,
        requests: u32,
    },
}

impl PlacementOutcome {
    pub fn granted_workers(&self) -> u32 {
        match self {
            PlacementOutcome::Granted { placements, .. } => {
                placements.iter().map(|p| p.count).sum()
            }
            PlacementOutcome::Refused { .. } => 0,
        }
    }
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub request_id: String,
    pub team: String,
    pub pool: String,
    pub cluster: String,
    pub per_worker: Resources,
    /// Live slots and each one's lease expiry (ms).
    pub slots: BTreeMap<u32, i64>,
    pub created_at: i64,
}

/// What an operator sets on a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterRegistration {
    pub kind: String,
    pub region: String,
    pub eks_cluster_name: String,
    pub endpoint: String,
    pub certificate_authority: Option<String>,
    pub namespace: String,
    pub capacity: Resources,
}

fn build(operation: &'static str) -> impl Fn(aws_sdk_dynamodb::error::BuildError) -> StoreError {
    move |source| StoreError::Build { operation, source }
}

/// Why a transaction was cancelled, per item, in request order.
fn cancellation_codes(
    err: &SdkError<TransactWriteItemsError, impl std::fmt::Debug>,
) -> Vec<String> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => e
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or("None").to_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// Sleep a random share of an exponentially growing bound (full jitter), so racing
/// grants spread out instead of colliding again in step.
async fn backoff(attempt: u32) {
    let bound_ms = (4u64 << attempt.min(6)).min(250);
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    tokio::time::sleep(Duration::from_millis(r % (bound_ms + 1))).await;
}

impl Store {
    async fn get_item(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let out = send(
            self.ddb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .consistent_read(true),
        )
        .await?;
        Ok(out.item)
    }

    async fn send_update(&self, u: Update) -> Result<(), StoreError> {
        let _out = send(
            self.ddb
                .update_item()
                .table_name(u.table_name())
                .set_key(Some(u.key().clone()))
                .update_expression(u.update_expression())
                .set_condition_expression(u.condition_expression().map(String::from))
                .set_expression_attribute_names(u.expression_attribute_names().cloned())
                .set_expression_attribute_values(u.expression_attribute_values().cloned()),
        )
        .await?;
        Ok(())
    }
}
