//! The one way the store sends a DynamoDB request: it asks for the consumed capacity,
//! classifies a failure into a [`StoreError`], and records the read and write units the
//! request cost (a failed condition is billed too, so it counts as one write unit).
//!
//! ```ignore
//! let out = send(self.ddb.get_item().table_name(&self.table).set_key(Some(k))).await?;
//! let written = send_if(self.ddb.put_item() /* … .condition_expression(…) */).await?.is_some();
//! ```

use super::error::{classify, StoreError};
use super::item::Item;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{ConsumedCapacity, ReturnConsumedCapacity};
use std::future::Future;

/// A DynamoDB request the store can send: a fluent builder of the SDK.
pub(crate) trait Request: Sized + Send + Clone {
    type Output: Send;
    type Error: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static;
    /// The operation's name, as metrics and errors name it.
    const OPERATION: &'static str;

    /// The request with capacity reporting turned on, sent.
    fn dispatch(
        self,
    ) -> impl Future<Output = Result<Self::Output, SdkError<Self::Error, HttpResponse>>> + Send;

    /// Record what an answered request consumed.
    fn record(out: &Self::Output);

    /// The item as it was when a condition failed, where the operation can return it
    /// (`ReturnValuesOnConditionCheckFailure::AllOld`).
    fn current(_err: &Self::Error) -> Option<Item> {
        None
    }

    /// Whether a failure was the request's own condition (or, for a transaction, one of
    /// its conditions) not holding.
    fn condition_failed(err: &SdkError<Self::Error, HttpResponse>) -> bool {
        err.code() == Some("ConditionalCheckFailedException")
    }

    /// Whether a failure says nothing about the request itself and it may simply be
    /// sent again: a transaction cancelled only by a conflicting transaction or by
    /// throttling (which the SDK does not retry: the error is a cancellation).
    fn conflicted(_err: &SdkError<Self::Error, HttpResponse>) -> bool {
        false
    }

    /// Send, trying a conflicted request again with jittered backoff
    /// ([`CONFLICT_RETRIES`] times).
    fn dispatch_retrying(
        self,
    ) -> impl Future<Output = Result<Self::Output, SdkError<Self::Error, HttpResponse>>> + Send
    {
        async move {
            let mut backoff = crate::aws::backoff::Backoff::new(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(1),
            );
            loop {
                match self.clone().dispatch().await {
                    Err(e) if Self::conflicted(&e) && backoff.tries() < CONFLICT_RETRIES => {
                        tracing::debug!(
                            operation = Self::OPERATION,
                            "transaction conflicted; sending it again"
                        );
                        backoff.wait().await;
                    }
                    other => return other,
                }
            }
        }
    }
}

/// How many times a transaction cancelled by a conflict (not by its own conditions) is
/// sent again before the cancellation is the caller's.
pub(crate) const CONFLICT_RETRIES: u32 = 8;

macro_rules! request {
    ($op:ident, $name:literal, $builder:ident, $output:ident, $error:ident, $record:ident $(, current = $current:expr)? $(, condition = $condition:expr, conflicted = $conflicted:expr)?) => {
        impl Request for aws_sdk_dynamodb::operation::$op::builders::$builder {
            type Output = aws_sdk_dynamodb::operation::$op::$output;
            type Error = aws_sdk_dynamodb::operation::$op::$error;
            const OPERATION: &'static str = $name;

            fn dispatch(
                self,
            ) -> impl Future<Output = Result<Self::Output, SdkError<Self::Error, HttpResponse>>> + Send
            {
                self.return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
            }

            fn record(out: &Self::Output) {
                $record($name, out.consumed_capacity());
            }

            $(fn current(err: &Self::Error) -> Option<Item> {
                let current: fn(&Self::Error) -> Option<Item> = $current;
                current(err)
            })?

            $(fn condition_failed(err: &SdkError<Self::Error, HttpResponse>) -> bool {
                let condition: fn(&SdkError<Self::Error, HttpResponse>) -> bool = $condition;
                condition(err)
            }

            fn conflicted(err: &SdkError<Self::Error, HttpResponse>) -> bool {
                let conflicted: fn(&SdkError<Self::Error, HttpResponse>) -> bool = $conflicted;
                conflicted(err)
            })?
        }
    };
}

