//! Who may do what: principals, their roles on teams, and the one rule every route asks.
//!
//! A **principal** is the caller as the deployment authenticated it: in AWS the IAM user
//! or role that API Gateway checked (an assumed-role session also answers to the role
//! behind it); on the local stack the access key id that signed the request, or
//! `anonymous`. A **grant** gives a principal — or every principal whose name matches an
//! ARN pattern with `*` wildcards — a role:
//!
//! - `viewer` on a team: read its jobs, tasks, logs, usage and explanations;
//! - `member` on a team: all a viewer may, and submit, cancel, terminate and add tasks;
//! - `admin` on the deployment: teams and quotas, clusters, autoscaler settings,
//!   placements, templates and access itself, and whatever a member of any team may do.
//!
//! To anyone without a role on its team, a job does not exist.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The principal of a request that carried no identity.
pub const ANONYMOUS: &str = "anonymous";

/// The team a deployment-wide admin submits to when it names none.
pub const DEFAULT_TEAM: &str = "default";

/// A role, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role (viewer, member or admin)"))
    }
}

/// The caller, as authenticated: its name and the other names it answers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The user or session ARN, the access key id, or `anonymous`.
    pub id: String,
    /// The role ARN behind an assumed-role session, and the like.
    pub aliases: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal::named(ANONYMOUS)
    }

    pub fn named(id: impl Into<String>) -> Principal {
        Principal {
            id: id.into(),
            aliases: Vec::new(),
        }
    }

    /// An IAM principal from its ARN. An STS assumed-role session
    /// (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`) also answers to its role's ARN
    /// (`arn:aws:iam::ACCOUNT:role/ROLE`), so grants can name the role.
    pub fn from_iam_arn(arn: &str) -> Principal {
        let mut p = Principal::named(arn);
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if let [_, partition, "sts", _, account, resource] = parts.as_slice() {
            if let Some(rest) = resource.strip_prefix("assumed-role/") {
                if let Some((role, _session)) = rest.rsplit_once('/') {
                    p.aliases
                        .push(format!("arn:{partition}:iam::{account}:role/{role}"));
                }
            }
        }
        p
    }

    pub fn is_anonymous(&self) -> bool {
        self.id == ANONYMOUS
    }

    /// Every name the principal answers to, its id first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Whether a grant's principal (a name or a `*` pattern) names this principal.
    pub fn matches(&self, pattern: &str) -> bool {
        self.names().any(|n| pattern_matches(pattern, n))
    }
}

/// `*` matches any run of characters (`/` and `:` too, as in IAM); everything else
/// matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// One grant: a principal (or pattern) and its role on a team, or `admin` on the
/// deployment (no team).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    pub role: Role,
}

/// The longest principal or pattern a grant may name (an IAM ARN is at most 2048).
pub const MAX_PRINCIPAL_LEN: usize = 2048;

impl Grant {
    /// A grant is whole: admin takes no team, viewer and member need one.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_principal(&self.principal)?;
        match (&self.team, self.role) {
            (Some(_), Role::Admin) => Err(FieldError::new(
                "team",
                "admin is a role on the whole deployment: grant it without a team",
            )),
            (None, Role::Viewer | Role::Member) => Err(FieldError::new(
                "team",
                format!("{} is a role on a team: name the team", self.role),
            )),
            (Some(t), _) => crate::ids::check_team("team", t),
            (None, Role::Admin) => Ok(()),
        }
    }
}

