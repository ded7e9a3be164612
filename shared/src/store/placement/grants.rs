//! Granting a placement: one transaction over the team's quota, each cluster's capacity,
//! the reservations and the request record; refusals recorded for `explain`.

use crate::domain::placement::{
    decide, ClusterLoad, Decision, PlacementRequest, Refusal, Resource, TeamQuota,
};
use crate::store::item::*;
use crate::store::request::send_raw;
use crate::store::{classify, Store, StoreError};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use std::time::Duration;

use super::items::*;
use super::*;

impl Store {
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
            let now = self.now();
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
            used_within(&mut e, &r, "limit", total.get(&r), team.limit.get(&r));
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
            let here = each.times(u64::from(*k));
            let mut e = Expr::default();
            for r in each.requested() {
                used_within(&mut e, &r, "capacity", here.get(&r), c.capacity.get(&r));
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
            let it = reservation_item(request, &each, cluster, *k, now, expires);
            items.push(self.put_new(it)?);
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
        items.push(self.put_new(rec)?);
        Ok(items)
    }

    /// A transaction's put of an item that must not exist yet.
    fn put_new(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build("TransactWriteItems"))?,
            )
            .build())
    }

    async fn record_refusal(
        &self,
        team: &str,
        pool: &str,
        refusal: &Refusal,
    ) -> Result<(), StoreError> {
        let recorded = RecordedRefusal {
            refusal: refusal.clone(),
            at: self.now(),
        };
        let mut e = Expr::default();
        let name = e.name(format!("refused@{pool}"));
        let value = e.value(s(serde_json::to_string(&recorded).unwrap_or_default()));
        e.set.push(format!("{name} = {value}"));
        let update = e.update(&self.table, key(team_pk(team), QUOTA_SK.into()))?;
        self.send_update(update).await
    }
}

pub(super) fn placements_of(request_id: &str, grant: &[(String, u32)]) -> Vec<Placement> {
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

/// `used_<r>` goes up by `amount`, provided the `<limit>_<r>` is still `limit` as read
/// and the usage stays within it.
fn used_within(e: &mut Expr, r: &Resource, limit_attr: &str, amount: u64, limit: u64) {
    let used = e.name(format!("used_{}", r.key()));
    let limit_name = e.name(format!("{limit_attr}_{}", r.key()));
    let amount_v = e.value(n(amount));
    let limit_v = e.value(n(limit));
    let bound = e.value(n(limit - amount));
    e.add.push(format!("{used} {amount_v}"));
    e.condition.push(format!(
        "{limit_name} = {limit_v} AND (attribute_not_exists({used}) OR {used} <= {bound})"
    ));
}

/// A reservation in `cluster` for `count` workers of `request`: a slot and a lease each.
fn reservation_item(
    request: &PlacementRequest,
    each: &Resources,
    cluster: &str,
    count: u32,
    now: i64,
    expires: i64,
) -> Item {
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
    it.insert("count".into(), n(count));
    it.insert(
        "slots".into(),
        AttributeValue::Ns((0..count).map(|i| i.to_string()).collect()),
    );
    for i in 0..count {
        it.insert(format!("lease_{i}"), n(expires));
    }
    it.insert("created_at".into(), n(now));
    it
}
