//! Grants: which principals have which role on which team. They live under one
//! partition (`ACCESS`, one item per grant, `GRANT#<team or *>#<principal>`), so a
//! request resolves its caller with one Query.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use crate::domain::access::{Grant, Role};

const ACCESS_PK: &str = "ACCESS";

fn grant_sk(team: Option<&str>, principal: &str) -> String {
    format!("GRANT#{}#{principal}", team.unwrap_or("*"))
}

impl Store {
    /// Every grant, by team then principal.
    pub async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(ACCESS_PK))
            })
            .await?;
        items
            .iter()
            .map(|it| {
                let r = Reader::new(it);
                let role = r.req_s("role")?;
                Ok(Grant {
                    principal: r.req_s("principal")?,
                    team: r.opt_s("team")?,
                    role: role.parse().map_err(|problem| Malformed {
                        key: format!("{ACCESS_PK}/{}", r.req_s("sk").unwrap_or_default()),
                        problem: format!("attribute role: {problem}"),
                    })?,
                })
            })
            .collect::<Result<_, Malformed>>()
            .map_err(StoreError::from)
    }

    /// Give a principal a role on a team (or admin); a grant of another role to the same
    /// principal on the same team replaces it. `by` is who granted it.
    pub async fn put_grant(&self, grant: &Grant, by: &str, now: i64) -> Result<(), StoreError> {
        let mut it = key(
            ACCESS_PK.into(),
            grant_sk(grant.team.as_deref(), &grant.principal),
        );
        it.insert("principal".into(), s(&grant.principal));
        if let Some(t) = &grant.team {
            it.insert("team".into(), s(t));
        }
        it.insert("role".into(), s(grant.role.as_str()));
        it.insert("granted_by".into(), s(by));
        it.insert("granted_at".into(), n(now));
        send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it)),
        )
        .await?;
        Ok(())
    }

    /// Take a principal's role on a team (or its admin grant) away; false if it had none.
    pub async fn delete_grant(
        &self,
        principal: &str,
        team: Option<&str>,
        role: Option<Role>,
    ) -> Result<bool, StoreError> {
        let mut req = self
            .ddb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(ACCESS_PK.into(), grant_sk(team, principal))))
            .condition_expression("attribute_exists(pk)");
        if let Some(r) = role {
            req = req
                .condition_expression("attribute_exists(pk) AND #role = :role")
                .expression_attribute_names("#role", "role")
                .expression_attribute_values(":role", s(r.as_str()));
        }
        Ok(send_if(req).await?.is_some())
    }
}
