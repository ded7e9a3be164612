//! The stack's API as the chaos workload and its checks use it.

use super::Jobs;
use anyhow::bail;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The stack's API as the workload and the checks use it: every call retried on a 5xx
/// or no answer (the API's own DynamoDB and SQS calls are faulted too), with the same
/// idempotency key for a submission.
#[derive(Clone)]
pub(super) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(super) fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut last = String::new();
        // Longer than an idempotency key's hold (60 s): a submission whose writer died
        // keeps its key that long. A 5,000-task submission under 30% throttling can take
        // a minute a try on a loaded machine; the key makes every try safe.
        let give_up = Instant::now() + Duration::from_secs(600);
        let mut attempt = 0u32;
        while Instant::now() < give_up {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(b) = body {
                req = req.body(b.to_string());
            }
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            match req.send().await {
                Ok(resp)
                    if resp.status().is_server_error() || resp.status() == 409 && key.is_some() =>
                {
                    last = format!(
                        "{} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let v = resp.json().await.unwrap_or(Value::Null);
                    return Ok((status, v));
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
        }
        bail!("{method} {path}: still failing after {attempt} tries: {last}")
    }

    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, v) = self.call(reqwest::Method::GET, path, None, None).await?;
        if status != 200 {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    pub(super) async fn submit(&self, spec: &Value, key: &str) -> anyhow::Result<String> {
        let key = format!("{key}-{}", uuid::Uuid::new_v4().simple());
        let (status, v) = self
            .call(reqwest::Method::POST, "/v1/jobs", Some(spec), Some(&key))
            .await?;
        match v["job_id"].as_str() {
            Some(id) if status < 300 => Ok(id.to_string()),
            _ => bail!("submitting {}: {status} {v}", spec["name"]),
        }
    }

    pub(super) async fn add_tasks(&self, job: &str, tasks: &[Value]) -> anyhow::Result<()> {
        let path = format!("/v1/jobs/{job}/tasks");
        let body = Value::Array(tasks.to_vec());
        let (status, v) = self
            .call(reqwest::Method::POST, &path, Some(&body), None)
            .await?;
        match status {
            201 => Ok(()),
            // A retry of an addition whose answer was lost: it went in the first time.
            409 | 400
                if v["error"]["code"] == "TaskExists"
                    || v["error"]["code"] == "DuplicateTaskId" =>
            {
                Ok(())
            }
            _ => bail!("adding tasks to {job}: {status} {v}"),
        }
    }

    pub(super) async fn cancel(&self, job: &str) -> anyhow::Result<()> {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/jobs/{job}/cancel"),
                None,
                None,
            )
            .await?;
        if status != 200 && status != 409 {
            bail!("cancelling {job}: {status} {v}");
        }
        Ok(())
    }

    pub(super) async fn all_closed(&self, jobs: &Jobs) -> anyhow::Result<bool> {
        for (job, _) in &jobs.expected {
            let v = self.get(&format!("/v1/jobs/{job}")).await?;
            if !matches!(
                v["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELLED")
            ) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) async fn all_tasks(&self, job: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/v1/jobs/{job}/tasks?limit=500");
            if let Some(t) = &token {
                path.push_str(&format!("&next_token={t}"));
            }
            let page = self.get(&path).await?;
            out.extend(page["tasks"].as_array().cloned().unwrap_or_default());
            match page["next_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }
}
