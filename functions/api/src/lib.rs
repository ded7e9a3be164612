//! The api function: Batchplane's HTTP API as an axum router. The same router is served
//! by `lambda_http` in AWS and by hyper in the local stack.

pub mod batch;
pub mod identity;

use identity::Caller;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use batchplane::api::{ApiError, ErrorKind, Service};
use serde::Deserialize;
use std::sync::Arc;

/// Request bodies larger than this are refused with a 413: it is what a Lambda invoked
/// synchronously accepts (6 MB), so the local stack takes no more than AWS does.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// An error in the native API's JSON shape.
pub struct Error(pub ApiError);

/// The one place an error's kind becomes an HTTP status.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind);
        (status, Json(self.0.body())).into_response()
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error(e)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The API's routes over a [`Service`].
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{job_id}", get(get_job))
        .route("/v1/jobs/{job_id}/tasks", get(list_tasks).post(add_tasks))
        .route("/v1/jobs/{job_id}/tasks/{task_id}", get(get_task))
        .route("/v1/jobs/{job_id}/pages/{page_id}", put(add_page))
        .route("/v1/jobs/{job_id}/commit", post(commit_job))
        .route("/v1/jobs/{job_id}/tasks/{task_id}/logs", get(task_log))
        .route("/v1/jobs/{job_id}/explain", get(explain_job))
        .route("/v1/jobs/{job_id}/graph", get(job_graph))
        .route("/v1/jobs/{job_id}/groups", get(job_groups))
        .route("/v1/jobs/{job_id}/history", get(job_history))
        .route("/v1/teams/{team}/usage", get(team_usage))
        .route("/v1/teams", get(list_teams))
        .route("/v1/teams/{team}", get(get_team).put(set_team))
        .route("/v1/clusters", get(list_clusters))
        .route(
            "/v1/clusters/{name}",
            get(get_cluster).put(register_cluster),
        )
        .route("/v1/clusters/{name}/enable", post(enable_cluster))
        .route("/v1/clusters/{name}/disable", post(disable_cluster))
        .route("/v1/placements", post(placement))
        .route("/v1/capacity", get(capacity_marks))
        .route(
            "/v1/autoscaler/settings",
            get(autoscaler_settings).put(set_autoscaler_settings),
        )
        .route("/v1/autoscaler/history", get(autoscaler_history))
        .route("/v1/templates", get(list_templates))
        .route("/v1/templates/{name}", get(get_template).put(put_template))
        .route("/v1/templates/{name}/submit", post(submit_from_template))
        .route(
            "/v1/jobs/{job_id}/tasks/{task_id}/explain",
            get(explain_task),
        )
        .route("/v1/jobs/{job_id}/cancel", post(cancel_job))
        .route("/v1/access", get(list_access))
        .route("/v1/access/me", get(whoami))
        .route("/v1/access/grants", post(grant))
        .route("/v1/access/revoke", post(revoke))
        .route("/healthz", get(|| async { "ok" }))
        .merge(batch::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(errors_in_json))
        .with_state(service)
}

/// Whether a path is one of the AWS Batch operations (`/v1/submitjob`, `/v1/tags/…`),
/// whose errors take AWS's shape.
pub fn is_batch_path(path: &str) -> bool {
    const NATIVE: [&str; 8] = [
        "jobs",
        "teams",
        "clusters",
        "placements",
        "capacity",
        "autoscaler",
        "templates",
        "access",
    ];
    match path.strip_prefix("/v1/") {
        Some(rest) if rest.starts_with("tags/") => true,
        Some(rest) => !rest.contains('/') && !NATIVE.contains(&rest),
        None => false,
    }
}

