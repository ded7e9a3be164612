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
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|source| StoreError::Build {
                    operation: "CreateTable",
                    source,
                })
        };
        let key = |name: &str, kt: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kt)
                .build()
                .map_err(|source| StoreError::Build {
                    operation: "CreateTable",
                    source,
                })
        };
        let res = self
            .ddb
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(JOB_QUEUE_ATTR)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .attribute_definitions(attr(FAILED_IN_ATTR)?)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("created_at")
                    .attribute_type(ScalarAttributeType::N)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            // Jobs by queue, newest last: ListJobs. Sparse: only job items have `jq`.
            .global_secondary_indexes(
                aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                    .index_name(BY_QUEUE_INDEX)
                    .key_schema(key(JOB_QUEUE_ATTR, KeyType::Hash)?)
                    .key_schema(key("created_at", KeyType::Range)?)
                    .projection(
                        aws_sdk_dynamodb::types::Projection::builder()
                            .projection_type(aws_sdk_dynamodb::types::ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            // A job's failed tasks. Sparse: only failed task items have `failed_in`.
            .global_secondary_indexes(
                aws_sdk_dynamodb::types::GlobalSecondaryIndex::builder()
                    .index_name(FAILURES_INDEX)
                    .key_schema(key(FAILED_IN_ATTR, KeyType::Hash)?)
                    .key_schema(key("sk", KeyType::Range)?)
                    .projection(
                        aws_sdk_dynamodb::types::Projection::builder()
                            .projection_type(aws_sdk_dynamodb::types::ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(|source| StoreError::Build {
                        operation: "CreateTable",
                        source,
                    })?,
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
