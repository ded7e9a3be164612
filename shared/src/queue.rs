//! The SQS adapter: one queue per worker pool (a Batchplane queue, or a queue and a
//! tier's shape: see [`crate::domain::tiers::WorkerPool`]), carrying references to
//! runnable tasks. A message says which task; the task item says everything else, and
//! the claim in DynamoDB decides who runs it, so a duplicate message is harmless.

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
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from (where it is deleted or handed back).
    pub queue_url: String,
    pub receipt_handle: String,
    pub message: Option<TaskMessage>,
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

    /// Send task messages, ten a request, retrying entries SQS reports as failed.
    pub async fn send(&self, queue: &str, messages: &[TaskMessage]) -> Result<(), QueueError> {
        self.send_delayed(queue, messages, Duration::ZERO).await
    }

    /// Send task messages that become visible only after `delay` (at most 15 minutes).
    pub async fn send_delayed(
        &self,
        queue: &str,
        messages: &[TaskMessage],
        delay: Duration,
    ) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        let delay = delay.as_secs().min(900) as i32;
        let sends = messages
            .chunks(10)
            .map(|chunk| self.send_batch(&url, chunk, delay));
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn send_batch(
        &self,
        url: &str,
        chunk: &[TaskMessage],
        delay_seconds: i32,
    ) -> Result<(), QueueError> {
        let mut pending: Vec<(String, String)> = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), serde_json::to_string(m).unwrap_or_default()))
            .collect();
        for round in 0..5 {
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body)
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
                    message: serde_json::from_str(&body).ok(),
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
