#![recursion_limit = "256"]
//! The events Lambda's entry point: build the clients once, answer invocations.

use lambda_runtime::{run, service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    batchplane::telemetry::init();
    let publisher = publisher_fn::publisher_from_env().await?;
    let publisher = &publisher;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            publisher_fn::handle(publisher, event.payload).await
        },
    ))
    .await
}
