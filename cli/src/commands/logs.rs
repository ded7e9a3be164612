//! `batchplane logs JOB TASK`: an attempt's output, from CloudWatch Logs through the API
//! (so only those who may view the job see it), `-f` following a running attempt until
//! it ends; the attempt's own files where CloudWatch has nothing (a deployment that
//! ships no logs, or lines that could not be shipped, which the attempt record says).

use crate::client::Api;
use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;

/// How often a followed attempt is asked for more.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn logs(
    api: &Api,
    job_id: &str,
    task_id: &str,
    attempt: Option<u32>,
    follow: bool,
    stderr: bool,
) -> anyhow::Result<u8> {
    let base = format!("/v1/jobs/{job_id}/tasks/{task_id}/logs");
    let mut query = attempt.map(|a| format!("attempt={a}")).unwrap_or_default();
    let first = match api.get(&with_query(&base, &query)).await {
        Ok(page) => page,
        // No CloudWatch here (or it did not answer): the files, as before.
        Err(e)
            if e.to_string().contains("LogsNotShipped")
                || e.to_string().contains("LogsUnavailable") =>
        {
            eprintln!("note: {}", first_line(&e));
            return from_files(api, job_id, task_id, attempt, stderr).await;
        }
        Err(e) => return Err(e),
    };
    // Later pages name the attempt the first one was, even if another starts meanwhile.
    if attempt.is_none() {
        query = format!("attempt={}", first["attempt"]);
    }
    let mut page = first;
    let mut printed = 0usize;
    loop {
        for line in page["lines"].as_array().into_iter().flatten() {
            println!("{}", line["message"].as_str().unwrap_or_default());
            printed += 1;
        }
        let running = page["running"].as_bool().unwrap_or(false);
        let fresh = page["lines"].as_array().is_some_and(|l| !l.is_empty());
        // Go on while lines come, and while a followed attempt runs.
        let more = fresh || (follow && running);
        if !more {
            break;
        }
        if !fresh {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        let token = page["next_token"].as_str().unwrap_or_default().to_string();
        let q = if token.is_empty() {
            query.clone()
        } else {
            format!("{query}&next_token={}", encode(&token))
        };
        page = api.get(&with_query(&base, &q)).await?;
    }
    if let Some(note) = page["shipping"].as_str() {
        eprintln!("note: {note}");
    }
    if printed == 0 && !page["running"].as_bool().unwrap_or(false) {
        // Nothing in CloudWatch for an attempt that ended: what its files hold.
        if page["stdout"].is_string() {
            return from_files(api, job_id, task_id, attempt, stderr).await;
        }
    }
    Ok(0)
}

fn with_query(base: &str, query: &str) -> String {
    if query.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{query}")
    }
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Percent-encoding for a query value (CloudWatch's tokens carry `/` and `+`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The attempt's own files, where this machine can read them (the local stack).
async fn from_files(
    api: &Api,
    job_id: &str,
    task_id: &str,
    attempt: Option<u32>,
    stderr: bool,
) -> anyhow::Result<u8> {
    let t = api
        .get(&format!("/v1/jobs/{job_id}/tasks/{task_id}"))
        .await?;
    let attempts = t["attempts"].as_array().cloned().unwrap_or_default();
    let chosen: Option<&Value> = match attempt {
        Some(n) => attempts
            .iter()
            .find(|a| a["attempt"].as_u64() == Some(u64::from(n))),
        None => attempts.iter().rev().find(|a| a["stdout"].is_string()),
    };
    let Some(a) = chosen else {
        bail!(
            "task {task_id} has no recorded attempt with logs yet (state {})",
            t["state"].as_str().unwrap_or("?")
        );
    };
    let streams: &[&str] = if stderr {
        &["stdout", "stderr"]
    } else {
        &["stdout"]
    };
    for stream in streams {
        let loc = a[*stream].as_str().unwrap_or_default();
        let Some(path) = loc.strip_prefix("file://") else {
            bail!(
                "{stream} of attempt {} is at {loc}, which this CLI cannot read",
                a["attempt"]
            );
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        if stderr {
            println!("==> {stream} (attempt {}) <==", a["attempt"]);
        }
        print!("{text}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_the_query_string() {
        assert_eq!(encode("f/3839+a=="), "f%2F3839%2Ba%3D%3D");
        assert_eq!(with_query("/x", ""), "/x");
        assert_eq!(with_query("/x", "attempt=2"), "/x?attempt=2");
    }
}
