//! A small client for Batchplane's HTTP API.

use anyhow::Context;
use serde_json::Value;
use std::time::Duration;

pub struct Api {
    base: String,
    http: reqwest::Client,
    /// The region to sign for (see [`sigv4_region`]); `None`: unsigned.
    sigv4_region: Option<String>,
    credentials: tokio::sync::OnceCell<aws_credential_types::Credentials>,
}

/// The region to sign for: the one a deployed API's URL names
/// (`https://ID.execute-api.REGION.amazonaws.com`); elsewhere the environment's (default
/// `us-east-1`) when `BATCHPLANE_API_SIGV4=1` asks for signing or `AWS_ACCESS_KEY_ID`
/// gives credentials; else none (unsigned: `anonymous`).
pub fn sigv4_region(base: &str) -> Option<String> {
    let host = base
        .split("://")
        .nth(1)
        .unwrap_or(base)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    let parts: Vec<&str> = host.split('.').collect();
    if let Some(i) = parts.iter().position(|p| *p == "execute-api") {
        if let Some(region) = parts.get(i + 1) {
            return Some(region.to_string());
        }
    }
    // Elsewhere (a custom domain, the local stack), sign when asked to or when given
    // credentials: the local stack takes the key id as the caller.
    let asked = std::env::var("BATCHPLANE_API_SIGV4").is_ok_and(|v| v == "1");
    let has_key = std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|v| !v.is_empty());
    if asked || has_key {
        return Some(
            std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
        );
    }
    None
}

/// SigV4 headers (`authorization`, `x-amz-date`, and the session token when there is
/// one) for an API Gateway request.
pub fn sigv4_headers(
    credentials: &aws_credential_types::Credentials,
    region: &str,
    method: &str,
    url: &str,
    body: &[u8],
    now: std::time::SystemTime,
) -> anyhow::Result<Vec<(String, String)>> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("execute-api")
        .time(now)
        .settings(SigningSettings::default())
        .build()?
        .into();
    let signable =
        SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(body))?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    let mut request = http::Request::builder().method(method).uri(url).body(())?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect())
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            sigv4_region: sigv4_region(base),
            credentials: tokio::sync::OnceCell::new(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request, signed when the API is a deployed one.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<String>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.request(method.clone(), url);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(region) = &self.sigv4_region {
            let credentials = self
                .credentials
                .get_or_try_init(|| async {
                    use aws_credential_types::provider::ProvideCredentials;
                    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    let provider = config.credentials_provider().context(
                        "the API is a deployed one (SigV4): no AWS credentials provider is configured",
                    )?;
                    provider
                        .provide_credentials()
                        .await
                        .context("loading AWS credentials to sign API requests with")
                })
                .await?;
            let bytes = body.as_deref().unwrap_or("").as_bytes();
            for (k, v) in sigv4_headers(
                credentials,
                region,
                method.as_str(),
                url,
                bytes,
                std::time::SystemTime::now(),
            )? {
                req = req.header(k, v);
            }
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.with_context(|| format!("{method} {url}"))
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
            return Err(HttpError {
                status: status.as_u16(),
                message: msg,
            }
            .into());
        }
        Err(HttpError {
            status: status.as_u16(),
            message: format!("HTTP {status}: {body}"),
        }
        .into())
    }

    /// Send `method path` (with its query) as the CLI's own requests go, signed the
    /// same way, and hand back the API's status and body untouched, error or not (the
    /// console passes them on to its page).
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}{path_and_query}", self.base);
        let resp = self.send(method, &url, body, &[]).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.context("reading the API's answer")?;
        Ok((status, bytes.to_vec()))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(reqwest::Method::GET, &url, None, &[]).await?;
        Self::check(resp).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let extra: Vec<(&str, &str)> = idempotency_key
            .map(|k| ("Idempotency-Key", k))
            .into_iter()
            .collect();
        let resp = self
            .send(reqwest::Method::POST, &url, Some(body), &extra)
            .await?;
        Self::check(resp).await
    }

    pub async fn put(&self, path: &str, body: String) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .send(reqwest::Method::PUT, &url, Some(body), &[])
            .await?;
        Self::check(resp).await
    }
}

/// The API answered with an error: its HTTP status and what it said.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    /// Whether the same request may succeed later: throttled, busy, or a fault on the
    /// API's side (a refusal of the request itself will not).
    pub fn retryable(e: &anyhow::Error) -> bool {
        match e.downcast_ref::<HttpError>() {
            Some(h) => h.status == 429 || h.status >= 500,
            // No answer at all (connection, timeout): try again.
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployed_apis_are_signed_for_their_region_and_local_ones_are_not() {
        assert_eq!(
            sigv4_region("https://a1b2c3.execute-api.eu-west-1.amazonaws.com").as_deref(),
            Some("eu-west-1")
        );
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            assert_eq!(sigv4_region("http://127.0.0.1:8750"), None);
        }
    }

    #[test]
    fn a_signature_names_the_key_date_region_and_service() {
        let c = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("token".into()),
            None,
            "test",
        );
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_400_000);
        let headers = sigv4_headers(
            &c,
            "us-east-1",
            "POST",
            "https://x.execute-api.us-east-1.amazonaws.com/v1/jobs",
            b"{}",
            now,
        )
        .expect("signed");
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let auth = get("authorization").expect("an authorization header");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(
            auth.contains("/us-east-1/execute-api/aws4_request"),
            "{auth}"
        );
        assert!(get("x-amz-date").is_some());
        assert_eq!(get("x-amz-security-token").as_deref(), Some("token"));
    }
}
