//! What the events publisher remembers: one marker per published transition (so a
//! redelivered stream record publishes nothing twice) and the Step Functions task tokens
//! of running jobs (for heartbeats).
//!
//! Markers: `EVENTS#<0-15>` / `<transition id>`, `sent` false while being published and
//! true after; kept 14 days by TTL. A marker left `sent = false` (a publisher that died
//! between publishing and confirming) is claimed again by the next delivery: at least
//! once in that one case, exactly once otherwise. Tokens: `SFN#TOKENS` / `<job id>`.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use aws_sdk_dynamodb::types::AttributeValue;

const MARKER_SHARDS: u32 = 16;
const MARKER_RETENTION_SECONDS: i64 = 14 * 24 * 3600;
const TOKENS_PK: &str = "SFN#TOKENS";

fn marker_key(transition_id: &str) -> Item {
    let mut h: u32 = 0x811c_9dc5;
    for b in transition_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    key(
        format!("EVENTS#{}", h % MARKER_SHARDS),
        transition_id.to_string(),
    )
}

impl Store {
    /// Claim a transition for publishing: true unless it was published already.
    pub async fn claim_event(&self, transition_id: &str, now: i64) -> Result<bool, StoreError> {
        let mut it = marker_key(transition_id);
        it.insert("sent".into(), AttributeValue::Bool(false));
        it.insert("claimed_at".into(), n(now));
        it.insert(
            "expires_at".into(),
            n(now / 1000 + MARKER_RETENTION_SECONDS),
        );
        Ok(send_if(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it))
                .condition_expression("attribute_not_exists(pk) OR sent = :false")
                .expression_attribute_values(":false", AttributeValue::Bool(false)),
        )
        .await?
        .is_some())
    }

    /// Record that a claimed transition went out.
    pub async fn confirm_event(&self, transition_id: &str) -> Result<(), StoreError> {
        let _out = send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(marker_key(transition_id)))
                .update_expression("SET sent = :true")
                .expression_attribute_values(":true", AttributeValue::Bool(true)),
        )
        .await?;
        Ok(())
    }

    /// Give a claim back (publishing failed; the retried batch claims it again).
    pub async fn release_event(&self, transition_id: &str) -> Result<(), StoreError> {
        Ok(send_if(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(marker_key(transition_id)))
                .condition_expression("sent = :false")
                .expression_attribute_values(":false", AttributeValue::Bool(false)),
        )
        .await?
        .is_some())
        .map(|_| ())
    }

    /// Remember a running job's task token (heartbeats go to it).
    pub async fn put_task_token(&self, job_id: &str, token: &str) -> Result<(), StoreError> {
        let mut it = key(TOKENS_PK.into(), job_id.to_string());
        it.insert("token".into(), s(token));
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_task_token(&self, job_id: &str) -> Result<(), StoreError> {
        let _out = send(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(TOKENS_PK.into(), job_id.to_string()))),
        )
        .await?;
        Ok(())
    }

    /// The running jobs' task tokens, `(job id, token)`.
    pub async fn task_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(TOKENS_PK))
            })
            .await?;
        items
            .iter()
            .map(|it| {
                let r = Reader::new(it);
                Ok((r.req_s("sk")?, r.req_s("token")?))
            })
            .collect()
    }
}
