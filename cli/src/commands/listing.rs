//! `batchplane jobs`: the jobs the caller may see, newest first, filtered by team,
//! queue, state and name (`GET /v1/jobs`, page after page).

use super::jobs::Output;
use crate::client::Api;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobsArgs {
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    /// One state or several, comma-separated (RUNNING,FAILED).
    #[arg(long)]
    pub state: Option<String>,
    /// Names beginning with this, case-insensitively.
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(short = 'o', long, default_value = "text")]
    pub output: Output,
}

/// The path and query of one page of `GET /v1/jobs`.
pub fn jobs_path(args: &JobsArgs, page: usize, token: Option<&str>) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse("http://api/v1/jobs")?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in [
            ("team", &args.team),
            ("queue", &args.queue),
            ("state", &args.state),
            ("name", &args.name),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        q.append_pair("limit", &page.to_string());
        if let Some(t) = token {
            q.append_pair("next_token", t);
        }
    }
    Ok(format!("{}?{}", url.path(), url.query().unwrap_or("")))
}

pub async fn list(api: &Api, args: &JobsArgs) -> anyhow::Result<u8> {
    let mut jobs = Vec::new();
    let mut token: Option<String> = None;
    while jobs.len() < args.limit {
        let want = (args.limit - jobs.len()).min(100);
        let page = api.get(&jobs_path(args, want, token.as_deref())?).await?;
        jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    jobs.truncate(args.limit);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&jobs)?),
        Output::Text => {
            println!(
                "{:<26} {:<24} {:<12} {:<12} {:<10} {:>8}  CREATED",
                "JOB", "NAME", "TEAM", "QUEUE", "STATE", "TASKS"
            );
            for j in &jobs {
                let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<26} {:<24} {:<12} {:<12} {:<10} {:>8}  {}",
                    s("job_id"),
                    s("name"),
                    s("team"),
                    s("queue"),
                    s("state"),
                    j["total_tasks"].as_u64().unwrap_or(0),
                    s("created_at")
                );
            }
            eprintln!(
                "{} jobs{}",
                jobs.len(),
                if token.is_some() {
                    " (more: raise --limit)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_encoded_into_the_query() {
        let args = JobsArgs {
            team: Some("research".into()),
            state: Some("RUNNING,FAILED".into()),
            name: Some("nightly run&x".into()),
            ..JobsArgs::default()
        };
        assert_eq!(
            jobs_path(&args, 10, Some("abc")).expect("a path"),
            "/v1/jobs?team=research&state=RUNNING%2CFAILED&name=nightly+run%26x&limit=10&next_token=abc"
        );
    }
}
