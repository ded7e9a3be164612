//! A fault-injecting proxy in front of an emulator (DynamoDB Local or moto): every
//! request is forwarded, except that, at the rates its [`FaultPlan`] gives, it is
//! answered with AWS's own throttling error instead, delayed, cut off before it reaches
//! the emulator or after the emulator applied it (the answer lost), answered with part
//! of a batch left unprocessed, or (an SQS delete) acknowledged without being done, so
//! the message is delivered again. What it did is counted by kind and operation.
//!
//! Only the DynamoDB, SQS and CloudWatch Logs APIs (`X-Amz-Target:
//! DynamoDB_20120810.*`, `AmazonSQS.*` and `Logs_20140328.*`) are faulted; DynamoDB
//! Streams, EventBridge, Step Functions, EKS and EC2 pass through untouched.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often each fault happens, per request of the faulted APIs (0 to 1).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultPlan {
    /// Answered with AWS's throttling error, not forwarded.
    pub throttle: f64,
    /// The connection is cut before the request is forwarded.
    pub reset: f64,
    /// Forwarded and applied, then the connection is cut: the caller never hears.
    pub lose_answer: f64,
    /// Delayed by up to `latency_max` before it is forwarded.
    pub latency: f64,
    pub latency_max: Duration,
    /// A BatchGetItem or BatchWriteItem of more than one entry gets some of them back
    /// as `UnprocessedKeys` / `UnprocessedItems`.
    pub unprocessed: f64,
    /// An SQS DeleteMessage(Batch) is acknowledged and not done.
    pub skip_delete: f64,
    /// Only these operations (`UpdateItem`, `ReceiveMessage`…) are faulted; all when empty.
    pub operations: Vec<String>,
    /// Only requests whose body contains this are faulted (one kind of write: a
    /// heartbeat's `SET lease_expires = :lease`).
    pub body_contains: Option<String>,
    /// At most this many faults (latency aside) from when the plan was set.
    pub limit: Option<u64>,
}

impl FaultPlan {
    /// No faults: a plain proxy.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    fn applies_to(&self, operation: &str, body: &[u8]) -> bool {
        let op = self.operations.is_empty() || self.operations.iter().any(|o| o == operation);
        let text = || {
            self.body_contains
                .as_ref()
                .is_none_or(|needle| String::from_utf8_lossy(body).contains(needle.as_str()))
        };
        op && text()
    }
}

/// Which API a request is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    DynamoDb,
    Sqs,
    Logs,
    /// Anything else: passed through.
    Other,
}

fn api_and_operation(headers: &HeaderMap) -> (Api, String) {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match target.split_once('.') {
        Some(("DynamoDB_20120810", op)) => (Api::DynamoDb, op.to_string()),
        Some(("AmazonSQS", op)) => (Api::Sqs, op.to_string()),
        Some(("Logs_20140328", op)) => (Api::Logs, op.to_string()),
        _ => (Api::Other, String::new()),
    }
}

/// What the proxy did: counts by fault kind (`throttle`, `reset`, …) and operation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FaultCounts {
    pub forwarded: u64,
    pub by_kind: BTreeMap<String, BTreeMap<String, u64>>,
}

impl FaultCounts {
    /// Faults of one kind, over every operation.
    pub fn total(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).map_or(0, |ops| ops.values().sum())
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    plan: RwLock<FaultPlan>,
    counts: Mutex<FaultCounts>,
    /// Faults injected since the plan was set (for its `limit`).
    injected: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Take one fault of the plan's limit; false when it is used up.
    fn take_one(&self, limit: Option<u64>) -> bool {
        use std::sync::atomic::Ordering;
        match limit {
            None => true,
            Some(n) => self
                .injected
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
                    (k < n).then_some(k + 1)
                })
                .is_ok(),
        }
    }

    fn count(&self, kind: &str, operation: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.by_kind
            .entry(kind.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_default() += 1;
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, plan: FaultPlan) -> anyhow::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            plan: RwLock::new(plan),
            counts: Mutex::default(),
            injected: Default::default(),
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(FaultProxy { url, shared, stop })
    }

    /// Change the faults from now on.
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut current = self.shared.plan.write().unwrap_or_else(|e| e.into_inner());
        self.shared
            .injected
            .store(0, std::sync::atomic::Ordering::SeqCst);
        *current = plan;
    }

    pub fn plan(&self) -> FaultPlan {
        self.shared
            .plan
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counts(&self) -> FaultCounts {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// A response whose body fails at once: hyper cuts the connection mid-answer, and the
/// caller sees what a reset looks like.
fn cut_off() -> Response<Body> {
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault injected: connection reset",
        ))
    });
    let mut r = Response::new(Body::from_stream(failing));
    *r.status_mut() = StatusCode::OK;
    r
}

/// AWS's throttling answer, in the API's own JSON protocol shape.
fn throttled(api: Api) -> Response<Body> {
    let (body, content_type) = match api {
        Api::DynamoDb => (
            json!({
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."
            }),
            "application/x-amz-json-1.0",
        ),
        Api::Logs => (
            json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
            "application/x-amz-json-1.1",
        ),
        _ => (
            json!({"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Request is throttled."}),
            "application/x-amz-json-1.0",
        ),
    };
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    if api == Api::Sqs {
        r.headers_mut().insert(
            "x-amzn-query-error",
            HeaderValue::from_static("RequestThrottled;Sender"),
        );
    }
    r
}

fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    r
}

