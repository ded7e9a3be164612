//! The local stand-in for Lambda's DynamoDB event source mappings: read the table's
//! stream shard by shard, hand each batch of records to a consumer's handler as the same
//! `aws_lambda_events` event Lambda would build, and on a reported failure resume from
//! the failed record (as `ReportBatchItemFailures` does). Each consumer (the fanout, the
//! events publisher) has a poller of its own with its own iterators, as each function
//! has its own mapping in AWS: a slow or failing consumer never holds back the other.

use aws_lambda_events::event::dynamodb::{Event, EventRecord, StreamRecord};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use batchplane::stream::Fanout;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Batch size, as an event source mapping's `BatchSize`.
pub const BATCH_SIZE: i32 = 1000;

/// How the poller reads the stream.
#[derive(Debug, Clone, Copy)]
pub struct PollerOptions {
    /// Deliver every batch twice (a retried Lambda invocation), for tests.
    pub duplicate_batches: bool,
    /// How often (0 to 1) a batch is first delivered cut short at a random record, its
    /// answer ignored, then delivered whole: a function error part-way through a batch
    /// and Lambda's retry of it (the chaos run's duplicated stream batches).
    pub retry_cut_short: f64,
    /// How often each shard is read. Lambda reads a shard about four times a second;
    /// reading at a fixed cadence (rather than again at once after a batch) is what
    /// makes batches, and so per-batch writes such as job counts, amortise.
    pub interval: Duration,
    /// How often the events publisher's poller reads each shard. Nothing waits on it
    /// the way tasks wait on releases, and every read costs the emulator as much as the
    /// fanout's, so it reads at about Lambda's own cadence.
    pub publisher_interval: Duration,
}

impl Default for PollerOptions {
    fn default() -> Self {
        PollerOptions {
            duplicate_batches: false,
            retry_cut_short: 0.0,
            interval: Duration::from_millis(100),
            publisher_interval: Duration::from_millis(250),
        }
    }
}

fn to_event_record(r: &aws_sdk_dynamodbstreams::types::Record, arn: &str) -> EventRecord {
    let mut rec = EventRecord::default();
    rec.event_id = r.event_id().unwrap_or_default().to_string();
    rec.event_name = r
        .event_name()
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    rec.event_source = Some("aws:dynamodb".into());
    rec.event_source_arn = Some(arn.to_string());
    rec.aws_region = "us-east-1".into();
    if let Some(d) = r.dynamodb() {
        let mut change = StreamRecord::default();
        change.sequence_number = d.sequence_number().map(str::to_string);
        change.size_bytes = d.size_bytes().unwrap_or(0);
        if let Some(k) = d.keys() {
            change.keys = k.clone().into();
        }
        if let Some(n) = d.new_image() {
            change.new_image = n.clone().into();
        }
        if let Some(o) = d.old_image() {
            change.old_image = o.clone().into();
        }
        rec.change = change;
    }
    rec
}

/// Where in a shard to read from.
#[derive(Debug, Clone)]
enum From {
    Start,
    /// At a record: a batch failed there and is retried from it.
    At(String),
    /// After the last record handled: an iterator expired or a read failed.
    After(String),
}

/// An iterator for a shard at `from`.
async fn shard_iterator(
    client: &aws_sdk_dynamodbstreams::Client,
    stream_arn: &str,
    shard_id: &str,
    from: From,
) -> anyhow::Result<Option<String>> {
    let (kind, at) = match from {
        From::Start => (ShardIteratorType::TrimHorizon, None),
        From::At(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq)),
        From::After(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq)),
    };
    let out = client
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(shard_id)
        .shard_iterator_type(kind)
        .set_sequence_number(at)
        .send()
        .await?;
    Ok(out.shard_iterator().map(str::to_string))
}

/// A function reading the stream through its own event source mapping.
#[derive(Clone)]
pub enum Consumer {
    /// Releases, counts and job ends (`functions/fanout`).
    Fanout(Arc<Fanout>),
    /// State changes to EventBridge and Step Functions (`functions/events`).
    Publisher(Arc<batchplane_publisher::Publisher>),
}

impl Consumer {
    /// Invoke the handler on one batch; the first failed record's sequence number, if any.
    async fn invoke(&self, event: &Event) -> Option<String> {
        batchplane::aws::accounting::record_request("Lambda", "Invoke");
        let response = match self {
            Consumer::Fanout(f) => fanout_fn::handle_event(f, event).await,
            Consumer::Publisher(p) => publisher_fn::handle_stream(p, event).await,
        };
        response
            .batch_item_failures
            .first()
            .and_then(|f| f.item_identifier.clone())
    }
}

