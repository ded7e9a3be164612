//! Named resources: job definitions, job queues, compute environments and scheduling
//! policies. Each is one item, `R#<kind>` / `<name>` (job definitions:
//! `<name>#<revision, 8 digits>`), holding the resource as AWS Batch describes it (JSON),
//! so describing is a read and nothing is translated twice.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    JobDefinition,
    JobQueue,
    ComputeEnvironment,
    SchedulingPolicy,
    /// Batchplane's own: job templates rendered from events (`trigger`).
    JobTemplate,
    /// Batchplane's own: the containers (image and job role) pools run in, by key.
    Container,
}

impl ResourceKind {
    fn pk(self) -> &'static str {
        match self {
            ResourceKind::JobDefinition => "R#job-definition",
            ResourceKind::JobQueue => "R#job-queue",
            ResourceKind::ComputeEnvironment => "R#compute-environment",
            ResourceKind::SchedulingPolicy => "R#scheduling-policy",
            ResourceKind::JobTemplate => "R#job-template",
            ResourceKind::Container => "R#container",
        }
    }
    /// The resource type in its ARN.
    pub fn arn_type(self) -> &'static str {
        &self.pk()[2..]
    }
}

/// The sort key of one revision of a job definition.
pub fn revision_sk(name: &str, revision: u32) -> String {
    format!("{name}#{revision:08}")
}

impl Store {
    /// Store a resource document. `create`: only if the name is free (false if taken);
    /// otherwise only if it exists (false if not).
    pub async fn put_resource(
        &self,
        kind: ResourceKind,
        sk: &str,
        doc: &Value,
        create: bool,
    ) -> Result<bool, StoreError> {
        let mut it = key(kind.pk().to_string(), sk.to_string());
        it.insert("doc".into(), s(doc.to_string()));
        Ok(send_if(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(it))
                .condition_expression(if create {
                    "attribute_not_exists(pk)"
                } else {
                    "attribute_exists(pk)"
                }),
        )
        .await?
        .is_some())
    }

    pub async fn get_resource(
        &self,
        kind: ResourceKind,
        sk: &str,
    ) -> Result<Option<Value>, StoreError> {
        match self
            .read_item(key(kind.pk().to_string(), sk.to_string()))
            .await?
        {
            Some(it) => Ok(Some(doc_of(&it)?)),
            None => Ok(None),
        }
    }

    /// Every resource of a kind whose sort key starts with `prefix`, in key order.
    pub async fn list_resources(
        &self,
        kind: ResourceKind,
        prefix: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .ddb
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(kind.pk()));
            q = if prefix.is_empty() {
                q.key_condition_expression("pk = :pk")
            } else {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":p", s(prefix))
            };
            let page = send(
                q.consistent_read(true)
                    .set_exclusive_start_key(start.take()),
            )
            .await?;
            for it in page.items() {
                if it.contains_key("doc") {
                    out.push(doc_of(it)?);
                }
            }
            match page.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        Ok(out)
    }

    pub async fn delete_resource(&self, kind: ResourceKind, sk: &str) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(kind.pk().to_string(), sk.to_string())))
                .condition_expression("attribute_exists(pk)"),
        )
        .await?
        .is_some())
    }

    /// Remember a container under its key, for whoever starts its pool's workers. The
    /// key is derived from the container, so writers racing agree; a key already taken
    /// by another container (a hash collision) is refused.
    pub async fn put_container(
        &self,
        c: &crate::domain::containers::Container,
    ) -> Result<(), StoreError> {
        let key = c.key();
        let doc = serde_json::to_value(c).unwrap_or_default();
        if self
            .put_resource(ResourceKind::Container, &key, &doc, true)
            .await?
        {
            return Ok(());
        }
        match self.container(&key).await? {
            Some(stored) if &stored == c => Ok(()),
            other => Err(StoreError::Malformed(super::item::Malformed {
                key: format!("R#container/{key}"),
                problem: format!("the key already names {other:?}, not {c:?}"),
            })),
        }
    }

    /// The container a pool's name carries the key of.
    pub async fn container(
        &self,
        key: &str,
    ) -> Result<Option<crate::domain::containers::Container>, StoreError> {
        match self.get_resource(ResourceKind::Container, key).await? {
            Some(doc) => serde_json::from_value(doc).map(Some).map_err(|e| {
                StoreError::Malformed(super::item::Malformed {
                    key: format!("R#container/{key}"),
                    problem: e.to_string(),
                })
            }),
            None => Ok(None),
        }
    }

    /// The next revision number of a job definition (1, 2, …; never reused).
    pub async fn next_revision(&self, name: &str) -> Result<u32, StoreError> {
        let out = send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(
                    "R#job-definition-revision".to_string(),
                    name.to_string(),
                )))
                .update_expression("ADD rev :one")
                .expression_attribute_values(":one", n(1))
                .return_values(ReturnValue::UpdatedNew),
        )
        .await?;
        match out.attributes().and_then(|a| a.get("rev")) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
                StoreError::Malformed(Malformed {
                    key: format!("job definition revision counter {name}"),
                    problem: format!("rev {v:?} is not a number"),
                })
            }),
            _ => Err(StoreError::Malformed(Malformed {
                key: format!("job definition revision counter {name}"),
                problem: "no rev returned".into(),
            })),
        }
    }
}

fn doc_of(it: &Item) -> Result<Value, StoreError> {
    let r = Reader::new(it);
    let text = r.req_s("doc")?;
    serde_json::from_str(&text).map_err(|e| {
        StoreError::Malformed(Malformed {
            key: format!("{:?}/{:?}", it.get("pk"), it.get("sk")),
            problem: format!("doc is not JSON: {e}"),
        })
    })
}
