//! The table itself: its definition (keys, indexes, stream), for the local stack and
//! tests (in AWS the SAM template owns it), and the calls that size or remove it. The
//! items it holds are listed in [`super::item`].

use super::classify;
use super::item::*;
use super::{Store, StoreError};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use std::time::Duration;

impl Store {
    /// Create the table (on-demand, stream with both images) and wait until it is
    /// active. Used by the local stack and tests; in AWS the SAM template owns it.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{GlobalSecondaryIndex, Projection, ProjectionType};
        let build = |source| StoreError::Build {
            operation: "CreateTable",
            source,
        };
        let attr = |name: &str, t: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(t)
                .build()
                .map_err(build)
        };
        let key = |name: &str, kt: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kt)
                .build()
                .map_err(build)
        };
        // Every index is sparse: only the items that carry its key attributes are in it.
        let index = |name: &str, hash: &str, range: &str, projection: Projection| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(hash, KeyType::Hash)?)
                .key_schema(key(range, KeyType::Range)?)
                .projection(projection)
                .build()
                .map_err(build)
        };
        let all = || {
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build()
        };
        // The listing indexes hold keys and what a listing filters on; the jobs are
        // read by key. An update that moves neither writes nothing to them.
        let listed = || {
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(
                    LISTING_PROJECTION.iter().map(|a| a.to_string()).collect(),
                ))
                .build()
        };
        let mut create = self
            .ddb
            .create_table()
            .table_name(&self.table)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?);
        for name in [
            "pk",
            "sk",
            JOB_QUEUE_ATTR,
            FAILED_IN_ATTR,
            LISTED_STATUS_ATTR,
            JOB_TEAM_ATTR,
        ]
        .into_iter()
        .chain([NAME_KEY_ATTR, DEFINITION_KEY_ATTR, SHARE_KEY_ATTR])
        {
            create = create.attribute_definitions(attr(name, ScalarAttributeType::S)?);
        }
        let res = create
            .attribute_definitions(attr("created_at", ScalarAttributeType::N)?)
            // Jobs by queue, by creation time: ListJobs by time, abandoned submissions.
            .global_secondary_indexes(index(BY_QUEUE_INDEX, JOB_QUEUE_ATTR, "created_at", all())?)
            // A job's failed tasks. Only failed task items have `failed_in`.
            .global_secondary_indexes(index(FAILURES_INDEX, FAILED_IN_ATTR, "sk", all())?)
            // ListJobs' other questions, one index each (see `domain::listing`).
            .global_secondary_indexes(index(
                BY_STATUS_INDEX,
                LISTED_STATUS_ATTR,
                "created_at",
                listed(),
            )?)
            .global_secondary_indexes(index(
                BY_NAME_INDEX,
                JOB_QUEUE_ATTR,
                NAME_KEY_ATTR,
                listed(),
            )?)
            .global_secondary_indexes(index(
                BY_DEFINITION_INDEX,
                JOB_QUEUE_ATTR,
                DEFINITION_KEY_ATTR,
                listed(),
            )?)
            .global_secondary_indexes(index(
                BY_SHARE_INDEX,
                SHARE_KEY_ATTR,
                "created_at",
                listed(),
            )?)
            // Every job of a team, newest first: the native listing (`GET /v1/jobs`).
            .global_secondary_indexes(index(
                BY_TEAM_INDEX,
                JOB_TEAM_ATTR,
                "created_at",
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .set_non_key_attributes(Some(
                        TEAM_LISTING_PROJECTION
                            .iter()
                            .map(|a| a.to_string())
                            .collect(),
                    ))
                    .build(),
            )?)
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await;
        match res {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(classify("CreateTable", e)),
        }
        for _ in 0..100 {
            let d = self
                .ddb
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| classify("DescribeTable", e))?;
            if d.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Request {
            operation: "CreateTable",
            code: "NotActive".into(),
            message: format!("table {} did not become ACTIVE", self.table),
            source: format!("table {} did not become ACTIVE", self.table).into(),
        })
    }

    /// Items in the table, by a counting scan (benchmarks: what a run left behind).
    pub async fn count_items(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(&self.table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("Scan", e))?;
            total += out.count() as u64;
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(total),
            }
        }
    }

    /// Delete the table (local stacks and benchmarks clean up after themselves).
    pub async fn delete_table(&self) -> Result<(), StoreError> {
        match self.ddb.delete_table().table_name(&self.table).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(classify("DeleteTable", e)),
        }
    }

    /// The table's stream ARN (the local stack polls it).
    pub async fn stream_arn(&self) -> Result<Option<String>, StoreError> {
        let d = self
            .ddb
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| classify("DescribeTable", e))?;
        Ok(d.table()
            .and_then(|t| t.latest_stream_arn())
            .map(str::to_string))
    }
}
