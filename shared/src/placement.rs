//! The placement operations, independent of how they are called: the placement Lambda
//! (invoked by the launcher, or on a schedule to sweep) and the admin API both come
//! here. Team quotas and cluster registrations are validated field by field before
//! anything is written.

use crate::api::{ApiError, Need, Service};
use crate::domain::access::Access;
use crate::domain::placement::{check_label, PlacementRequest, Resources};
use crate::store::placement::{ClusterRecord, ClusterRegistration, TeamRecord};
use crate::store::{now_ms, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// What the placement function is invoked with: `{"action": "place", ...request}`,
/// `{"action": "release", "reservation_id", "slots"}`, `{"action": "renew", ...}`,
/// `{"action": "sweep"}`; an EventBridge scheduled event also means sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PlacementCall {
    Place(PlacementRequest),
    Release {
        reservation_id: String,
        /// The slots to release; all live ones when absent.
        #[serde(default)]
        slots: Option<Vec<u32>>,
    },
    Renew {
        reservation_id: String,
        slot: u32,
    },
    Sweep,
}

impl PlacementCall {
    /// Read an invocation payload: a call, or a scheduled event (sweep).
    pub fn from_event(event: &Value) -> Result<PlacementCall, ApiError> {
        if event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
            return Ok(PlacementCall::Sweep);
        }
        serde_json::from_value(event.clone()).map_err(|e| {
            ApiError::bad_request(
                format!("placement call: {e}"),
                json!({"expected": "{\"action\": \"place\"|\"release\"|\"renew\"|\"sweep\", ...}"}),
            )
        })
    }
}

/// Carry out one placement call.
pub async fn handle(
    store: &Store,
    lease: Duration,
    call: PlacementCall,
) -> Result<Value, ApiError> {
    match call {
        PlacementCall::Place(request) => {
            request.validate().map_err(|e| {
                ApiError::bad_request(
                    e.to_string(),
                    json!({"request_id": request.request_id, "field": e.field}),
                )
            })?;
            let out = store.place(&request, lease).await?;
            if let crate::store::placement::PlacementOutcome::Refused { .. } = &out {
                crate::metrics::emit(
                    &[("Team", &request.team)],
                    &[("PlacementRefusals", crate::metrics::Unit::Count, vec![1.0])],
                );
            }
            Ok(serde_json::to_value(out).unwrap_or_default())
        }
        PlacementCall::Release {
            reservation_id,
            slots,
        } => {
            let released = store
                .release_slots(&reservation_id, slots.as_deref(), None)
                .await?;
            Ok(json!({"reservation_id": reservation_id, "released": released}))
        }
        PlacementCall::Renew {
            reservation_id,
            slot,
        } => {
            let until = now_ms() + lease.as_millis() as i64;
            let live = store.renew_slot(&reservation_id, slot, until).await?;
            Ok(
                json!({"reservation_id": reservation_id, "slot": slot, "live": live,
                "lease_expires_at": live.then_some(until)}),
            )
        }
        PlacementCall::Sweep => {
            let swept = store.sweep_reservations(now_ms()).await?;
            Ok(json!({"swept": swept}))
        }
    }
}

/// A team's quota as the admin API takes it: `{"quota": {"cpu", "memory_mib", "gpu"}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    pub quota: Resources,
}

/// A cluster registration as the admin API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `eks` (default) or `local`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub eks_cluster_name: Option<String>,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub certificate_authority: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub capacity: Resources,
}

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &str,
) -> Result<T, ApiError> {
    serde_json::from_str(body).map_err(|e| {
        ApiError::bad_request(
            format!("{what}: {e}"),
            json!({"line": e.line(), "column": e.column()}),
        )
    })
}

fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    check_label(field, value, 40)
        .map_err(|e| ApiError::bad_request(e.to_string(), json!({"field": e.field})))
}

/// The team name rule of job specs (teams are named there first).
fn check_team(team: &str) -> Result<(), ApiError> {
    crate::domain::ids::check_team("team", team)
        .map_err(|e| ApiError::bad_request(e.to_string(), json!({"field": "team"})).caused_by(e))
}

