//! Shipping each attempt's output to CloudWatch Logs while it runs, where AWS Batch
//! users look for it (see [`batchplane::domain::logs`] for the group and stream names).
//!
//! The shim writes the task's stdout and stderr to files; a shipper per attempt follows
//! both, line by line, and sends them to the attempt's stream in batches. It never
//! holds the task up: the task writes to its files whatever CloudWatch does. A throttled
//! or unreachable CloudWatch is retried with backoff while lines wait in a bounded
//! buffer (the oldest are dropped past it); when the attempt ends the shipper gets a
//! short while to send what is left, and what it could not send is said in the attempt
//! record. The files stay where they are, with everything.

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use batchplane::aws::backoff::Backoff;
use batchplane::domain::logs::LogTarget;
use std::collections::{HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// CloudWatch's limits on one PutLogEvents call.
const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 1_048_576;
/// Bytes CloudWatch counts for each event beside its message.
const EVENT_OVERHEAD: usize = 26;
/// The longest message one event may carry; a longer line is split.
const MAX_EVENT_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;
/// What an attempt's shipper holds while CloudWatch does not take it.
const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;
/// How often the files are read for new lines.
const READ_EVERY: Duration = Duration::from_millis(500);
/// How long an ended attempt's shipper has to send what is left.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(3);
/// The longest one CloudWatch call (with the SDK's own retries) may take.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// The worker's CloudWatch Logs client, and the groups it has made sure exist.
pub struct LogShipper {
    client: aws_sdk_cloudwatchlogs::Client,
    groups: Mutex<HashSet<String>>,
}

/// What an attempt's shipping came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shipped {
    pub events: u64,
    /// Lines that never reached CloudWatch (dropped from a full buffer, or left when
    /// the attempt's flush ran out of time).
    pub unshipped: u64,
    pub last_error: Option<String>,
    /// The shipper did not end in time: how much was lost is not known.
    pub incomplete: bool,
}

impl Shipped {
    /// The attempt record's note, when something did not make it.
    pub fn note(&self) -> Option<String> {
        if self.incomplete {
            return Some(format!(
                "shipping to CloudWatch Logs did not finish ({}): some lines may be missing there; the attempt's files have them all",
                self.last_error.as_deref().unwrap_or("no answer")
            ));
        }
        (self.unshipped > 0).then(|| {
            format!(
                "{} of {} lines were not shipped to CloudWatch Logs ({}); the attempt's files have them all",
                self.unshipped,
                self.events + self.unshipped,
                self.last_error.as_deref().unwrap_or("it did not take them in time")
            )
        })
    }
}

/// One attempt's shipping, under way.
pub struct AttemptShipping {
    done: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Shipped>,
}

impl AttemptShipping {
    /// The attempt ended: send what is left (for at most [`FLUSH_WITHIN`]) and say how
    /// it went.
    pub async fn finish(self) -> Shipped {
        let _ = self.done.send(());
        match tokio::time::timeout(FLUSH_WITHIN * 2, self.handle).await {
            Ok(Ok(shipped)) => shipped,
            Ok(Err(e)) => Shipped {
                last_error: Some(format!("the shipper failed: {e}")),
                incomplete: true,
                ..Default::default()
            },
            Err(_) => Shipped {
                last_error: Some("the shipper did not finish".into()),
                incomplete: true,
                ..Default::default()
            },
        }
    }
}

