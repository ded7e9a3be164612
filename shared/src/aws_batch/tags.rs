//! TagResource, UntagResource and ListTagsForResource over every resource kind.

use crate::api::{ApiError, Need, Service};
use crate::domain::access::Access;
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

    /// The resource a tag operation names, if the caller may see it (`Need::View`) or
    /// change it (`Need::Act`): a job definition by its team's roles, the shared
    /// resources by the admin role.
    async fn tag_resource_for(
        &self,
        who: &Access,
        resource_arn: &str,
        need: Need,
    ) -> Result<(ResourceKind, String, Value), ApiError> {
        let (kind, sk) = Self::tag_target(resource_arn)?;
        let missing = || client(format!("resource {resource_arn} does not exist"));
        let doc = self
            .store
            .get_resource(kind, &sk)
            .await?
            .ok_or_else(missing)?;
        match (kind, need) {
            (ResourceKind::JobDefinition, _) => Self::require_on_team(
                who,
                super::definitions::definition_team(&doc),
                need,
                missing,
            )?,
            (_, Need::View) if !Self::sees_shared(who) => return Err(missing()),
            (_, Need::View) => {}
            (_, Need::Act) => Self::require_admin(
                who,
                "tag job queues, compute environments or scheduling policies",
            )?,
        }
        Ok((kind, sk, doc))
    }

    pub async fn tag_resource(
        &self,
        who: &Access,
        resource_arn: &str,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let (kind, sk, mut doc) = self.tag_resource_for(who, resource_arn, Need::Act).await?;
        let tags = string_map(input.get("tags"), "tags")?;
        if tags.contains_key(super::definitions::TEAM_TAG) {
            return Err(client(format!(
                "tags.{}: the team a resource belongs to is set when it is registered",
                super::definitions::TEAM_TAG
            )));
        }
        merge_tags(&mut doc, &tags);
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn untag_resource(
        &self,
        who: &Access,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<Value, ApiError> {
        let (kind, sk, mut doc) = self.tag_resource_for(who, resource_arn, Need::Act).await?;
        if keys.iter().any(|k| k == super::definitions::TEAM_TAG) {
            return Err(client(format!(
                "tagKeys: {} names the resource's team and cannot be removed",
                super::definitions::TEAM_TAG
            )));
        }
        if let Some(Value::Object(t)) = doc.get_mut("tags") {
            for k in keys {
                t.remove(k);
            }
        }
        self.store.put_resource(kind, &sk, &doc, false).await?;
        Ok(json!({}))
    }

    pub async fn list_tags_for_resource(
        &self,
        who: &Access,
        resource_arn: &str,
    ) -> Result<Value, ApiError> {
        if let Some(id) =
            resource_arn.strip_prefix(&format!("{}/", arn("job", "").trim_end_matches('/')))
        {
            let job = self
                .store
                .get_job(id)
                .await?
                .filter(|j| who.can_view(&j.team))
                .ok_or_else(|| client(format!("job {id} does not exist")))?;
            let tags = job.array.map(|a| a.tags).unwrap_or_default();
            return Ok(json!({"tags": tags}));
        }
        let (_, _, doc) = self.tag_resource_for(who, resource_arn, Need::View).await?;
        Ok(json!({"tags": doc.get("tags").cloned().unwrap_or(json!({}))}))
    }
}