impl ClusterSpec {
    fn registration(self, name: &str) -> Result<ClusterRegistration, ApiError> {
        let kind = self.kind.unwrap_or_else(|| "eks".into());
        let bad = |field: &str, m: String| ApiError::bad_request(m, json!({"field": field}));
        match kind.as_str() {
            "eks" => {
                if !self.endpoint.starts_with("https://") {
                    return Err(bad(
                        "endpoint",
                        format!(
                            "endpoint: {:?} must be the cluster's https:// API server URL",
                            self.endpoint
                        ),
                    ));
                }
                if self.region.is_empty() {
                    return Err(bad("region", "region: required for an eks cluster".into()));
                }
            }
            "local" => {}
            other => {
                return Err(bad(
                    "kind",
                    format!("kind: {other:?} must be \"eks\" or \"local\""),
                ))
            }
        }
        if let Some(ns) = &self.namespace {
            check_label("namespace", ns, 63).map_err(|e| bad("namespace", e.to_string()))?;
        }
        Ok(ClusterRegistration {
            kind,
            region: self.region,
            eks_cluster_name: self.eks_cluster_name.unwrap_or_else(|| name.to_string()),
            endpoint: self.endpoint,
            certificate_authority: self.certificate_authority,
            namespace: self.namespace.unwrap_or_else(|| "batchplane".into()),
            capacity: self.capacity,
        })
    }
}

fn store_error_for_missing(e: StoreError, what: String) -> ApiError {
    if e.is_condition_failed() {
        ApiError::not_found(what)
    } else {
        e.into()
    }
}

impl Service {
    /// Create a team or replace its quota (`PUT /v1/teams/{team}`).
    pub async fn set_team(
        &self,
        who: &Access,
        team: &str,
        body: &str,
    ) -> Result<TeamRecord, ApiError> {
        Self::require_admin(who, "set team quotas")?;
        check_team(team)?;
        let spec: TeamSpec = parse_body("team", body)?;
        self.store.set_team_quota(team, &spec.quota).await?;
        self.team(who, team).await
    }

    /// One team's quota, usage, workers per cluster and last refusals.
    pub async fn team(&self, who: &Access, team: &str) -> Result<TeamRecord, ApiError> {
        Self::require_on_team(who, team, Need::View, || {
            ApiError::not_found(format!("team {team:?} has no quota"))
        })?;
        self.store
            .team(team)
            .await?
            .filter(|t| t.quota_set)
            .ok_or_else(|| ApiError::not_found(format!("team {team:?} has no quota")))
    }

    /// The teams the caller may see.
    pub async fn teams(&self, who: &Access) -> Result<Vec<TeamRecord>, ApiError> {
        let mut teams = self.store.teams().await?;
        teams.retain(|t| who.can_view(&t.quota.team));
        Ok(teams)
    }

    /// Register or update a cluster (`PUT /v1/clusters/{name}`).
    pub async fn register_cluster(
        &self,
        who: &Access,
        name: &str,
        body: &str,
    ) -> Result<ClusterRecord, ApiError> {
        Self::require_admin(who, "register clusters")?;
        check_name("name", name)?;
        let spec: ClusterSpec = parse_body("cluster", body)?;
        let mut reg = spec.registration(name)?;
        if reg.kind == "eks" {
            reg = self.verified_with_eks(reg).await?;
        }
        self.store.register_cluster(name, &reg).await?;
        self.cluster(who, name).await
    }

    /// The registration checked against what EKS reports for its cluster name (see
    /// [`crate::aws::eks`]).
    async fn verified_with_eks(
        &self,
        reg: ClusterRegistration,
    ) -> Result<ClusterRegistration, ApiError> {
        use crate::aws::eks::{describe_cluster, verified, EksError};
        let endpoints = crate::aws::Endpoints {
            eks: self.eks_endpoint.clone(),
            ..Default::default()
        };
        let reported = match describe_cluster(&endpoints, &reg.region, &reg.eks_cluster_name).await
        {
            Ok(r) => r,
            Err(e @ EksError::NoSuchCluster { .. }) => {
                return Err(ApiError::bad_request(
                    format!("eks_cluster_name: {e}"),
                    json!({"field": "eks_cluster_name"}),
                )
                .caused_by(e))
            }
            Err(e) => {
                return Err(ApiError::new(
                    crate::api::ErrorKind::Busy,
                    "EksUnavailable",
                    e.to_string(),
                    Value::Null,
                )
                .caused_by(e))
            }
        };
        verified(reg, &reported).map_err(|e| {
            ApiError::bad_request(format!("cluster: {e}"), json!({"field": e.field})).caused_by(e)
        })
    }

