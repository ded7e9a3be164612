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

use super::item::*;
use super::request::{send, send_if, send_raw};
use super::{classify, Store, StoreError};
use crate::domain::placement::{
    decide, ClusterLoad, Decision, PlacementRequest, Refusal, Resource, Resources, TeamQuota,
};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

fn resources_with_prefix(item: &Item, prefix: &str) -> Resources {
    let mut r = Resources::default();
    for (k, v) in item {
        if let (Some(rest), AttributeValue::N(num)) = (k.strip_prefix(prefix), v) {
            if let (Some(res), Ok(x)) = (Resource::from_key(rest), num.parse::<i64>()) {
                r.set(&res, x.max(0) as u64);
            }
        }
    }
    r
}

fn has_prefix(item: &Item, prefix: &str) -> bool {
    item.keys().any(|k| k.starts_with(prefix))
}

fn team_from_item(team: &str, item: &Item) -> TeamRecord {
    let mut workers = BTreeMap::new();
    let mut refusals = BTreeMap::new();
    for (k, v) in item {
        match (k.strip_prefix("workers@"), k.strip_prefix("refused@"), v) {
            (Some(c), _, AttributeValue::N(num)) => {
                let n = num.parse::<i64>().unwrap_or(0).max(0) as u64;
                if n > 0 {
                    workers.insert(c.to_string(), n);
                }
            }
            (_, Some(pool), AttributeValue::S(json)) => {
                if let Ok(r) = serde_json::from_str::<RecordedRefusal>(json) {
                    refusals.insert(pool.to_string(), r);
                }
            }
            _ => {}
        }
    }
    TeamRecord {
        quota_set: has_prefix(item, "limit_"),
        quota: TeamQuota {
            team: team.to_string(),
            limit: resources_with_prefix(item, "limit_"),
            used: resources_with_prefix(item, "used_"),
            workers,
        },
        refusals,
    }
}

fn cluster_from_item(item: &Item) -> Result<ClusterRecord, StoreError> {
    let r = Reader::new(item);
    Ok(ClusterRecord {
        name: r.req_s("sk")?,
        kind: r.opt_s("kind")?.unwrap_or_else(|| "eks".into()),
        region: r.opt_s("region")?.unwrap_or_default(),
        eks_cluster_name: r.opt_s("eks_cluster_name")?.unwrap_or_default(),
        endpoint: r.opt_s("endpoint")?.unwrap_or_default(),
        certificate_authority: r.opt_s("certificate_authority")?,
        namespace: r.opt_s("namespace")?.unwrap_or_default(),
        enabled: r.bool("enabled"),
        capacity: resources_with_prefix(item, "capacity_"),
        used: resources_with_prefix(item, "used_"),
        updated_at: r.opt_n("updated_at")?.unwrap_or(0),
    })
}

