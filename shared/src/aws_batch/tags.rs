//! TagResource, UntagResource and ListTagsForResource over every resource kind.

use crate::api::{ApiError, Service};
use crate::store::registry::{revision_sk, ResourceKind};
use serde_json::{json, Value};

use super::{arn::*, wire::*};

impl Service {
    // ---- tags ----

    pub(super) fn tag_target(resource_arn: &str) -> Result<(ResourceKind, String), ApiError> {
        let tail = resource_arn.rsplit(':').next().unwrap_or("");
        let (kind, name) = tail
            .split_once('/')
            .ok_or_else(|| client(format!("resourceArn {resource_arn:?} is not a Batch ARN")))?;
        let kind = match kind {
            "job-definition" => ResourceKind::JobDefinition,
            "job-queue" => ResourceKind::JobQueue,
            "compute-environment" => ResourceKind::ComputeEnvironment,
            "scheduling-policy" => ResourceKind::SchedulingPolicy,
            "job" => {
                return Err(client(
                    "jobs are tagged when submitted (SubmitJob tags); their tags cannot change afterwards",
                ))
            }
            other => return Err(client(format!("resourceArn: unknown resource type {other:?}"))),
        };
        let sk = if kind == ResourceKind::JobDefinition {
            // job-definition/<name>:<rev>
            let (n, rev) = resource_arn
                .rsplit_once('/')
                .and_then(|(_, t)| t.rsplit_once(':'))
                .ok_or_else(|| client("resourceArn: a job definition ARN ends in name:revision"))?;
            revision_sk(n, rev.parse().unwrap_or(0))
        } else {
            name.to_string()
        };
        Ok((kind, sk))
    }

    pub async fn tag_resource(&self, resource_arn: &str, input: &Value) -> Result<Value, ApiError> {
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let mut doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        merge_tags(&mut doc, &string_map(input.get("tags"), "tags")?);
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn untag_resource(
        &self,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<Value, ApiError> {
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let mut doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        if let Some(Value::Object(t)) = doc.get_mut("tags") {
            for k in keys {
                t.remove(k);
            }
        }
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn list_tags_for_resource(&self, resource_arn: &str) -> Result<Value, ApiError> {
        if let Some(id) =
            resource_arn.strip_prefix(&format!("{}/", arn("job", "").trim_end_matches('/')))
        {
            let job = self
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| client(format!("job {id} does not exist")))?;
            let tags = job.array.map(|a| a.tags).unwrap_or_default();
            return Ok(json!({"tags": tags}));
        }
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(|| client(format!("resource {resource_arn} does not exist")))?;
        Ok(json!({"tags": doc.get("tags").cloned().unwrap_or(json!({}))}))
    }
}
