//! Release windows: a DAG's ready tasks (and an N_TO_N array's children) wait in SQS no
//! more than their job's window at once; the rest are held in the table and go out as
//! workers claim the waiting ones, so a job submitted later is not queued behind a big
//! job's backlog. Slots that leak come back through the reconciler.

use batchplane::reconcile::{Reconciled, Reconciler};
use batchplane::store::{now_ms, HeldTask, WINDOW_SETTLES_AFTER_MS};
use batchplane_testing::{attempts, test_store, wait_for, Harness, Must, TestEmulators};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const POOL: &str = "default--t-default";

fn independent(name: &str, n: usize, command: &str) -> String {
    let tasks: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "command": ["sh", "-c", command]}))
        .collect();
    json!({"name": name, "tasks": tasks}).to_string()
}

/// Messages waiting (visible) in the default pool's queue.
async fn waiting(h: &Harness) -> u64 {
    let queues = &h.stack.service.queues;
    let url = queues.url(POOL).await.must("the pool's queue");
    queues.depth(&url).await.must("the queue's depth").0
}

/// One pass of the reconciler as if run at `now`.
async fn reconcile_at(h: &Harness, now: i64) -> Reconciled {
    let service = &h.stack.service;
    Reconciler {
        store: &service.store,
        queues: &service.queues,
        dead_letter_queue: None,
    }
    .run(now)
    .await
}

