//! `batchplane console`: the web console, served from this machine's loopback. Its
//! pages are compiled into the binary; their API calls (`/api/...`) are forwarded to
//! the deployment (`/v1/...`) signed with the user's own credentials, as the CLI signs
//! its own, so the console sees exactly what its user may see and has no login of its
//! own (the way `kubectl proxy` works).
//!
//! A loopback server that signs what it forwards must not sign for anyone else:
//! - it answers only requests addressed to itself by name (`Host` is its own
//!   `127.0.0.1:PORT` or `localhost:PORT`), so a page elsewhere that rebinds a DNS name
//!   to 127.0.0.1 reaches nothing;
//! - every API call carries the token its page was served with (`X-Console-Token`), which
//!   a page of another origin can neither read nor guess, so it cannot make the console
//!   cancel a job (nor read anything) by sending a request here;
//! - it forwards reads, and one change: a job's cancel;
//! - its pages run only their own script (a Content-Security-Policy of `'self'`).

use crate::client::Api;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const GRAPH_JS: &str = include_str!("assets/graph.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// The loopback port to serve on (0: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Open the console in the default browser.
    #[arg(long)]
    pub open: bool,
}

/// What every request is checked and served against.
pub struct Console {
    api: Api,
    /// The token the pages carry on their API calls.
    token: String,
    /// The `Host` values that name this server.
    hosts: [String; 2],
}

impl Console {
    pub fn new(api: Api, port: u16) -> Console {
        Console {
            api,
            token: uuid::Uuid::new_v4().simple().to_string(),
            hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(index))
            .route(
                "/app.js",
                get(|| async { asset("text/javascript", APP_JS) }),
            )
            .route(
                "/graph.js",
                get(|| async { asset("text/javascript", GRAPH_JS) }),
            )
            .route("/style.css", get(|| async { asset("text/css", STYLE_CSS) }))
            .route("/api/{*path}", any(forward))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(self.hosts.clone()),
                only_own_host,
            ))
            .with_state(Arc::new(self))
    }
}

/// Serve until Ctrl-C or SIGTERM.
pub async fn run(api: Api, args: &ConsoleArgs) -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let port = listener.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}/");
    println!("console: {url} (API {}; Ctrl-C stops it)", api.base());
    use std::io::Write;
    std::io::stdout().flush()?;
    if args.open {
        open_in_browser(&url);
    }
    let app = Console::new(api, port).router();
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await?;
    Ok(0)
}

async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn open_in_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("could not open a browser ({opener}: {e}); open {url} yourself");
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index(State(console): State<Arc<Console>>) -> Response {
    let mut response = asset(
        "text/html; charset=utf-8",
        "", // replaced below: the page carries its token
    );
    *response.body_mut() = INDEX.replace("{{TOKEN}}", &console.token).into();
    response
}

/// Refuse a request addressed to any other name than this server's own.
async fn only_own_host(
    State(hosts): State<Arc<[String; 2]>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !hosts.iter().any(|h| h == host) {
        return refusal(
            StatusCode::FORBIDDEN,
            "WrongHost",
            &format!("the console answers to {} only, not to {host:?}", hosts[0]),
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Why a call may not be forwarded, if it may not.
pub fn forward_refusal(method: &Method, path: &str) -> Option<&'static str> {
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Some("the path must name a resource, without empty, `.` or `..` parts");
    }
    match *method {
        Method::GET => None,
        Method::POST if path.starts_with("jobs/") && path.ends_with("/cancel") => None,
        _ => Some("the console forwards reads and a job's cancel, nothing else"),
    }
}

async fn forward(
    State(console): State<Arc<Console>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("x-console-token")
        .and_then(|t| t.to_str().ok())
        .unwrap_or("");
    if token != console.token {
        return refusal(
            StatusCode::FORBIDDEN,
            "NoConsoleToken",
            "API calls through the console carry the token of a page it served",
        );
    }
    if let Some(why) = forward_refusal(&method, &path) {
        return refusal(StatusCode::METHOD_NOT_ALLOWED, "NotForwarded", why);
    }
    let target = match query {
        Some(q) if !q.is_empty() => format!("/v1/{path}?{q}"),
        _ => format!("/v1/{path}"),
    };
    let body = (method == Method::POST).then(|| String::from_utf8_lossy(&body).into_owned());
    let method = match method {
        Method::POST => reqwest::Method::POST,
        _ => reqwest::Method::GET,
    };
    match console.api.forward(method, &target, body).await {
        Ok((status, bytes)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => refusal(StatusCode::BAD_GATEWAY, "ApiUnreachable", &format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_and_a_cancel_are_forwarded() {
        assert_eq!(forward_refusal(&Method::GET, "jobs"), None);
        assert_eq!(forward_refusal(&Method::GET, "jobs/j-1/tasks/a/logs"), None);
        assert_eq!(forward_refusal(&Method::POST, "jobs/j-1/cancel"), None);
        for (method, path) in [
            (Method::POST, "jobs"),
            (Method::PUT, "teams/research"),
            (Method::POST, "access/grants"),
            (Method::DELETE, "jobs/j-1"),
            (Method::GET, "jobs/../access"),
            (Method::GET, "jobs//x"),
            (Method::POST, "jobs/j-1/../../access/grants/cancel"),
        ] {
            assert!(
                forward_refusal(&method, path).is_some(),
                "{method} {path} was forwarded"
            );
        }
    }
}
