//! What can go wrong talking to DynamoDB, sorted into what callers act on.

use super::item::{Item, Malformed};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The condition did not hold; `current` is the item as it was, when DynamoDB sent it.
    #[error("conditional check failed on {operation}")]
    ConditionFailed {
        operation: &'static str,
        current: Option<Box<Item>>,
    },
    #[error("DynamoDB throttled {operation}")]
    Throttled {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DynamoDB {operation} failed: {code}: {message}")]
    Request {
        operation: &'static str,
        code: String,
        message: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("building a {operation} request: {source}")]
    Build {
        operation: &'static str,
        #[source]
        source: aws_sdk_dynamodb::error::BuildError,
    },
    /// A write asked for a state change the transition table does not have.
    #[error("the {transition} transition cannot leave a task {to}")]
    NotATransition {
        transition: crate::domain::TaskTransition,
        to: crate::domain::TaskState,
    },
    #[error("{operation}: {remaining} items still unprocessed after retries")]
    Unprocessed {
        operation: &'static str,
        remaining: usize,
    },
}

impl StoreError {
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, StoreError::ConditionFailed { .. })
    }

    /// Whether trying again may succeed: no answer came back (`Unavailable`), DynamoDB
    /// reported an internal error, or it throttled. (DynamoDB Local answers a request
    /// that waited too long on an item a transaction holds with InternalServerError,
    /// "this request will succeed in actual DynamoDB".) Batch entries DynamoDB kept
    /// leaving unprocessed were throttled too.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Throttled { .. } | StoreError::Unprocessed { .. } => true,
            StoreError::Request { code, .. } => {
                matches!(code.as_str(), "InternalServerError" | "Unavailable")
            }
            _ => false,
        }
    }
}

pub(crate) fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("").to_string();
    if code == "ConditionalCheckFailedException" {
        return StoreError::ConditionFailed {
            operation,
            current: None,
        };
    }
    // A transaction cancelled by conflicts or throttling, not by its own conditions,
    // after it was sent again (`Request::dispatch_retrying`): contention, transient.
    let contended = code == "TransactionCanceledException"
        && !err
            .message()
            .unwrap_or("")
            .contains("ConditionalCheckFailed");
    if contended
        || matches!(
            code.as_str(),
            "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
        )
    {
        return StoreError::Throttled {
            operation,
            source: Box::new(err),
        };
    }
    // No answer from DynamoDB (connection failed or reset, timed out): say so, with the
    // transport's own words, so callers can tell it from a refusal.
    if matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    ) {
        let message = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_else(|| err.to_string());
        return StoreError::Request {
            operation,
            code: "Unavailable".into(),
            message,
            source: Box::new(err),
        };
    }
    let message = err.message().unwrap_or("").to_string();
    StoreError::Request {
        operation,
        message,
        code: if code.is_empty() {
            "unknown".into()
        } else {
            code
        },
        source: Box::new(err),
    }
}
