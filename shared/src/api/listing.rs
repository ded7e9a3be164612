//! `GET /v1/jobs`: every job the caller may see, newest first, filtered by team, queue,
//! state and name, a page at a time, each with its counts by state.

use super::*;
use crate::domain::access::Access;
use crate::domain::team_listing::Starts;
use crate::domain::JobState;
use crate::store::JobFilter;
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The query string of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobListQuery {
    pub team: Option<String>,
    pub queue: Option<String>,
    /// One state or several, comma-separated.
    pub state: Option<String>,
    /// Names beginning with this, case-insensitively.
    pub name: Option<String>,
    pub limit: Option<String>,
    pub next_token: Option<String>,
}

/// A page of jobs, newest first, and the token of the next (absent at the end). A page
/// may be short with a token: a filter that matches little is read a bounded stretch
/// at a time.
#[derive(Debug, Clone, Serialize)]
pub struct JobListView {
    pub jobs: Vec<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// The most jobs one page holds.
pub const JOB_LIST_MAX: usize = 100;
/// Jobs whose counts are read at once.
const COUNT_READS_AT_ONCE: usize = 8;

fn bad(parameter: &str, message: String) -> ApiError {
    ApiError::bad_request(
        format!("query parameter `{parameter}`: {message}"),
        json!({"parameter": parameter}),
    )
}

impl JobListQuery {
    fn filter(&self) -> Result<JobFilter, ApiError> {
        let mut states = Vec::new();
        for part in self.state.iter().flat_map(|s| s.split(',')) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let st: JobState = part
                .to_uppercase()
                .parse()
                .map_err(|e: String| bad("state", format!("{part:?}: {e}")))?;
            states.push(st);
        }
        for (name, value) in [("queue", &self.queue), ("name", &self.name)] {
            if value.as_ref().is_some_and(|v| v.len() > 128) {
                return Err(bad(name, "longer than 128 characters".into()));
            }
        }
        Ok(JobFilter {
            queue: self.queue.clone().filter(|q| !q.is_empty()),
            states,
            name_prefix: self.name.clone().filter(|n| !n.is_empty()),
        })
    }
}

fn encode_starts(starts: &Starts) -> String {
    let text = serde_json::to_string(starts).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_starts(token: &str) -> Result<Starts, ApiError> {
    let not_ours = || bad("next_token", "not a token this API gave out".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| not_ours())?;
    serde_json::from_slice(&raw).map_err(|_| not_ours())
}

impl Service {
    pub async fn list_jobs_of_teams(
        &self,
        who: &Access,
        query: &JobListQuery,
    ) -> Result<JobListView, ApiError> {
        let filter = query.filter()?;
        let limit = match query.limit.as_deref() {
            None | Some("") => 25,
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| bad("limit", format!("{l:?} is not a whole number")))?,
        };
        if !(1..=JOB_LIST_MAX).contains(&limit) {
            return Err(bad("limit", format!("{limit} must be 1 to {JOB_LIST_MAX}")));
        }
        let team = query.team.as_deref().filter(|t| !t.is_empty());
        let starts: Starts = match &query.next_token {
            // Where each team goes on from; a team the caller may no longer see (or
            // did not ask for) is dropped.
            Some(token) => decode_starts(token)?
                .into_iter()
                .filter(|(t, _)| who.can_view(t) && team.is_none_or(|want| want == t))
                .collect(),
            None => {
                let teams: Vec<String> = match (team, who.visible_teams()) {
                    // A team the caller may not see lists as one with no jobs.
                    (Some(t), _) => vec![t.to_string()]
                        .into_iter()
                        .filter(|t| who.can_view(t))
                        .collect(),
                    (None, Some(visible)) => visible.into_iter().map(String::from).collect(),
                    (None, None) => self.store.job_teams().await?,
                };
                teams.into_iter().map(|t| (t, None)).collect()
            }
        };
        if starts.is_empty() {
            return Ok(JobListView {
                jobs: Vec::new(),
                next_token: None,
            });
        }
        let page = self.store.list_team_jobs(&starts, &filter, limit).await?;
        let jobs = futures::stream::iter(page.jobs)
            .map(|job| async move {
                let (counts, usage, _) = self.store.job_counts(&job.job_id).await?;
                let mut view = job_view(&job, &counts);
                view.usage = usage;
                Ok::<_, ApiError>(view)
            })
            .buffered(COUNT_READS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(JobListView {
            jobs,
            next_token: (!page.next.is_empty()).then(|| encode_starts(&page.next)),
        })
    }
}
