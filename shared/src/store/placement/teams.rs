//! Team quotas: the limit per resource, and the teams' usage read back.

use crate::domain::placement::Resources;
use crate::store::item::*;
use crate::store::request::send;
use crate::store::{Store, StoreError};
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::items::*;
use super::*;

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
        let now = e.value(n(self.now()));
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
}
