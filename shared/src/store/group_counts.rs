//! A job's task counts by group (`domain::graph::group_of`: a task id up to its last
//! separator), for the console's view of a job too large to draw task by task. Kept
//! exactly as its counts are, in a partition of their own (`J#<job>#Q`), so reading a
//! job's counts never reads them and their writes (one a stream batch) do not share the
//! job's partition's write rate with its counts and window: one delta item per stream batch (`Q#<first record>`, each record counted
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

/// One stream record's part of a job's counts by group, and when its task started or
/// finished (for the group's span).
#[derive(Debug, Clone, Default)]
pub struct GroupRecordCounts {
    pub sequence_number: String,
    pub group: String,
    pub counts: TaskCounts,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl BatchPart for GroupRecordCounts {
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }
}

/// A group's counts and when its tasks ran: the first start and the last finish seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupTotals {
    pub counts: TaskCounts,
    pub first_started_at: Option<i64>,
    pub last_finished_at: Option<i64>,
}

impl GroupTotals {
    fn merge(&mut self, other: &GroupTotals) {
        self.counts.merge(&other.counts);
        self.first_started_at = earliest(self.first_started_at, other.first_started_at);
        self.last_finished_at = latest(self.last_finished_at, other.last_finished_at);
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
}

fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).max()
}

/// Attribute suffixes of a group's span (after `<group>:`; no state is named so).
const FIRST_STARTED: &str = "^first";
const LAST_FINISHED: &str = "^last";

/// The attribute a group's count in a state is kept under: `<group>:<STATE>` (task
/// ids cannot hold `:`).
fn group_attr(group: &str, state: TaskState) -> String {
    format!("{group}:{}", state.as_str())
}

