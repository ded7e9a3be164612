//! A job's task counts by group (`domain::graph::group_of`: a task id up to its last
//! separator), for the console's view of a job too large to draw task by task. Kept
//! exactly as its counts are, in items of their own so reading a job's counts never
//! reads them: one delta item per stream batch (`Q#<first record>`, each record counted
//! once), folded into `Q#base`. The base keeps at most [`GROUPS_KEPT`] groups by name;
//! what a job's further groups count is kept under [`OTHER_GROUPS`].

use super::counts::{BatchPart, Deltas};
use super::item::*;
use super::{Store, StoreError};
use crate::domain::{TaskCounts, TaskState};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::BTreeMap;

pub const GROUP_COUNTS_PREFIX: &str = "Q#";
pub const GROUP_COUNTS_BASE_SK: &str = "Q#base";
/// The most groups a job's folded counts name.
pub const GROUPS_KEPT: usize = 500;
/// Where the groups past [`GROUPS_KEPT`] are counted. Not a group a task id can make
/// (`~` is internal).
pub const OTHER_GROUPS: &str = "~other";

/// One stream record's part of a job's counts by group.
#[derive(Debug, Clone, Default)]
pub struct GroupRecordCounts {
    pub sequence_number: String,
    pub group: String,
    pub counts: TaskCounts,
}

impl BatchPart for GroupRecordCounts {
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }
}

/// The attribute a group's count in a state is kept under: `<group>:<STATE>` (task
/// ids cannot hold `:`).
fn group_attr(group: &str, state: TaskState) -> String {
    format!("{group}:{}", state.as_str())
}

/// A group and state from an attribute's name, if it is a count's.
fn parse_group_attr(name: &str) -> Option<(&str, TaskState)> {
    let (group, state) = name.rsplit_once(':')?;
    Some((group, state.parse().ok()?))
}

/// Counts by group of an item's attributes (a batch item's, or the base's).
fn groups_of(item: &Item) -> BTreeMap<String, TaskCounts> {
    let mut out: BTreeMap<String, TaskCounts> = BTreeMap::new();
    for (name, v) in item {
        let (Some((group, state)), AttributeValue::N(v)) = (parse_group_attr(name), v) else {
            continue;
        };
        out.entry(group.to_string())
            .or_default()
            .add(state, v.parse::<i64>().unwrap_or(0));
    }
    out
}

fn deltas(sum: &BTreeMap<String, TaskCounts>, keep_zero: bool) -> Deltas {
    sum.iter()
        .flat_map(|(group, counts)| {
            counts
                .0
                .iter()
                .filter(move |(_, d)| keep_zero || **d != 0)
                .map(move |(st, d)| (group_attr(group, *st), n(*d)))
        })
        .collect()
}

impl Store {
    /// Add a stream batch's counts by group for a job, each record's once (see
    /// [`Store::add_batch_deltas`]).
    pub async fn add_batch_group_counts(
        &self,
        job_id: &str,
        batch_start: &str,
        parts: &[GroupRecordCounts],
    ) -> Result<bool, StoreError> {
        let k = key(
            job_pk(job_id),
            format!("{GROUP_COUNTS_PREFIX}{batch_start}"),
        );
        self.add_batch_deltas(
            k,
            parts,
            |parts| {
                let mut sum: BTreeMap<String, TaskCounts> = BTreeMap::new();
                for p in parts {
                    sum.entry(p.group.clone()).or_default().merge(&p.counts);
                }
                deltas(&sum, false)
            },
            "UpdateItem (batch counts by group)",
        )
        .await
    }

    /// A job's counts by group: the sum of its group count items (a handful, once
    /// folded), and how many items that was.
    pub async fn job_group_counts(
        &self,
        job_id: &str,
    ) -> Result<(BTreeMap<String, TaskCounts>, usize), StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :q)")
                    .expression_attribute_values(":pk", s(job_pk(job_id)))
                    .expression_attribute_values(":q", s(GROUP_COUNTS_PREFIX))
                    .consistent_read(true)
            })
            .await?;
        let mut total: BTreeMap<String, TaskCounts> = BTreeMap::new();
        for it in &items {
            for (group, counts) in groups_of(it) {
                total.entry(group).or_default().merge(&counts);
            }
        }
        Ok((total, items.len()))
    }

    /// Fold a job's batch items of counts by group into `Q#base` (see
    /// [`Store::fold_deltas`]). A group the base does not name yet is added while it
    /// names fewer than [`GROUPS_KEPT`]; past that, its counts go to [`OTHER_GROUPS`].
    pub async fn fold_group_counts(&self, job_id: &str) -> Result<(), StoreError> {
        self.fold_deltas(
            job_id,
            GROUP_COUNTS_PREFIX,
            GROUP_COUNTS_BASE_SK,
            |base, batch| {
                let mut total = base.map(groups_of).unwrap_or_default();
                for it in batch {
                    for (group, counts) in groups_of(it) {
                        let kept = total.contains_key(&group) || total.len() < GROUPS_KEPT;
                        let into = if kept {
                            group
                        } else {
                            OTHER_GROUPS.to_string()
                        };
                        total.entry(into).or_default().merge(&counts);
                    }
                }
                deltas(&total, true)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_attribute_names_its_group_and_state() {
        let name = group_attr("level-3", TaskState::Running);
        assert_eq!(name, "level-3:RUNNING");
        assert_eq!(
            parse_group_attr(&name),
            Some(("level-3", TaskState::Running))
        );
        for other in ["upto", "at", "pk", "sk", "x:NOTASTATE"] {
            assert_eq!(parse_group_attr(other), None, "{other}");
        }
    }
}
