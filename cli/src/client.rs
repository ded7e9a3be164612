//! A small client for Batchplane's HTTP API.

use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;

pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn check(resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let err = &body["error"];
        if err.is_object() {
            let details = &err["details"];
            let mut msg = format!(
                "{} ({}): {}",
                err["code"].as_str().unwrap_or("Error"),
                status.as_u16(),
                err["message"].as_str().unwrap_or("")
            );
            if details.is_object() && !details.as_object().map(|o| o.is_empty()).unwrap_or(true) {
                msg.push_str(&format!("\n  details: {details}"));
            }
            bail!(msg)
        }
        bail!("HTTP {status}: {body}")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Self::check(resp).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.post(&url).body(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        Self::check(resp).await
    }

    pub async fn put(&self, path: &str, body: String) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .put(&url)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        Self::check(resp).await
    }
}
