//! The API's errors: `{"error": {"code", "message", "details"}}`, from spec,
//! store and queue errors.

use crate::domain::SpecError;
use crate::queue::QueueError;
use crate::store::StoreError;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// What kind of failure an [`ApiError`] is, for the caller to act on: fix the request,
/// look elsewhere, wait for the job, retry later, or report a fault. Only the HTTP
/// adapter (`functions/api`) turns a kind into a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// The request is wrong: a field, a task, a reference (it names which).
    Invalid,
    /// What the request names does not exist (or is not the caller's to see).
    NotFound,
    /// The caller may see what it names but not do this to it (a viewer cancelling, a
    /// member changing quotas).
    Forbidden,
    /// The request is larger than the API takes.
    TooLarge,
    /// The request is right but the thing it acts on is past it (a finished job).
    Conflict,
    /// A dependency throttled or did not answer: the same request may succeed later.
    Busy,
    /// A fault on this side.
    Internal,
}

impl ErrorKind {
    /// Whether the caller's request is at fault (else the service is).
    pub fn is_client(self) -> bool {
        matches!(
            self,
            ErrorKind::Invalid
                | ErrorKind::NotFound
                | ErrorKind::Forbidden
                | ErrorKind::TooLarge
                | ErrorKind::Conflict
        )
    }
}

/// An error as the API returns it: `{"error": {"code", "message", "details"}}`, with the
/// store or queue error it came from, if any, as its source.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
    pub details: Value,
    #[serde(skip)]
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for ApiError {
    fn eq(&self, other: &ApiError) -> bool {
        self.kind == other.kind
            && self.code == other.code
            && self.message == other.message
            && self.details == other.details
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>, details: Value) -> Self {
        ApiError {
            kind,
            code: code.into(),
            message: message.into(),
            details,
            source: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::NotFound, "NotFound", what, Value::Null)
    }

    /// The caller (named) may not do `what`.
    pub fn forbidden(principal: &str, what: impl std::fmt::Display) -> Self {
        ApiError::new(
            ErrorKind::Forbidden,
            "Forbidden",
            format!("{principal} may not {what}"),
            json!({"principal": principal}),
        )
    }

    pub fn bad_request(message: impl Into<String>, details: Value) -> Self {
        ApiError::new(ErrorKind::Invalid, "BadRequest", message, details)
    }

    /// The same error, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "details": self.details}})
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::new(
            ErrorKind::Invalid,
            e.code,
            e.message.clone(),
            e.details.clone(),
        )
        .caused_by(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store error");
        let error = match &e {
            StoreError::Throttled { .. } => ApiError::new(
                ErrorKind::Busy,
                "Throttled",
                "the job store is busy; retry",
                Value::Null,
            ),
            e if e.is_transient() => ApiError::new(
                ErrorKind::Busy,
                "StoreUnavailable",
                e.to_string(),
                Value::Null,
            ),
            other => ApiError::new(
                ErrorKind::Internal,
                "StoreError",
                other.to_string(),
                Value::Null,
            ),
        };
        error.caused_by(e)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let error = match &e {
            QueueError::NoSuchQueue { queue } => ApiError::new(
                ErrorKind::Invalid,
                "UnknownQueue",
                format!("field `queue`: no queue named {queue:?}"),
                json!({"field": "queue"}),
            ),
            other => ApiError::new(
                ErrorKind::Internal,
                "QueueError",
                other.to_string(),
                Value::Null,
            ),
        };
        error.caused_by(e)
    }
}