/// What an attribute of a group counts item holds.
#[derive(Debug, PartialEq)]
enum GroupAttr<'a> {
    Count(&'a str, TaskState),
    FirstStarted(&'a str),
    LastFinished(&'a str),
}

fn parse_group_attr(name: &str) -> Option<GroupAttr<'_>> {
    let (group, what) = name.rsplit_once(':')?;
    Some(match what {
        FIRST_STARTED => GroupAttr::FirstStarted(group),
        LAST_FINISHED => GroupAttr::LastFinished(group),
        state => GroupAttr::Count(group, state.parse().ok()?),
    })
}

/// Two values of one attribute, combined: counts add; a span's first start is the
/// earlier and its last finish the later (so a record seen twice moves neither).
fn combine(name: &str, current: Option<&AttributeValue>, v: &AttributeValue) -> AttributeValue {
    let number = |v: Option<&AttributeValue>| match v {
        Some(AttributeValue::N(x)) => x.parse::<i64>().ok(),
        _ => None,
    };
    match parse_group_attr(name) {
        Some(GroupAttr::FirstStarted(_)) => {
            n(earliest(number(current), number(Some(v))).unwrap_or(0))
        }
        Some(GroupAttr::LastFinished(_)) => {
            n(latest(number(current), number(Some(v))).unwrap_or(0))
        }
        _ => add_numbers(current, v),
    }
}

/// Totals by group of an item's attributes (a batch item's, or the base's).
fn groups_of(item: &Item) -> BTreeMap<String, GroupTotals> {
    let mut out: BTreeMap<String, GroupTotals> = BTreeMap::new();
    for (name, v) in item {
        let (Some(attr), AttributeValue::N(v)) = (parse_group_attr(name), v) else {
            continue;
        };
        let Ok(v) = v.parse::<i64>() else { continue };
        match attr {
            GroupAttr::Count(group, state) => out
                .entry(group.to_string())
                .or_default()
                .counts
                .add(state, v),
            GroupAttr::FirstStarted(group) => {
                let g = out.entry(group.to_string()).or_default();
                g.first_started_at = earliest(g.first_started_at, Some(v));
            }
            GroupAttr::LastFinished(group) => {
                let g = out.entry(group.to_string()).or_default();
                g.last_finished_at = latest(g.last_finished_at, Some(v));
            }
        }
    }
    out
}

fn attributes(totals: &BTreeMap<String, GroupTotals>, keep_zero: bool) -> Deltas {
    let mut out = Deltas::new();
    for (group, t) in totals {
        for (st, d) in &t.counts.0 {
            if keep_zero || *d != 0 {
                out.push((group_attr(group, *st), n(*d)));
            }
        }
        if let Some(at) = t.first_started_at {
            out.push((format!("{group}:{FIRST_STARTED}"), n(at)));
        }
        if let Some(at) = t.last_finished_at {
            out.push((format!("{group}:{LAST_FINISHED}"), n(at)));
        }
    }
    out
}

impl Store {
    /// Add a stream batch's counts by group for a job, each record's once (see
    /// [`Store::add_batch_deltas`]), and move the groups' spans.
    pub async fn add_batch_group_counts(
        &self,
        job_id: &str,
        batch_start: &str,
        parts: &[GroupRecordCounts],
    ) -> Result<bool, StoreError> {
        let k = key(
            group_counts_pk(job_id),
            format!("{GROUP_COUNTS_PREFIX}{batch_start}"),
        );
        self.add_batch_deltas(
            k,
            parts,
            |parts| {
                let mut sum: BTreeMap<String, GroupTotals> = BTreeMap::new();
                for p in parts {
                    sum.entry(p.group.clone()).or_default().merge(&GroupTotals {
                        counts: p.counts.clone(),
                        first_started_at: p.started_at,
                        last_finished_at: p.finished_at,
                    });
                }
                attributes(&sum, false)
            },
            combine,
            "UpdateItem (batch counts by group)",
        )
        .await
    }

    /// A job's counts and spans by group: the sum of its group count items (a handful,
    /// once folded), and how many items that was.
    pub async fn job_group_counts(
        &self,
        job_id: &str,
    ) -> Result<(BTreeMap<String, GroupTotals>, usize), StoreError> {
        let items = self
            .partition_items(&group_counts_pk(job_id), GROUP_COUNTS_PREFIX)
            .await?;
        let mut total: BTreeMap<String, GroupTotals> = BTreeMap::new();
        for it in &items {
            for (group, t) in groups_of(it) {
                total.entry(group).or_default().merge(&t);
            }
        }
        Ok((total, items.len()))
    }

    /// Fold a job's batch items of counts by group into `Q#base` (see
    /// [`Store::fold_deltas`]). A group the base does not name yet is added while it
    /// names fewer than [`GROUPS_KEPT`]; past that, its counts go to [`OTHER_GROUPS`].
    pub async fn fold_group_counts(&self, job_id: &str) -> Result<(), StoreError> {
        self.fold_deltas(
            &group_counts_pk(job_id),
            GROUP_COUNTS_PREFIX,
            GROUP_COUNTS_BASE_SK,
            |base, batch| {
                let mut total = base.map(groups_of).unwrap_or_default();
                for it in batch {
                    for (group, t) in groups_of(it) {
                        let kept = total.contains_key(&group) || total.len() < GROUPS_KEPT;
                        let into = if kept {
                            group
                        } else {
                            OTHER_GROUPS.to_string()
                        };
                        total.entry(into).or_default().merge(&t);
                    }
                }
                (attributes(&total, true), None)
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
            Some(GroupAttr::Count("level-3", TaskState::Running))
        );
        assert_eq!(
            parse_group_attr("level-3:^first"),
            Some(GroupAttr::FirstStarted("level-3"))
        );
        for other in ["upto", "at", "pk", "sk", "x:NOTASTATE"] {
            assert_eq!(parse_group_attr(other), None, "{other}");
        }
    }

    #[test]
    fn spans_keep_the_earliest_start_and_latest_finish_however_often_combined() {
        let first = combine("g-:^first", Some(&n(50)), &n(70));
        assert_eq!(first, n(50));
        assert_eq!(combine("g-:^first", None, &n(70)), n(70));
        assert_eq!(combine("g-:^last", Some(&n(50)), &n(70)), n(70));
        assert_eq!(combine("g-:^last", Some(&n(90)), &n(70)), n(90));
        assert_eq!(combine("g-:RUNNING", Some(&n(2)), &n(3)), n(5));
    }
}
