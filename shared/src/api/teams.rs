//! A team's usage over its finished jobs, day by day.

use serde_json::json;

use super::*;

impl Service {
    /// A team's usage over the jobs that finished in the last `days` days (today too).
    pub async fn team_usage(
        &self,
        who: &crate::domain::access::Access,
        team: &str,
        days: u32,
    ) -> Result<TeamUsageView, ApiError> {
        if !crate::domain::ids::is_valid_team(team) {
            return Err(ApiError::bad_request(
                format!(
                    "team {team:?} must be 1 to {} of [A-Za-z0-9_-]",
                    crate::domain::ids::MAX_TEAM_LEN
                ),
                json!({"parameter": "team"}),
            ));
        }
        Self::require_on_team(who, team, Need::View, || {
            ApiError::not_found(format!("no team {team:?}"))
        })?;
        if !(1..=3660).contains(&days) {
            return Err(ApiError::bad_request(
                format!("query parameter `days`: {days} must be 1 to 3660"),
                json!({"parameter": "days"}),
            ));
        }
        let since = (chrono::Utc::now() - chrono::Duration::days(i64::from(days) - 1))
            .format("%Y-%m-%d")
            .to_string();
        let rows = self.store.team_usage(team, &since).await?;
        let mut usage = crate::domain::Usage::default();
        for r in &rows {
            usage.add(&r.usage);
        }
        Ok(TeamUsageView {
            team: team.to_string(),
            since,
            jobs: rows.iter().map(|r| r.jobs).sum(),
            usage,
            days: rows
                .into_iter()
                .map(|r| TeamDayView {
                    date: r.date,
                    jobs: r.jobs,
                    usage: r.usage,
                })
                .collect(),
        })
    }
}
