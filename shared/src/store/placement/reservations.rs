//! Worker reservations: reading them, renewing a slot's lease, releasing slots (once,
//! whoever asks), and sweeping lapsed leases.

use crate::store::item::*;
use crate::store::request::{send_if, send_raw};
use crate::store::{classify, Store, StoreError};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};

use super::items::*;
use super::*;

impl Store {
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

            // One token for this transaction, kept by the SDK's retries and ours: a
            // try that was applied but not answered (a lock time-out, a lost response)
            // is answered "done" when sent again, not refused as a release of slots
            // already gone, which would count them as released by someone else.
            let token = uuid::Uuid::new_v4().to_string();
            let request = self
                .ddb
                .transact_write_items()
                .client_request_token(&token)
                .transact_items(
                    TransactWriteItem::builder()
                        .update(reservation_update)
                        .build(),
                )
                .transact_items(TransactWriteItem::builder().update(team_update).build())
                .transact_items(TransactWriteItem::builder().update(cluster_update).build());
            for resend in 0..3 {
                match send_raw(request.clone()).await {
                    Ok(_) => {
                        tracing::info!(reservation_id, slots = ?chosen, team = %res.team, cluster = %res.cluster,
                            swept = expired_before.is_some(), "worker slots released");
                        return Ok(chosen.len() as u32);
                    }
                    // No clear answer: the same transaction again, under its token.
                    Err(e)
                        if e.code() == Some("InternalServerError")
                            || !matches!(e, SdkError::ServiceError(_)) =>
                    {
                        backoff(resend).await;
                    }
                    // A slot went (another release) or a lease moved (a renewal): read
                    // again.
                    Err(e) if e.code() == Some("TransactionCanceledException") => break,
                    Err(e) => return Err(classify("TransactWriteItems", e)),
                }
            }
            backoff(attempt).await;
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