fn one(operation: &'static str, c: Option<&ConsumedCapacity>) {
    record_capacity(operation, c);
}

fn many(operation: &'static str, cs: &[ConsumedCapacity]) {
    for c in cs {
        record_capacity(operation, Some(c));
    }
}

request!(
    get_item,
    "GetItem",
    GetItemFluentBuilder,
    GetItemOutput,
    GetItemError,
    one
);
request!(
    query,
    "Query",
    QueryFluentBuilder,
    QueryOutput,
    QueryError,
    one
);
request!(
    put_item,
    "PutItem",
    PutItemFluentBuilder,
    PutItemOutput,
    PutItemError,
    one,
    current = |e| match e {
        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
            c.item().cloned()
        }
        _ => None,
    }
);
request!(
    update_item,
    "UpdateItem",
    UpdateItemFluentBuilder,
    UpdateItemOutput,
    UpdateItemError,
    one,
    current = |e| {
        match e {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
            c.item().cloned()
        }
        _ => None,
    }
    }
);
request!(
    delete_item,
    "DeleteItem",
    DeleteItemFluentBuilder,
    DeleteItemOutput,
    DeleteItemError,
    one
);
request!(
    batch_get_item,
    "BatchGetItem",
    BatchGetItemFluentBuilder,
    BatchGetItemOutput,
    BatchGetItemError,
    many
);
request!(
    batch_write_item,
    "BatchWriteItem",
    BatchWriteItemFluentBuilder,
    BatchWriteItemOutput,
    BatchWriteItemError,
    many
);
request!(
    transact_write_items,
    "TransactWriteItems",
    TransactWriteItemsFluentBuilder,
    TransactWriteItemsOutput,
    TransactWriteItemsError,
    many,
    condition = |e| transaction_condition_failed(e),
    conflicted = |e| transaction_conflicted(e)
);

/// Whether a cancelled transaction was cancelled because one of its conditions failed
/// (and not, say, by a conflicting transaction or throttling).
pub(crate) fn transaction_condition_failed(
    err: &SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        HttpResponse,
    >,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(tc)) => tc
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// Whether a transaction was cancelled with none of its own conditions failing: by a
/// conflicting transaction (`TransactionConflict`), by throttling, or by a lock that
/// timed out. Sending it again may well succeed.
pub(crate) fn transaction_conflicted(
    err: &SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        HttpResponse,
    >,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(tc)) => {
            let codes: Vec<&str> = tc
                .cancellation_reasons()
                .iter()
                .filter_map(|r| r.code())
                .filter(|c| *c != "None")
                .collect();
            !codes.is_empty()
                && codes.iter().all(|c| {
                    matches!(
                        *c,
                        "TransactionConflict"
                            | "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                            | "RequestLimitExceeded"
                    )
                })
        }
        Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
        _ => false,
    }
}

/// Send a request; a failure is classified, what it consumed is recorded.
pub(crate) async fn send<R: Request>(req: R) -> Result<R::Output, StoreError> {
    match req.dispatch_retrying().await {
        Ok(out) => {
            R::record(&out);
            Ok(out)
        }
        Err(e) => Err(classify(R::OPERATION, e)),
    }
}

/// Send a conditional write: `None` when its condition did not hold.
pub(crate) async fn send_if<R: Request>(req: R) -> Result<Option<R::Output>, StoreError> {
    match req.dispatch_retrying().await {
        Ok(out) => {
            R::record(&out);
            Ok(Some(out))
        }
        Err(e) if R::condition_failed(&e) => {
            record_failed_condition(R::OPERATION);
            Ok(None)
        }
        Err(e) => Err(classify(R::OPERATION, e)),
    }
}

