//! AWS Batch's REST-JSON operations on the api function: the paths, bodies and error
//! shapes `aws batch` and boto3 use, so existing tools work unchanged. Requests are
//! SigV4-signed by those clients; in AWS, API Gateway's IAM authorizer checks the
//! signature, and the principal it authenticated is the caller (see [`crate::identity`]).

use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use batchplane::api::{ApiError, ErrorKind, Service};
use batchplane::aws_batch::CLIENT;
use batchplane::domain::access::Access;
use serde_json::Value;
use std::sync::Arc;

/// AWS's error shape: the type in `x-amzn-ErrorType` and `__type`, and a `message`.
/// A refusal of the caller is IAM's `AccessDeniedException` (403), as API Gateway
/// answers a request its authorizer denies.
pub fn error_response(e: ApiError) -> Response {
    let (status, kind) = match e.kind {
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "AccessDeniedException"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, CLIENT),
        k if k.is_client() => (StatusCode::BAD_REQUEST, CLIENT),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "ServerException"),
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

/// The caller's access, or the AWS-shaped error that reading the grants gave.
async fn access(svc: &Service, parts: &Parts) -> Result<Access, Response> {
    let p = crate::identity::principal(parts, svc.identity).map_err(error_response)?;
    svc.access_for(p).await.map_err(error_response)
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
    ($name:ident, |$svc:ident, $input:ident, $who:ident| $call:expr) => {
        async fn $name(
            State($svc): State<Arc<Service>>,
            parts: Parts,
            body: axum::body::Bytes,
        ) -> Response {
            let $who = match access(&$svc, &parts).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match parse_body(&body) {
                Ok($input) => respond($call.await),
                Err(e) => error_response(e),
            }
        }
    };
}

op!(submit_job, |svc, input, who| svc
    .aws_submit_job(&who, &input));
op!(describe_jobs, |svc, input, who| svc
    .describe_jobs(&who, &input));
op!(list_jobs, |svc, input, who| svc.list_jobs(&who, &input));
op!(get_job_queue_snapshot, |svc, input, who| svc
    .get_job_queue_snapshot(&who, &input));
op!(cancel_job, |svc, input, who| svc
    .aws_cancel_job(&who, &input, false));
op!(terminate_job, |svc, input, who| svc
    .aws_cancel_job(&who, &input, true));
op!(cancel_jobs, |svc, input, who| svc
    .aws_cancel_jobs(&who, &input, false));
op!(terminate_jobs, |svc, input, who| svc
    .aws_cancel_jobs(&who, &input, true));
op!(register_job_definition, |svc, input, who| svc
    .register_job_definition(&who, &input));
op!(describe_job_definitions, |svc, input, who| svc
    .describe_job_definitions(&who, &input));
op!(deregister_job_definition, |svc, input, who| svc
    .deregister_job_definition(&who, &input));
op!(create_job_queue, |svc, input, who| svc
    .create_job_queue(&who, &input));
op!(describe_job_queues, |svc, input, who| svc
    .describe_job_queues(&who, &input));
op!(update_job_queue, |svc, input, who| svc
    .update_job_queue(&who, &input));
op!(delete_job_queue, |svc, input, who| svc
    .delete_job_queue(&who, &input));
op!(create_compute_environment, |svc, input, who| svc
    .create_compute_environment(&who, &input));
op!(describe_compute_environments, |svc, input, who| svc
    .describe_compute_environments(&who, &input));
op!(update_compute_environment, |svc, input, who| svc
    .update_compute_environment(&who, &input));
op!(delete_compute_environment, |svc, input, who| svc
    .delete_compute_environment(&who, &input));
op!(create_scheduling_policy, |svc, input, who| svc
    .create_scheduling_policy(&who, &input));
op!(describe_scheduling_policies, |svc, input, who| svc
    .describe_scheduling_policies(&who, &input));
op!(list_scheduling_policies, |svc, input, who| svc
    .list_scheduling_policies(&who, &input));
op!(update_scheduling_policy, |svc, input, who| svc
    .update_scheduling_policy(&who, &input));
op!(delete_scheduling_policy, |svc, input, who| svc
    .delete_scheduling_policy(&who, &input));

async fn tag_resource(
    State(svc): State<Arc<Service>>,
    Path(arn): Path<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Response {
    let who = match access(&svc, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match parse_body(&body) {
        Ok(input) => respond(svc.tag_resource(&who, &arn, &input).await),
        Err(e) => error_response(e),
    }
}

async fn untag_resource(
    State(svc): State<Arc<Service>>,
    Path(arn): Path<String>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Response {
    let who = match access(&svc, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let keys: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "tagKeys")
        .map(|(_, v)| percent_decode(v))
        .collect();
    respond(svc.untag_resource(&who, &arn, &keys).await)
}

async fn list_tags(
    State(svc): State<Arc<Service>>,
    Path(arn): Path<String>,
    parts: Parts,
) -> Response {
    let who = match access(&svc, &parts).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    respond(svc.list_tags_for_resource(&who, &arn).await)
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
        .route("/v1/getjobqueuesnapshot", post(get_job_queue_snapshot))
        .route("/v1/canceljob", post(cancel_job))
        .route("/v1/terminatejob", post(terminate_job))
        .route("/v1/canceljobs", post(cancel_jobs))
        .route("/v1/terminatejobs", post(terminate_jobs))
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
    fn nulls_are_left_out_and_keys_decoded() {
        let v = strip_nulls(serde_json::json!({"a": null, "b": [{"c": null, "d": 1}]}));
        assert_eq!(v, serde_json::json!({"b": [{"d": 1}]}));
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
    }
}
