//! Listing a queue's jobs: each of ListJobs' questions is answered by an index of its
//! own (`domain::listing` builds the keys), so what a call reads depends on what it
//! returns, not on how long the queue's history is. The indexes hold keys and what a
//! listing filters on; the jobs themselves are then read by key.
//!
//! A job's status key moves with its state: the fanout re-lists a job whose stream
//! record shows its status changed ([`Store::relist_job`]). Like any index, a listing
//! by status may lag a change by a moment; a job read back in another status than the
//! one asked for is left out rather than shown under the wrong one.

use super::item::*;
use super::request::{send, send_if};
use super::{Store, StoreError};
use crate::domain::listing::{self, aws_status};
use crate::domain::JobRecord;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// What a listing asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobQuery {
    /// Every job, newest first.
    All,
    /// Jobs created before (`after: false`) or after a time (ms), newest first.
    Created { at: i64, after: bool },
    /// Jobs in one AWS Batch status, newest first.
    Status(String),
    /// RUNNABLE jobs, oldest first: the front of the queue.
    Front,
    /// Jobs by name, case-insensitively (a prefix when `prefix`), by name, then newest
    /// first.
    Name { value: String, prefix: bool },
    /// Jobs of any revision of a job definition (or of every definition whose name
    /// begins with `name`, when `prefix`), by definition name, then newest first.
    Definition { name: String, prefix: bool },
    /// Jobs of one definition revision, by its ARN.
    DefinitionArn(String),
    /// Jobs of one share identifier, in one status if given, newest first (with a
    /// status, the status's entries are read and the share filtered on: a fair-share
    /// queue is asked what is RUNNABLE or RUNNING in a share, which is live work).
    Share {
        share: String,
        status: Option<String>,
    },
}

/// Where a listing goes on from: the last job it returned (or looked at) and its place
/// in the index (a time for the indexes sorted by time, a key for the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPosition {
    pub job_id: String,
    pub at: ListAt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListAt {
    Time(i64),
    Key(String),
}

/// One call's jobs, where to go on from, and how many index entries it looked at.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    pub next: Option<ListPosition>,
    pub examined: usize,
}

/// The most index entries one call looks at: a listing whose matches are sparse (a
/// caller who sees few of a shared queue's teams) returns a short page and a position
/// instead of reading on.
pub const LIST_EXAMINE_LIMIT: usize = 1000;

