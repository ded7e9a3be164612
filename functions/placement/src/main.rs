#![recursion_limit = "256"]
//! The placement Lambda's entry point: build the store client once, answer invocations.

use lambda_runtime::{run, service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    batchplane::telemetry::init();
    let placement = placement_fn::placement_from_env().await?;
    let placement = &placement;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, lambda_runtime::Error>(placement_fn::handle(placement, event.payload).await)
        },
    ))
    .await
}