/// A principal or pattern: 1 to 2048 of the characters IAM ARNs and access key ids use,
/// plus `*`.
pub fn check_principal(p: &str) -> Result<(), FieldError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-:/*".contains(c);
    if p.is_empty() || p.len() > MAX_PRINCIPAL_LEN {
        return Err(FieldError::new(
            "principal",
            format!("must be 1 to {MAX_PRINCIPAL_LEN} characters"),
        ));
    }
    if let Some(c) = p.chars().find(|c| !ok(*c)) {
        return Err(FieldError::new(
            "principal",
            format!("{p:?}: character {c:?} is not allowed (an IAM ARN, an access key id or a pattern with *)"),
        ));
    }
    Ok(())
}

/// Why a submission has no team to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamChoice {
    /// The caller named a team it is not a member of.
    NotMember { team: String, role: Option<Role> },
    /// The caller is a member of several teams and named none.
    Ambiguous { teams: Vec<String> },
    /// The caller is a member of no team.
    NoTeam,
}

/// What one principal may do, resolved from the grants once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub principal: Principal,
    pub admin: bool,
    /// The principal's best role on each team it has one on.
    pub teams: BTreeMap<String, Role>,
}

impl Access {
    /// Resolve `principal` against the stored grants and the deployment's admins (names
    /// or patterns from the deployment's configuration).
    pub fn resolve(principal: Principal, grants: &[Grant], admins: &[String]) -> Access {
        let mut admin = admins.iter().any(|a| principal.matches(a));
        let mut teams = BTreeMap::new();
        for g in grants.iter().filter(|g| principal.matches(&g.principal)) {
            match &g.team {
                None => admin |= g.role == Role::Admin,
                Some(t) => {
                    let best = teams.entry(t.clone()).or_insert(g.role);
                    *best = (*best).max(g.role);
                }
            }
        }
        Access {
            principal,
            admin,
            teams,
        }
    }

    /// An admin with no grants, for the deployment's own functions.
    pub fn system(name: &str) -> Access {
        Access {
            principal: Principal::named(name),
            admin: true,
            teams: BTreeMap::new(),
        }
    }

    /// The caller's role on `team`, if any (admins are admins everywhere).
    pub fn role_on(&self, team: &str) -> Option<Role> {
        if self.admin {
            return Some(Role::Admin);
        }
        self.teams.get(team).copied()
    }

    /// Whether the caller may see the team's jobs.
    pub fn can_view(&self, team: &str) -> bool {
        self.role_on(team).is_some()
    }

    /// Whether the caller may submit to the team and change its jobs.
    pub fn can_act(&self, team: &str) -> bool {
        self.role_on(team).is_some_and(|r| r >= Role::Member)
    }

    /// The teams the caller may see; `None` for an admin (all of them).
    pub fn visible_teams(&self) -> Option<Vec<&str>> {
        (!self.admin).then(|| self.teams.keys().map(String::as_str).collect())
    }

    /// The teams where the caller is a member.
    pub fn member_teams(&self) -> Vec<&str> {
        self.teams
            .iter()
            .filter(|(_, r)| **r >= Role::Member)
            .map(|(t, _)| t.as_str())
            .collect()
    }

    /// The team a submission goes to: the one it names, where the caller must be a
    /// member; else the caller's only team (`default` for an admin).
    pub fn submission_team(&self, named: Option<&str>) -> Result<String, TeamChoice> {
        if let Some(team) = named {
            return if self.can_act(team) {
                Ok(team.to_string())
            } else {
                Err(TeamChoice::NotMember {
                    team: team.to_string(),
                    role: self.role_on(team),
                })
            };
        }
        if self.admin {
            return Ok(DEFAULT_TEAM.to_string());
        }
        match self.member_teams().as_slice() {
            [] => Err(TeamChoice::NoTeam),
            [one] => Ok(one.to_string()),
            many => Err(TeamChoice::Ambiguous {
                teams: many.iter().map(|t| t.to_string()).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(principal: &str, team: Option<&str>, role: Role) -> Grant {
        Grant {
            principal: principal.into(),
            team: team.map(String::from),
            role,
        }
    }

    #[test]
    fn patterns_match_like_iam_wildcards() {
        let role = "arn:aws:iam::123456789012:role/research-*";
        assert!(pattern_matches(
            role,
            "arn:aws:iam::123456789012:role/research-batch"
        ));
        assert!(!pattern_matches(
            role,
            "arn:aws:iam::123456789012:role/finance-batch"
        ));
        assert!(pattern_matches("*", "anything/at:all"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-b-y"));
        assert!(pattern_matches("AKID", "AKID"));
        assert!(!pattern_matches("AKID", "AKIDX"));
        assert!(!pattern_matches("", "x"));
    }

    #[test]
    fn an_assumed_role_session_answers_to_its_role() {
        let p =
            Principal::from_iam_arn("arn:aws:sts::123456789012:assumed-role/research-batch/alice");
        assert_eq!(
            p.aliases,
            vec!["arn:aws:iam::123456789012:role/research-batch"]
        );
        assert!(p.matches("arn:aws:iam::123456789012:role/research-*"));
        let user = Principal::from_iam_arn("arn:aws:iam::123456789012:user/bob");
        assert!(user.aliases.is_empty());
    }

    #[test]
    fn roles_resolve_to_the_best_grant_per_team() {
        let grants = [
            grant("AKIDA", Some("research"), Role::Viewer),
            grant("AKID*", Some("research"), Role::Member),
            grant("AKIDB", Some("finance"), Role::Viewer),
        ];
        let a = Access::resolve(Principal::named("AKIDA"), &grants, &[]);
        assert_eq!(a.role_on("research"), Some(Role::Member));
        assert!(!a.can_view("finance"));
        assert!(!a.admin);
        let b = Access::resolve(Principal::named("AKIDB"), &grants, &[]);
        assert!(b.can_view("finance") && !b.can_act("finance"));
        let admin = Access::resolve(Principal::anonymous(), &grants, &["anonymous".into()]);
        assert!(admin.can_act("anything"));
        assert_eq!(admin.visible_teams(), None);
    }

    #[test]
    fn a_submission_goes_to_the_named_or_only_team() {
        let grants = [
            grant("one", Some("research"), Role::Member),
            grant("two", Some("research"), Role::Member),
            grant("two", Some("finance"), Role::Member),
            grant("two", Some("audit"), Role::Viewer),
        ];
        let one = Access::resolve(Principal::named("one"), &grants, &[]);
        assert_eq!(one.submission_team(None), Ok("research".to_string()));
        assert_eq!(
            one.submission_team(Some("finance")),
            Err(TeamChoice::NotMember {
                team: "finance".into(),
                role: None
            })
        );
        let two = Access::resolve(Principal::named("two"), &grants, &[]);
        assert_eq!(
            two.submission_team(None),
            Err(TeamChoice::Ambiguous {
                teams: vec!["finance".into(), "research".into()]
            })
        );
        assert!(matches!(
            two.submission_team(Some("audit")),
            Err(TeamChoice::NotMember {
                role: Some(Role::Viewer),
                ..
            })
        ));
        let nobody = Access::resolve(Principal::anonymous(), &grants, &[]);
        assert_eq!(nobody.submission_team(None), Err(TeamChoice::NoTeam));
        let admin = Access::system("autoscaler");
        assert_eq!(admin.submission_team(None), Ok(DEFAULT_TEAM.to_string()));
    }

    #[test]
    fn grants_name_a_team_exactly_when_the_role_is_on_a_team() {
        assert!(grant("x", Some("research"), Role::Member)
            .validate()
            .is_ok());
        assert!(grant("x", None, Role::Admin).validate().is_ok());
        assert_eq!(
            grant("x", Some("t"), Role::Admin)
                .validate()
                .unwrap_err()
                .field,
            "team"
        );
        assert_eq!(
            grant("x", None, Role::Viewer).validate().unwrap_err().field,
            "team"
        );
        assert_eq!(
            grant("a b", None, Role::Admin)
                .validate()
                .unwrap_err()
                .field,
            "principal"
        );
    }
}
