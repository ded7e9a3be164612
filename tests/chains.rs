//! Depth first through N_TO_N arrays: a worker that runs an array child to success takes
//! on the same child of the array's N_TO_N successor next, itself, with no message of
//! its own, carried by the predecessor child's message (see `taskhost`'s `chain`).

use batchplane::domain::records::JOB_VIEW_FRESH_FOR_MS;
use batchplane::domain::{JobState, TaskRecord};
use batchplane_testing::{attempts, lines, shared_file, wait_for, Harness, Must};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Every child of an array job, read from the store, by index.
async fn children(h: &Harness, job_id: &str) -> HashMap<u32, TaskRecord> {
    let store = &h.stack.service.store;
    let job = store
        .get_job(job_id)
        .await
        .must("reading the job")
        .must("the job");
    store
        .all_tasks(job_id, job.shard_count)
        .await
        .must("listing the children")
        .into_iter()
        .map(|t| (t.index.must("a child's index"), t))
        .collect()
}

fn worker_of(t: &TaskRecord) -> &str {
    t.attempts
        .first()
        .map(|a| a.worker_id.as_str())
        .or(t.worker_id.as_deref())
        .unwrap_or_default()
}

async fn wait_runnable(h: &Harness, job_id: &str) {
    // Shown PENDING until a child of it is queued, as AWS Batch shows an array parent.
    let store = &h.stack.service.store;
    wait_for("the successor is RUNNABLE", MINUTE, || async {
        let j = store
            .get_job(job_id)
            .await
            .must("reading the job")
            .must("the job");
        (j.state == JobState::Runnable)
            .then_some(())
            .ok_or(format!("{:?}", j.state))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_child_runs_next_on_the_worker_that_ran_its_predecessor_child() {
    let h = Harness::start(|_| {}).await;
    let gate = h.dir.join("gate");
    let wait_at_gate = format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    let first = json!({"name": "first", "array_size": 16, "command": ["sh", "-c", wait_at_gate],
                       "cpu": 0.5, "memory_mib": 64});
    let a = h.submit(&first.to_string()).await;
    let second = json!({"name": "second", "array_size": 16, "command": ["true"], "cpu": 0.5,
                        "memory_mib": 64, "depends_on": [{"job": a, "type": "N_TO_N"}]});
    let b = h.submit(&second.to_string()).await;
    wait_runnable(&h, &b).await;
    wait_for("every child of the first running", MINUTE, || async {
        let j = h.job(&a).await;
        (j["task_counts"]["RUNNING"] == 16)
            .then_some(())
            .ok_or(j["task_counts"].to_string())
    })
    .await;
    // The workers read the first job (and learn of its successor) when they next look,
    // once what they read at its claims is stale.
    tokio::time::sleep(Duration::from_millis(JOB_VIEW_FRESH_FOR_MS as u64 + 500)).await;
    std::fs::write(&gate, "").must("opening the gate");
    let done = h.wait(&b, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(h.wait(&a, MINUTE).await["state"], "SUCCEEDED");

    let (ka, kb) = (children(&h, &a).await, children(&h, &b).await);
    assert_eq!((ka.len(), kb.len()), (16, 16));
    let mut chained = 0;
    for (i, t) in &kb {
        let pred = &ka[i];
        assert_eq!(t.attempts.len(), 1, "second:{i} ran once: {t:?}");
        assert!(
            t.started_at.must("a start") >= pred.finished_at.must("an end"),
            "second:{i} started before first:{i} ended"
        );
        if t.chained {
            chained += 1;
            assert_eq!(worker_of(t), worker_of(pred), "second:{i} ran elsewhere");
        }
    }
    assert_eq!(chained, 16, "every child of the second was taken on");
    // None went through the second job's window: its slots item was never written.
    let window = h.stack.service.store.slots(&b).await.must("the window");
    assert_eq!(
        (window.limit, window.held, window.changed_at),
        (0, 0, 0),
        "{window:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_child_whose_worker_dies_is_taken_over_through_its_predecessors_message() {
    // Sleeps and leases long enough that the successor children are still running
    // when the worker is killed, on a machine loaded by other tests.
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.worker_cpus = 2.0;
        o.lease_seconds = 6;
    })
    .await;
    let marker = shared_file(&h.dir.join("attempts.log"));
    let first = json!({"name": "first", "array_size": 2, "command": ["true"], "cpu": 0.5});
    let a = h.submit(&first.to_string()).await;
    let record = format!(
        "echo $AWS_BATCH_JOB_ARRAY_INDEX $BATCHPLANE_ATTEMPT >> {}; sleep 8",
        marker.display()
    );
    let second = json!({"name": "second", "array_size": 2, "command": ["sh", "-c", record],
                        "cpu": 0.5, "depends_on": [{"job": a, "type": "N_TO_N"}]});
    let b = h.submit(&second.to_string()).await;
    wait_runnable(&h, &b).await;
    let pid = h.stack.spawn_worker().await.must("a worker");
    wait_for("both successor children running", MINUTE, || async {
        let seen = lines(&marker);
        (seen.len() == 2).then_some(()).ok_or(format!("{seen:?}"))
    })
    .await;
    let kb = children(&h, &b).await;
    assert!(kb.values().all(|t| t.chained), "{kb:?}");
    h.stack
        .signal_worker(pid, nix::sys::signal::Signal::SIGKILL)
        .must("killing the worker");
    // Nothing else stands for the successor children: only the first array's messages,
    // undeleted, bring them back.
    h.stack.spawn_worker().await.must("a second worker");
    let done = h.wait(&b, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    for i in 0..2 {
        let t = h.task(&b, &i.to_string()).await;
        let tried = attempts(&t);
        assert_eq!(tried.len(), 2, "{t}");
        let lost = tried[0]["reason"].as_str().unwrap_or_default();
        assert!(lost.contains("lease expired"), "{t}");
        assert_eq!(attempts(&h.task(&a, &i.to_string()).await).len(), 1);
    }
    let mut seen = lines(&marker);
    seen.sort();
    assert_eq!(seen, ["0 1", "0 2", "1 1", "1 2"]);
    h.shutdown().await;
}