impl LogShipper {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client) -> Arc<LogShipper> {
        Arc::new(LogShipper {
            client,
            groups: Mutex::new(HashSet::new()),
        })
    }

    /// Follow `files` (the attempt's stdout and stderr) into `target` until
    /// [`AttemptShipping::finish`].
    pub fn start(self: &Arc<Self>, target: LogTarget, files: Vec<PathBuf>) -> AttemptShipping {
        let (done, done_rx) = oneshot::channel();
        let me = self.clone();
        let handle = tokio::spawn(async move { me.ship(target, files, done_rx).await });
        AttemptShipping { done, handle }
    }

    async fn ship(
        &self,
        target: LogTarget,
        files: Vec<PathBuf>,
        mut done: oneshot::Receiver<()>,
    ) -> Shipped {
        let mut tails: Vec<Tail> = files.into_iter().map(Tail::new).collect();
        let mut pending = Pending::default();
        let mut shipped = Shipped::default();
        let mut stream_ready = false;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut retry_at = Instant::now();
        let mut flush_by: Option<Instant> = None;
        loop {
            let ending = flush_by.is_some();
            for tail in &mut tails {
                for line in tail.read_lines(ending) {
                    pending.push(line);
                }
            }
            shipped.unshipped += pending.trim(MAX_BUFFERED_BYTES);
            if !pending.is_empty() && Instant::now() >= retry_at {
                // A call may not outlast the flush: the attempt's record waits on it.
                let limit = flush_by.map_or(CALL_LIMIT, |by| {
                    by.saturating_duration_since(Instant::now()).min(CALL_LIMIT)
                });
                let call = async {
                    match stream_ready {
                        true => self.put(&target, &mut pending).await,
                        false => self.create_stream(&target).await.map(|()| 0),
                    }
                };
                let sent = tokio::time::timeout(limit, call)
                    .await
                    .unwrap_or_else(|_| Err("CloudWatch Logs did not answer in time".into()));
                match sent {
                    Ok(n) => {
                        stream_ready = true;
                        shipped.events += n;
                        backoff.reset(Duration::from_millis(200));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, stream = %target.stream, "shipping output to CloudWatch Logs failed; will retry");
                        shipped.last_error = Some(e);
                        retry_at = Instant::now() + backoff.next_wait().unwrap_or(READ_EVERY);
                    }
                }
                // More may be waiting: go round without sleeping.
                if !pending.is_empty() && Instant::now() >= retry_at {
                    continue;
                }
            }
            if let Some(by) = flush_by {
                if pending.is_empty() || Instant::now() >= by {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(READ_EVERY) => {}
                _ = &mut done, if flush_by.is_none() => {
                    flush_by = Some(Instant::now() + FLUSH_WITHIN);
                    retry_at = Instant::now();
                }
            }
        }
        shipped.unshipped += pending.len() as u64;
        shipped
    }

    /// The attempt's stream (and its group, the first time this worker uses it).
    async fn create_stream(&self, target: &LogTarget) -> Result<(), String> {
        let known = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&target.group);
        if !known {
            match self
                .client
                .create_log_group()
                .log_group_name(&target.group)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
                Err(e) => return Err(describe(&e)),
            }
            self.groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(target.group.clone());
        }
        match self
            .client
            .create_log_stream()
            .log_group_name(&target.group)
            .log_stream_name(&target.stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(describe(&e)),
        }
    }

    /// One PutLogEvents of the oldest waiting lines; how many it sent.
    async fn put(&self, target: &LogTarget, pending: &mut Pending) -> Result<u64, String> {
        let batch = pending.batch();
        let n = batch.len();
        self.client
            .put_log_events()
            .log_group_name(&target.group)
            .log_stream_name(&target.stream)
            .set_log_events(Some(batch))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        pending.drop_front(n);
        Ok(n as u64)
    }
}

fn describe<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s = format!("{s}: {inner}");
        source = inner.source();
    }
    s
}

/// Lines waiting to be sent, oldest first, each with its time.
#[derive(Default)]
struct Pending {
    lines: VecDeque<(i64, String)>,
    bytes: usize,
    last_ms: i64,
}

