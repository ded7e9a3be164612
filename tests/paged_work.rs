//! Work over a whole array goes a page per stream record: a SEQUENTIAL array's failure
//! and an N_TO_N sweep, driven here record by record through the fanout against
//! DynamoDB Local and moto, so each record's share of the work can be counted.

use batchplane::aws::{Clients, Endpoints};
use batchplane::domain::batch::{ArrayJob, Dependent};
use batchplane::domain::{AttemptRecord, JobRecord, JobState, TaskState};
use batchplane::queue::Queues;
use batchplane::store::{ChildSeed, Claim, Store, WorkCursor, WorkKind, WORK_PAGE};
use batchplane::stream::arrays::first_pool;
use batchplane::stream::{Change, Fanout, JobChange, TaskChange};
use batchplane_testing::{Must, TestEmulators};
use serde_json::json;
use std::time::Duration;

/// Two pages' worth of children, the second a short one.
const SIZE: u32 = WORK_PAGE as u32 + 100;
const SHARDS: u32 = 4;

pub(crate) async fn setup(what: &str) -> (Store, Fanout, Queues) {
    let emu = TestEmulators::get();
    let store = batchplane_testing::test_store(&emu, what).await;
    let clients = Clients::new(&Endpoints {
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let prefix = format!("p{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queues = Queues::new(clients.sqs.clone(), prefix.clone());
    let fanout = Fanout::new(store.clone(), Queues::new(clients.sqs, prefix));
    (store, fanout, queues)
}

/// A RUNNABLE array job of `SIZE` children (unless `extra` sizes it) stored straight
/// into the table.
pub(crate) async fn array_job(
    store: &Store,
    queues: &Queues,
    extra: serde_json::Value,
) -> JobRecord {
    let mut shape = json!({
        "template": {"command": ["true"], "cpu_milli": 250, "memory_mib": 64},
        "array_size": SIZE,
        "window": 10,
    });
    if let (Some(s), Some(e)) = (shape.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let array: ArrayJob = serde_json::from_value(shape).must("an array job's shape");
    let job_id = batchplane::domain::ids::new_job_id(batchplane::store::now_ms());
    let job = JobRecord {
        state: JobState::Runnable,
        total_tasks: u64::from(array.size()),
        shard_count: SHARDS,
        array: Some(array),
        ..JobRecord::new(&job_id, "paged", "default", "default")
    };
    store.put_job(&job).await.must("storing the job");
    queues
        .create(&first_pool(&job), Duration::from_secs(30))
        .await
        .must("creating the pool's queue");
    job
}

pub(crate) async fn children(
    store: &Store,
    job: &JobRecord,
) -> Vec<batchplane::domain::TaskRecord> {
    store
        .all_tasks(&job.job_id, SHARDS)
        .await
        .must("listing the children")
}

/// Feed the walk's cursor records to the fanout one at a time until the walk is done;
/// each record may add at most one page of children. Returns (pages, tasks sent).
async fn drive(store: &Store, fanout: &Fanout, job: &JobRecord, kind: WorkKind) -> (u32, usize) {
    let (mut pages, mut sent) = (0, 0);
    let mut before = children(store, job).await.len();
    while let Some(cursor) = store
        .work_cursor(&job.job_id, kind)
        .await
        .must("the cursor")
    {
        let outcome = fanout.process(&[work_change(&cursor)]).await;
        assert!(outcome.failed_at.is_none(), "{outcome:?}");
        let now = children(store, job).await.len();
        let added = now - before;
        before = now;
        assert!(
            added <= WORK_PAGE as usize,
            "one record of the walk wrote {added} children, more than a page"
        );
        pages += 1;
        sent += outcome.enqueued;
        assert!(
            pages <= 2 * SIZE / WORK_PAGE as u32 + 2,
            "the walk never ends"
        );
    }
    (pages, sent)
}

fn work_change(cursor: &WorkCursor) -> Change {
    Change::Work {
        sequence_number: format!("{}", cursor.step + 1),
        cursor: Box::new(cursor.clone()),
    }
}

fn reason_of(tasks: &[batchplane::domain::TaskRecord], index: u32) -> String {
    tasks
        .iter()
        .find(|t| t.index == Some(index))
        .and_then(|t| t.reason.clone())
        .unwrap_or_else(|| panic!("child {index} has no reason"))
}

#[tokio::test]
async fn a_sequential_childs_failure_fails_the_rest_a_page_per_stream_record() {
    let (store, fanout, queues) = setup("paged").await;
    let job = array_job(&store, &queues, json!({"sequential": true})).await;
    store
        .fail_unstarted_child(&job, 0, "exit 1")
        .await
        .must("failing child 0");
    let failed = children(&store, &job).await;
    let outcome = fanout
        .process(&[Change::Task(Box::new(TaskChange {
            sequence_number: "1".into(),
            old_state: Some(TaskState::Running),
            task: failed[0].clone(),
        }))])
        .await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    // The child's own record only starts the walk.
    assert_eq!(children(&store, &job).await.len(), 1);
    let first = store
        .work_cursor(&job.job_id, WorkKind::FailSequence)
        .await
        .must("reading the cursor")
        .must("the walk was started");
    assert_eq!(first.index, 1);

    let (pages, _) = drive(&store, &fanout, &job, WorkKind::FailSequence).await;
    assert_eq!(pages, (SIZE - 1).div_ceil(WORK_PAGE as u32));
    let all = children(&store, &job).await;
    assert_eq!(all.len(), SIZE as usize);
    assert!(all.iter().all(|t| t.state == TaskState::Failed));
    let id = &job.job_id;
    assert_eq!(
        reason_of(&all, SIZE - 1),
        format!("Dependent job {id}:{} did not succeed", SIZE - 2)
    );
    // A duplicate of the first record repeats its page's writes (each conditional on
    // the child not existing) and cannot restart the finished walk.
    let again = fanout.process(&[work_change(&first)]).await;
    assert!(again.failed_at.is_none(), "{again:?}");
    assert_eq!(children(&store, &job).await.len(), SIZE as usize);
    assert!(store
        .work_cursor(id, WorkKind::FailSequence)
        .await
        .must("reading the cursor")
        .is_none());
}

/// Run child `index` of `job` to success, as a worker would.
async fn succeed_child(store: &Store, job: &JobRecord, index: u32) {
    succeed_child_followed_by(store, job, index, None).await
}

/// Run child `index` of `job` to success, its worker saying it takes on the same child
/// of `followed_by` next (or not).
pub(crate) async fn succeed_child_followed_by(
    store: &Store,
    job: &JobRecord,
    index: u32,
    followed_by: Option<&str>,
) {
    let task = claim_child(store, job, index, false).await;
    succeed(store, &task, followed_by).await;
}

/// Record a claimed child's first attempt as a success.
pub(crate) async fn succeed(
    store: &Store,
    task: &batchplane::domain::TaskRecord,
    followed_by: Option<&str>,
) {
    let attempt = AttemptRecord {
        attempt: 1,
        worker_id: "w".into(),
        followed_by: followed_by.map(str::to_string),
        ..Default::default()
    };
    assert!(store
        .finish_attempt(task, "w", TaskState::Succeeded, None, &attempt, None)
        .await
        .must("finishing a child"));
}

#[tokio::test]
async fn an_n_to_n_sweep_goes_a_page_per_record_and_starts_over_when_its_predecessor_ends() {
    let (store, fanout, queues) = setup("paged").await;
    let pred = array_job(&store, &queues, json!({})).await;
    let dep = array_job(&store, &queues, json!({"n_to_n": [pred.job_id.clone()]})).await;
    for i in 0..3 {
        succeed_child(&store, &pred, i).await;
    }
    store
        .fail_unstarted_child(&pred, 550, "exit 1")
        .await
        .must("failing a predecessor child");

    // The predecessor is still running: its ended children decide theirs, the rest wait.
    store
        .start_work(&dep.job_id, WorkKind::SweepNToN)
        .await
        .must("starting the sweep");
    let (pages, sent) = drive(&store, &fanout, &dep, WorkKind::SweepNToN).await;
    assert_eq!(pages, SIZE.div_ceil(WORK_PAGE as u32));
    assert_eq!(sent, 3, "children 0..3 were sent");
    let decided = children(&store, &dep).await;
    assert_eq!(decided.len(), 1);
    assert_eq!(
        reason_of(&decided, 550),
        format!("Dependent job {}:550 FAILED", pred.job_id)
    );

    // The predecessor ends with most children never run: the sweep starts over and
    // fails those; a stale record of the first sweep cannot move the new one.
    store
        .fail_job(&pred.job_id, JobState::Failed, "cancelled")
        .await
        .must("ending the predecessor");
    let mut ended = store
        .get_job(&pred.job_id)
        .await
        .must("reading the predecessor")
        .must("the predecessor");
    ended
        .dependents
        .push(Dependent::NToN(dep.job_id.clone()).encode());
    let pred_ended = Change::Job(Box::new(JobChange {
        sequence_number: "1".into(),
        old_state: Some(JobState::Runnable),
        old_job: None,
        job: ended,
        listed_as: None,
    }));
    let outcome = fanout.process(std::slice::from_ref(&pred_ended)).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    let cursor = |what: &'static str| {
        let (store, id) = (store.clone(), dep.job_id.clone());
        async move {
            store
                .work_cursor(&id, WorkKind::SweepNToN)
                .await
                .must("reading the cursor")
                .must(what)
        }
    };
    let first_page = cursor("the sweep was started again").await;
    assert_eq!((first_page.index, first_page.step), (0, 0));
    let _ = fanout.process(&[work_change(&first_page)]).await;
    let second_page = cursor("the sweep went on").await;
    assert_eq!(second_page.index, WORK_PAGE as u32);
    // The predecessor's end arrives again mid-sweep: the sweep starts over, and the
    // in-flight page's record cannot move it.
    let outcome = fanout.process(std::slice::from_ref(&pred_ended)).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    let restarted = cursor("the sweep was restarted").await;
    assert_eq!((restarted.index, restarted.step), (0, second_page.step + 1));
    for stale in [&first_page, &second_page] {
        let _ = fanout.process(&[work_change(stale)]).await;
        assert_eq!(
            cursor("the restarted sweep").await,
            restarted,
            "a stale record moved the restarted sweep"
        );
    }
    drive(&store, &fanout, &dep, WorkKind::SweepNToN).await;
    let all = children(&store, &dep).await;
    assert_eq!(all.len(), SIZE as usize - 3);
    assert!(all.iter().all(|t| t.state == TaskState::Failed));
    assert_eq!(
        reason_of(&all, SIZE - 1),
        format!(
            "Dependent job {}:{} ended without running",
            pred.job_id,
            SIZE - 1
        )
    );
}

/// Claim child `index` of `job` for worker `w`; `chained`: as the worker that ran its
/// predecessor child does when it takes it on (no message, no window slot).
pub(crate) async fn claim_child(
    store: &Store,
    job: &JobRecord,
    index: u32,
    chained: bool,
) -> batchplane::domain::TaskRecord {
    let seed = ChildSeed {
        index,
        queue: job.queue.clone(),
        pool: None,
        cpu_milli: 250,
        memory_mib: 64,
        gpu: 0,
        max_attempts: 1,
        chained,
    };
    let shard = batchplane::domain::ids::task_shard(&index.to_string(), SHARDS);
    match store
        .claim_child(&job.job_id, shard, &seed, "w", Duration::from_secs(30))
        .await
        .must("claiming a child")
    {
        Claim::Claimed(task) => *task,
        other => panic!("child {index} was not claimed: {other:?}"),
    }
}

pub(crate) fn task_change(
    seq: usize,
    old_state: Option<TaskState>,
    task: &batchplane::domain::TaskRecord,
) -> Change {
    Change::Task(Box::new(TaskChange {
        sequence_number: seq.to_string(),
        old_state,
        task: task.clone(),
    }))
}

#[tokio::test]
async fn an_n_to_n_release_sends_only_the_children_no_worker_took_on() {
    // (A child taken on is released by nothing else: its predecessor's message carries
    // it; `chains::a_chained_child_whose_worker_dies_…` shows that.)
    let (store, fanout, queues) = setup("chained").await;
    let pred = array_job(&store, &queues, json!({})).await;
    let dep = array_job(&store, &queues, json!({"n_to_n": [pred.job_id.clone()]})).await;
    let on = batchplane::domain::batch::JobDependency {
        job_id: pred.job_id.clone(),
        index: None,
        kind: batchplane::domain::batch::DependencyKind::NToN,
    };
    store
        .register_dependent(&on, &Dependent::NToN(dep.job_id.clone()))
        .await
        .must("registering the dependent");
    // The workers that ran children 0 and 1 take their successors on, and said so when
    // they recorded them.
    for i in 0..4 {
        let taken = (i < 2).then_some(dep.job_id.as_str());
        succeed_child_followed_by(&store, &pred, i, taken).await;
    }
    let taken: Vec<_> = [0, 1]
        .iter()
        .map(|i| claim_child(&store, &dep, *i, true))
        .collect();
    let taken = futures::future::join_all(taken).await;
    assert!(taken
        .iter()
        .all(|t| t.chained && t.state == TaskState::Running));

    let ended: Vec<Change> = children(&store, &pred)
        .await
        .iter()
        .enumerate()
        .map(|(k, t)| task_change(k + 1, Some(TaskState::Running), t))
        .collect();
    assert_eq!(ended.len(), 4);
    let outcome = fanout.process(&ended).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    // Four ended children also slide the predecessor's own window by four.
    assert_eq!(
        outcome.enqueued,
        4 + 2,
        "only children 2 and 3 of the successor"
    );
    let url = queues.url(&first_pool(&dep)).await.must("the pool's URL");
    let mut got = Vec::new();
    for _ in 0..10 {
        let batch = queues
            .receive(&url, 10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .must("receiving");
        got.extend(batch.into_iter().flat_map(|d| d.tasks));
        if got.len() >= 6 {
            break;
        }
    }
    let mut sent: Vec<String> = Vec::new();
    for m in got.into_iter().filter(|m| m.job_id == dep.job_id) {
        assert!(m.windowed && !m.chained, "{m:?}");
        sent.push(m.task_id);
    }
    sent.sort();
    assert_eq!(sent, ["2", "3"]);
    let window = store.slots(&dep.job_id).await.must("the window");
    assert_eq!((window.limit, window.free), (10, 8), "{window:?}");

    // The chained claims' records give no slot back: they took none.
    let claims: Vec<Change> = taken
        .iter()
        .enumerate()
        .map(|(k, t)| task_change(10 + k, None, t))
        .collect();
    let outcome = fanout.process(&claims).await;
    assert!(outcome.failed_at.is_none(), "{outcome:?}");
    let window = store.slots(&dep.job_id).await.must("the window");
    assert_eq!((window.limit, window.free), (10, 8), "{window:?}");
}
