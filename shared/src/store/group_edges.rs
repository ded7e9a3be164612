//! A DAG's edges between groups (`domain::group_graph`), for the console's view of a
//! job too large to draw task by task: one item per job, `GRAPH#groups`, whose string set
//! `edges` holds `<from>:<to>` (task ids cannot hold `:`). Each submission, page and
//! addition adds its own edges with `ADD`, a set union: a retried or duplicated write
//! adds nothing twice, and writes from pages stored at once do not overwrite each other.
//! The set holds at most about [`GROUP_EDGES_KEPT`] edges; past that, `more` is set and
//! the rest are not kept.

use super::item::*;
use super::request::send_if;
use super::{Store, StoreError};
use crate::domain::group_graph::GroupEdge;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::BTreeSet;

pub const GROUP_EDGES_SK: &str = "GRAPH#groups";
/// About the most edges kept: a write is refused once the set holds this many, so the
/// set can pass it by at most one write's edges.
pub const GROUP_EDGES_KEPT: usize = 500;
/// The most bytes of edges one write adds: with [`GROUP_EDGES_KEPT`] edges of the
/// longest ids, the item stays well under DynamoDB's 400 KB.
const WRITE_BYTES: usize = 64 * 1024;

/// A job's group edges as kept, and whether some were not kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupEdges {
    pub edges: BTreeSet<GroupEdge>,
    pub complete: bool,
}

fn encode(e: &GroupEdge) -> String {
    format!("{}:{}", e.0, e.1)
}

impl Store {
    /// Add edges between a job's groups (a union with those it has).
    pub async fn add_group_edges(
        &self,
        job_id: &str,
        edges: &BTreeSet<GroupEdge>,
    ) -> Result<(), StoreError> {
        if edges.is_empty() {
            return Ok(());
        }
        let mut bytes = 0;
        let mut values = Vec::new();
        for e in edges {
            let v = encode(e);
            bytes += v.len();
            if bytes > WRITE_BYTES || values.len() == GROUP_EDGES_KEPT {
                break;
            }
            values.push(v);
        }
        if values.is_empty() {
            return Ok(());
        }
        let cut = values.len() < edges.len();
        let k = key(job_pk(job_id), GROUP_EDGES_SK.into());
        let mut add = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k.clone()))
            .update_expression(if cut {
                "ADD edges :e SET more = :t"
            } else {
                "ADD edges :e"
            })
            .condition_expression("attribute_not_exists(edges) OR size(edges) < :cap")
            .expression_attribute_values(":e", AttributeValue::Ss(values))
            .expression_attribute_values(":cap", n(GROUP_EDGES_KEPT));
        if cut {
            add = add.expression_attribute_values(":t", AttributeValue::Bool(true));
        }
        if send_if(add).await?.is_none() {
            // Full: these edges are not kept, and the set says so.
            super::request::send(
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .update_expression("SET more = :t")
                    .expression_attribute_values(":t", AttributeValue::Bool(true)),
            )
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// A job's group edges as kept.
    pub async fn group_edges(&self, job_id: &str) -> Result<GroupEdges, StoreError> {
        let item = self
            .read_item(key(job_pk(job_id), GROUP_EDGES_SK.into()))
            .await?
            .unwrap_or_default();
        let edges = match item.get("edges") {
            Some(AttributeValue::Ss(v)) => v
                .iter()
                .filter_map(|e| e.split_once(':'))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(GroupEdges {
            edges,
            complete: !matches!(item.get("more"), Some(AttributeValue::Bool(true))),
        })
    }
}
