//! A job's tasks by state over its whole life: kept by the folds of its count items,
//! read back with the items not folded yet, exact under folds that race.

use batchplane::domain::count_history::CountsAt;
use batchplane::domain::{TaskCounts, TaskState};
use batchplane::store::{RecordCounts, Store};
use batchplane_testing::{stored_job, test_store, ManualClock, Must, TestEmulators};
use std::collections::BTreeMap;
use std::time::Duration;
use TaskState::*;

/// One record moving `n` tasks from `from` (none: created) to `to`.
fn moved(seq: u64, from: Option<TaskState>, to: TaskState) -> RecordCounts {
    let mut counts = TaskCounts::default();
    if let Some(f) = from {
        counts.add(f, -1);
    }
    counts.add(to, 1);
    RecordCounts {
        sequence_number: seq.to_string(),
        counts,
        ..Default::default()
    }
}

async fn batch(store: &Store, job: &str, parts: &[RecordCounts]) {
    assert!(store
        .add_batch_counts(job, &parts[0].sequence_number, parts)
        .await
        .must("a batch's counts"));
}

async fn history(store: &Store, job: &str, since: i64) -> Vec<CountsAt> {
    store
        .job_count_history(job, since)
        .await
        .must("the count history")
        .cumulative(1_000)
}

fn counts(v: &[(TaskState, u64)]) -> BTreeMap<TaskState, u64> {
    v.iter().copied().collect()
}

#[tokio::test]
async fn a_jobs_counts_over_its_life_survive_folding_and_racing_folds() {
    let emu = TestEmulators::get();
    let clock = ManualClock::default();
    let store = test_store(&emu, "count-history")
        .await
        .with_clock(clock.clock());
    let (job, _) = stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    let since = store.now();
    // Four tasks created; ten seconds on two start; twenty on both end.
    batch(
        &store,
        &job,
        &(0..4)
            .map(|i| moved(100 + i, None, Pending))
            .collect::<Vec<_>>(),
    )
    .await;
    clock.advance(Duration::from_secs(10));
    batch(
        &store,
        &job,
        &[
            moved(200, Some(Pending), Running),
            moved(201, Some(Pending), Running),
        ],
    )
    .await;
    clock.advance(Duration::from_secs(20));
    batch(
        &store,
        &job,
        &[
            moved(300, Some(Running), Succeeded),
            moved(301, Some(Running), Succeeded),
        ],
    )
    .await;
    let live = history(&store, &job, since).await;
    let seen: Vec<_> = live.iter().map(|p| p.counts.clone()).collect();
    assert_eq!(
        seen,
        vec![
            counts(&[(Pending, 4)]),
            counts(&[(Pending, 2), (Running, 2)]),
            counts(&[(Pending, 2), (Succeeded, 2)]),
        ]
    );
    assert!(
        live.windows(2).all(|w| w[1].at - w[0].at >= 10_000),
        "{live:?}"
    );

    // A minute a batch for an hour: one task starts and ends in each.
    for m in 0..60u64 {
        clock.advance(Duration::from_secs(60));
        let seq = 1_000 + 10 * m;
        batch(
            &store,
            &job,
            &[
                moved(seq, None, Running),
                moved(seq + 1, Some(Running), Succeeded),
            ],
        )
        .await;
    }
    let before = history(&store, &job, since).await;
    clock.advance(Duration::from_secs(16 * 60));
    // Two folds at once: one wins, the other changes nothing; then the rest fold.
    let (a, b) = tokio::join!(store.fold_counts(&job), store.fold_counts(&job));
    a.must("a fold");
    b.must("a racing fold");
    store.fold_counts(&job).await.must("the rest folded");
    let (total, _, items) = store.job_counts(&job).await.must("the counts");
    assert_eq!(items, 1, "every batch folded into the base");
    let after = history(&store, &job, since).await;
    assert_eq!(after, before, "folding keeps the history as it was");
    let last = after.last().map(|p| p.counts.clone()).unwrap_or_default();
    assert_eq!(last, counts(&[(Pending, 2), (Succeeded, 62)]));
    assert_eq!(last.get(&Succeeded).copied(), Some(total.get(Succeeded)));
}
