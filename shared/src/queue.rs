//! The SQS adapter: one queue per worker pool (a Batchplane queue, or a queue and a
//! tier's shape: see [`crate::domain::tiers::WorkerPool`]), carrying references to
//! runnable tasks. A message says which task; the task item says everything else, and
//! the claim in DynamoDB decides who runs it, so a duplicate message is harmless.
//!
//! A message may carry several tasks of one pool (a *pack*, see [`packs`]): a send of
//! many tasks costs a tenth of the messages, receives and deletes. A worker claims each
//! task of a pack on its own and deletes the message once every task in it is accounted
//! for, so a pack whose worker dies comes back whole and its finished tasks are dropped
//! as any duplicate is.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The body of a task message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    #[serde(rename = "j")]
    pub job_id: String,
    #[serde(rename = "t")]
    pub task_id: String,
    /// The partition of the task item, so the worker needs no lookup.
    #[serde(rename = "s")]
    pub shard: u32,
    /// CPU (thousandths of a vCPU) and memory the task asks for, so a worker can tell
    /// whether it fits before claiming it.
    #[serde(rename = "c", default)]
    pub cpu_milli: u32,
    #[serde(rename = "m", default)]
    pub memory_mib: u64,
    #[serde(rename = "g", default, skip_serializing_if = "is_zero")]
    pub gpu: u32,
    /// A child of an array job: its item may not exist yet, and its command comes from
    /// the job's template.
    #[serde(rename = "a", default, skip_serializing_if = "std::ops::Not::not")]
    pub array_child: bool,
    /// Sent in a slot of its job's release window: a worker that finds nothing to run
    /// for it (a second copy, a task cancelled while queued) gives the slot back.
    #[serde(rename = "w", default, skip_serializing_if = "std::ops::Not::not")]
    pub windowed: bool,
    /// An N_TO_N child a worker took on straight after its predecessor child, carried by
    /// that child's message, or handed on in one of its own: it holds no window slot.
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    pub chained: bool,
}

