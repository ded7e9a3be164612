//! Access: resolving the caller's roles once per request, the checks every operation
//! makes with them, and the grants themselves (`/v1/access`).
//!
//! A job the caller has no role on does not exist for it (NotFound, exactly as for an
//! id that was never given out); a job it may see but not change, and every admin
//! operation, is Forbidden for it.

use crate::domain::access::{Access, Grant, Principal, Role, TeamChoice};
use crate::domain::JobRecord;
use serde::Serialize;
use serde_json::json;

use super::*;

/// What an operation needs on the job's team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Look at it (viewer).
    View,
    /// Change it (member).
    Act,
}

/// `GET /v1/access`: the grants, and who the deployment's admins are.
#[derive(Debug, Clone, Serialize)]
pub struct AccessView {
    /// Principals (or patterns) the deployment's configuration makes admins.
    pub deployment_admins: Vec<String>,
    pub grants: Vec<Grant>,
}

/// `GET /v1/access/me`: who the API takes the caller to be, and its roles.
#[derive(Debug, Clone, Serialize)]
pub struct CallerView {
    pub principal: Principal,
    pub admin: bool,
    pub teams: std::collections::BTreeMap<String, Role>,
}

impl Service {
    /// The caller's access: its grants from the store, and the deployment's admins.
    pub async fn access_for(&self, principal: Principal) -> Result<Access, ApiError> {
        // A deployment admin may do everything: its grants need not be read.
        if self.admins.iter().any(|a| principal.matches(a)) {
            return Ok(Access::resolve(principal, &[], &self.admins));
        }
        let grants = self.store.grants().await?;
        Ok(Access::resolve(principal, &grants, &self.admins))
    }

    /// Refuse anyone but an admin `what`.
    pub fn require_admin(who: &Access, what: &str) -> Result<(), ApiError> {
        if who.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                &who.principal.id,
                format_args!("{what} (it takes the deployment's admin role)"),
            ))
        }
    }

    /// Refuse a caller without `need` on `team`: NotFound (`hidden`) when it has no role
    /// there at all, Forbidden when it may only look.
    pub fn require_on_team(
        who: &Access,
        team: &str,
        need: Need,
        hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match (who.role_on(team), need) {
            (None, _) => Err(hidden()),
            (Some(Role::Viewer), Need::Act) => Err(ApiError::forbidden(
                &who.principal.id,
                format_args!("change team {team}'s jobs: it is a viewer there, not a member"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the caller sees the deployment's shared resources (job queues, compute
    /// environments, scheduling policies): anyone with a role on some team.
    pub fn sees_shared(who: &Access) -> bool {
        who.admin || !who.teams.is_empty()
    }

    /// The job, if the caller has `need` on its team; to a caller with no role there it
    /// does not exist.
    pub(crate) async fn job_for(
        &self,
        who: &Access,
        job_id: &str,
        need: Need,
    ) -> Result<JobRecord, ApiError> {
        let job = self.job(job_id).await?;
        Self::require_on_team(who, &job.team, need, || {
            ApiError::not_found(format!("no job {job_id:?}"))
        })?;
        Ok(job)
    }

    /// The team a submission goes to (see [`Access::submission_team`]); `field` names
    /// where a submission names its team.
    pub fn submission_team(
        who: &Access,
        named: Option<&str>,
        field: &str,
    ) -> Result<String, ApiError> {
        if let Some(team) = named {
            crate::domain::ids::check_team(field, team).map_err(|e| {
                ApiError::bad_request(e.to_string(), json!({"field": field})).caused_by(e)
            })?;
        }
        who.submission_team(named).map_err(|choice| match choice {
            TeamChoice::NotMember { team, role } => ApiError::forbidden(
                &who.principal.id,
                format_args!(
                    "submit to team {team} ({}); field `{field}`",
                    match role {
                        Some(r) => format!("it is a {r} there, not a member"),
                        None => "it has no role there".into(),
                    }
                ),
            ),
            TeamChoice::Ambiguous { teams } => ApiError::bad_request(
                format!(
                    "field `{field}`: {} is a member of several teams ({}); name one",
                    who.principal.id,
                    teams.join(", ")
                ),
                json!({"field": field, "teams": teams}),
            ),
            TeamChoice::NoTeam => ApiError::forbidden(
                &who.principal.id,
                "submit jobs: it is a member of no team (an admin grants one with `batchplane access grant`)",
            ),
        })
    }

    /// `GET /v1/access` (admin).
    pub async fn access(&self, who: &Access) -> Result<AccessView, ApiError> {
        Self::require_admin(who, "list grants")?;
        Ok(AccessView {
            deployment_admins: self.admins.clone(),
            grants: self.store.grants().await?,
        })
    }

    /// `GET /v1/access/me`: anyone may ask who they are.
    pub fn whoami(who: &Access) -> CallerView {
        CallerView {
            principal: who.principal.clone(),
            admin: who.admin,
            teams: who.teams.clone(),
        }
    }

    /// `POST /v1/access/grants` (admin): body `{"principal", "team"?, "role"}`.
    pub async fn grant(&self, who: &Access, body: &str) -> Result<Grant, ApiError> {
        Self::require_admin(who, "grant roles")?;
        let grant: Grant = crate::placement::parse_body("grant", body)?;
        grant.validate().map_err(|e| {
            ApiError::bad_request(format!("grant: {e}"), json!({"field": e.field})).caused_by(e)
        })?;
        self.store
            .put_grant(&grant, &who.principal.id, self.store.now())
            .await?;
        tracing::info!(principal = %grant.principal, team = ?grant.team, role = %grant.role,
            by = %who.principal.id, "role granted");
        Ok(grant)
    }

    /// `POST /v1/access/revoke` (admin): the same body as a grant; the role is optional.
    pub async fn revoke(&self, who: &Access, body: &str) -> Result<Grant, ApiError> {
        Self::require_admin(who, "revoke roles")?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Revoke {
            principal: String,
            team: Option<String>,
            role: Option<Role>,
        }
        let r: Revoke = crate::placement::parse_body("revoke", body)?;
        let role = r.role.unwrap_or(if r.team.is_some() {
            Role::Member
        } else {
            Role::Admin
        });
        let grant = Grant {
            principal: r.principal,
            team: r.team,
            role,
        };
        if !self
            .store
            .delete_grant(&grant.principal, grant.team.as_deref(), r.role)
            .await?
        {
            return Err(ApiError::not_found(format!(
                "{} has no {} grant{}",
                grant.principal,
                r.role.map_or("such".to_string(), |r| r.to_string()),
                grant
                    .team
                    .as_deref()
                    .map_or(String::new(), |t| format!(" on team {t}"))
            )));
        }
        tracing::info!(principal = %grant.principal, team = ?grant.team,
            by = %who.principal.id, "role revoked");
        Ok(grant)
    }
}
