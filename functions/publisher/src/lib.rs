//! The publisher function: a DynamoDB stream batch (the table's second consumer) is
//! published as job and task state changes, with the records to retry reported back
//! (`ReportBatchItemFailures`); a scheduled event sends Step Functions heartbeats.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use batchplane::stream::decode_batch;
use batchplane_publisher::Publisher;
use serde_json::{json, Value};

/// Publish a stream batch; on failure the whole batch is retried from its first record
/// (publishing is idempotent per transition, so what went out is not sent again).
pub async fn handle_stream(publisher: &Publisher, event: &Event) -> DynamoDbEventResponse {
    let changes = decode_batch(&event.records);
    let mut response = DynamoDbEventResponse::default();
    match publisher.publish(&changes).await {
        Ok(p) => {
            tracing::info!(
                events = p.events,
                duplicates = p.duplicates,
                callbacks = p.callbacks,
                "published"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing failed; the batch will be retried");
            if let Some(first) = changes.first() {
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(first.sequence_number().to_string());
                response.batch_item_failures.push(failure);
            }
        }
    }
    response
}

/// One invocation: a stream batch, or the schedule (heartbeats).
pub async fn handle(publisher: &Publisher, event: Value) -> Result<Value, lambda_runtime::Error> {
    if event.get("Records").is_some() {
        let batch: Event = serde_json::from_value(event)?;
        return Ok(serde_json::to_value(
            handle_stream(publisher, &batch).await,
        )?);
    }
    if event["detail-type"] == "Scheduled Event" {
        let sent = publisher.heartbeats().await?;
        return Ok(json!({"heartbeats": sent}));
    }
    Ok(
        json!({"error": {"code": "BadRequest", "message": "expected a DynamoDB stream batch (Records) or a scheduled event"}}),
    )
}

/// Build from configuration (cold start): the table, the bus (`BATCHPLANE_EVENT_BUS`).
pub async fn publisher_from_env() -> anyhow::Result<Publisher> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    let shared = batchplane::aws::sdk_config(&config.endpoints).await;
    Ok(Publisher::new(
        batchplane::store::Store::new(clients.dynamodb, config.table.clone()),
        aws_sdk_eventbridge::Client::new(&shared),
        aws_sdk_sfn::Client::new(&shared),
        config.event_bus.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchplane::stream::{decode_record, Change};

    /// The sample stream batch decodes into a job's submission and a task's change.
    #[test]
    fn the_sample_stream_batch_decodes_into_transitions() {
        let text = include_str!("../../../events/publisher/job-submitted.json");
        let event: Event = serde_json::from_str(text).expect("a stream batch");
        let Change::Job(j) = decode_record(&event.records[0]).expect("a job record") else {
            panic!("the first record is a job's")
        };
        let o = batchplane_publisher::job_transition(&j).expect("submission is a transition");
        assert_eq!(o.detail_type, "Job State Change");
        assert_eq!(o.detail["status"], "SUBMITTED");
        assert_eq!(
            j.job.notify.task_token.as_deref(),
            Some("AQCEAAAAKgAAAAMAAAAAAAAAAeMqV1")
        );
    }
}
