#![recursion_limit = "256"]
//! The trigger Lambda's entry point: build the service once, answer invocations.

use lambda_runtime::{run, service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    batchplane::telemetry::init();
    let service = api_fn::service_from_env().await?;
    let service = &service;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            trigger_fn::handle(service, event.payload).await
        },
    ))
    .await
}