fn reservation_from_item(item: &Item) -> Result<Reservation, StoreError> {
    let r = Reader::new(item);
    let mut slots = BTreeMap::new();
    if let Some(AttributeValue::Ns(ns)) = item.get("slots") {
        for k in ns {
            if let Ok(k) = k.parse::<u32>() {
                let lease = r.opt_n(&format!("lease_{k}"))?.unwrap_or(0);
                slots.insert(k, lease);
            }
        }
    }
    let mut per_worker = Resources {
        cpu_milli: r.req_n("cpu_milli")?,
        memory_mib: r.req_n("memory_mib")?,
        gpus: BTreeMap::new(),
    };
    let gpu: u64 = r.opt_n("gpu")?.unwrap_or(0);
    if gpu > 0 {
        per_worker
            .gpus
            .insert(r.opt_s("gpu_type")?.unwrap_or_default(), gpu);
    }
    Ok(Reservation {
        reservation_id: r.req_s("sk")?,
        request_id: r.req_s("request_id")?,
        team: r.req_s("team")?,
        pool: r.req_s("pool_name")?,
        cluster: r.req_s("cluster")?,
        per_worker,
        slots,
        created_at: r.opt_n("created_at")?.unwrap_or(0),
    })
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

/// The parts of an Update: expression, names, values.
#[derive(Default)]
struct Expr {
    add: Vec<String>,
    delete: Vec<String>,
    set: Vec<String>,
    remove: Vec<String>,
    condition: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, attr: String) -> String {
        let p = format!("#a{}", self.names.len());
        self.names.insert(p.clone(), attr);
        p
    }
    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }
    fn update(self, table: &str, key: Item) -> Result<Update, StoreError> {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        if !self.delete.is_empty() {
            parts.push(format!("DELETE {}", self.delete.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(parts.join(" "))
            .set_condition_expression(
                (!self.condition.is_empty()).then(|| self.condition.join(" AND ")),
            )
            .set_expression_attribute_names((!self.names.is_empty()).then_some(self.names))
            .set_expression_attribute_values((!self.values.is_empty()).then_some(self.values))
            .build()
            .map_err(build("TransactWriteItems"))
    }
}

fn signed(v: u64, negative: bool) -> AttributeValue {
    if negative {
        n(-(v as i64))
    } else {
        n(v)
    }
}

impl Store {
    /// Create a team or replace its quota; usage is kept. GPU types not named are
    /// removed from the quota.
    pub async fn set_team_quota(&self, team: &str, limit: &Resources) -> Result<(), StoreError> {
        let current = self.get_item(team_pk(team), QUOTA_SK.into()).await?;
        let mut e = Expr::default();
        for r in limit.resources() {
            let name = e.name(format!("limit_{}", r.key()));
            let value = e.value(n(limit.get(&r)));
            e.set.push(format!("{name} = {value}"));
        }
        if let Some(item) = &current {
            for k in item.keys().filter(|k| k.starts_with("limit_gpu_")) {
                let t = k.trim_start_matches("limit_gpu_");
                if !limit.gpus.contains_key(t) {
                    let name = e.name(k.clone());
                    e.remove.push(name);
                }
            }
        }
        let team_name = e.value(s(team));
        let now = e.value(n(super::now_ms()));
        e.set
            .push(format!("team = {team_name}, updated_at = {now}"));
        let update = e.update(&self.table, key(team_pk(team), QUOTA_SK.into()))?;
        let mut marker = key(TEAMS_PK.into(), team.to_string());
        marker.insert("team".into(), s(team));
        let _out = send(
            self.ddb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .set_item(Some(marker))
                                .build()
                                .map_err(build("TransactWriteItems"))?,
                        )
                        .build(),
                ),
        )
        .await?;
        Ok(())
    }

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

    /// A team's quota, usage and last refusals; `None` for a team never heard of (see
    /// [`TeamRecord::quota_set`] for one refused for having no quota).
    pub async fn team(&self, team: &str) -> Result<Option<TeamRecord>, StoreError> {
        Ok(self
            .get_item(team_pk(team), QUOTA_SK.into())
            .await?
            .map(|it| team_from_item(team, &it)))
    }

    /// Every team with a quota, by name.
    pub async fn teams(&self) -> Result<Vec<TeamRecord>, StoreError> {
        let names = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(TEAMS_PK))
            })
            .await?;
        let mut teams = Vec::new();
        for it in &names {
            let name = Reader::new(it).req_s("sk")?;
            if let Some(t) = self.team(&name).await?.filter(|t| t.quota_set) {
                teams.push(t);
            }
        }
        Ok(teams)
    }

    /// Register a cluster or update its registration and capacity; usage is kept, and a
    /// new cluster starts enabled.
    pub async fn register_cluster(
        &self,
        name: &str,
        reg: &ClusterRegistration,
    ) -> Result<(), StoreError> {
        let current = self.get_item(CLUSTERS_PK.into(), name.to_string()).await?;
        let mut e = Expr::default();
        for (attr, v) in [
            ("kind", &reg.kind),
            ("region", &reg.region),
            ("eks_cluster_name", &reg.eks_cluster_name),
            ("endpoint", &reg.endpoint),
            ("namespace", &reg.namespace),
        ] {
            let name = e.name(attr.into());
            let value = e.value(s(v));
            e.set.push(format!("{name} = {value}"));
        }
        match &reg.certificate_authority {
            Some(ca) => {
                let value = e.value(s(ca));
                e.set.push(format!("certificate_authority = {value}"));
            }
            None => e.remove.push("certificate_authority".into()),
        }
        for r in reg.capacity.resources() {
            let name = e.name(format!("capacity_{}", r.key()));
            let value = e.value(n(reg.capacity.get(&r)));
            e.set.push(format!("{name} = {value}"));
        }
        if let Some(item) = &current {
            for k in item.keys().filter(|k| k.starts_with("capacity_gpu_")) {
                if !reg
                    .capacity
                    .gpus
                    .contains_key(k.trim_start_matches("capacity_gpu_"))
                {
                    let name = e.name(k.clone());
                    e.remove.push(name);
                }
            }
        }
        let t = e.value(AttributeValue::Bool(true));
        let now = e.value(n(super::now_ms()));
        e.set.push(format!(
            "enabled = if_not_exists(enabled, {t}), updated_at = {now}"
        ));
        let update = e.update(&self.table, key(CLUSTERS_PK.into(), name.to_string()))?;
        self.send_update(update).await
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

    /// Enable or disable a cluster. A disabled cluster gets no new placements; its
    /// workers drain. An error names a cluster that was never registered.
    pub async fn set_cluster_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let v = e.value(AttributeValue::Bool(enabled));
        let now = e.value(n(super::now_ms()));
        e.set.push(format!("enabled = {v}, updated_at = {now}"));
        e.condition.push("attribute_exists(pk)".into());
        let update = e.update(&self.table, key(CLUSTERS_PK.into(), name.to_string()))?;
        self.send_update(update).await
    }

    /// Every registered cluster, by name (a consistent read: placement decides on it).
    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(CLUSTERS_PK))
                    .consistent_read(true)
            })
            .await?;
        items.iter().map(cluster_from_item).collect()
    }

    /// Grant a request's workers within the team's quota and the clusters' capacities,
    /// or refuse with the reason (recorded on the team for `explain`). Asking again with
    /// the same request id gives the first answer's grant.
    pub async fn place(
        &self,
        request: &PlacementRequest,
        lease: Duration,
    ) -> Result<PlacementOutcome, StoreError> {
        let mut requests = 0u32;
        for attempt in 0..MAX_TRIES {
            let read = tokio::try_join!(self.team(&request.team), self.clusters());
            requests += 2;
            let (team, clusters) = match read {
                Err(e) if e.is_transient() => {
                    backoff(attempt).await;
                    continue;
                }
                other => other?,
            };
            let loads: Vec<ClusterLoad> = clusters.iter().map(ClusterRecord::load).collect();
            let team = team.filter(|t| t.quota_set);
            let grant = match decide(request, team.as_ref().map(|t| &t.quota), &loads) {
                Decision::Refuse(refusal) => {
                    match self.granted_before(request).await {
                        Ok(Some(done)) => return Ok(done),
                        Ok(None) => {}
                        Err(e) if e.is_transient() => {
                            backoff(attempt).await;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    // The refusal is the answer; failing to record it for `explain` only
                    // costs the explanation.
                    if let Err(e) = self
                        .record_refusal(&request.team, &request.pool, &refusal)
                        .await
                    {
                        tracing::warn!(error = %e, team = %request.team, "recording a placement refusal failed");
                    }
                    requests += 2;
                    tracing::info!(team = %request.team, pool = %request.pool, code = %refusal.code,
                        reason = %refusal.reason, "placement refused");
                    return Ok(PlacementOutcome::Refused {
                        request_id: request.request_id.clone(),
                        code: refusal.code,
                        reason: refusal.reason,
                        requests,
                    });
                }
                Decision::Grant(g) => g,
            };
            // `decide` grants only to a team with a quota.
            let Some(team) = team else { continue };
            let now = super::now_ms();
            let expires = now + lease.as_millis() as i64;
            let items = self.grant_items(request, &team.quota, &clusters, &grant, now, expires)?;
            requests += 1;
            match send_raw(
                self.ddb
                    .transact_write_items()
                    .set_transact_items(Some(items)),
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(team = %request.team, pool = %request.pool, ?grant, attempt, "placement granted");
                    return Ok(PlacementOutcome::Granted {
                        request_id: request.request_id.clone(),
                        placements: placements_of(&request.request_id, &grant),
                        lease_expires_at: expires,
                        requests,
                    });
                }
                // A lock time-out or no answer: try again. Had it been applied after
                // all, the request record turns the retry into "granted before".
                Err(e)
                    if e.code() == Some("InternalServerError")
                        || !matches!(e, SdkError::ServiceError(_)) =>
                {
                    tracing::debug!(attempt, error = %e, "placement transaction got no clear answer; retrying");
                    backoff(attempt).await;
                }
                Err(e) if e.code() == Some("TransactionCanceledException") => {
                    let codes = cancellation_codes(&e);
                    // The request record is the last item: it existed, so this request
                    // was granted before.
                    if codes.last().map(String::as_str) == Some("ConditionalCheckFailed") {
                        match self.granted_before(request).await {
                            Ok(Some(done)) => return Ok(done),
                            Ok(None) => {}
                            Err(e) if e.is_transient() => {}
                            Err(e) => return Err(e),
                        }
                    }
                    tracing::debug!(
                        attempt,
                        ?codes,
                        "placement transaction lost a race; retrying"
                    );
                    backoff(attempt).await;
                }
                Err(e) => return Err(classify("TransactWriteItems", e)),
            }
        }
        Err(StoreError::Unprocessed {
            operation: "TransactWriteItems (placement)",
            remaining: 1,
        })
    }

    /// The grant a request got earlier, if it got one.
    async fn granted_before(
        &self,
        request: &PlacementRequest,
    ) -> Result<Option<PlacementOutcome>, StoreError> {
        let Some(item) = self
            .get_item(
                format!("PLACEMENT#{}", request.request_id),
                "REQUEST".into(),
            )
            .await?
        else {
            return Ok(None);
        };
        let r = Reader::new(&item);
        let placements: Vec<Placement> =
            serde_json::from_str(&r.req_s("placements")?).map_err(|e| Malformed {
                key: format!("PLACEMENT#{}", request.request_id),
                problem: format!("attribute placements: {e}"),
            })?;
        Ok(Some(PlacementOutcome::Granted {
            request_id: request.request_id.clone(),
            placements,
            lease_expires_at: r.opt_n("lease_expires_at")?.unwrap_or(0),
            requests: 1,
        }))
    }

    fn grant_items(
        &self,
        request: &PlacementRequest,
        team: &TeamQuota,
        clusters: &[ClusterRecord],
        grant: &[(String, u32)],
        now: i64,
        expires: i64,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let each = request.per_worker();
        let total = each.times(grant.iter().map(|(_, k)| u64::from(*k)).sum());
        let mut items = Vec::new();

        // The team: usage up, within the limit as read; workers per cluster; the pool's
        // last refusal is over.
        let mut e = Expr::default();
        for r in each.requested() {
            let used = e.name(format!("used_{}", r.key()));
            let limit = e.name(format!("limit_{}", r.key()));
            let amount = e.value(n(total.get(&r)));
            let limit_v = e.value(n(team.limit.get(&r)));
            let bound = e.value(n(team.limit.get(&r) - total.get(&r)));
            e.add.push(format!("{used} {amount}"));
            e.condition.push(format!(
                "{limit} = {limit_v} AND (attribute_not_exists({used}) OR {used} <= {bound})"
            ));
        }
        for (cluster, k) in grant {
            let w = e.name(format!("workers@{cluster}"));
            let v = e.value(n(*k));
            e.add.push(format!("{w} {v}"));
        }
        let refused = e.name(format!("refused@{}", request.pool));
        e.remove.push(refused);
        items.push(
            TransactWriteItem::builder()
                .update(e.update(&self.table, key(team_pk(&request.team), QUOTA_SK.into()))?)
                .build(),
        );

        // Each cluster: usage up, within its capacity as read, still enabled.
        for (cluster, k) in grant {
            let Some(c) = clusters.iter().find(|c| &c.name == cluster) else {
                continue;
            };
            let amount_here = each.times(u64::from(*k));
            let mut e = Expr::default();
            for r in each.requested() {
                let used = e.name(format!("used_{}", r.key()));
                let cap = e.name(format!("capacity_{}", r.key()));
                let amount = e.value(n(amount_here.get(&r)));
                let cap_v = e.value(n(c.capacity.get(&r)));
                let bound = e.value(n(c.capacity.get(&r) - amount_here.get(&r)));
                e.add.push(format!("{used} {amount}"));
                e.condition.push(format!(
                    "{cap} = {cap_v} AND (attribute_not_exists({used}) OR {used} <= {bound})"
                ));
            }
            let t = e.value(AttributeValue::Bool(true));
            e.condition.push(format!("enabled = {t}"));
            items.push(
                TransactWriteItem::builder()
                    .update(e.update(&self.table, key(CLUSTERS_PK.into(), cluster.clone()))?)
                    .build(),
            );
        }

        // The reservations, one per cluster, a slot and a lease per worker.
        for (cluster, k) in grant {
            let id = reservation_id(cluster, &request.request_id);
            let mut it = key(reservation_pk(cluster, &id), id.clone());
            it.insert("request_id".into(), s(&request.request_id));
            it.insert("team".into(), s(&request.team));
            it.insert("pool_name".into(), s(&request.pool));
            it.insert("cluster".into(), s(cluster));
            it.insert("cpu_milli".into(), n(each.cpu_milli));
            it.insert("memory_mib".into(), n(each.memory_mib));
            if let Some((t, g)) = each.gpus.iter().next() {
                it.insert("gpu".into(), n(*g));
                it.insert("gpu_type".into(), s(t));
            }
            it.insert("count".into(), n(*k));
            it.insert(
                "slots".into(),
                AttributeValue::Ns((0..*k).map(|i| i.to_string()).collect()),
            );
            for i in 0..*k {
                it.insert(format!("lease_{i}"), n(expires));
            }
            it.insert("created_at".into(), n(now));
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(it))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(build("TransactWriteItems"))?,
                    )
                    .build(),
            );
        }

        // The request record, last (its failed condition means "granted before").
        let mut rec = key(
            format!("PLACEMENT#{}", request.request_id),
            "REQUEST".into(),
        );
        rec.insert("team".into(), s(&request.team));
        rec.insert(
            "placements".into(),
            s(
                serde_json::to_string(&placements_of(&request.request_id, grant))
                    .unwrap_or_default(),
            ),
        );
        rec.insert("lease_expires_at".into(), n(expires));
        rec.insert("expires_at".into(), n(now / 1000 + 86_400));
        items.push(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(rec))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build("TransactWriteItems"))?,
                )
                .build(),
        );
        Ok(items)
    }

    async fn record_refusal(
        &self,
        team: &str,
        pool: &str,
        refusal: &Refusal,
    ) -> Result<(), StoreError> {
        let recorded = RecordedRefusal {
            refusal: refusal.clone(),
            at: super::now_ms(),
        };
        let mut e = Expr::default();
        let name = e.name(format!("refused@{pool}"));
        let value = e.value(s(serde_json::to_string(&recorded).unwrap_or_default()));
        e.set.push(format!("{name} = {value}"));
        let update = e.update(&self.table, key(team_pk(team), QUOTA_SK.into()))?;
        self.send_update(update).await
    }

    /// A reservation, if it exists.
    pub async fn reservation(
        &self,
        reservation_id: &str,
    ) -> Result<Option<Reservation>, StoreError> {
        let Some(cluster) = cluster_of(reservation_id) else {
            return Ok(None);
        };
        self.get_item(
            reservation_pk(cluster, reservation_id),
            reservation_id.to_string(),
        )
        .await?
        .map(|it| reservation_from_item(&it))
        .transpose()
    }

    /// Every reservation held in a cluster.
    pub async fn reservations(&self, cluster: &str) -> Result<Vec<Reservation>, StoreError> {
        let mut all = Vec::new();
        for shard in 0..RESERVATION_SHARDS {
            let pk = format!("RESERVATIONS#{cluster}#{shard}");
            let items = self
                .query_all(|| {
                    self.ddb
                        .query()
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(&pk))
                })
                .await?;
            for it in &items {
                all.push(reservation_from_item(it)?);
            }
        }
        Ok(all)
    }

    /// Extend a worker slot's lease to `until` (ms). False when the slot is no longer
    /// live (released, or swept after its lease lapsed): the worker has lost its place
    /// and should finish what it runs and exit.
    pub async fn renew_slot(
        &self,
        reservation_id: &str,
        slot: u32,
        until: i64,
    ) -> Result<bool, StoreError> {
        let Some(cluster) = cluster_of(reservation_id) else {
            return Ok(false);
        };
        let mut e = Expr::default();
        let lease = e.name(format!("lease_{slot}"));
        let until = e.value(n(until));
        let k = e.value(n(slot));
        e.set.push(format!("{lease} = {until}"));
        e.condition.push(format!("contains(slots, {k})"));
        let update = e.update(
            &self.table,
            key(
                reservation_pk(cluster, reservation_id),
                reservation_id.to_string(),
            ),
        )?;
        match self.send_update(update).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_condition_failed() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Release worker slots of a reservation (`None`: all live ones), giving their
    /// resources back to the team and the cluster. With `expired_before`, only slots
    /// whose lease lapsed before then (the sweeper's case; a renewal racing it wins).
    /// Returns how many slots this call released: a slot released before counts 0.
    pub async fn release_slots(
        &self,
        reservation_id: &str,
        slots: Option<&[u32]>,
        expired_before: Option<i64>,
    ) -> Result<u32, StoreError> {
        for attempt in 0..MAX_TRIES {
            let res = match self.reservation(reservation_id).await {
                Err(e) if e.is_transient() => {
                    backoff(attempt).await;
                    continue;
                }
                other => other?,
            };
            let Some(res) = res else {
                return Ok(0);
            };
            let chosen: Vec<u32> = res
                .slots
                .iter()
                .filter(|(k, _)| slots.is_none_or(|want| want.contains(k)))
                .filter(|(_, lease)| expired_before.is_none_or(|t| **lease < t))
                .map(|(k, _)| *k)
                .collect();
            if chosen.is_empty() {
                return Ok(0);
            }
            let count = chosen.len() as u64;
            let amount = res.per_worker.times(count);

            let mut e = Expr::default();
            let set = e.value(AttributeValue::Ns(
                chosen.iter().map(|k| k.to_string()).collect(),
            ));
            e.delete.push(format!("slots {set}"));
            for k in &chosen {
                let lease = e.name(format!("lease_{k}"));
                let kv = e.value(n(*k));
                e.condition.push(format!("contains(slots, {kv})"));
                if let Some(t) = expired_before {
                    let tv = e.value(n(t));
                    e.condition.push(format!("{lease} < {tv}"));
                }
                e.remove.push(lease);
            }
            let reservation_update = e.update(
                &self.table,
                key(
                    reservation_pk(&res.cluster, reservation_id),
                    reservation_id.to_string(),
                ),
            )?;

            let mut team = Expr::default();
            for r in amount.requested() {
                let used = team.name(format!("used_{}", r.key()));
                let v = team.value(signed(amount.get(&r), true));
                team.add.push(format!("{used} {v}"));
            }
            let w = team.name(format!("workers@{}", res.cluster));
            let v = team.value(signed(count, true));
            team.add.push(format!("{w} {v}"));
            let team_update = team.update(&self.table, key(team_pk(&res.team), QUOTA_SK.into()))?;

            let mut cl = Expr::default();
            for r in amount.requested() {
                let used = cl.name(format!("used_{}", r.key()));
                let v = cl.value(signed(amount.get(&r), true));
                cl.add.push(format!("{used} {v}"));
            }
            let cluster_update =
                cl.update(&self.table, key(CLUSTERS_PK.into(), res.cluster.clone()))?;

            match send_raw(
                self.ddb
                    .transact_write_items()
                    .transact_items(
                        TransactWriteItem::builder()
                            .update(reservation_update)
                            .build(),
                    )
                    .transact_items(TransactWriteItem::builder().update(team_update).build())
                    .transact_items(TransactWriteItem::builder().update(cluster_update).build()),
            )
            .await
            {
                Ok(_) => {
                    tracing::info!(reservation_id, slots = ?chosen, team = %res.team, cluster = %res.cluster,
                        swept = expired_before.is_some(), "worker slots released");
                    return Ok(chosen.len() as u32);
                }
                // A slot went (another release) or a lease moved (a renewal), or the
                // transaction timed out on a lock: read again.
                Err(e)
                    if matches!(
                        e.code(),
                        Some("TransactionCanceledException" | "InternalServerError")
                    ) || !matches!(e, SdkError::ServiceError(_)) =>
                {
                    backoff(attempt).await;
                }
                Err(e) => return Err(classify("TransactWriteItems", e)),
            }
        }
        Err(StoreError::Unprocessed {
            operation: "TransactWriteItems (release)",
            remaining: 1,
        })
    }

    /// Reclaim every worker slot whose lease lapsed before `now` (its worker vanished
    /// without releasing: node lost, pod evicted), and drop reservations with no live
    /// slot left. Returns the slots reclaimed.
    pub async fn sweep_reservations(&self, now: i64) -> Result<u32, StoreError> {
        let mut swept = 0;
        for cluster in self.clusters().await? {
            for res in self.reservations(&cluster.name).await? {
                if res.slots.is_empty() {
                    // Gone already, or slots came back meanwhile: either way, go on.
                    send_if(
                        self.ddb
                            .delete_item()
                            .table_name(&self.table)
                            .set_key(Some(key(
                                reservation_pk(&res.cluster, &res.reservation_id),
                                res.reservation_id.clone(),
                            )))
                            .condition_expression("attribute_not_exists(slots)"),
                    )
                    .await?;
                    continue;
                }
                if res.slots.values().any(|lease| *lease < now) {
                    swept += self
                        .release_slots(&res.reservation_id, None, Some(now))
                        .await?;
                }
            }
        }
        Ok(swept)
    }
}

fn placements_of(request_id: &str, grant: &[(String, u32)]) -> Vec<Placement> {
    grant
        .iter()
        .map(|(cluster, k)| Placement {
            cluster: cluster.clone(),
            count: *k,
            reservation_id: reservation_id(cluster, request_id),
            slots: (0..*k).collect(),
        })
        .collect()
}