/// Hand one batch to the consumer (cut short first, or twice, as the options say); the
/// first failed record's sequence number, if any.
async fn deliver(
    consumer: &Consumer,
    opts: &PollerOptions,
    records: &[aws_sdk_dynamodbstreams::types::Record],
    stream_arn: &str,
) -> Option<String> {
    let mut event = Event::default();
    event.records = records
        .iter()
        .map(|r| to_event_record(r, stream_arn))
        .collect();
    if opts.retry_cut_short > 0.0
        && event.records.len() > 1
        && fastrand::f64() < opts.retry_cut_short
    {
        let mut cut = event.clone();
        cut.records
            .truncate(1 + fastrand::usize(..event.records.len() - 1));
        let _ = consumer.invoke(&cut).await;
    }
    let times = if opts.duplicate_batches { 2 } else { 1 };
    let mut failed_at = None;
    for _ in 0..times {
        failed_at = consumer.invoke(&event).await;
    }
    failed_at
}

/// Add the stream's shards not yet known, each read from its start.
async fn discover_shards(
    client: &aws_sdk_dynamodbstreams::Client,
    stream_arn: &str,
    iterators: &mut HashMap<String, Option<String>>,
) -> anyhow::Result<()> {
    let mut start: Option<String> = None;
    loop {
        let d = client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(start.take())
            .send()
            .await?;
        let Some(desc) = d.stream_description() else {
            return Ok(());
        };
        for shard in desc.shards() {
            let id = shard.shard_id().unwrap_or_default().to_string();
            if iterators.contains_key(&id) {
                continue;
            }
            let it = shard_iterator(client, stream_arn, &id, From::Start).await?;
            iterators.insert(id, it);
        }
        match desc.last_evaluated_shard_id() {
            Some(s) => start = Some(s.to_string()),
            None => return Ok(()),
        }
    }
}

/// Poll `stream_arn` for `consumer` until `stop` turns true. Failed stream reads are
/// logged and tried again; they never end the poller.
pub async fn poll(
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    consumer: Consumer,
    opts: PollerOptions,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut iterators: HashMap<String, Option<String>> = HashMap::new();
    // Per shard, the last record handed over and done with: where reading resumes when
    // an iterator is lost, so no record is delivered again with new batch boundaries.
    let mut handled: HashMap<String, String> = HashMap::new();
    let resume = |handled: &HashMap<String, String>, shard: &str| match handled.get(shard) {
        Some(seq) => From::After(seq.clone()),
        None => From::Start,
    };
    let mut last_describe = Instant::now() - Duration::from_secs(60);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if last_describe.elapsed() > Duration::from_secs(2) {
            if let Err(e) = discover_shards(&client, &stream_arn, &mut iterators).await {
                tracing::warn!(error = %format!("{e:#}"), "describing the stream failed; trying again");
            }
            last_describe = Instant::now();
        }
        let round = Instant::now();
        let shard_ids: Vec<String> = iterators.keys().cloned().collect();
        for shard_id in shard_ids {
            let Some(Some(iterator)) = iterators.get(&shard_id).cloned() else {
                continue;
            };
            let out = match client
                .get_records()
                .shard_iterator(&iterator)
                .limit(BATCH_SIZE)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e), shard_id, "GetRecords failed");
                    // An expired iterator or a failed read: resume after the last record
                    // handled (Lambda keeps its place the same way).
                    match shard_iterator(
                        &client,
                        &stream_arn,
                        &shard_id,
                        resume(&handled, &shard_id),
                    )
                    .await
                    {
                        Ok(it) => {
                            iterators.insert(shard_id, it);
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), shard_id, "getting a shard iterator failed; trying again")
                        }
                    }
                    continue;
                }
            };
            let records = out.records();
            let mut next = out.next_shard_iterator().map(str::to_string);
            if !records.is_empty() {
                match deliver(&consumer, &opts, records, &stream_arn).await {
                    Some(seq) => {
                        // Resume from the failed record, after a pause, as Lambda retries;
                        // what came before it is done.
                        let before = records
                            .iter()
                            .filter_map(|r| r.dynamodb().and_then(|d| d.sequence_number()))
                            .take_while(|s| *s != seq)
                            .last()
                            .map(str::to_string);
                        if let Some(b) = before {
                            handled.insert(shard_id.clone(), b);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        match shard_iterator(&client, &stream_arn, &shard_id, From::At(seq)).await {
                            Ok(it) => next = it,
                            // Keep the old iterator: the batch is read again from its start.
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), shard_id, "getting a shard iterator failed");
                                next = Some(iterator.clone());
                            }
                        }
                    }
                    None => {
                        if let Some(last) = records
                            .last()
                            .and_then(|r| r.dynamodb())
                            .and_then(|d| d.sequence_number())
                        {
                            handled.insert(shard_id.clone(), last.to_string());
                        }
                    }
                }
            }
            iterators.insert(shard_id, next);
        }
        let interval = match consumer {
            Consumer::Fanout(_) => opts.interval,
            Consumer::Publisher(_) => opts.publisher_interval,
        };
        let rest = interval.saturating_sub(round.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = stop.changed() => {}
        }
    }
}