    pub async fn cluster(&self, who: &Access, name: &str) -> Result<ClusterRecord, ApiError> {
        Self::require_admin(who, "look at clusters")?;
        self.store
            .clusters()
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}")))
    }

    pub async fn clusters(&self, who: &Access) -> Result<Vec<ClusterRecord>, ApiError> {
        Self::require_admin(who, "look at clusters")?;
        Ok(self.store.clusters().await?)
    }

    /// Enable or disable a cluster: a disabled one gets no new placements.
    pub async fn set_cluster_enabled(
        &self,
        who: &Access,
        name: &str,
        enabled: bool,
    ) -> Result<ClusterRecord, ApiError> {
        Self::require_admin(who, "enable or disable clusters")?;
        self.store
            .set_cluster_enabled(name, enabled)
            .await
            .map_err(|e| store_error_for_missing(e, format!("no cluster named {name:?}")))?;
        self.cluster(who, name).await
    }

    /// Launch configs marked capacity-limited now (`GET /v1/capacity`).
    pub async fn capacity_marks(
        &self,
        who: &Access,
    ) -> Result<Vec<crate::store::capacity::CapacityMark>, ApiError> {
        Self::require_admin(who, "look at capacity marks")?;
        Ok(self.store.capacity_marks(now_ms()).await?)
    }

    /// Store a job template (`PUT /v1/templates/{name}`): a job spec, YAML or JSON, with
    /// `{{ $.path }}` references into the event that will trigger it. References are
    /// checked now; the rendered spec is checked like any submission when it is used.
    pub async fn put_template(
        &self,
        who: &Access,
        name: &str,
        body: &str,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "store job templates")?;
        check_name("name", name)?;
        let template: Value = crate::domain::limits::yaml_from_str(body).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ApiError::bad_request(
                format!("template: {e}"),
                json!({"line": line, "column": column}),
            )
        })?;
        if !template.is_object() {
            return Err(ApiError::bad_request(
                "template: a job spec (a mapping with name and tasks) is expected",
                json!({}),
            ));
        }
        crate::domain::template::check(&template)
            .map_err(|e| ApiError::bad_request(format!("template {e}"), json!({"field": e.at})))?;
        crate::domain::limits::check_document_size(
            "",
            &template,
            crate::domain::limits::MAX_DOCUMENT_BYTES,
        )
        .map_err(|e| {
            ApiError::bad_request(format!("template: {e}"), json!({"field": e.field})).caused_by(e)
        })?;
        // The team its jobs run as is fixed here, by the admin storing it: an event
        // cannot choose it.
        let team = match template.get("team") {
            None => crate::domain::access::DEFAULT_TEAM.to_string(),
            Some(Value::String(t)) if !t.contains("{{") => {
                check_team(t)?;
                t.clone()
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "template field `team`: must be a team's name, not taken from the event",
                    json!({"field": "team"}),
                ))
            }
        };
        let doc = json!({"name": name, "team": team, "template": template, "updated_at": now_ms()});
        let kind = crate::store::registry::ResourceKind::JobTemplate;
        if !self.store.put_resource(kind, name, &doc, true).await? {
            self.store.put_resource(kind, name, &doc, false).await?;
        }
        Ok(doc)
    }

    pub async fn template(&self, who: &Access, name: &str) -> Result<Value, ApiError> {
        Self::require_admin(who, "look at job templates")?;
        self.stored_template(name).await
    }

    async fn stored_template(&self, name: &str) -> Result<Value, ApiError> {
        self.store
            .get_resource(crate::store::registry::ResourceKind::JobTemplate, name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job template {name}")))
    }

    pub async fn templates(&self, who: &Access) -> Result<Vec<Value>, ApiError> {
        Self::require_admin(who, "look at job templates")?;
        Ok(self
            .store
            .list_resources(crate::store::registry::ResourceKind::JobTemplate, "")
            .await?)
    }

    /// Render a template against an event and submit the job, once per event id (a
    /// redelivered event gets the job the first delivery submitted).
    /// The job goes to the template's team, which `who` must be a member of (the
    /// trigger function is an admin).
    pub async fn submit_from_template(
        &self,
        who: &Access,
        name: &str,
        event: &Value,
    ) -> Result<crate::api::Submitted, ApiError> {
        let doc = self.stored_template(name).await?;
        let team = doc["team"]
            .as_str()
            .unwrap_or(crate::domain::access::DEFAULT_TEAM)
            .to_string();
        Self::require_on_team(who, &team, Need::Act, || {
            ApiError::not_found(format!("no job template {name}"))
        })?;
        let event_id = event["id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "event: an EventBridge event with an `id` is expected",
                    json!({"field": "id"}),
                )
            })?;
        let mut spec = crate::domain::template::render(&doc["template"], event).map_err(|e| {
            ApiError::bad_request(
                format!("template {name}: {e}"),
                json!({"template": name, "field": e.at, "event_id": event_id}),
            )
        })?;
        spec["team"] = json!(team);
        self.submit_job(who, &spec.to_string(), Some(&format!("event:{event_id}")))
            .await
    }

    /// The autoscaler's settings in force: those stored, else the deployment's, else
    /// the defaults (what the autoscaler's tick and the submission checks use).
    pub async fn autoscaler_settings(
        &self,
        who: &Access,
    ) -> Result<crate::scaling::Settings, ApiError> {
        Self::require_admin(who, "look at the autoscaler's settings")?;
        crate::scaling::settings_in_force(&self.store)
            .await
            .map_err(|e| match e {
                crate::scaling::AutoscaleError::Store(e) => ApiError::from(e),
                other => ApiError::new(
                    crate::api::ErrorKind::Internal,
                    "InvalidSettings",
                    other.to_string(),
                    json!({}),
                ),
            })
    }

    /// Replace the autoscaler's settings (`PUT /v1/autoscaler/settings`); bad settings
    /// are refused with the field named, and the stored ones stay.
    pub async fn set_autoscaler_settings(
        &self,
        who: &Access,
        body: &str,
    ) -> Result<crate::scaling::Settings, ApiError> {
        Self::require_admin(who, "change the autoscaler's settings")?;
        let settings: crate::scaling::Settings = parse_body("autoscaler settings", body)?;
        settings.check().map_err(|e| {
            ApiError::bad_request(
                format!("autoscaler settings: {e}"),
                json!({"field": e.field}),
            )
            .caused_by(e)
        })?;
        self.store.put_autoscaler_settings(&settings).await?;
        Ok(settings)
    }

    /// The newest autoscaler decisions, newest first.
    pub async fn autoscaler_history(
        &self,
        who: &Access,
        limit: usize,
    ) -> Result<Vec<crate::scaling::Decision>, ApiError> {
        Self::require_admin(who, "look at the autoscaler's history")?;
        Ok(self.store.decisions(limit).await?)
    }

    /// A placement call through the API (`POST /v1/placements`).
    pub async fn placement(&self, who: &Access, body: &str) -> Result<Value, ApiError> {
        Self::require_admin(who, "call placement")?;
        let call: PlacementCall = parse_body("placement call", body)?;
        handle(&self.store, self.reservation_lease, call).await
    }
}

