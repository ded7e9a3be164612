//! AWS Batch's REST-JSON operations on the api function: the paths, bodies and error
//! shapes `aws batch` and boto3 use, so existing tools work unchanged. Requests are
//! SigV4-signed by those clients; in AWS, API Gateway's IAM authorizer checks the
//! signature, and the access key it names is recorded as the caller.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use batchplane::api::{ApiError, ErrorKind, Service};
use batchplane::aws_batch::CLIENT;
use serde_json::Value;
use std::sync::Arc;

/// AWS's error shape: the type in `x-amzn-ErrorType` and `__type`, and a `message`.
fn error_response(e: ApiError) -> Response {
    let (status, kind) = if e.kind.is_client() {
        (StatusCode::BAD_REQUEST, CLIENT)
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "ServerException")
    };
    let mut r = (
        status,
        Json(serde_json::json!({"__type": kind, "message": e.message})),
    )
        .into_response();
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

/// Nulls are left out, as AWS does.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

fn respond(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => (StatusCode::OK, Json(strip_nulls(v))).into_response(),
        Err(e) => error_response(e),
    }
}

/// The access key of a SigV4 `Authorization` header (`Credential=<key>/<scope>`).
pub fn caller(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    Some(cred.split('/').next()?.to_string())
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::Invalid,
            CLIENT,
            format!(
                "request body is not JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
            Value::Null,
        )
    })?;
    if !v.is_object() {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            CLIENT,
            "request body must be a JSON object",
            Value::Null,
        ));
    }
    Ok(v)
}

macro_rules! op {
    ($name:ident, |$svc:ident, $input:ident, $caller:ident| $call:expr) => {
        async fn $name(
            State($svc): State<Arc<Service>>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> Response {
            let $caller = caller(&headers);
            let _ = &$caller;
            match parse_body(&body) {
                Ok($input) => respond($call.await),
                Err(e) => error_response(e),
            }
        }
    };
}

op!(submit_job, |svc, input, who| svc
    .aws_submit_job(&input, who.as_deref()));
op!(describe_jobs, |svc, input, who| svc.describe_jobs(&input));
op!(list_jobs, |svc, input, who| svc.list_jobs(&input));
op!(cancel_job, |svc, input, who| svc
    .aws_cancel_job(&input, false));
op!(terminate_job, |svc, input, who| svc
    .aws_cancel_job(&input, true));
op!(register_job_definition, |svc, input, who| svc
    .register_job_definition(&input));
op!(describe_job_definitions, |svc, input, who| svc
    .describe_job_definitions(&input));
op!(deregister_job_definition, |svc, input, who| svc
    .deregister_job_definition(&input));
op!(create_job_queue, |svc, input, who| svc
    .create_job_queue(&input));
op!(describe_job_queues, |svc, input, who| svc
    .describe_job_queues(&input));
op!(update_job_queue, |svc, input, who| svc
    .update_job_queue(&input));
op!(delete_job_queue, |svc, input, who| svc
    .delete_job_queue(&input));
op!(create_compute_environment, |svc, input, who| svc
    .create_compute_environment(&input));
op!(describe_compute_environments, |svc, input, who| svc
    .describe_compute_environments(&input));
op!(update_compute_environment, |svc, input, who| svc
    .update_compute_environment(&input));
op!(delete_compute_environment, |svc, input, who| svc
    .delete_compute_environment(&input));
op!(create_scheduling_policy, |svc, input, who| svc
    .create_scheduling_policy(&input));
op!(describe_scheduling_policies, |svc, input, who| svc
    .describe_scheduling_policies(&input));
op!(list_scheduling_policies, |svc, input, who| svc
    .list_scheduling_policies(&input));
op!(update_scheduling_policy, |svc, input, who| svc
    .update_scheduling_policy(&input));
op!(delete_scheduling_policy, |svc, input, who| svc
    .delete_scheduling_policy(&input));

async fn tag_resource(
    State(svc): State<Arc<Service>>,
    Path(arn): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match parse_body(&body) {
        Ok(input) => respond(svc.tag_resource(&arn, &input).await),
        Err(e) => error_response(e),
    }
}

async fn untag_resource(
    State(svc): State<Arc<Service>>,
    Path(arn): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let keys: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "tagKeys")
        .map(|(_, v)| percent_decode(v))
        .collect();
    respond(svc.untag_resource(&arn, &keys).await)
}

async fn list_tags(State(svc): State<Arc<Service>>, Path(arn): Path<String>) -> Response {
    respond(svc.list_tags_for_resource(&arn).await)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Operations AWS Batch has and Batchplane does not: a clear refusal, never a silent
/// success.
async fn unsupported(Path(op): Path<String>) -> Response {
    error_response(ApiError::new(
        ErrorKind::Invalid,
        CLIENT,
        format!("operation {op} is not supported by Batchplane (service jobs, consumable resources, quota shares and multi-node jobs are not part of it)"),
        Value::Null,
    ))
}

/// The AWS Batch routes.
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/submitjob", post(submit_job))
        .route("/v1/describejobs", post(describe_jobs))
        .route("/v1/listjobs", post(list_jobs))
        .route("/v1/canceljob", post(cancel_job))
        .route("/v1/terminatejob", post(terminate_job))
        .route("/v1/registerjobdefinition", post(register_job_definition))
        .route("/v1/describejobdefinitions", post(describe_job_definitions))
        .route(
            "/v1/deregisterjobdefinition",
            post(deregister_job_definition),
        )
        .route("/v1/createjobqueue", post(create_job_queue))
        .route("/v1/describejobqueues", post(describe_job_queues))
        .route("/v1/updatejobqueue", post(update_job_queue))
        .route("/v1/deletejobqueue", post(delete_job_queue))
        .route(
            "/v1/createcomputeenvironment",
            post(create_compute_environment),
        )
        .route(
            "/v1/describecomputeenvironments",
            post(describe_compute_environments),
        )
        .route(
            "/v1/updatecomputeenvironment",
            post(update_compute_environment),
        )
        .route(
            "/v1/deletecomputeenvironment",
            post(delete_compute_environment),
        )
        .route("/v1/createschedulingpolicy", post(create_scheduling_policy))
        .route(
            "/v1/describeschedulingpolicies",
            post(describe_scheduling_policies),
        )
        .route("/v1/listschedulingpolicies", post(list_scheduling_policies))
        .route("/v1/updateschedulingpolicy", post(update_scheduling_policy))
        .route("/v1/deleteschedulingpolicy", post(delete_scheduling_policy))
        .route(
            "/v1/tags/{arn}",
            post(tag_resource).delete(untag_resource).get(list_tags),
        )
        .route("/v1/{op}", post(unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_is_the_signing_access_key() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/batch/aws4_request, SignedHeaders=host, Signature=abc"
                .parse()
                .unwrap(),
        );
        assert_eq!(caller(&h).as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(caller(&HeaderMap::new()), None);
    }

    #[test]
    fn nulls_are_left_out_and_keys_decoded() {
        let v = strip_nulls(serde_json::json!({"a": null, "b": [{"c": null, "d": 1}]}));
        assert_eq!(v, serde_json::json!({"b": [{"d": 1}]}));
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
    }
}