impl TaskMessage {
    /// The message that sends a stored task to its pool's workers.
    pub fn for_task(task: &crate::domain::TaskRecord) -> Self {
        TaskMessage {
            job_id: task.job_id.clone(),
            task_id: task.task_id.clone(),
            shard: task.shard,
            cpu_milli: task.cpu_milli,
            memory_mib: task.memory_mib,
            gpu: task.gpu,
            array_child: task.index.is_some(),
            windowed: false,
            chained: false,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Tasks one message carries, at most.
pub const PACK: usize = 10;
/// A send of at most this many tasks goes out one task a message, and a larger one in at
/// least this many messages, so a handful of ready tasks spreads over as many workers
/// as it can (a pack goes to one worker).
pub const SPREAD: usize = 10;
/// Tasks that fit one SendMessageBatch request when fully packed: callers that send in
/// chunks (to retry a chunk on its own) chunk by this.
pub const SEND_CHUNK: usize = PACK * 10;

/// How a send of these tasks is cut into messages: at least `min(n, SPREAD)` messages,
/// at most [`PACK`] tasks each, sizes as even as they can be, order kept.
pub fn packs(messages: &[TaskMessage]) -> Vec<&[TaskMessage]> {
    let n = messages.len();
    if n == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(PACK).max(n.min(SPREAD));
    let (base, extra) = (n / count, n % count);
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    for i in 0..count {
        let len = base + usize::from(i < extra);
        out.push(&messages[at..at + len]);
        at += len;
    }
    out
}

/// A message's body: one task as an object (as every message was before packs), several
/// as an array of them.
pub fn encode(pack: &[TaskMessage]) -> String {
    match pack {
        [one] => serde_json::to_string(one),
        many => serde_json::to_string(many),
    }
    .unwrap_or_default()
}

/// The tasks a message's body carries; empty when it is not a task message at all.
pub fn decode(body: &str) -> Vec<TaskMessage> {
    if body.trim_start().starts_with('[') {
        serde_json::from_str(body).unwrap_or_default()
    } else {
        serde_json::from_str(body)
            .map(|m| vec![m])
            .unwrap_or_default()
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from (where it is deleted or handed back).
    pub queue_url: String,
    pub receipt_handle: String,
    /// The tasks it carries (one, or a pack); empty if the body is unreadable.
    pub tasks: Vec<TaskMessage>,
    pub body: String,
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue:?} does not exist")]
    NoSuchQueue { queue: String },
    #[error("SQS {operation} failed: {code}")]
    Request {
        operation: &'static str,
        code: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("building a {operation} request: {source}")]
    Build {
        operation: &'static str,
        #[source]
        source: aws_sdk_sqs::error::BuildError,
    },
    #[error("SQS {operation}: {failed} of the batch's entries failed ({first})")]
    PartialBatch {
        operation: &'static str,
        failed: usize,
        first: String,
    },
}

fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    QueueError::Request {
        operation,
        code: err.code().unwrap_or("unknown").to_string(),
        source: Box::new(err),
    }
}

/// The task queues, addressed by Batchplane queue name.
#[derive(Debug)]
pub struct Queues {
    sqs: aws_sdk_sqs::Client,
    prefix: String,
    urls: Mutex<HashMap<String, String>>,
    /// Redrive target for queues this creates.
    dead_letter_arn: Option<String>,
    /// Receives after which those queues dead-letter a message.
    max_receives: u32,
}

/// Receives after which a message goes to the dead-letter queue: workers give messages
/// back while they are full, so only one that keeps coming back unclaimable is dead.
pub const MAX_RECEIVES: u32 = 100;

impl Queues {
    pub fn new(sqs: aws_sdk_sqs::Client, prefix: impl Into<String>) -> Self {
        Queues {
            sqs,
            prefix: prefix.into(),
            urls: Mutex::new(HashMap::new()),
            dead_letter_arn: None,
            max_receives: MAX_RECEIVES,
        }
    }

    /// Dead-letter after `n` receives instead of [`MAX_RECEIVES`] (the local stack's
    /// tests, which cannot wait for a hundred).
    pub fn with_max_receives(mut self, n: u32) -> Self {
        self.max_receives = n.max(1);
        self
    }

    pub fn max_receives(&self) -> u32 {
        self.max_receives
    }

    /// The queue that queues created here dead-letter to: its name without the prefix.
    pub fn dead_letter_queue(&self) -> Option<String> {
        let arn = self.dead_letter_arn.as_deref()?;
        let name = arn.rsplit(':').next()?;
        Some(name.strip_prefix(&self.prefix).unwrap_or(name).to_string())
    }

    /// A queue's ARN.
    pub async fn arn(&self, queue: &str) -> Result<String, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default())
    }

