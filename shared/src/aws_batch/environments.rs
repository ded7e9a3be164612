//! Compute environments: Batchplane's managed capacity under AWS Batch's names.

use crate::api::{ApiError, Service};
use crate::domain::access::Access;
use crate::store::registry::ResourceKind;
use serde_json::{json, Value};

use super::{arn::*, wire::*};

impl Service {
    // ---- compute environments ----

    pub(super) fn check_compute_environment(doc: &Value) -> Result<(), ApiError> {
        match opt_str(doc, "type") {
            Some("MANAGED") | Some("UNMANAGED") => {}
            other => {
                return Err(client(format!(
                    "type {other:?} must be MANAGED or UNMANAGED"
                )))
            }
        }
        if let Some(st) = opt_str(doc, "state") {
            if st != "ENABLED" && st != "DISABLED" {
                return Err(client(format!("state {st:?} must be ENABLED or DISABLED")));
            }
        }
        let Some(cr) = doc.get("computeResources").filter(|v| !v.is_null()) else {
            if doc["type"] == "MANAGED" {
                return Err(client(
                    "computeResources is required for a MANAGED compute environment",
                ));
            }
            return Ok(());
        };
        match opt_str(cr, "type") {
            Some("EC2") | Some("SPOT") | None => {}
            Some(other) => {
                return Err(client(format!(
                    "computeResources.type {other:?} must be EC2 or SPOT (Batchplane runs on EC2 nodes)"
                )))
            }
        }
        if let Some(a) = opt_str(cr, "allocationStrategy") {
            if ![
                "BEST_FIT",
                "BEST_FIT_PROGRESSIVE",
                "SPOT_CAPACITY_OPTIMIZED",
                "SPOT_PRICE_CAPACITY_OPTIMIZED",
            ]
            .contains(&a)
            {
                return Err(client(format!("computeResources.allocationStrategy {a:?} is not one of BEST_FIT, BEST_FIT_PROGRESSIVE, SPOT_CAPACITY_OPTIMIZED, SPOT_PRICE_CAPACITY_OPTIMIZED")));
            }
        }
        let get = |f: &str| {
            opt_int(
                cr,
                f,
                &format!("computeResources.{f}"),
                0,
                i64::from(i32::MAX),
            )
        };
        let (min, max, desired) = (get("minvCpus")?, get("maxvCpus")?, get("desiredvCpus")?);
        if doc["type"] == "MANAGED" && max.is_none() {
            return Err(client("computeResources.maxvCpus is required"));
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                return Err(client(format!(
                    "computeResources.minvCpus {lo} is above maxvCpus {hi}"
                )));
            }
        }
        if let (Some(d), Some(hi)) = (desired, max) {
            if d > hi {
                return Err(client(format!(
                    "computeResources.desiredvCpus {d} is above maxvCpus {hi}"
                )));
            }
        }
        Ok(())
    }

    pub async fn create_compute_environment(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "create compute environments")?;
        let name = checked_name(input, "computeEnvironmentName")?;
        let mut doc = input.clone();
        if doc.get("state").is_none() {
            doc["state"] = json!("ENABLED");
        }
        Self::check_compute_environment(&doc)?;
        let ce_arn = arn("compute-environment", &name);
        doc["computeEnvironmentArn"] = json!(ce_arn);
        doc["status"] = json!("VALID");
        doc["statusReason"] = json!("ComputeEnvironment Healthy");
        self.create_new(ResourceKind::ComputeEnvironment, &name, &doc)
            .await?;
        Ok(json!({"computeEnvironmentName": name, "computeEnvironmentArn": ce_arn}))
    }

    pub async fn describe_compute_environments(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        self.describe(
            who,
            ResourceKind::ComputeEnvironment,
            input,
            "computeEnvironments",
            "computeEnvironments",
        )
        .await
    }

    pub async fn update_compute_environment(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "update compute environments")?;
        let (name, mut doc) = self
            .existing(
                ResourceKind::ComputeEnvironment,
                input,
                "computeEnvironment",
            )
            .await?;
        if let Some(st) = input.get("state") {
            doc["state"] = st.clone();
        }
        if let Some(Value::Object(cr)) = input.get("computeResources") {
            for (k, v) in cr {
                doc["computeResources"][k] = v.clone();
            }
        }
        if let Some(r) = input.get("serviceRole") {
            doc["serviceRole"] = r.clone();
        }
        Self::check_compute_environment(&doc)?;
        self.store
            .put_resource(ResourceKind::ComputeEnvironment, name, &doc, false)
            .await?;
        Ok(
            json!({"computeEnvironmentName": name, "computeEnvironmentArn": doc["computeEnvironmentArn"]}),
        )
    }

    pub async fn delete_compute_environment(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        Self::require_admin(who, "delete compute environments")?;
        let (name, doc) = self
            .existing(
                ResourceKind::ComputeEnvironment,
                input,
                "computeEnvironment",
            )
            .await?;
        if doc["state"] != "DISABLED" {
            return Err(client(format!(
                "compute environment {name} must be DISABLED before it is deleted"
            )));
        }
        let queues = self
            .store
            .list_resources(ResourceKind::JobQueue, "")
            .await?;
        if let Some(q) = queues.iter().find(|q| {
            q["computeEnvironmentOrder"].as_array().is_some_and(|o| {
                o.iter()
                    .any(|e| e["computeEnvironment"].as_str().map(name_of) == Some(name))
            })
        }) {
            return Err(client(format!(
                "compute environment {name} is still used by job queue {}",
                q["jobQueueName"].as_str().unwrap_or("?")
            )));
        }
        self.store
            .delete_resource(ResourceKind::ComputeEnvironment, name)
            .await?;
        Ok(json!({}))
    }
}