/// Send a conditional write: when its condition did not hold, the item as it was (if the
/// request asked for it).
pub(crate) async fn send_if_current<R: Request>(
    req: R,
) -> Result<Result<R::Output, Option<Item>>, StoreError> {
    match req.dispatch_retrying().await {
        Ok(out) => {
            R::record(&out);
            Ok(Ok(out))
        }
        Err(e) if R::condition_failed(&e) => {
            record_failed_condition(R::OPERATION);
            Ok(Err(e.as_service_error().and_then(R::current)))
        }
        Err(e) => Err(classify(R::OPERATION, e)),
    }
}

pub(crate) fn record_capacity(operation: &'static str, c: Option<&ConsumedCapacity>) {
    let Some(c) = c else { return };
    if let Some(w) = c.write_capacity_units() {
        crate::aws::accounting::record_write_units(operation, w);
    }
    if let Some(r) = c.read_capacity_units() {
        crate::aws::accounting::record_read_units(operation, r);
    }
    if c.write_capacity_units().is_none() && c.read_capacity_units().is_none() {
        if let Some(total) = c.capacity_units() {
            if operation.contains("Get") || operation.contains("Query") {
                crate::aws::accounting::record_read_units(operation, total);
            } else {
                crate::aws::accounting::record_write_units(operation, total);
            }
        }
    }
}

/// A failed condition still costs a write unit in DynamoDB; count it like one.
pub(crate) fn record_failed_condition(operation: &'static str) {
    crate::aws::accounting::record_write_units(operation, 1.0);
}

/// Send a transaction whose cancellation by one of its conditions means another writer
/// got there first: `false` then. A cancellation by a conflict or throttling is sent
/// again ([`Request::dispatch_retrying`]); anything else that fails is an error.
pub(crate) async fn send_unless_cancelled(
    req: aws_sdk_dynamodb::operation::transact_write_items::builders::TransactWriteItemsFluentBuilder,
) -> Result<bool, StoreError> {
    type R =
        aws_sdk_dynamodb::operation::transact_write_items::builders::TransactWriteItemsFluentBuilder;
    match req.dispatch_retrying().await {
        Ok(out) => {
            R::record(&out);
            Ok(true)
        }
        Err(e) if transaction_condition_failed(&e) => {
            record_failed_condition(R::OPERATION);
            Ok(false)
        }
        Err(e) => Err(classify(R::OPERATION, e)),
    }
}

/// Send a request whose failures the caller sorts itself (by error code or cancellation
/// reason); what an answered request consumed is still recorded.
pub(crate) async fn send_raw<R: Request>(
    req: R,
) -> Result<R::Output, SdkError<R::Error, HttpResponse>> {
    let out = req.dispatch_retrying().await?;
    R::record(&out);
    Ok(out)
}

/// `#state IN (:from0, …)`: the condition that a task is in one of `states`, which a
/// transition takes from the one table ([`crate::domain::TaskTransition::from`]). The
/// request gets its names and values from [`StateCondition::with_states`].
pub(crate) fn state_in(states: &[crate::domain::TaskState]) -> String {
    let names: Vec<String> = (0..states.len()).map(|i| format!(":from{i}")).collect();
    format!("#state IN ({})", names.join(", "))
}

/// Gives a request the `#state` name and `:from<i>` values of [`state_in`]. Call it after
/// any `set_expression_attribute_*`, which replace what was set before.
pub(crate) trait StateCondition: Sized {
    fn with_states(self, states: &[crate::domain::TaskState]) -> Self;
}

/// The same for every builder that takes names and values.
macro_rules! state_condition {
    ($builder:ty) => {
        impl StateCondition for $builder {
            fn with_states(self, states: &[crate::domain::TaskState]) -> Self {
                states.iter().enumerate().fold(
                    self.expression_attribute_names("#state", "state"),
                    |req, (i, st)| {
                        req.expression_attribute_values(
                            format!(":from{i}"),
                            aws_sdk_dynamodb::types::AttributeValue::S(st.as_str().to_string()),
                        )
                    },
                )
            }
        }
    };
}
state_condition!(aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder);
// A listing's filter on states.
state_condition!(aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder);