impl Pending {
    fn push(&mut self, line: String) {
        // CloudWatch wants a batch's events in time order: never earlier than the last.
        let at = chrono::Utc::now().timestamp_millis().max(self.last_ms);
        self.last_ms = at;
        self.bytes += line.len() + EVENT_OVERHEAD;
        self.lines.push_back((at, line));
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// Drop the oldest lines past `max` bytes; how many were dropped.
    fn trim(&mut self, max: usize) -> u64 {
        let mut dropped = 0;
        while self.bytes > max {
            let Some((_, line)) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= line.len() + EVENT_OVERHEAD;
            dropped += 1;
        }
        dropped
    }

    /// The oldest lines that fit one PutLogEvents.
    fn batch(&self) -> Vec<InputLogEvent> {
        let mut size = 0;
        let mut out = Vec::new();
        for (at, line) in &self.lines {
            let cost = line.len() + EVENT_OVERHEAD;
            if out.len() == MAX_BATCH_EVENTS || (size + cost > MAX_BATCH_BYTES && !out.is_empty()) {
                break;
            }
            size += cost;
            if let Ok(event) = InputLogEvent::builder()
                .timestamp(*at)
                .message(line.clone())
                .build()
            {
                out.push(event);
            }
        }
        out
    }

    fn drop_front(&mut self, n: usize) {
        for _ in 0..n {
            if let Some((_, line)) = self.lines.pop_front() {
                self.bytes -= line.len() + EVENT_OVERHEAD;
            }
        }
    }
}

/// A file followed as it grows: what it has past the last read, as whole lines.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The lines written since the last call; with `all`, a last line without its
    /// newline too. A file not yet there has none.
    fn read_lines(&mut self, all: bool) -> Vec<String> {
        let mut fresh = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                if let Ok(n) = f.read_to_end(&mut fresh) {
                    self.offset += n as u64;
                }
            }
        }
        self.partial.extend_from_slice(&fresh);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            let mut line = std::mem::replace(&mut self.partial, rest);
            line.pop();
            split_into(&mut lines, &line);
        }
        // A line longer than an event holds goes out in pieces without waiting.
        while self.partial.len() > MAX_EVENT_BYTES {
            let rest = self.partial.split_off(MAX_EVENT_BYTES);
            let piece = std::mem::replace(&mut self.partial, rest);
            split_into(&mut lines, &piece);
        }
        if all && !self.partial.is_empty() {
            let piece = std::mem::take(&mut self.partial);
            split_into(&mut lines, &piece);
        }
        lines
    }
}

/// `line` as events of at most [`MAX_EVENT_BYTES`]; an empty line is one space, since
/// CloudWatch takes no empty message.
fn split_into(out: &mut Vec<String>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    if text.is_empty() {
        out.push(" ".into());
        return;
    }
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_EVENT_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_followed_file_gives_whole_lines_and_the_last_one_at_the_end() {
        let dir = std::env::temp_dir().join(format!("bp-tail-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("out");
        let mut tail = Tail::new(path.clone());
        assert!(tail.read_lines(false).is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"one\ntw").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tail.read_lines(false), vec!["one"]);
        f.write_all(b"o\n\nthree").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tail.read_lines(false), vec!["two", " "]);
        assert_eq!(tail.read_lines(true), vec!["three"]);
        let long = vec![b'x'; MAX_EVENT_BYTES + 10];
        f.write_all(&long).unwrap_or_else(|e| panic!("{e}"));
        let pieces = tail.read_lines(true);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), MAX_EVENT_BYTES);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batches_keep_to_cloudwatchs_limits_and_a_full_buffer_drops_the_oldest() {
        let mut p = Pending::default();
        for i in 0..12_000 {
            p.push(format!("line {i}"));
        }
        assert_eq!(p.batch().len(), MAX_BATCH_EVENTS);
        let mut big = Pending::default();
        for _ in 0..10 {
            big.push("y".repeat(200 * 1024));
        }
        let b = big.batch();
        assert!(b.len() == 5, "{} events of 200 KiB fit 1 MiB", b.len());
        let dropped = big.trim(3 * 200 * 1024);
        assert_eq!(dropped, 8);
        assert_eq!(big.len(), 2);
        let times: Vec<i64> = p.lines.iter().map(|(t, _)| *t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
        let note = Shipped {
            events: 10,
            unshipped: 2,
            last_error: Some("ThrottlingException".into()),
            incomplete: false,
        }
        .note()
        .unwrap_or_default();
        assert!(
            note.contains("2 of 12 lines") && note.contains("ThrottlingException"),
            "{note}"
        );
    }
}
