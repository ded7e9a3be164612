//! Scheduling policies: fair-share weights per share identifier.

use crate::api::{ApiError, Service};
use crate::domain::access::Access;
use crate::store::registry::ResourceKind;
use serde_json::{json, Value};

use super::{arn::*, wire::*};

impl Service {
    // ---- scheduling policies ----

    pub(super) fn check_fairshare(doc: &Value) -> Result<(), ApiError> {
        if let Some(list) = doc["fairsharePolicy"]["shareDistribution"].as_array() {
            for (i, s) in list.iter().enumerate() {
                if opt_str(s, "shareIdentifier").is_none() {
                    return Err(client(format!(
                        "fairsharePolicy.shareDistribution[{i}].shareIdentifier is required"
                    )));
                }
                if let Some(w) = s.get("weightFactor").and_then(Value::as_f64) {
                    if !(0.0001..=999.9999).contains(&w) {
                        return Err(client(format!(
                            "fairsharePolicy.shareDistribution[{i}].weightFactor {w} must be 0.0001 to 999.9999"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn create_scheduling_policy(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "create scheduling policies")?;
        let name = checked_name(input, "name")?;
        Self::check_fairshare(input)?;
        let policy_arn = arn("scheduling-policy", &name);
        let mut doc = input.clone();
        doc["arn"] = json!(policy_arn);
        self.create_new(ResourceKind::SchedulingPolicy, &name, &doc)
            .await?;
        Ok(json!({"name": name, "arn": policy_arn}))
    }

    pub async fn describe_scheduling_policies(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        if !Self::sees_shared(who) {
            return Ok(json!({"schedulingPolicies": []}));
        }
        let mut found = Vec::new();
        for a in input["arns"].as_array().cloned().unwrap_or_default() {
            if let Some(d) = self
                .store
                .get_resource(
                    ResourceKind::SchedulingPolicy,
                    name_of(a.as_str().unwrap_or("")),
                )
                .await?
            {
                found.push(d);
            }
        }
        Ok(json!({"schedulingPolicies": found}))
    }

    pub async fn list_scheduling_policies(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        if !Self::sees_shared(who) {
            return Ok(json!({"schedulingPolicies": []}));
        }
        let all = self
            .store
            .list_resources(ResourceKind::SchedulingPolicy, "")
            .await?;
        let arns: Vec<Value> = all.iter().map(|d| json!({"arn": d["arn"]})).collect();
        let (page, next) = paginate(arns, input)?;
        Ok(json!({"schedulingPolicies": page, "nextToken": next}))
    }

    pub async fn update_scheduling_policy(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "update scheduling policies")?;
        let (name, mut doc) = self
            .existing(ResourceKind::SchedulingPolicy, input, "arn")
            .await?;
        if let Some(f) = input.get("fairsharePolicy") {
            doc["fairsharePolicy"] = f.clone();
        }
        Self::check_fairshare(&doc)?;
        self.store
            .put_resource(ResourceKind::SchedulingPolicy, name, &doc, false)
            .await?;
        Ok(json!({}))
    }

    pub async fn delete_scheduling_policy(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "delete scheduling policies")?;
        let reference = req_str(input, "arn")?;
        if !self
            .store
            .delete_resource(ResourceKind::SchedulingPolicy, name_of(reference))
            .await?
        {
            return Err(client(format!(
                "scheduling policy {reference} does not exist"
            )));
        }
        Ok(json!({}))
    }
}
