//! The fanout function: a DynamoDB stream batch in, side effects out, and the records
//! that must be retried reported back (`ReportBatchItemFailures`).

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use batchplane::stream::{decode_batch, Fanout};
use lambda_runtime::LambdaEvent;

/// Decode the batch, apply it, and name the first record to retry from (if any).
pub async fn handle(
    fanout: &Fanout,
    event: LambdaEvent<Event>,
) -> Result<DynamoDbEventResponse, lambda_runtime::Error> {
    Ok(handle_event(fanout, &event.payload).await)
}

/// The handler without the Lambda envelope (the local stack calls this too).
pub async fn handle_event(fanout: &Fanout, event: &Event) -> DynamoDbEventResponse {
    let changes = decode_batch(&event.records);
    let mut failed_at: Option<String> = None;
    let outcome = fanout.process(&changes).await;
    if outcome.failed_at.is_none() {
        batchplane::stream::emit_batch_metrics(&changes, batchplane::store::now_ms());
    }
    if let Some(seq) = outcome.failed_at {
        failed_at = Some(seq);
    }
    let mut response = DynamoDbEventResponse::default();
    if let Some(seq) = failed_at {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(seq);
        response.batch_item_failures.push(failure);
    }
    response
}

/// Build the fanout from configuration (cold start).
pub async fn fanout_from_env() -> anyhow::Result<Fanout> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    Ok(Fanout::new(
        batchplane::store::Store::new(clients.dynamodb, config.table.clone()),
        config.queues(clients.sqs),
    )
    .with_window_policy(config.window_policy()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchplane::domain::TaskState;
    use batchplane::stream::{decode_record, Change};

    /// The sample event in `events/fanout/` is what Lambda sends; it decodes into task
    /// changes the fanout acts on, and other items pass through untouched.
    #[test]
    fn sample_stream_event_decodes() {
        let text = include_str!("../../../events/fanout/task-succeeded.json");
        let event: Event = serde_json::from_str(text).unwrap();
        assert_eq!(event.records.len(), 2);
        let Change::Task(t) = decode_record(&event.records[0]).unwrap() else {
            panic!("a task record")
        };
        assert_eq!(t.old_state, Some(TaskState::Running));
        assert_eq!(t.task.state, TaskState::Succeeded);
        assert_eq!(t.task.dependents, vec!["b", "c"]);
        assert_eq!(t.task.shard, 2);
        assert_eq!(t.task.attempts[0].max_rss_kib, Some(2048));
        assert_eq!(t.sequence_number, "111100000000012345678901");
        assert!(matches!(
            decode_record(&event.records[1]).unwrap(),
            Change::Other { .. }
        ));
        // Its metrics: one task succeeded in queue default, its dependents released
        // 400 ms after it ended.
        let changes = batchplane::stream::decode_batch(&event.records);
        let m = batchplane::stream::batch_metrics(&changes, 1795348800000);
        assert_eq!(m["default"].succeeded, 1);
        assert_eq!(m["default"].release_latency_ms, [400.0]);
    }
}
