//! When a job closes. A stream batch that sees tasks end closes their job once all have
//! ended, told by the job's ended-task tally when there is no need to read its count
//! items, which a fast job piles up by the thousand. A job depending N_TO_N on another
//! ends after it, however its children raced.

use crate::paged_work::{
    array_job, children, claim_child, setup, succeed, succeed_child_followed_by, task_change,
};
use batchplane::domain::batch::Dependent;
use batchplane::domain::{JobRecord, JobState, TaskCounts, TaskState};
use batchplane::store::{RecordCounts, Store};
use batchplane::stream::{Change, Fanout, JobChange};
use batchplane_testing::Must;
use serde_json::json;

async fn state(store: &Store, job_id: &str) -> JobState {
    store
        .get_job(job_id)
        .await
        .must("reading a job")
        .must("the job")
        .state
}

/// DynamoDB queries this process has made so far (reading a job's counts is one).
fn queries() -> u64 {
    batchplane::aws::accounting::snapshot()
        .requests
        .get("DynamoDB.Query")
        .copied()
        .unwrap_or(0)
}

/// An array of `size` children, each claimed and run to success; their ended records.
async fn ended_array(
    store: &Store,
    queues: &batchplane::queue::Queues,
    size: u32,
) -> (JobRecord, Vec<Change>) {
    let job = array_job(store, queues, json!({"array_size": size})).await;
    for i in 0..size {
        let task = claim_child(store, &job, i, false).await;
        succeed(store, &task, None).await;
    }
    let mut ended = children(store, &job).await;
    ended.sort_by_key(|t| t.index);
    let changes = ended
        .iter()
        .enumerate()
        .map(|(k, t)| task_change(1000 + k, Some(TaskState::Running), t))
        .collect();
    (job, changes)
}

/// Each change as a batch of its own, in order.
async fn one_by_one(fanout: &Fanout, changes: &[Change]) {
    for c in changes {
        let outcome = fanout.process(std::slice::from_ref(c)).await;
        assert!(outcome.failed_at.is_none(), "{outcome:?}");
    }
}

#[tokio::test]
async fn a_job_closes_at_its_last_ending_without_reading_its_counts_at_every_batch() {
    let (store, fanout, queues) = setup("tally").await;
    let (job, changes) = ended_array(&store, &queues, 40).await;
    let before = queries();
    one_by_one(&fanout, &changes[..20]).await;
    // The first batch checks the new tally against the counts; the rest trust it.
    let read = queries() - before;
    assert!(read <= 2, "{read} queries for 20 batches");
    // A batch retried (its records come again) adds its endings twice: the tally then
    // overstates, and reaches the total early, when the counts are read and decide.
    one_by_one(&fanout, &changes[10..20]).await;
    one_by_one(&fanout, &changes[20..39]).await;
    assert_eq!(state(&store, &job.job_id).await, JobState::Runnable);
    one_by_one(&fanout, &changes[39..]).await;
    assert_eq!(state(&store, &job.job_id).await, JobState::Succeeded);
}

#[tokio::test]
async fn a_job_whose_endings_were_counted_before_its_tally_began_still_closes() {
    let (store, fanout, queues) = setup("tally-late").await;
    let (job, changes) = ended_array(&store, &queues, 40).await;
    // 38 children's endings are in its counts, as a fanout that kept no tally wrote
    // them: the tally begins at the 39th, and is checked against the counts.
    let earlier: Vec<RecordCounts> = (0..38)
        .map(|k| {
            let mut counts = TaskCounts::default();
            counts.add(TaskState::Succeeded, 1);
            RecordCounts {
                sequence_number: (100 + k).to_string(),
                counts,
                ..Default::default()
            }
        })
        .collect();
    store
        .add_batch_counts(&job.job_id, "100", &earlier)
        .await
        .must("counting the earlier endings");
    one_by_one(&fanout, &changes[38..39]).await;
    assert_eq!(state(&store, &job.job_id).await, JobState::Runnable);
    // Unchecked, the tally would read 2 of 40 and keep the job open for ever.
    one_by_one(&fanout, &changes[39..]).await;
    assert_eq!(state(&store, &job.job_id).await, JobState::Succeeded);
}

#[tokio::test]
async fn a_successor_whose_children_all_end_first_closes_only_after_its_predecessor() {
    // Depth first, a successor's last child can end before the stream has closed its
    // predecessor: the successor still ends after it, as AWS Batch shows them.
    let (store, fanout, queues) = setup("held").await;
    let sized = |n_to_n: &[&str]| json!({"array_size": 2, "n_to_n": n_to_n});
    let pred = array_job(&store, &queues, sized(&[])).await;
    let dep = array_job(&store, &queues, sized(&[&pred.job_id])).await;
    let on = batchplane::domain::batch::JobDependency {
        job_id: pred.job_id.clone(),
        index: None,
        kind: batchplane::domain::batch::DependencyKind::NToN,
    };
    store
        .register_dependent(&on, &Dependent::NToN(dep.job_id.clone()))
        .await
        .must("registering the dependent");
    for i in 0..2 {
        succeed_child_followed_by(&store, &pred, i, Some(&dep.job_id)).await;
        let taken = claim_child(&store, &dep, i, true).await;
        succeed(&store, &taken, None).await;
    }
    let ended = |job: JobRecord| {
        let store = store.clone();
        async move {
            children(&store, &job)
                .await
                .iter()
                .enumerate()
                .map(|(k, t)| task_change(k + 1, Some(TaskState::Running), t))
                .collect::<Vec<_>>()
        }
    };

    // The successor's children reach the stream first: it is held open.
    let outcome = fanout.process(&ended(dep.clone()).await).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    assert_eq!(state(&store, &dep.job_id).await, JobState::Runnable);
    // Its predecessor's children close the predecessor.
    let outcome = fanout.process(&ended(pred.clone()).await).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    assert_eq!(state(&store, &pred.job_id).await, JobState::Succeeded);
    assert_eq!(state(&store, &dep.job_id).await, JobState::Runnable);
    // The predecessor's close, as its stream record, closes the successor.
    let closed = store
        .get_job(&pred.job_id)
        .await
        .must("reading the predecessor")
        .must("the predecessor");
    let pred_closed = Change::Job(Box::new(JobChange {
        sequence_number: "9".into(),
        old_state: Some(JobState::Runnable),
        old_job: None,
        job: closed,
        listed_as: None,
    }));
    for _ in 0..2 {
        // Twice, as a record can come: the second finds it closed.
        let outcome = fanout.process(std::slice::from_ref(&pred_closed)).await;
        assert!(outcome.failed_at.is_none(), "{outcome:?}");
        assert_eq!(state(&store, &dep.job_id).await, JobState::Succeeded);
    }
}
