//! Building AWS SDK clients: one place, so every client gets the request-counting
//! interceptor and the same endpoint rules (the SDK's `AWS_ENDPOINT_URL_<SERVICE>`
//! variables, or explicit endpoints for the local emulators).

pub mod accounting;
pub mod backoff;
pub mod eks;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Counts each request attempt (what AWS bills) into [`crate::aws::accounting`].
#[derive(Debug, Clone, Default)]
pub struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(meta) = cfg.load::<Metadata>() {
            crate::aws::accounting::record_request(meta.service(), meta.name());
        }
        Ok(())
    }
}

/// Where the SDK finds AWS: the real thing, or local emulators with static credentials
/// (without them the SDK would go looking for instance metadata).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub dynamodb: Option<String>,
    pub sqs: Option<String>,
    /// Where EKS's API is asked about clusters (moto, locally).
    pub eks: Option<String>,
    /// Where tasks' output is shipped and read (moto, locally).
    pub logs: Option<String>,
}

impl Endpoints {
    pub fn is_local(&self) -> bool {
        self.dynamodb.is_some() || self.sqs.is_some() || self.eks.is_some() || self.logs.is_some()
    }
}

/// The CloudWatch Logs client (attempts' output: the taskhost ships it, the API reads it): the same retries and
/// request counting as the others, at `endpoints.logs` when set
/// (`AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`; moto, locally).
pub async fn logs_client(endpoints: &Endpoints) -> aws_sdk_cloudwatchlogs::Client {
    let shared = sdk_config(endpoints).await;
    let mut config = aws_sdk_cloudwatchlogs::config::Builder::from(&shared)
        .interceptor(CountRequests)
        // The shipper backs off and tries again itself; a call should not sit in the
        // SDK's ten tries past an attempt's short flush.
        .retry_config(retry_policy().with_max_attempts(3))
        .retry_partition(retry_partition("batchplane-logs"))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .operation_attempt_timeout(std::time::Duration::from_secs(10))
                .build(),
        );
    if let Some(url) = &endpoints.logs {
        config = config.endpoint_url(url);
    }
    aws_sdk_cloudwatchlogs::Client::from_conf(config.build())
}

/// The clients a Batchplane process uses.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
}

/// Shared SDK configuration from the environment; with local endpoints, static test
/// credentials and region `us-east-1` unless the environment says otherwise.
pub async fn sdk_config(endpoints: &Endpoints) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if endpoints.is_local() {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                "local",
                "local",
                None,
                None,
                "batchplane-local",
            ));
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
    }
    loader
        .retry_config(retry_policy())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .build(),
        )
        .load()
        .await
}

/// How many times one call is tried before its error reaches Batchplane's code.
pub const MAX_CALL_ATTEMPTS: u32 = 10;

/// Every client's retry policy: throttling (`ProvisionedThroughputExceededException`,
/// `ThrottlingException`, `RequestThrottled`…), 5xx answers, timeouts and connection
/// resets are tried again with full-jitter exponential backoff from 25 ms up to 5 s,
/// [`MAX_CALL_ATTEMPTS`] times in all. What is still failing after that surfaces as the
/// call's error, which callers treat as transient where it is (see
/// [`crate::store::StoreError::is_transient`]).
pub fn retry_policy() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(MAX_CALL_ATTEMPTS)
        .with_initial_backoff(std::time::Duration::from_millis(25))
        .with_max_backoff(std::time::Duration::from_secs(5))
}

/// The retry partition of the DynamoDB and SQS clients. The SDK's default partition
/// shares a token bucket that stops retrying once retries have spent it (500 tokens,
/// 5–14 a retry): under sustained throttling of a busy worker or Lambda that drains
/// in seconds and every later throttle surfaces at once, which is the retry storm's
/// opposite failure. Batchplane's calls are bounded by [`MAX_CALL_ATTEMPTS`] and
/// backed off with jitter instead, so their bucket does not run out.
pub fn retry_partition(
    service: &'static str,
) -> aws_smithy_runtime::client::retries::RetryPartition {
    aws_smithy_runtime::client::retries::RetryPartition::custom(service)
        .token_bucket(aws_smithy_runtime::client::retries::TokenBucket::unlimited())
        .build()
}

/// How long one DynamoDB request may take before it is abandoned and tried again (a
/// connection that stalls must not hold a heartbeat or a claim past its lease).
const DYNAMODB_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// SQS's: above the 20-second long poll.
const SQS_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Clients {
    pub async fn new(endpoints: &Endpoints) -> Clients {
        let shared = sdk_config(endpoints).await;
        let attempt_timeout = |t| {
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .operation_attempt_timeout(t)
                .build()
        };
        let mut ddb = aws_sdk_dynamodb::config::Builder::from(&shared)
            .interceptor(CountRequests)
            .retry_partition(retry_partition("batchplane-dynamodb"))
            .timeout_config(attempt_timeout(DYNAMODB_ATTEMPT_TIMEOUT));
        if let Some(url) = &endpoints.dynamodb {
            ddb = ddb.endpoint_url(url);
        }
        let mut sqs = aws_sdk_sqs::config::Builder::from(&shared)
            .interceptor(CountRequests)
            .retry_partition(retry_partition("batchplane-sqs"))
            .timeout_config(attempt_timeout(SQS_ATTEMPT_TIMEOUT));
        if let Some(url) = &endpoints.sqs {
            sqs = sqs.endpoint_url(url);
        }
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
        }
    }
}
