//! A job's cancel: what runs is stopped, what waits never starts, and the job closes as
//! soon as nothing of it runs, however many of its tasks its walk has yet to write.

use batchplane::domain::records::CANCEL_SETTLES_AFTER_MS;
use batchplane::domain::{Stop, TaskState};
use batchplane_testing::{attempts, Harness, Must};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// Here the job is flagged with no walk at all, as a million-task job is for minutes
/// while its walk goes page by page: the running task is stopped by its worker's own
/// look at the job, and the job closes once nothing of it runs. The task no worker
/// serves and its dependent are still RUNNABLE and PENDING in the table; readers see
/// them CANCELLED, in the job's counts, each task and the listing by state alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_closes_once_nothing_of_it_runs_before_its_walk_ends() {
    // A lease long enough that a heartbeat late on a loaded machine does not start a
    // second attempt of `long`.
    let h = Harness::start(|o| o.lease_seconds = 6).await;
    let store = h.stack.service.store.clone();
    let job = h
        .submit(
            r#"
name: closing
tasks:
  - {id: long, command: [sleep, "300"]}
  - {id: starved, command: ["true"], tiers: [{cpu: 1, memory_mib: 200}]}
  - {id: after, command: ["true"], depends_on: [starved]}
"#,
        )
        .await;
    h.wait_task(&job, "long", "RUNNING", MINUTE).await;
    h.wait_task(&job, "starved", "RUNNABLE", MINUTE).await;
    // What the API's cancel does first; its walk is left out.
    store
        .request_job_cancel(&job, Stop::Cancel, None)
        .await
        .must("flagging the job");
    let asked = Instant::now();
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "CANCELLED", "{done}");
    // Not before a worker holding a view of the job from before the cancel has had its
    // chance to claim (and be counted).
    assert!(
        asked.elapsed() >= Duration::from_millis(CANCEL_SETTLES_AFTER_MS as u64 - 1000),
        "closed {:?} after the cancel",
        asked.elapsed()
    );
    for (state, n) in [
        ("CANCELLED", 3),
        ("PENDING", 0),
        ("RUNNABLE", 0),
        ("RUNNING", 0),
    ] {
        assert_eq!(done["task_counts"][state], n, "{state}: {done}");
    }

    let long = h.task(&job, "long").await;
    assert_eq!(long["state"], "CANCELLED", "{long}");
    assert_eq!(attempts(&long).len(), 1, "{long}");
    for id in ["starved", "after"] {
        let t = h.task(&job, id).await;
        assert_eq!(t["state"], "CANCELLED", "{t}");
        assert_eq!(t["status_reason"], "job cancelled", "{t}");
        assert!(attempts(&t).is_empty(), "{t}");
    }
    let after = h.task(&job, "after").await;
    assert_eq!(
        after["dependency_states"]["starved"], "CANCELLED",
        "{after}"
    );
    let why = h.explain(&job, "after").await;
    assert_eq!(why["state"], "CANCELLED", "{why}");

    // In the table they still wait: nothing wrote them, nothing will run them.
    let shards = store
        .get_job(&job)
        .await
        .must("the job")
        .must("a job")
        .shard_count;
    for (id, state) in [
        ("starved", TaskState::Runnable),
        ("after", TaskState::Pending),
    ] {
        let t = store
            .get_task(&job, shards, id)
            .await
            .must("reading the task")
            .must("the task");
        assert_eq!(t.state, state, "{id}");
    }
    let cancelled: Vec<String> = h
        .all_tasks(&job, Some("CANCELLED"), 10)
        .await
        .iter()
        .map(|t| t["task_id"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(cancelled.len(), 3, "{cancelled:?}");
    for state in ["PENDING", "RUNNABLE"] {
        let left = h.all_tasks(&job, Some(state), 10).await;
        assert!(left.is_empty(), "{state}: {left:?}");
    }
    h.shutdown().await;
}
