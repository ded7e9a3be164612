//! The pools a worker serves: its team's pool of each of its queues (of its shape and
//! container), and, for a worker that runs any image's tasks on its host, every
//! container's pool of those, found as they appear.

use super::Options;
use batchplane::domain::tiers::WorkerPool;
use batchplane::queue::Queues;
use batchplane::store::Store;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The pools this worker serves, highest queue priority first: its team's pool of each
/// queue, of the worker's tier shape if it has one, in its container if it has one;
/// with `--any-container`, every container's pool of those too (as SQS lists them now).
pub(super) async fn pools_served(opts: &Options, store: &Store, queues: &Queues) -> Vec<String> {
    let listed = container_pools(opts, queues).await.unwrap_or_default();
    in_order(opts, store, &listed).await
}

/// The pools served, given the container pools listed.
async fn in_order(opts: &Options, store: &Store, listed: &BTreeSet<String>) -> Vec<String> {
    let names: Vec<String> = opts
        .queue
        .split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(String::from)
        .collect();
    let mut pools = Vec::new();
    for q in crate::templates::by_priority(store, names).await {
        let own = WorkerPool::new(q, &opts.team, opts.tier).in_container(opts.container.clone());
        pools.push(own.name());
        pools.extend(
            listed
                .iter()
                .filter(|n| WorkerPool::parse(n).is_some_and(|p| p.in_container(None) == own))
                .cloned(),
        );
    }
    pools
}

/// With `--any-container`, the container pools SQS lists now of this worker's team and
/// shape (of any queue; [`in_order`] keeps its queues'); empty without it; `None` when
/// SQS did not answer.
async fn container_pools(opts: &Options, queues: &Queues) -> Option<BTreeSet<String>> {
    if !opts.any_container {
        return Some(BTreeSet::new());
    }
    match queues.list().await {
        Ok(l) => Some(
            l.into_iter()
                .filter(|n| {
                    WorkerPool::parse(n).is_some_and(|p| {
                        p.container.is_some() && p.team == opts.team && p.shape == opts.tier
                    })
                })
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "listing pools");
            None
        }
    }
}

/// With `--any-container`: the queues of container pools that appear while the worker
/// runs, found every `--pool-scan-ms` (one ListQueues) and handed to the receiver.
pub(super) fn watch_pools(
    opts: Options,
    store: Store,
    queues: Arc<Queues>,
    urls: watch::Sender<Vec<String>>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !opts.any_container {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut seen: Option<BTreeSet<String>> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(opts.pool_scan_ms.max(100))).await;
            // A local worker's scan, once a pool-scan period whatever it runs: upkeep,
            // not a cost of its tasks (a deployed pool's workers do not scan).
            let scan = container_pools(&opts, &queues);
            let Some(listed) = batchplane::aws::accounting::upkeep(scan).await else {
                continue;
            };
            if seen.as_ref() == Some(&listed) {
                continue;
            }
            let now = in_order(&opts, &store, &listed).await;
            let mut found = Vec::new();
            for q in &now {
                match queues.url(q).await {
                    Ok(u) => found.push(u),
                    Err(e) => tracing::warn!(error = %e, pool = %q, "finding a pool's queue"),
                }
            }
            tracing::info!(pools = ?now, "serving pools");
            seen = Some(listed);
            if urls.send(found).is_err() {
                return;
            }
        }
    }))
}