/// Every refusal is JSON in its API's shape, including those axum makes itself before
/// a handler runs (a body over the limit, a malformed query string, a method a route
/// does not have).
async fn errors_in_json(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let batch = is_batch_path(request.uri().path());
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (kind, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorKind::TooLarge,
            format!("request body: larger than {MAX_BODY_BYTES} bytes; send a big job in parts"),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorKind::Invalid,
            format!("method {method} is not one this route takes"),
        ),
        s if s.is_client_error() => (ErrorKind::Invalid, text),
        _ => (ErrorKind::Internal, text),
    };
    let code = match kind {
        ErrorKind::TooLarge => "RequestTooLarge",
        ErrorKind::Internal => "Internal",
        _ => "BadRequest",
    };
    let error = ApiError::new(kind, code, message, serde_json::Value::Null);
    let mut out = if batch {
        batch::error_response(error)
    } else {
        Error(error).into_response()
    };
    // Keep the status axum chose (405 stays 405, 413 stays 413).
    *out.status_mut() = status;
    out
}

async fn list_access(State(svc): State<Arc<Service>>, Caller(who): Caller) -> Result<Response> {
    Ok(Json(svc.access(&who).await?).into_response())
}

async fn whoami(Caller(who): Caller) -> Response {
    Json(Service::whoami(&who)).into_response()
}

async fn grant(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok((
        StatusCode::CREATED,
        Json(svc.grant(&who, body_text(&body)?).await?),
    )
        .into_response())
}

async fn revoke(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.revoke(&who, body_text(&body)?).await?).into_response())
}

async fn not_found() -> Error {
    Error(ApiError::not_found("no such route"))
}

fn body_text(body: &axum::body::Bytes) -> Result<&str> {
    std::str::from_utf8(body).map_err(|e| {
        Error(ApiError::bad_request(
            format!("request body is not UTF-8 (byte {})", e.valid_up_to()),
            serde_json::Value::Null,
        ))
    })
}

async fn submit_job(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let submitted = svc
        .submit_job(&who, body_text(&body)?, key.as_deref())
        .await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({"job_id": submitted.job_id})),
    )
        .into_response())
}

async fn get_job(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.get_job(&who, &job_id).await?).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    prefix: Option<String>,
    limit: Option<String>,
    next_token: Option<String>,
}

async fn list_jobs(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Query(q): Query<batchplane::api::JobListQuery>,
) -> Result<Response> {
    Ok(Json(svc.list_jobs_of_teams(&who, &q).await?).into_response())
}

async fn job_graph(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.job_graph(&who, &job_id).await?).into_response())
}

async fn job_groups(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.job_groups(&who, &job_id).await?).into_response())
}

async fn job_history(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.job_history(&who, &job_id).await?).into_response())
}

async fn list_tasks(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let limit = match q.limit.as_deref() {
        None | Some("") => None,
        Some(l) => Some(l.parse::<usize>().map_err(|_| {
            Error(ApiError::bad_request(
                format!("query parameter `limit`: {l:?} is not a whole number"),
                serde_json::json!({"parameter": "limit"}),
            ))
        })?),
    };
    let page = svc
        .list_tasks(
            &who,
            &job_id,
            q.state.as_deref().filter(|s| !s.is_empty()),
            q.prefix.as_deref(),
            limit,
            q.next_token.as_deref(),
        )
        .await?;
    Ok(Json(page).into_response())
}

async fn get_task(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path((job_id, task_id)): Path<(String, String)>,
) -> Result<Response> {
    Ok(Json(svc.get_task(&who, &job_id, &task_id).await?).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<String>,
    next_token: Option<String>,
}

async fn task_log(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path((job_id, task_id)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response> {
    let attempt = match q.attempt.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<u32>().map_err(|_| {
            Error(ApiError::bad_request(
                format!("query parameter `attempt`: {a:?} is not an attempt number"),
                serde_json::json!({"parameter": "attempt"}),
            ))
        })?),
    };
    let token = q.next_token.as_deref().filter(|t| !t.is_empty());
    Ok(Json(
        svc.task_log(&who, &job_id, &task_id, attempt, token)
            .await?,
    )
    .into_response())
}

#[derive(Deserialize)]
struct DaysQuery {
    days: Option<String>,
}

async fn team_usage(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(team): Path<String>,
    Query(q): Query<DaysQuery>,
) -> Result<Response> {
    let days = match q.days.as_deref() {
        None | Some("") => 30,
        Some(d) => d.parse::<u32>().map_err(|_| {
            Error(ApiError::bad_request(
                format!("query parameter `days`: {d:?} is not a whole number"),
                serde_json::json!({"parameter": "days"}),
            ))
        })?,
    };
    Ok(Json(svc.team_usage(&who, &team, days).await?).into_response())
}

async fn explain_job(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.explain_job(&who, &job_id).await?).into_response())
}

