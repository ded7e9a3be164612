//! Building AWS SDK clients: one place, so every client gets the request-counting
//! interceptor and the same endpoint rules (the SDK's `AWS_ENDPOINT_URL_<SERVICE>`
//! variables, or explicit endpoints for the local emulators).

pub mod accounting;
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
}

impl Endpoints {
    pub fn is_local(&self) -> bool {
        self.dynamodb.is_some() || self.sqs.is_some() || self.eks.is_some()
    }
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
    loader.load().await
}

impl Clients {
    pub async fn new(endpoints: &Endpoints) -> Clients {
        let shared = sdk_config(endpoints).await;
        let mut ddb = aws_sdk_dynamodb::config::Builder::from(&shared).interceptor(CountRequests);
        if let Some(url) = &endpoints.dynamodb {
            ddb = ddb.endpoint_url(url);
        }
        let mut sqs = aws_sdk_sqs::config::Builder::from(&shared).interceptor(CountRequests);
        if let Some(url) = &endpoints.sqs {
            sqs = sqs.endpoint_url(url);
        }
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
        }
    }
}
