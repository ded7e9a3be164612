//! The autoscaler's items: its settings (`AUTOSCALER` / `SETTINGS`, one JSON document),
//! the tick lease (`AUTOSCALER` / `TICK`: one tick at a time, however often EventBridge
//! or an operator invokes it), and one decision record per tick
//! (`AUTOSCALER#DECISIONS` / `<ms, 13 digits>#<tick id>`, newest read first, kept 14 days
//! by TTL). A decision carries the state the next tick needs (backlog cohorts, idle and
//! cordoned nodes), so the autoscaler itself keeps nothing between invocations.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

const AUTOSCALER_PK: &str = "AUTOSCALER";
const DECISIONS_PK: &str = "AUTOSCALER#DECISIONS";
/// How long decision records are kept.
pub const DECISION_RETENTION_SECONDS: i64 = 14 * 24 * 3600;

fn decision_sk(at_ms: i64, tick_id: &str) -> String {
    format!("{at_ms:013}#{tick_id}")
}

fn malformed(key: &str, problem: String) -> StoreError {
    StoreError::Malformed(Malformed {
        key: key.to_string(),
        problem,
    })
}

impl Store {
    /// The autoscaler's settings document, if one was stored.
    pub async fn autoscaler_settings<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        let Some(it) = self
            .read_item(key(AUTOSCALER_PK.into(), "SETTINGS".into()))
            .await?
        else {
            return Ok(None);
        };
        let text = Reader::new(&it).req_s("doc")?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| malformed("AUTOSCALER/SETTINGS", format!("doc: {e}")))
    }

    pub async fn put_autoscaler_settings<T: Serialize>(&self, doc: &T) -> Result<(), StoreError> {
        let mut it = key(AUTOSCALER_PK.into(), "SETTINGS".into());
        let text = serde_json::to_string(doc)
            .map_err(|e| malformed("AUTOSCALER/SETTINGS", e.to_string()))?;
        it.insert("doc".into(), s(text));
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    /// Take the tick lease for `tick_id` until `until` (ms): false while another tick
    /// holds an unexpired one.
    pub async fn acquire_tick(
        &self,
        tick_id: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let mut it = key(AUTOSCALER_PK.into(), "TICK".into());
        it.insert("holder".into(), s(tick_id));
        it.insert("until".into(), n(until));
        Ok(send_if(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it))
                .condition_expression("attribute_not_exists(pk) OR #until < :now")
                .expression_attribute_names("#until", "until")
                .expression_attribute_values(":now", n(now)),
        )
        .await?
        .is_some())
    }

    /// Give the tick lease back (only if `tick_id` still holds it).
    pub async fn release_tick(&self, tick_id: &str) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(AUTOSCALER_PK.into(), "TICK".into())))
                .condition_expression("holder = :me")
                .expression_attribute_values(":me", s(tick_id)),
        )
        .await?
        .is_some())
    }

    /// Record one tick's decision.
    pub async fn put_decision<T: Serialize>(
        &self,
        at_ms: i64,
        tick_id: &str,
        decision: &T,
    ) -> Result<(), StoreError> {
        let sk = decision_sk(at_ms, tick_id);
        let mut it = key(DECISIONS_PK.into(), sk.clone());
        let text = serde_json::to_string(decision)
            .map_err(|e| malformed(&format!("{DECISIONS_PK}/{sk}"), e.to_string()))?;
        it.insert("doc".into(), s(text));
        it.insert(
            "expires_at".into(),
            n(at_ms / 1000 + DECISION_RETENTION_SECONDS),
        );
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    /// The newest `limit` decisions, newest first.
    pub async fn decisions<T: DeserializeOwned>(&self, limit: usize) -> Result<Vec<T>, StoreError> {
        let out = send(
            self.ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(DECISIONS_PK))
                .scan_index_forward(false)
                .limit(limit.clamp(1, 1000) as i32)
                .consistent_read(true),
        )
        .await?;
        out.items()
            .iter()
            .map(|it| {
                let r = Reader::new(it);
                let sk = r.req_s("sk")?;
                serde_json::from_str(&r.req_s("doc")?)
                    .map_err(|e| malformed(&format!("{DECISIONS_PK}/{sk}"), format!("doc: {e}")))
            })
            .collect()
    }
}
