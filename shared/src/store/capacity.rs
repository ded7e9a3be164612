//! Capacity-limited launch configs: when EC2 gives fewer nodes than asked (or answers
//! InsufficientInstanceCapacity, a spot limit), the autoscaler marks that launch config
//! (`m5.2xlarge:us-east-1a:spot`) with an expiry and skips it until then. Marks live under
//! one partition (`CAPACITY`, a handful of items), expire by TTL, and are read by
//! `batchplane capacity` and `explain`.

use super::item::*;
use super::request::send;
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};

const CAPACITY_PK: &str = "CAPACITY";

/// One launch config marked capacity-limited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityMark {
    /// `instance type:zone:spot|on-demand`.
    pub launch_config: String,
    /// What EC2 said: `InsufficientInstanceCapacity`, `got 3 of 10 instances`...
    pub reason: String,
    /// When it was marked and until when it is skipped (ms).
    pub marked_at: i64,
    pub until: i64,
}

impl Store {
    /// Mark a launch config capacity-limited until `until` (ms); a later mark replaces
    /// an earlier one.
    pub async fn mark_capacity_limited(&self, mark: &CapacityMark) -> Result<(), StoreError> {
        let mut it = key(CAPACITY_PK.into(), mark.launch_config.clone());
        it.insert("reason".into(), s(&mark.reason));
        it.insert("marked_at".into(), n(mark.marked_at));
        it.insert("until".into(), n(mark.until));
        // DynamoDB's TTL is in seconds and lazy; readers filter on `until` themselves.
        it.insert("expires_at".into(), n(mark.until / 1000 + 60));
        let _out = send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        tracing::info!(launch_config = %mark.launch_config, reason = %mark.reason, until = mark.until,
            "launch config marked capacity-limited");
        Ok(())
    }

    /// The marks still in force at `now` (ms), by launch config.
    pub async fn capacity_marks(&self, now: i64) -> Result<Vec<CapacityMark>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(CAPACITY_PK))
            })
            .await?;
        let mut marks = Vec::new();
        for it in &items {
            let r = Reader::new(it);
            let mark = CapacityMark {
                launch_config: r.req_s("sk")?,
                reason: r.req_s("reason")?,
                marked_at: r.req_n("marked_at")?,
                until: r.req_n("until")?,
            };
            if mark.until > now {
                marks.push(mark);
            }
        }
        Ok(marks)
    }
}
