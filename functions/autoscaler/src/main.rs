#![recursion_limit = "256"]
//! The autoscaler Lambda's entry point: build the clients once, answer invocations.

use lambda_runtime::{run, service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    batchplane::telemetry::init();
    let autoscaler = autoscaler_fn::autoscaler_from_env().await?;
    let autoscaler = &autoscaler;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, lambda_runtime::Error>(autoscaler_fn::handle(autoscaler, event.payload).await)
        },
    ))
    .await
}