/// Split a batch request: the entries to forward, and the ones to hand back as
/// unprocessed (at least one kept, at least one held back). `None` when there is
/// nothing to split.
fn hold_back(operation: &str, body: &mut Value) -> Option<Value> {
    let items = body.get_mut("RequestItems")?.as_object_mut()?;
    let mut held = serde_json::Map::new();
    for (table, entry) in items.iter_mut() {
        let list = match operation {
            "BatchGetItem" => entry.get_mut("Keys")?.as_array_mut()?,
            "BatchWriteItem" => entry.as_array_mut()?,
            _ => return None,
        };
        if list.len() < 2 {
            continue;
        }
        let keep = 1 + fastrand::usize(..list.len() - 1);
        let back: Vec<Value> = list.split_off(keep);
        let back = match operation {
            "BatchGetItem" => {
                let mut e = entry.clone();
                e["Keys"] = Value::Array(back);
                e
            }
            _ => Value::Array(back),
        };
        held.insert(table.clone(), back);
    }
    (!held.is_empty()).then_some(Value::Object(held))
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return cut_off();
    };
    let (api, operation) = api_and_operation(&parts.headers);
    let plan = shared
        .plan
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let faulted = api != Api::Other && plan.applies_to(&operation, &bytes);
    let mut body_bytes = bytes.to_vec();
    let mut held: Option<Value> = None;
    let mut lose_answer = false;
    if faulted {
        if chance(plan.latency) && !plan.latency_max.is_zero() {
            shared.count("latency", &operation);
            tokio::time::sleep(plan.latency_max.mul_f64(fastrand::f64())).await;
        }
        let limit = plan.limit;
        let fault = |rate: f64| chance(rate) && shared.take_one(limit);
        if fault(plan.throttle) {
            shared.count("throttle", &operation);
            return throttled(api);
        }
        if fault(plan.reset) {
            shared.count("reset", &operation);
            return cut_off();
        }
        if api == Api::Sqs
            && matches!(operation.as_str(), "DeleteMessage" | "DeleteMessageBatch")
            && fault(plan.skip_delete)
        {
            shared.count("skip_delete", &operation);
            return skipped_delete(&operation, &bytes);
        }
        if api == Api::DynamoDb
            && matches!(operation.as_str(), "BatchGetItem" | "BatchWriteItem")
            && fault(plan.unprocessed)
        {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
                if let Some(back) = hold_back(&operation, &mut v) {
                    shared.count("unprocessed", &operation);
                    held = Some(back);
                    body_bytes = v.to_string().into_bytes();
                }
            }
        }
        lose_answer = fault(plan.lose_answer);
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = shared.client.request(parts.method.clone(), url);
    for (name, value) in parts.headers.iter() {
        if name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(body_bytes).send().await {
        Ok(a) => a,
        Err(_) => return cut_off(),
    };
    {
        let mut c = shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.forwarded += 1;
    }
    if lose_answer {
        shared.count("lose_answer", &operation);
        return cut_off();
    }
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(answer_body) = answer.bytes().await else {
        return cut_off();
    };
    let answer_body = match held {
        Some(back) if status.is_success() => {
            let mut v: Value = serde_json::from_slice(&answer_body).unwrap_or(json!({}));
            let field = if operation == "BatchGetItem" {
                "UnprocessedKeys"
            } else {
                "UnprocessedItems"
            };
            v[field] = back;
            v.to_string().into_bytes().into()
        }
        _ => answer_body,
    };
    let mut r = Response::new(Body::from(answer_body));
    *r.status_mut() = status;
    for (name, value) in headers.iter() {
        // The body may have changed: its length and checksum are recomputed or dropped.
        if name != "content-length" && name != "x-amz-crc32" && name != "transfer-encoding" {
            r.headers_mut().append(name, value.clone());
        }
    }
    r
}

/// SQS's answer to a delete that was not done.
fn skipped_delete(operation: &str, request: &[u8]) -> Response<Body> {
    if operation == "DeleteMessage" {
        return json_response(&json!({}));
    }
    let ids: Vec<Value> = serde_json::from_slice::<Value>(request)
        .ok()
        .and_then(|v| v.get("Entries").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("Id").cloned())
        .map(|id| json!({ "Id": id }))
        .collect();
    json_response(&json!({ "Successful": ids, "Failed": [] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_get_keeps_some_keys_and_hands_the_rest_back() {
        let mut body = json!({"RequestItems": {"t": {"Keys": [{"pk": 1}, {"pk": 2}, {"pk": 3}], "ConsistentRead": true}}});
        let back = hold_back("BatchGetItem", &mut body)
            .unwrap_or_else(|| panic!("three keys can be split"));
        let kept = body["RequestItems"]["t"]["Keys"]
            .as_array()
            .map_or(0, Vec::len);
        let held = back["t"]["Keys"].as_array().map_or(0, Vec::len);
        assert!(
            kept >= 1 && held >= 1 && kept + held == 3,
            "{body} / {back}"
        );
        assert_eq!(back["t"]["ConsistentRead"], json!(true));
    }

    #[test]
    fn a_single_write_is_not_split() {
        let mut body = json!({"RequestItems": {"t": [{"PutRequest": {}}]}});
        assert!(hold_back("BatchWriteItem", &mut body).is_none());
    }

    #[test]
    fn only_dynamodb_and_sqs_are_faulted() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDBStreams_20120810.GetRecords"),
        );
        assert_eq!(api_and_operation(&h).0, Api::Other);
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonSQS.ReceiveMessage"),
        );
        assert_eq!(
            api_and_operation(&h),
            (Api::Sqs, "ReceiveMessage".to_string())
        );
    }
}
