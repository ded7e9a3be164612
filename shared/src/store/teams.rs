//! Per-team usage: the "requested vs used" table by team. When a job closes, its final
//! usage is added to its team's bucket for that day (`TEAM#<team>` / `USAGE#<date>`),
//! once: the add and a per-job marker (`TEAM#<team>` / `JOB#<job>`) go in one
//! transaction whose marker must not exist yet.

use super::item::*;
use super::request::send_unless_cancelled;
use super::{Store, StoreError};
use crate::domain::Usage;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use std::collections::HashMap;

fn team_pk(team: &str) -> String {
    format!("TEAM#{team}")
}

/// One day of a team's finished jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamDay {
    /// `YYYY-MM-DD` (UTC) of the jobs' finish.
    pub date: String,
    pub jobs: u64,
    pub usage: Usage,
}

impl Store {
    /// Add a finished job's usage to its team's day; false if it was added before.
    pub async fn add_team_usage(
        &self,
        team: &str,
        job_id: &str,
        finished_at: i64,
        usage: &Usage,
    ) -> Result<bool, StoreError> {
        let date = chrono::DateTime::from_timestamp_millis(finished_at)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let build = |source| StoreError::Build {
            operation: "TransactWriteItems",
            source,
        };
        let mut marker = key(team_pk(team), format!("JOB#{job_id}"));
        marker.insert("date".into(), s(&date));
        let mut parts = vec!["jobs :one".to_string()];
        let mut values = HashMap::from([(":one".to_string(), n(1))]);
        for (i, (field, v)) in Usage::FIELDS.iter().zip(usage.values()).enumerate() {
            parts.push(format!("{} :u{i}", usage_attr(field)));
            values.insert(format!(":u{i}"), n(v));
        }
        // Cancelled: the marker exists, so this job was counted already.
        send_unless_cancelled(
            self.ddb
                .transact_write_items()
                .transact_items(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .set_item(Some(marker))
                                .condition_expression("attribute_not_exists(pk)")
                                .build()
                                .map_err(build)?,
                        )
                        .build(),
                )
                .transact_items(
                    TransactWriteItem::builder()
                        .update(
                            Update::builder()
                                .table_name(&self.table)
                                .set_key(Some(key(team_pk(team), format!("USAGE#{date}"))))
                                .update_expression(format!("ADD {}", parts.join(", ")))
                                .set_expression_attribute_values(Some(values))
                                .build()
                                .map_err(build)?,
                        )
                        .build(),
                ),
        )
        .await
    }

    /// A team's days from `since` (`YYYY-MM-DD`) on, oldest first.
    pub async fn team_usage(&self, team: &str, since: &str) -> Result<Vec<TeamDay>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                    .expression_attribute_values(":pk", s(team_pk(team)))
                    .expression_attribute_values(":from", s(format!("USAGE#{since}")))
                    .expression_attribute_values(":to", s("USAGE#9999"))
            })
            .await?;
        items
            .iter()
            .map(|it| {
                let r = Reader::new(it);
                Ok(TeamDay {
                    date: r.req_s("sk")?.trim_start_matches("USAGE#").to_string(),
                    jobs: r.opt_n("jobs")?.unwrap_or(0),
                    usage: usage_from_item(it),
                })
            })
            .collect()
    }
}
