#![recursion_limit = "256"]
//! The api Lambda's entry point: build the service once, serve the router.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    batchplane::telemetry::init();
    let service = api_fn::service_from_env().await?;
    lambda_http::run(api_fn::router(service)).await
}