async fn explain_task(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path((job_id, task_id)): Path<(String, String)>,
) -> Result<Response> {
    Ok(Json(svc.explain_task(&who, &job_id, &task_id).await?).into_response())
}

async fn add_tasks(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let added = svc.add_tasks(&who, &job_id, body_text(&body)?).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn add_page(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path((job_id, page_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let added = svc
        .add_page(&who, &job_id, &page_id, body_text(&body)?)
        .await?;
    let status = if added.already_stored {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(added)).into_response())
}

async fn commit_job(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.commit_open_job(&who, &job_id).await?).into_response())
}

async fn cancel_job(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(job_id): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.cancel_job(&who, &job_id).await?).into_response())
}

async fn list_teams(State(svc): State<Arc<Service>>, Caller(who): Caller) -> Result<Response> {
    Ok(Json(serde_json::json!({"teams": svc.teams(&who).await?})).into_response())
}

async fn get_team(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(team): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.team(&who, &team).await?).into_response())
}

async fn set_team(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(team): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.set_team(&who, &team, body_text(&body)?).await?).into_response())
}

async fn list_clusters(State(svc): State<Arc<Service>>, Caller(who): Caller) -> Result<Response> {
    Ok(Json(serde_json::json!({"clusters": svc.clusters(&who).await?})).into_response())
}

async fn get_cluster(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.cluster(&who, &name).await?).into_response())
}

async fn register_cluster(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.register_cluster(&who, &name, body_text(&body)?).await?).into_response())
}

async fn enable_cluster(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.set_cluster_enabled(&who, &name, true).await?).into_response())
}

async fn disable_cluster(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.set_cluster_enabled(&who, &name, false).await?).into_response())
}

async fn capacity_marks(State(svc): State<Arc<Service>>, Caller(who): Caller) -> Result<Response> {
    Ok(
        Json(serde_json::json!({"capacity_limited": svc.capacity_marks(&who).await?}))
            .into_response(),
    )
}

async fn list_templates(State(svc): State<Arc<Service>>, Caller(who): Caller) -> Result<Response> {
    Ok(Json(serde_json::json!({"templates": svc.templates(&who).await?})).into_response())
}

async fn get_template(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response> {
    Ok(Json(svc.template(&who, &name).await?).into_response())
}

async fn put_template(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.put_template(&who, &name, body_text(&body)?).await?).into_response())
}

/// Submit a template's job for an event (what the trigger function does), once per
/// event id.
async fn submit_from_template(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let event: serde_json::Value = serde_json::from_str(body_text(&body)?).map_err(|e| {
        batchplane::api::ApiError::bad_request(
            format!("event: {e}"),
            serde_json::json!({"line": e.line(), "column": e.column()}),
        )
    })?;
    let s = svc.submit_from_template(&who, &name, &event).await?;
    let status = if s.created {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(s)).into_response())
}

async fn autoscaler_settings(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
) -> Result<Response> {
    Ok(Json(svc.autoscaler_settings(&who).await?).into_response())
}