    /// Queues this creates send dead messages to `arn` (after [`MAX_RECEIVES`]).
    pub fn with_dead_letter(mut self, arn: String) -> Self {
        self.dead_letter_arn = Some(arn);
        self
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    fn cached(&self, queue: &str) -> Option<String> {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned()
    }

    /// The URL of a queue's SQS queue (looked up once, then cached).
    pub async fn url(&self, queue: &str) -> Result<String, QueueError> {
        if let Some(u) = self.cached(queue) {
            return Ok(u);
        }
        let name = format!("{}{}", self.prefix, queue);
        let out = self.sqs.get_queue_url().queue_name(&name).send().await;
        let url = match out {
            Ok(o) => o.queue_url().unwrap_or_default().to_string(),
            Err(e) => {
                let code = e.code().unwrap_or("").to_string();
                if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                    return Err(QueueError::NoSuchQueue {
                        queue: queue.to_string(),
                    });
                }
                return Err(classify("GetQueueUrl", e));
            }
        };
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string(), url.clone());
        Ok(url)
    }

    /// Create a queue's SQS queue (local stack and tests; SAM owns it in AWS).
    pub async fn create(&self, queue: &str, visibility: Duration) -> Result<String, QueueError> {
        let mut request = self.sqs.create_queue();
        if let Some(arn) = &self.dead_letter_arn {
            request = request.attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": self.max_receives.to_string()})
                    .to_string(),
            );
        }
        let out = request
            .queue_name(format!("{}{}", self.prefix, queue))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateQueue", e))?;
        let url = out.queue_url().unwrap_or_default().to_string();
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string(), url.clone());
        Ok(url)
    }

    /// Whether SQS can name a queue `queue` with this prefix: 1 to 80 of
    /// `[A-Za-z0-9_-]` in all; else what is wrong.
    pub fn check_name(&self, queue: &str) -> Result<(), String> {
        let full = format!("{}{queue}", self.prefix);
        if full.len() > 80 {
            return Err(format!(
                "its queue name {full:?} is {} characters; SQS allows 80",
                full.len()
            ));
        }
        if let Some(c) = full
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "its queue name {full:?} has {c:?}; SQS allows letters, digits, - and _"
            ));
        }
        Ok(())
    }

    /// Make sure a worker pool's queue exists, created like its job queue's own (same
    /// visibility timeout) the first time a task of that shape is submitted. CreateQueue
    /// with the same attributes is idempotent, so racing submissions agree.
    pub async fn ensure_pool(
        &self,
        pool: &crate::domain::tiers::WorkerPool,
    ) -> Result<String, QueueError> {
        let name = pool.name();
        match self.url(&name).await {
            Err(QueueError::NoSuchQueue { .. }) => {}
            other => return other,
        }
        let base = self.url(&pool.queue).await?;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&base)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        let visibility = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        tracing::info!(pool = %name, "creating the worker pool's queue");
        self.create(&name, Duration::from_secs(visibility)).await
    }

    /// Send tasks to a pool, packed (see [`packs`]) ten messages a request, retrying
    /// entries SQS reports as failed.
    pub async fn send(&self, queue: &str, messages: &[TaskMessage]) -> Result<(), QueueError> {
        self.send_delayed(queue, messages, Duration::ZERO).await
    }

    /// Send tasks that become visible only after `delay` (at most 15 minutes).
    pub async fn send_delayed(
        &self,
        queue: &str,
        messages: &[TaskMessage],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        self.send_to_url(&url, messages, delay).await
    }

    /// [`Queues::send_delayed`] to a queue known by its URL (a worker handing back part
    /// of a pack it received).
    pub async fn send_to_url(
        &self,
        url: &str,
        messages: &[TaskMessage],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let delay = delay.as_secs().min(900) as i32;
        let bodies: Vec<String> = packs(messages).into_iter().map(encode).collect();
        let sends = bodies
            .chunks(10)
            .map(|chunk| self.send_batch(url, chunk, delay));
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn send_batch(
        &self,
        url: &str,
        chunk: &[String],
        delay_seconds: i32,
    ) -> Result<(), QueueError> {
        let mut pending: Vec<(String, &String)> = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| (i.to_string(), body))
            .collect();
        for round in 0..5 {
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body.as_str())
                        .set_delay_seconds((delay_seconds > 0).then_some(delay_seconds))
                        .build()
                        .map_err(|source| QueueError::Build {
                            operation: "SendMessageBatch",
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("SendMessageBatch", e))?;
            let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
            if failed.is_empty() {
                return Ok(());
            }
            if round == 4 {
                return Err(QueueError::PartialBatch {
                    operation: "SendMessageBatch",
                    failed: failed.len(),
                    first: out.failed()[0].code().to_string(),
                });
            }
            pending.retain(|(id, _)| failed.contains(&id.as_str()));
            tokio::time::sleep(Duration::from_millis(50 << round)).await;
        }
        Ok(())
    }

    /// Long-poll for up to `max` (≤ 10) messages.
    pub async fn receive(
        &self,
        url: &str,
        max: i32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let body = m.body().unwrap_or_default().to_string();
                Delivery {
                    queue_url: url.to_string(),
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                    tasks: decode(&body),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    body,
                }
            })
            .collect())
    }

    /// Delete handled messages, ten a request.
    pub async fn delete(&self, url: &str, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|source| QueueError::Build {
                            operation: "DeleteMessageBatch",
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.sqs
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("DeleteMessageBatch", e))?;
        }
        Ok(())
    }

    /// Keep messages of running tasks invisible for another `visibility`.
    pub async fn extend(
        &self,
        url: &str,
        receipts: &[String],
        visibility: Duration,
    ) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(visibility.as_secs() as i32)
                        .build()
                        .map_err(|source| QueueError::Build {
                            operation: "ChangeMessageVisibilityBatch",
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.sqs
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("ChangeMessageVisibilityBatch", e))?;
        }
        Ok(())
    }

    /// Delete every SQS queue under this prefix, dead-letter queues included (a test
    /// stack cleaning up after itself). Returns how many went.
    pub async fn delete_all(&self) -> Result<usize, QueueError> {
        let mut urls = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .sqs
                .list_queues()
                .queue_name_prefix(&self.prefix)
                .max_results(1000)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListQueues", e))?;
            urls.extend(out.queue_urls().iter().cloned());
            match out.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        for url in &urls {
            self.sqs
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| classify("DeleteQueue", e))?;
        }
        Ok(urls.len())
    }

    /// The Batchplane queues (job queues and worker pools) whose SQS queues exist: names
    /// without the prefix, dead-letter queues left out.
    pub async fn list(&self) -> Result<Vec<String>, QueueError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .sqs
                .list_queues()
                .queue_name_prefix(&self.prefix)
                .max_results(1000)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListQueues", e))?;
            for url in out.queue_urls() {
                let Some(name) = url.rsplit('/').next() else {
                    continue;
                };
                let Some(queue) = name.strip_prefix(&self.prefix) else {
                    continue;
                };
                if queue.is_empty() || queue.ends_with("-dlq") {
                    continue;
                }
                self.urls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(queue.to_string(), url.clone());
                names.push(queue.to_string());
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }

    /// Messages in the queue and in flight (the bench and tests read it).
    pub async fn depth(&self, url: &str) -> Result<(u64, u64), QueueError> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        let get = |k: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: usize) -> TaskMessage {
        TaskMessage {
            job_id: "j".into(),
            task_id: format!("t{i}"),
            shard: 3,
            cpu_milli: 250,
            memory_mib: 64,
            gpu: 0,
            array_child: false,
            windowed: i.is_multiple_of(2),
            chained: i.is_multiple_of(3),
        }
    }

    #[test]
    fn a_few_tasks_go_one_a_message_and_many_in_packs() {
        let sizes = |n: usize| {
            let tasks: Vec<TaskMessage> = (0..n).map(task).collect();
            let packs = packs(&tasks);
            let flat: Vec<TaskMessage> = packs.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(flat, tasks, "order and content kept for {n}");
            packs.iter().map(|p| p.len()).collect::<Vec<_>>()
        };
        assert!(sizes(0).is_empty());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(10), vec![1; 10]);
        assert_eq!(sizes(25), vec![3, 3, 3, 3, 3, 2, 2, 2, 2, 2]);
        assert_eq!(sizes(100), vec![10; 10]);
        let big = sizes(1005);
        assert_eq!(big.len(), 101);
        assert!(big.iter().all(|&n| n == 9 || n == 10), "{big:?}");
    }

    #[test]
    fn a_pack_reads_back_as_its_tasks_and_a_single_task_as_before() {
        let tasks: Vec<TaskMessage> = (0..4).map(task).collect();
        assert_eq!(decode(&encode(&tasks)), tasks);
        let one = encode(&tasks[..1]);
        assert!(one.starts_with('{'), "{one}");
        assert_eq!(decode(&one), tasks[..1].to_vec());
        assert_eq!(
            decode(r#"{"j":"j","t":"a","s":1}"#)[0].task_id,
            "a",
            "a message from before packs"
        );
        assert!(decode("not json").is_empty());
        assert!(decode("[1, 2]").is_empty());
        assert!(decode("[]").is_empty());
    }
}
