//! The receiver: a task of its own that long-polls the worker's queues (highest priority
//! first) for as many messages as the worker asks for, and hands them over. It asks
//! again only once the worker has accounted for what it handed over, so it never holds
//! more than the worker has room for. The queues it polls may change while it runs
//! (a worker that serves every container's pools finds new ones).

use batchplane::queue::{Delivery, Queues};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Start the receiver. `want` is how many messages the worker wants now (the worker
/// sets it to -1 to say it took a delivery); deliveries go to `deliveries`.
pub(super) fn spawn(
    queues: Arc<Queues>,
    urls: watch::Receiver<Vec<String>>,
    wait: Duration,
    visibility: Duration,
    mut want: watch::Receiver<i32>,
    deliveries: mpsc::Sender<Vec<Delivery>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wanted = *want.borrow_and_update();
            if wanted <= 0 {
                if want.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let now = urls.borrow().clone();
            match crate::templates::receive_in_order(&queues, &now, wanted, wait, visibility).await
            {
                Ok(d) if d.is_empty() => {}
                Ok(d) => {
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