/// What the placement refusals for a task's team and pool say, for `explain`.
pub fn refusal_for(team: Option<&TeamRecord>, pool: &str) -> Option<(String, String, i64)> {
    let r = team?.refusals.get(pool)?;
    Some((r.refusal.code.clone(), r.refusal.reason.clone(), r.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_from_their_json_and_schedules_mean_sweep() {
        let call = PlacementCall::from_event(&json!({
            "action": "place", "request_id": "r1", "team": "research", "pool": "default",
            "cpu": 2, "memory_mib": 8192, "workers": 3
        }))
        .unwrap();
        assert!(matches!(call, PlacementCall::Place(r) if r.workers == 3 && r.cpu == 2.0));
        let sched = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(
            PlacementCall::from_event(&sched).unwrap(),
            PlacementCall::Sweep
        );
        let bad = PlacementCall::from_event(&json!({"action": "grow"})).unwrap_err();
        assert!(
            bad.message.contains("unknown variant `grow`"),
            "{}",
            bad.message
        );
    }

    #[test]
    fn cluster_specs_are_checked_by_field() {
        let spec: ClusterSpec = serde_json::from_value(json!({
            "endpoint": "http://x", "region": "us-east-1", "capacity": {"cpu": 64, "memory_mib": 1024}
        }))
        .unwrap();
        let e = spec.registration("c1").unwrap_err();
        assert_eq!(e.details["field"], "endpoint");
        let spec: ClusterSpec = serde_json::from_value(json!({
            "endpoint": "https://abc.eks.amazonaws.com", "region": "us-east-1",
            "capacity": {"cpu": 64, "memory_mib": 1024, "gpu": {"a100": 8}}
        }))
        .unwrap();
        let reg = spec.registration("c1").unwrap();
        assert_eq!(reg.eks_cluster_name, "c1");
        assert_eq!(reg.namespace, "batchplane");
        assert_eq!(reg.capacity.gpus["a100"], 8);
        let e = serde_json::from_value::<ClusterSpec>(json!({
            "capacity": {"cpu": 1, "memory_mib": 1, "gpu": {"A100": 1}}
        }))
        .unwrap_err();
        assert!(e.to_string().contains("gpu: \"A100\""), "{e}");
    }
}
