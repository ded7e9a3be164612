//! Every job of some teams, newest first, filtered by queue, state and name: the
//! native listing (`GET /v1/jobs`) and the console's jobs page. Each team is one range
//! of the sparse `by_team` index; [`crate::domain::team_listing`] merges them into pages.

use super::item::*;
use super::request::send;
use super::{Store, StoreError, LIST_EXAMINE_LIMIT};
use crate::domain::team_listing::{merge_newest, Cursor, Starts, TeamRead};
use crate::domain::{JobRecord, JobState};
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;

/// What a listing of teams' jobs keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub queue: Option<String>,
    /// Any of these states (none: every state).
    pub states: Vec<JobState>,
    /// Names beginning with this, case-insensitively.
    pub name_prefix: Option<String>,
}

/// A page of teams' jobs and where each team goes on from (empty: the listing is
/// done). A page may be short, even empty, with more to come: a filter that matches
/// little stops each team's read at a bound of entries looked at.
#[derive(Debug, Clone)]
pub struct TeamJobPage {
    pub jobs: Vec<JobRecord>,
    pub next: Starts,
}

/// At most this many teams are read at once for one page.
const TEAM_READS_AT_ONCE: usize = 8;

impl Store {
    /// Note that `team` has jobs (before its first job is written, so no job is ever
    /// stored that an administrator's listing would miss). Idempotent; written once per
    /// team by a process.
    pub(crate) async fn note_job_team(&self, team: &str) -> Result<(), StoreError> {
        let noted = |set: &std::sync::Mutex<std::collections::HashSet<String>>| {
            set.lock().unwrap_or_else(|p| p.into_inner()).contains(team)
        };
        if noted(&self.noted_teams) {
            return Ok(());
        }
        send(
            self.ddb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(key(JOB_TEAMS_PK.into(), team.to_string()))),
        )
        .await?;
        let mut set = self.noted_teams.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() > 10_000 {
            set.clear();
        }
        set.insert(team.to_string());
        Ok(())
    }

    /// Every team that has had a job, by name.
    pub async fn job_teams(&self) -> Result<Vec<String>, StoreError> {
        let items = self
            .query_all(|| {
                self.ddb
                    .query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(JOB_TEAMS_PK))
            })
            .await?;
        items
            .iter()
            .map(|it| Ok(Reader::new(it).req_s("sk")?))
            .collect()
    }

    /// Up to `max` jobs of the teams in `starts` (each from where it stands), newest
    /// first, that `filter` keeps.
    pub async fn list_team_jobs(
        &self,
        starts: &Starts,
        filter: &JobFilter,
        max: usize,
    ) -> Result<TeamJobPage, StoreError> {
        let max = max.max(1);
        // Each team looks at no more than its share of one call's bound.
        let look = (LIST_EXAMINE_LIMIT / starts.len().max(1)).max(max);
        let owned: Vec<(String, Option<Cursor>)> =
            starts.iter().map(|(t, s)| (t.clone(), s.clone())).collect();
        let reads: Vec<TeamRead> = futures::stream::iter(owned)
            .map(|(team, start)| async move {
                self.read_team(&team, start.as_ref(), filter, max, look)
                    .await
            })
            .buffered(TEAM_READS_AT_ONCE)
            .try_collect()
            .await?;
        let merged = merge_newest(&reads, starts, max);
        let keys = merged
            .shown
            .iter()
            .map(|(_, c)| key(job_pk(&c.job_id), META_SK.into()))
            .collect();
        let mut by_id: HashMap<String, JobRecord> = HashMap::new();
        for it in self.get_items(keys, false).await? {
            let job = job_from_item(&it)?;
            by_id.insert(job.job_id.clone(), job);
        }
        let jobs = merged
            .shown
            .iter()
            .filter_map(|(_, c)| by_id.remove(&c.job_id))
            // The index may trail a state change by a moment: what is shown is the job.
            .filter(|j| filter.states.is_empty() || filter.states.contains(&j.state))
            .collect();
        Ok(TeamJobPage {
            jobs,
            next: merged.next,
        })
    }

    /// One team's matches from after `start`: until `max` matched or `look` entries
    /// were looked at.
    async fn read_team(
        &self,
        team: &str,
        start: Option<&Cursor>,
        filter: &JobFilter,
        max: usize,
        look: usize,
    ) -> Result<TeamRead, StoreError> {
        let mut exclusive = start.map(|c| {
            let mut k = key(job_pk(&c.job_id), META_SK.into());
            k.insert(JOB_TEAM_ATTR.into(), s(team));
            k.insert("created_at".into(), n(c.created_at));
            k
        });
        let mut matches = Vec::new();
        let mut looked = 0;
        loop {
            let want = (look - looked).clamp(1, LIST_EXAMINE_LIMIT);
            let out = send(self.team_query(team, filter, want, exclusive.take())).await?;
            looked += out.scanned_count().max(0) as usize;
            for it in out.items() {
                matches.push(cursor_of(it)?);
            }
            let Some(last) = out.last_evaluated_key() else {
                return Ok(TeamRead {
                    team: team.to_string(),
                    matches,
                    frontier: None,
                });
            };
            if matches.len() >= max || looked >= look {
                return Ok(TeamRead {
                    team: team.to_string(),
                    matches,
                    frontier: Some(cursor_of(last)?),
                });
            }
            exclusive = Some(last.clone());
        }
    }

    fn team_query(
        &self,
        team: &str,
        filter: &JobFilter,
        limit: usize,
        exclusive: Option<Item>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let mut q = self
            .ddb
            .query()
            .table_name(&self.table)
            .index_name(BY_TEAM_INDEX)
            .key_condition_expression("#h = :h")
            .expression_attribute_names("#h", JOB_TEAM_ATTR)
            .expression_attribute_values(":h", s(team))
            .scan_index_forward(false)
            .limit(limit as i32)
            .set_exclusive_start_key(exclusive);
        let mut filters = Vec::new();
        if let Some(queue) = &filter.queue {
            filters.push("#q = :q".to_string());
            q = q
                .expression_attribute_names("#q", JOB_QUEUE_ATTR)
                .expression_attribute_values(":q", s(queue));
        }
        if !filter.states.is_empty() {
            let names: Vec<String> = (0..filter.states.len()).map(|i| format!(":s{i}")).collect();
            filters.push(format!("#state IN ({})", names.join(", ")));
            q = q.expression_attribute_names("#state", "state");
            for (name, st) in names.iter().zip(&filter.states) {
                q = q.expression_attribute_values(name, s(st.as_str()));
            }
        }
        if let Some(prefix) = &filter.name_prefix {
            filters.push("begins_with(#nk, :nk)".to_string());
            q = q
                .expression_attribute_names("#nk", NAME_KEY_ATTR)
                .expression_attribute_values(":nk", s(prefix.to_lowercase()));
        }
        if !filters.is_empty() {
            q = q.filter_expression(filters.join(" AND "));
        }
        q
    }
}

/// Where an index entry (or a last-evaluated key) stands in its team's range.
fn cursor_of(entry: &HashMap<String, AttributeValue>) -> Result<Cursor, StoreError> {
    let r = Reader::new(entry);
    let pk = r.req_s("pk")?;
    Ok(Cursor {
        created_at: r.req_n("created_at")?,
        job_id: pk.strip_prefix("J#").unwrap_or(&pk).to_string(),
    })
}