async fn set_autoscaler_settings(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.set_autoscaler_settings(&who, body_text(&body)?).await?).into_response())
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn autoscaler_history(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Result<Response> {
    let limit = q.limit.unwrap_or(20);
    Ok(
        Json(serde_json::json!({"decisions": svc.autoscaler_history(&who, limit).await?}))
            .into_response(),
    )
}

async fn placement(
    State(svc): State<Arc<Service>>,
    Caller(who): Caller,
    body: axum::body::Bytes,
) -> Result<Response> {
    Ok(Json(svc.placement(&who, body_text(&body)?).await?).into_response())
}

/// Build the service from configuration (cold start).
pub async fn service_from_env() -> anyhow::Result<Arc<Service>> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    let mut service = Service::new(
        batchplane::store::Store::new(clients.dynamodb, config.table.clone()),
        config.queues(clients.sqs),
        &config,
    );
    service.logs = Some(batchplane::aws::logs_client(&config.endpoints).await);
    Ok(Arc::new(service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A service whose AWS clients point at a closed port: these requests must be
    /// answered without touching AWS.
    async fn offline_service() -> Arc<Service> {
        let clients = batchplane::aws::Clients::new(&batchplane::aws::Endpoints {
            dynamodb: Some("http://127.0.0.1:9".into()),
            sqs: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        })
        .await;
        Arc::new(Service::new(
            batchplane::store::Store::new(clients.dynamodb, "batchplane"),
            batchplane::queue::Queues::new(clients.sqs, "batchplane-"),
            &batchplane::config::Config {
                admins: vec!["anonymous".into()],
                ..Default::default()
            },
        ))
    }

    async fn invoke(event: &str) -> (u16, serde_json::Value) {
        invoke_on(offline_service().await, event).await
    }

    async fn invoke_on(service: Arc<Service>, event: &str) -> (u16, serde_json::Value) {
        let request: lambda_http::request::LambdaRequest = serde_json::from_str(event)
            .unwrap_or_else(|e| panic!("the sample is not an API Gateway event: {e}"));
        let request: lambda_http::Request = request.into();
        let response = router(service)
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("the router: {e}"));
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading the answer: {e}"));
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
                String::from_utf8_lossy(&bytes).into(),
            )),
        )
    }

    /// The sample API Gateway (HTTP API v2) events in `events/api/` go through the same
    /// conversion lambda_http does in Lambda, into the router.
    #[tokio::test]
    async fn api_gateway_event_with_a_cyclic_spec_is_a_400_naming_the_cycle() {
        let (status, body) = invoke(include_str!("../../../events/api/submit-bad-spec.json")).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "DependencyCycle");
        assert_eq!(
            body["error"]["details"]["cycle"],
            serde_json::json!(["a", "b", "a"])
        );
    }

    /// In AWS the caller is the principal API Gateway's IAM authorizer put in the
    /// request context (an assumed role answers to its role's ARN); the Authorization
    /// header the request also carries names someone else and does not count.
    #[tokio::test]
    async fn the_caller_is_the_iam_principal_of_the_request_context() {
        let Ok(mut service) = Arc::try_unwrap(offline_service().await) else {
            panic!("the offline service is shared");
        };
        service.admins = vec!["arn:aws:iam::123456789012:role/platform-*".into()];
        service.identity = batchplane::config::IdentitySource::Iam;
        let event = include_str!("../../../events/api/whoami-assumed-role.json");
        let (status, body) = invoke_on(Arc::new(service), event).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["principal"]["id"],
            "arn:aws:sts::123456789012:assumed-role/platform-admins/alice"
        );
        assert_eq!(
            body["principal"]["aliases"],
            serde_json::json!(["arn:aws:iam::123456789012:role/platform-admins"])
        );
        assert_eq!(body["admin"], true, "{body}");
    }

    /// One request through the router: its status and its body, which must be JSON.
    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .unwrap_or_else(|e| panic!("building {method} {path}: {e}"));
        let response = app
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: the answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, body)
    }

    #[tokio::test]
    async fn errors_axum_makes_itself_are_json_in_each_apis_shape() {
        let app = router(offline_service().await);
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let (status, body) = call(&app, "POST", "/v1/jobs", big.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("RequestTooLarge")),
            "{body}"
        );
        let (status, body) = call(&app, "POST", "/v1/submitjob", big).await;
        assert_eq!(status, 413);
        assert_eq!(body["__type"], "ClientException", "{body}");
        let (status, body) = call(&app, "DELETE", "/v1/jobs", Vec::new()).await;
        assert_eq!(status, 405);
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("DELETE"), "{body}");
        let (status, body) = call(&app, "GET", "/v1/describejobs", Vec::new()).await;
        assert_eq!(status, 405);
        assert_eq!(body["__type"], "ClientException", "{body}");
        let (status, body) =
            call(&app, "GET", "/v1/autoscaler/history?limit=many", Vec::new()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn api_gateway_health_event() {
        let (status, body) = invoke(include_str!("../../../events/api/health.json")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404s() {
        let request = axum::http::Request::get("/v2/nothing")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router(offline_service().await)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
}