async fn counted(h: &Harness, job: &str, state: &str) -> u64 {
    h.job(job).await["task_counts"][state].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_waits_in_sqs_no_more_than_its_window_and_runs_every_task_once() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.job_window = 4;
        o.window_seconds = 0.0;
    })
    .await;
    let store = h.stack.service.store.clone();
    let job = h.submit(&independent("wide", 30, "sleep 0.1")).await;
    // No worker yet: four messages go out, the other 26 tasks are held.
    let slots = wait_for("26 tasks held", MINUTE, || async {
        let s = store.slots(&job).await.must("the job's slots");
        (s.held == 26).then_some(s).ok_or(format!("{s:?}"))
    })
    .await;
    assert_eq!(slots.free, 0, "{slots:?}");
    assert_eq!(waiting(&h).await, 4);
    assert_eq!(h.job(&job).await["task_counts"]["RUNNABLE"], 30);
    let why = h.explain(&job, "t7").await;
    assert!(
        why["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["code"] == "WaitingForWindow"
                && r["details"]["held"] == 26
                && r["details"]["window"] == 4)),
        "{why}"
    );

    h.stack.spawn_worker().await.must("a worker");
    let mut most = 0;
    while h.job(&job).await["state"] != "SUCCEEDED" {
        most = most.max(waiting(&h).await);
        assert!(most <= 4, "{most} messages waited with a window of 4");
        assert_ne!(h.job(&job).await["state"], "FAILED");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..30 {
        let t = h.task(&job, &format!("t{i}")).await;
        assert_eq!(attempts(&t).len(), 1, "{t}");
    }
    let end = store.slots(&job).await.must("the job's slots");
    assert_eq!((end.free, end.held), (4, 0), "every slot came back");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_behind_a_big_one_is_not_queued_behind_its_backlog() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.job_window = 10;
        o.window_seconds = 0.0;
    })
    .await;
    let store = h.stack.service.store.clone();
    let big = h.submit(&independent("big", 100, "sleep 0.2")).await;
    wait_for("the big job's backlog held", MINUTE, || async {
        let s = store.slots(&big).await.must("the job's slots");
        (s.held == 90).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    let small = h.submit(&independent("small", 1, "true")).await;
    wait_for("the small job's message", MINUTE, || async {
        let n = waiting(&h).await;
        (n == 11).then_some(()).ok_or(format!("{n} waiting"))
    })
    .await;
    h.stack.spawn_worker().await.must("a worker");
    let done = h.wait(&small, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    // Sent at once behind ten of the big job's, not behind its 100.
    let big_done = counted(&h, &big, "SUCCEEDED").await;
    assert!(
        big_done < 50,
        "the small job ended after {big_done} of the big job's tasks"
    );
    assert_eq!(h.wait(&big, 3 * MINUTE).await["state"], "SUCCEEDED");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_n_to_n_successor_goes_through_its_window_and_gives_every_slot_back() {
    let h = Harness::start(|o| {
        // Its children are released by the stream, not taken on by the workers that ran
        // their predecessor children.
        o.chain_successors = false;
        o.job_window = 3;
        o.window_seconds = 0.0;
    })
    .await;
    let a = h
        .submit(r#"{"name": "first", "array_size": 20, "command": ["true"], "cpu": 0.5}"#)
        .await;
    let b = h
        .submit(&format!(
            r#"{{"name": "second", "array_size": 20, "command": ["true"], "cpu": 0.5,
                "depends_on": [{{"job": "{a}", "type": "N_TO_N"}}]}}"#
        ))
        .await;
    let second = h.wait(&b, 2 * MINUTE).await;
    assert_eq!(second["state"], "SUCCEEDED", "{second}");
    assert_eq!(second["task_counts"]["SUCCEEDED"], 20, "{second}");
    // The last claims' records may reach the fanout after the job's last finish (they
    // are other items, on other stream shards): their slots come back soon after.
    let store = &h.stack.service.store;
    wait_for("every slot back", MINUTE / 4, || async {
        let s = store.slots(&b).await.must("the successor's slots");
        ((s.free, s.held) == (3, 0))
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    h.shutdown().await;
}

/// A job's window follows its own claim rate (about a second of it): one started small
/// on a pool that runs tens of tasks a second grows (this test), and one started big on
/// a pool that runs a few shrinks (the next), so what a job submitted behind it waits
/// for is a second or so of work either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_grows_with_its_jobs_claim_rate() {
    // A window bound by its own size claims window ÷ refill time a second, so it grows
    // only while a refill takes less than the seconds asked for: thirty here, so that a
    // machine loaded by other tests (refills of seconds) still shows the growth.
    let h = Harness::start(|o| {
        o.job_window = 4;
        o.window_seconds = 30.0;
    })
    .await;
    let store = h.stack.service.store.clone();
    let fast = h.submit(&independent("fast", 120, "true")).await;
    let grown = wait_for("the fast job's window grows past 8", MINUTE, || async {
        let s = store.slots(&fast).await.must("the job's slots");
        (s.limit > 8).then_some(s).ok_or(format!("{s:?}"))
    })
    .await;
    assert!(grown.limit <= i64::from(batchplane::store::WINDOW_CEILING));
    let done = h.wait(&fast, 3 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    h.assert_each_ran_once(&fast, 120).await;
    wait_for("every slot back", MINUTE / 4, || async {
        let s = store.slots(&fast).await.must("the job's slots");
        (s.free == s.limit && s.held == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_shrinks_with_its_jobs_claim_rate() {
    // Half a second a task on one worker of a few slots: a few claims a second, so a
    // window of 256 halves period by period down to the floor.
    let slow_spec = json!({"name": "slow", "tasks": (0..300)
        .map(|i| json!({"id": format!("t{i}"), "command": ["sleep", "0.5"], "cpu": 1}))
        .collect::<Vec<_>>()});
    let h2 = Harness::start(|o| {
        o.job_window = 256;
        o.workers = 1;
        o.worker_cpus = 2.0;
    })
    .await;
    let store2 = h2.stack.service.store.clone();
    let slow = h2.submit(&slow_spec.to_string()).await;
    let shrunk = wait_for(
        "the slow job's window shrinks to the floor",
        2 * MINUTE,
        || async {
            let s = store2.slots(&slow).await.must("the job's slots");
            (s.limit == i64::from(batchplane::store::WINDOW_FLOOR))
                .then_some(s)
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    // The slots it had out past the new window come back before any is free again.
    assert!(shrunk.free <= 0 && shrunk.held > 0, "{shrunk:?}");
    let explained = h2.explain(&slow, "t299").await;
    assert!(
        explained.to_string().contains("\"window\":32"),
        "explain names the window as it is now: {explained}"
    );
    let r = h2.post(&format!("/v1/jobs/{slow}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    h2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_slots_and_lost_messages_are_made_good_by_the_reconciler() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.job_window = 2;
        o.window_seconds = 0.0;
    })
    .await;
    let store = h.stack.service.store.clone();
    let job = h.submit(&independent("leaky", 6, "true")).await;
    wait_for("four held", MINUTE, || async {
        let s = store.slots(&job).await.must("the job's slots");
        (s.held == 4).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    // Both sent messages vanish unclaimed: their slots never come back by a claim, and
    // their tasks stay RUNNABLE with no message anywhere.
    let queues = &h.stack.service.queues;
    let url = queues.url(POOL).await.must("the pool's queue");
    let mut lost = 0;
    while lost < 2 {
        let got = queues
            .receive(&url, 10, Duration::from_secs(1), Duration::from_secs(300))
            .await
            .must("receiving");
        let receipts: Vec<String> = got.iter().map(|d| d.receipt_handle.clone()).collect();
        queues.delete(&url, &receipts).await.must("deleting");
        lost += receipts.len();
    }
    // An empty queue alone is no leak: between a take and its send nothing waits
    // either. A window written to within the settle time is left as it is.
    let soon = reconcile_at(&h, now_ms()).await;
    assert!(!soon.refilled_jobs.contains(&job), "{soon:?}");
    let s = store.slots(&job).await.must("the job's slots");
    assert_eq!((s.free, s.held), (0, 4), "{s:?}");
    // Left alone past it, the window is whole again and the held tasks go out in it.
    let later = reconcile_at(&h, now_ms() + WINDOW_SETTLES_AFTER_MS + 1_000).await;
    assert!(later.refilled_jobs.contains(&job), "{later:?}");
    assert_eq!(store.slots(&job).await.must("the job's slots").held, 2);
    assert_eq!(waiting(&h).await, 2);
    h.stack.spawn_worker().await.must("a worker");
    // The held four run; the two whose messages were lost are RUNNABLE with none.
    wait_for("the held tasks run", MINUTE, || async {
        let n = counted(&h, &job, "SUCCEEDED").await;
        (n == 4).then_some(()).ok_or(format!("{n} succeeded"))
    })
    .await;
    // Sending them again waits, too, until the window holds nothing and has settled:
    // a held task is RUNNABLE with no message by design.
    let soon = reconcile_at(&h, now_ms()).await;
    assert!(!soon.resent_jobs.contains(&job), "{soon:?}");
    let later = reconcile_at(&h, now_ms() + WINDOW_SETTLES_AFTER_MS + 1_000).await;
    assert!(later.resent_jobs.contains(&job), "{later:?}");
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    h.assert_each_ran_once(&job, 6).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_stay_within_the_window_and_a_held_task_is_taken_out_once() {
    let store = test_store(&TestEmulators::get(), "windows").await;
    let job = "j-window";
    assert_eq!(store.take_slots(job, 5, 3).await.must("take"), 3);
    assert_eq!(store.take_slots(job, 5, 3).await.must("take"), 2);
    assert_eq!(store.take_slots(job, 5, 1).await.must("take"), 0);
    // Given back twice over (a record applied twice): never above the window.
    for _ in 0..3 {
        store.give_slots(job, 5, 4, 4).await.must("give");
    }
    assert_eq!(store.slots(job).await.must("slots").free, 5);
    // The reconciler's reset holds only if nothing took or gave since it looked.
    let seen = store.slots(job).await.must("slots");
    assert_eq!(store.take_slots(job, 5, 5).await.must("take"), 5);
    assert!(!store.reset_slots(job, 5, &seen).await.must("reset"));
    assert_eq!(store.slots(job).await.must("slots").free, 0);
    let seen = store.slots(job).await.must("slots");
    assert!(store.reset_slots(job, 5, &seen).await.must("reset"));
    assert_eq!(store.slots(job).await.must("slots").free, 5);

    // Resized (the fanout, when a period of claims is over): the limit and the free
    // slots move together, the claims count afresh, and only from the item as seen.
    let seen = store.slots(job).await.must("slots");
    assert_eq!((seen.limit, seen.claimed), (5, 12), "{seen:?}");
    assert_eq!(store.take_slots(job, 5, 2).await.must("take"), 2);
    let seen = store.slots(job).await.must("slots");
    let grown = store.resize_window(job, &seen, 9).await.must("resize");
    let grown = grown.expect("resized from the item as seen");
    assert_eq!(
        (grown.limit, grown.free, grown.claimed),
        (9, 7, 0),
        "{grown:?}"
    );
    assert!(
        store
            .resize_window(job, &seen, 2)
            .await
            .must("resize")
            .is_none(),
        "a second resize from the same reading"
    );
    // A giver that still believes the window is 5 gives against 9, never above it.
    let given = store.give_slots(job, 5, 4, 4).await.must("give");
    assert_eq!((given.limit, given.free), (9, 9), "{given:?}");
    // Shrunk below what is out: nothing is free until enough has come back.
    assert_eq!(store.take_slots(job, 5, 6).await.must("take"), 6);
    let seen = store.slots(job).await.must("slots");
    let shrunk = store.resize_window(job, &seen, 4).await.must("resize");
    assert_eq!(shrunk.map(|s| (s.limit, s.free)), Some((4, -2)));
    assert_eq!(store.take_slots(job, 5, 1).await.must("take"), 0);
    assert_eq!(store.give_slots(job, 4, 2, 2).await.must("give").free, 0);
    assert_eq!(store.give_slots(job, 4, 6, 6).await.must("give").free, 4);
    // The reconciler's reset gives the window as it is now, not as it started.
    let seen = store.slots(job).await.must("slots");
    assert_eq!(store.take_slots(job, 5, 4).await.must("take"), 4);
    let seen_after = store.slots(job).await.must("slots");
    assert!(!store.reset_slots(job, 5, &seen).await.must("reset"));
    assert!(store.reset_slots(job, 5, &seen_after).await.must("reset"));
    assert_eq!(store.slots(job).await.must("slots").free, 4);

    let held: Vec<HeldTask> = (0..60)
        .map(|i| HeldTask {
            task_id: format!("t{i:02}"),
            shard: i % 4,
            pool: POOL.into(),
            body: format!("{{\"t\": \"t{i:02}\"}}"),
        })
        .collect();
    assert_eq!(store.hold_tasks(job, 25, &held).await.must("hold"), 60);
    assert_eq!(store.slots(job).await.must("slots").held, 60);
    // Three bundles (25, 25, 10), each with its tasks' messages and pools.
    let found = store.held_bundles(job, 4, 3, 100).await.must("held");
    let mut sizes: Vec<usize> = found.iter().map(|b| b.tasks.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [10, 25, 25]);
    let mut ids: Vec<&str> = found
        .iter()
        .flat_map(|b| b.tasks.iter().map(|t| t.task_id.as_str()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        held.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>()
    );
    // Two givers take the same bundles out at once: each goes to one of them.
    let mut taken = 0;
    for b in &found {
        let (a, c) = tokio::join!(store.unhold_bundle(job, b), store.unhold_bundle(job, b));
        let (a, c) = (a.must("unhold"), c.must("unhold"));
        assert!(a != c, "taken by both or neither");
        taken += b.tasks.len();
    }
    assert_eq!(taken, 60);
    assert_eq!(store.slots(job).await.must("slots").held, 0);
    assert_eq!(store.recount_held(job, 4).await.must("recount"), 0);

    // A job of 128 shards holding two bundles far apart: the walk (eight shards at a
    // time) finds both, in shard order from where it starts, and no more than asked.
    let far: Vec<HeldTask> = [(100u32, "u1"), (5, "u2")]
        .iter()
        .map(|&(shard, id)| HeldTask {
            task_id: id.into(),
            shard,
            pool: POOL.into(),
            body: format!("{{\"t\": \"{id}\"}}"),
        })
        .collect();
    assert_eq!(store.hold_tasks(job, 1, &far).await.must("hold"), 2);
    let found = store.held_bundles(job, 128, 7, 4).await.must("held");
    let shards: Vec<u32> = found.iter().map(|b| b.shard).collect();
    assert_eq!(shards, [100, 5], "{found:?}");
    let first = store.held_bundles(job, 128, 7, 1).await.must("held");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].tasks[0].task_id, "u1");
    assert_eq!(store.recount_held(job, 128).await.must("recount"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_sends_nothing_it_held() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.job_window = 2;
        o.window_seconds = 0.0;
    })
    .await;
    let store = h.stack.service.store.clone();
    let job = h.submit(&independent("cancelled", 10, "true")).await;
    wait_for("eight held", MINUTE, || async {
        let s = store.slots(&job).await.must("the job's slots");
        (s.held == 8).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;
    let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(h.wait(&job, MINUTE).await["state"], "CANCELLED");
    // A worker now finds the two sent messages' tasks cancelled: it gives their slots
    // back, and nothing held goes out for a cancelled job.
    h.stack.spawn_worker().await.must("a worker");
    wait_for("both sent messages taken", MINUTE, || async {
        let queues = &h.stack.service.queues;
        let url = queues.url(POOL).await.must("the pool's queue");
        let (visible, in_flight) = queues.depth(&url).await.must("depth");
        (visible + in_flight == 0)
            .then_some(())
            .ok_or(format!("{visible} + {in_flight}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        waiting(&h).await,
        0,
        "a held task was sent after the cancel"
    );
    for i in 0..10 {
        let t = h.task(&job, &format!("t{i}")).await;
        assert_eq!(t["state"], "CANCELLED", "{t}");
        assert!(attempts(&t).is_empty(), "{t}");
    }
    h.shutdown().await;
}

/// A job's cancel walks its tasks a page at a time (a million-task job's for minutes).
/// A worker handed a task the walk has not reached yet cancels it instead of running
/// it, and the dependents of a cancelled task end CANCELLED, not FAILED. Here the job is
/// flagged without any walk at all, so only the worker's check can stop the tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starts_nothing_of_a_job_being_cancelled() {
    let mut h = Harness::start(|o| o.workers = 0).await;
    let store = h.stack.service.store.clone();
    let ran = batchplane_testing::shared_file(&h.dir.join("ran.log"));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let cmd = format!("echo a{i} >> {}", ran.display());
        tasks.push(json!({"id": format!("a{i}"), "command": ["sh", "-c", cmd]}));
        tasks.push(
            json!({"id": format!("b{i}"), "command": ["true"], "depends_on": [format!("a{i}")]}),
        );
    }
    let job = h
        .submit(&json!({"name": "flagged", "tasks": tasks}).to_string())
        .await;
    wait_for("three messages waiting", MINUTE, || async {
        let n = waiting(&h).await;
        (n == 3).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    // What the API's cancel does first; its walk is left out.
    store
        .request_job_cancel(&job, batchplane::domain::Stop::Cancel, None)
        .await
        .must("flagging the job");
    h.stack.spawn_worker().await.must("a worker");
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "CANCELLED", "{done}");
    for i in 0..3 {
        let a = h.task(&job, &format!("a{i}")).await;
        assert_eq!(a["state"], "CANCELLED", "{a}");
        assert!(attempts(&a).is_empty(), "{a}");
        // The job may close before the cascade from a{i} reaches b{i} (it waits at
        // most `CANCEL_SETTLES_AFTER_MS` for the walk); until then b{i} reads "job
        // cancelled". The cascade still comes, and names the dependency.
        let want = format!("dependency a{i} cancelled");
        wait_for(&format!("b{i} {want}"), MINUTE, || async {
            let b = h.task(&job, &format!("b{i}")).await;
            (b["state"] == "CANCELLED" && b["status_reason"] == want.as_str())
                .then_some(())
                .ok_or(b.to_string())
        })
        .await;
    }
    assert_eq!(
        done["task_counts"]["FAILED"].as_u64().unwrap_or(0),
        0,
        "{done}"
    );
    assert!(
        std::fs::read_to_string(&ran).unwrap_or_default().is_empty(),
        "a task of the cancelled job ran"
    );
    h.shutdown().await;
}
