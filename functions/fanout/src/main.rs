//! The fanout Lambda's entry point: build clients once, handle stream batches.
#![recursion_limit = "256"]

use lambda_runtime::{run, service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    batchplane::telemetry::init();
    let fanout = fanout_fn::fanout_from_env().await?;
    let fanout = &fanout;
    run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::dynamodb::Event>| async move {
            fanout_fn::handle(fanout, event).await
        },
    ))
    .await
}