/// How a query reads its index.
struct Plan {
    index: &'static str,
    hash: (&'static str, String),
    range: &'static str,
    by_time: bool,
    condition: Option<(String, AttributeValue)>,
    filter: Option<(&'static str, String)>,
    newest_first: bool,
    status: Option<String>,
}

impl JobQuery {
    /// Whether positions in this query's index are times (else keys).
    pub fn sorted_by_time(&self) -> bool {
        matches!(
            self,
            JobQuery::All
                | JobQuery::Created { .. }
                | JobQuery::Status(_)
                | JobQuery::Front
                | JobQuery::Share { .. }
        )
    }

    fn plan(&self, queue: &str) -> Plan {
        let by_queue = |condition| Plan {
            index: BY_QUEUE_INDEX,
            hash: (JOB_QUEUE_ATTR, queue.to_string()),
            range: "created_at",
            by_time: true,
            condition,
            filter: None,
            newest_first: true,
            status: None,
        };
        let by_status = |status: &str, filter| Plan {
            index: BY_STATUS_INDEX,
            hash: (LISTED_STATUS_ATTR, listing::status_key(queue, status)),
            range: "created_at",
            by_time: true,
            condition: None,
            filter,
            newest_first: true,
            status: Some(status.to_string()),
        };
        let by_key = |index, range, begins: String, filter| Plan {
            index,
            hash: (JOB_QUEUE_ATTR, queue.to_string()),
            range,
            by_time: false,
            condition: Some(("begins_with(#r, :r)".to_string(), s(begins))),
            filter,
            newest_first: false,
            status: None,
        };
        match self {
            JobQuery::All => by_queue(None),
            JobQuery::Created { at, after } => by_queue(Some((
                format!("#r {} :r", if *after { ">" } else { "<" }),
                n(at),
            ))),
            JobQuery::Status(status) => by_status(status, None),
            JobQuery::Front => Plan {
                newest_first: false,
                ..by_status("RUNNABLE", None)
            },
            JobQuery::Name { value, prefix } => by_key(
                BY_NAME_INDEX,
                NAME_KEY_ATTR,
                listing::key_prefix(&value.to_lowercase(), *prefix),
                None,
            ),
            JobQuery::Definition { name, prefix } => by_key(
                BY_DEFINITION_INDEX,
                DEFINITION_KEY_ATTR,
                listing::key_prefix(name, *prefix),
                None,
            ),
            // The revision is not in the key (a name's jobs sort by time, whatever their
            // revision): the name's entries are read and the ARN filtered on.
            JobQuery::DefinitionArn(arn) => by_key(
                BY_DEFINITION_INDEX,
                DEFINITION_KEY_ATTR,
                listing::key_prefix(listing::definition_name(arn).unwrap_or(arn), false),
                Some((DEFINITION_ATTR, arn.clone())),
            ),
            JobQuery::Share {
                share,
                status: Some(status),
            } => by_status(status, Some((SHARE_ATTR, share.clone()))),
            JobQuery::Share {
                share,
                status: None,
            } => Plan {
                index: BY_SHARE_INDEX,
                hash: (SHARE_KEY_ATTR, listing::share_key(queue, share)),
                range: "created_at",
                by_time: true,
                condition: None,
                filter: None,
                newest_first: true,
                status: None,
            },
        }
    }
}

impl Plan {
    /// The index key of the entry at `p`, for the query to start after it.
    fn start_after(&self, p: &ListPosition) -> Item {
        let mut k = key(job_pk(&p.job_id), META_SK.into());
        k.insert(self.hash.0.into(), s(&self.hash.1));
        k.insert(
            self.range.into(),
            match &p.at {
                ListAt::Time(t) => n(t),
                ListAt::Key(v) => s(v),
            },
        );
        k
    }

    /// Where an index entry (or a last-evaluated key) stands.
    fn position(&self, entry: &Item) -> Result<ListPosition, StoreError> {
        let r = Reader::new(entry);
        let pk = r.req_s("pk")?;
        let job_id = pk.strip_prefix("J#").unwrap_or(&pk).to_string();
        let at = if self.by_time {
            ListAt::Time(r.req_n(self.range)?)
        } else {
            ListAt::Key(r.req_s(self.range)?)
        };
        Ok(ListPosition { job_id, at })
    }
}

impl Store {
    /// Up to `max` of `queue`'s jobs that `query` asks for, of `teams` only (every
    /// team's when `None`), from after `start`.
    pub async fn list_jobs(
        &self,
        queue: &str,
        query: &JobQuery,
        teams: Option<&[String]>,
        max: usize,
        start: Option<&ListPosition>,
    ) -> Result<JobPage, StoreError> {
        let plan = query.plan(queue);
        if start.is_some_and(|p| matches!(p.at, ListAt::Time(_)) != plan.by_time) {
            return Ok(JobPage {
                jobs: Vec::new(),
                next: None,
                examined: 0,
            });
        }
        let max = max.max(1);
        let mut exclusive = start.map(|p| plan.start_after(p));
        let mut entries: Vec<Item> = Vec::new();
        let mut examined = 0;
        let mut next = None;
        loop {
            let want = (max - entries.len()).min(LIST_EXAMINE_LIMIT - examined);
            let out = send(self.listing_query(&plan, teams, want, exclusive.take())).await?;
            examined += out.scanned_count().max(0) as usize;
            entries.extend(out.items().iter().cloned());
            let Some(last) = out.last_evaluated_key() else {
                break;
            };
            if entries.len() >= max || examined >= LIST_EXAMINE_LIMIT {
                // Go on after the last entry kept, or the last one looked at.
                let at = match entries.len() >= max {
                    true => entries.last().unwrap_or(last),
                    false => last,
                };
                next = Some(plan.position(at)?);
                break;
            }
            exclusive = Some(last.clone());
        }
        let keys = entries
            .iter()
            .filter_map(|e| Some(key(e.get("pk")?.as_s().ok()?.clone(), META_SK.into())))
            .collect();
        let mut by_id: HashMap<String, JobRecord> = HashMap::new();
        for it in self.get_items(keys, false).await? {
            let job = job_from_item(&it)?;
            by_id.insert(job.job_id.clone(), job);
        }
        // In the index's order; a job whose status moved since its entry was read is
        // left to the listing of its new status.
        let mut jobs = Vec::with_capacity(entries.len());
        for e in &entries {
            let p = plan.position(e)?;
            if let Some(job) = by_id.remove(&p.job_id) {
                if plan
                    .status
                    .as_deref()
                    .is_none_or(|st| aws_status(&job) == st)
                {
                    jobs.push(job);
                }
            }
        }
        Ok(JobPage {
            jobs,
            next,
            examined,
        })
    }

    fn listing_query(
        &self,
        plan: &Plan,
        teams: Option<&[String]>,
        limit: usize,
        exclusive: Option<Item>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let mut condition = "#h = :h".to_string();
        let mut q = self
            .ddb
            .query()
            .table_name(&self.table)
            .index_name(plan.index)
            .expression_attribute_names("#h", plan.hash.0)
            .expression_attribute_values(":h", s(&plan.hash.1))
            .scan_index_forward(!plan.newest_first)
            .limit(limit.clamp(1, LIST_EXAMINE_LIMIT) as i32)
            .set_exclusive_start_key(exclusive);
        if let Some((c, v)) = &plan.condition {
            condition.push_str(" AND ");
            condition.push_str(c);
            q = q
                .expression_attribute_names("#r", plan.range)
                .expression_attribute_values(":r", v.clone());
        }
        let mut filters = Vec::new();
        if let Some((attr, v)) = &plan.filter {
            filters.push("#f = :f".to_string());
            q = q
                .expression_attribute_names("#f", *attr)
                .expression_attribute_values(":f", s(v));
        }
        if let Some(teams) = teams {
            let names: Vec<String> = (0..teams.len().max(1)).map(|i| format!(":t{i}")).collect();
            filters.push(format!("#team IN ({})", names.join(", ")));
            q = q.expression_attribute_names("#team", "team");
            // No team at all matches nothing: a name no team can have.
            let values = if teams.is_empty() {
                &[String::new()][..]
            } else {
                teams
            };
            for (name, team) in names.iter().zip(values) {
                q = q.expression_attribute_values(name, s(team));
            }
        }
        if !filters.is_empty() {
            q = q.filter_expression(filters.join(" AND "));
        }
        q.key_condition_expression(condition)
    }

    /// List `job` under the status its state now gives it, if the job is still in that
    /// state (a stale stream record cannot move a newer job's listing back). False when
    /// it was not (a later record re-lists it).
    pub async fn relist_job(&self, job: &JobRecord) -> Result<bool, StoreError> {
        let started = match job.started_at {
            Some(_) => "attribute_exists(started_at)",
            None => "attribute_not_exists(started_at)",
        };
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(&job.job_id), META_SK.into())))
                .update_expression("SET #ls = :ls")
                .condition_expression(format!("#state = :state AND {started}"))
                .expression_attribute_names("#ls", LISTED_STATUS_ATTR)
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":ls", s(listing::listing_keys(job).status))
                .expression_attribute_values(":state", s(job.state.as_str())),
        )
        .await?
        .is_some())
    }
}
