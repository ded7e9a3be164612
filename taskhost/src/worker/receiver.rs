//! The receiver: a task of its own that long-polls the worker's queues (highest priority
//! first) for as many tasks as the worker asks for, and hands them over. It asks again
//! only once the worker has accounted for what it handed over, so it never holds much
//! more than the worker has room for. A message may carry several tasks (a pack): the
//! receiver asks for as many messages as the tasks wanted fill at the pack size it has
//! been seeing, and the worker hands straight back what comes over.
//! The queues it polls may change while it runs (a worker that serves every
//! container's pools finds new ones).

use batchplane::queue::{Delivery, Queues};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Start the receiver. `want` is how many tasks the worker wants now (the worker sets it
/// to -1 to say it took a delivery); deliveries go to `deliveries`.
pub(super) fn spawn(
    queues: Arc<Queues>,
    urls: watch::Receiver<Vec<String>>,
    wait: Duration,
    visibility: Duration,
    mut want: watch::Receiver<i32>,
    deliveries: mpsc::Sender<Vec<Delivery>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pack = PackSize::default();
        loop {
            let wanted = *want.borrow_and_update();
            if wanted <= 0 {
                if want.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let now = urls.borrow().clone();
            let asked = pack.messages_for(wanted);
            match crate::templates::receive_in_order(&queues, &now, asked, wait, visibility).await {
                Ok(d) if d.is_empty() => {}
                Ok(d) => {
                    pack.observe(&d);
                    if deliveries.send(d).await.is_err() {
                        return;
                    }
                    // Wait for the worker to account for these before asking again.
                    if want.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// Tasks a message has been carrying lately (a moving average over deliveries).
#[derive(Debug, Clone, Copy)]
struct PackSize(f64);

impl Default for PackSize {
    fn default() -> Self {
        PackSize(1.0)
    }
}

impl PackSize {
    fn observe(&mut self, got: &[Delivery]) {
        let tasks: usize = got.iter().map(|d| d.tasks.len().max(1)).sum();
        let now = tasks as f64 / got.len().max(1) as f64;
        self.0 = 0.7 * self.0 + 0.3 * now;
    }

    /// Messages to ask for to get about `tasks` tasks, rather fewer than more (at least
    /// one): what comes over is handed back at once, one more request. (A quarter of a
    /// message's slack, so an average that has almost come back to one task a message
    /// asks for as many messages as tasks.)
    fn messages_for(&self, tasks: i32) -> i32 {
        ((f64::from(tasks) / self.0.max(1.0) + 0.25).floor() as i32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(tasks: usize) -> Delivery {
        let m = batchplane::queue::TaskMessage {
            job_id: "j".into(),
            task_id: "t".into(),
            shard: 0,
            cpu_milli: 1000,
            memory_mib: 64,
            gpu: 0,
            array_child: false,
            windowed: false,
            chained: false,
        };
        Delivery {
            queue_url: "q".into(),
            receipt_handle: "r".into(),
            tasks: vec![m; tasks],
            body: String::new(),
            receive_count: 1,
        }
    }

    #[test]
    fn the_receiver_asks_for_fewer_messages_once_they_come_packed() {
        let mut p = PackSize::default();
        assert_eq!(
            p.messages_for(4),
            4,
            "one task a message until seen otherwise"
        );
        for _ in 0..20 {
            p.observe(&[delivery(10), delivery(10)]);
        }
        assert_eq!(p.messages_for(4), 1);
        assert_eq!(p.messages_for(16), 1);
        assert_eq!(p.messages_for(25), 2);
        for _ in 0..20 {
            p.observe(&[delivery(1)]);
        }
        assert_eq!(p.messages_for(4), 4, "back to single tasks");
    }
}
