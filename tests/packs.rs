//! Packed messages: a send of many tasks goes out several tasks a message. A worker
//! claims each task of a pack on its own, hands on what it cannot start to other
//! workers, and deletes the message only once every task in it is accounted for, so a
//! pack whose worker dies comes back whole and only its unfinished tasks run again.

use batchplane::queue::{encode, TaskMessage};
use batchplane_testing::{attempts, lines, shared_file, wait_for, Harness, Must};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const POOL: &str = "default--t-default";

/// A job of one-vCPU tasks `t0`, `t1`, … running these shell commands.
fn spec(name: &str, commands: &[String]) -> String {
    let tasks: Vec<_> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"id": format!("t{i}"), "cpu": 1, "command": ["sh", "-c", c]}))
        .collect();
    json!({"name": name, "tasks": tasks}).to_string()
}

/// Take the job's messages out of the pool's queue until `n` tasks are in hand; how
/// many messages carried them, and the tasks in the order received.
async fn take_all(h: &Harness, n: usize) -> (usize, Vec<TaskMessage>) {
    let queues = &h.stack.service.queues;
    let url = queues.url(POOL).await.must("the pool's queue");
    let (mut messages, mut tasks) = (0, Vec::new());
    let deadline = std::time::Instant::now() + MINUTE;
    while tasks.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} tasks' messages came",
            tasks.len()
        );
        let got = queues
            .receive(&url, 10, Duration::from_secs(1), Duration::from_secs(300))
            .await
            .must("receiving");
        let receipts: Vec<String> = got.iter().map(|d| d.receipt_handle.clone()).collect();
        queues.delete(&url, &receipts).await.must("deleting");
        messages += got.len();
        tasks.extend(got.into_iter().flat_map(|d| d.tasks));
    }
    (messages, tasks)
}

/// Send these tasks to the pool as one message.
async fn send_pack(h: &Harness, tasks: &[TaskMessage]) {
    let queues = &h.stack.service.queues;
    let url = queues.url(POOL).await.must("the pool's queue");
    queues
        .client()
        .send_message()
        .queue_url(url)
        .message_body(encode(tasks))
        .send()
        .await
        .must("sending the pack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_job_goes_out_in_packs_and_every_task_runs_once() {
    let mut h = Harness::start(|o| o.workers = 0).await;
    let commands = vec!["true".to_string(); 40];
    let job = h.submit(&spec("wide", &commands)).await;
    // The stream sends the tasks as their records come, a few at a time here; sent
    // together, forty go out in ten messages.
    let (_, tasks) = take_all(&h, 40).await;
    let queues = &h.stack.service.queues;
    queues
        .send(POOL, &tasks)
        .await
        .must("sending them together");
    let (messages, tasks) = take_all(&h, 40).await;
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!((tasks.len(), ids.len()), (40, 40), "each task once");
    assert_eq!(messages, 10, "40 tasks came in {messages} messages");
    // Sent packed again, they all run, each once.
    queues.send(POOL, &tasks).await.must("sending them back");
    h.stack.spawn_worker().await.must("a worker");
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    h.assert_each_ran_once(&job, 40).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_full_worker_cannot_start_of_a_pack_goes_on_to_another() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.worker_cpus = 1.0;
        o.worker_hold_ms = Some(300);
    })
    .await;
    let job = h
        .submit(&spec("handed-on", &vec!["sleep 4".to_string(); 3]))
        .await;
    let (_, tasks) = take_all(&h, 3).await;
    h.stack.spawn_worker().await.must("a worker");
    h.stack.spawn_worker().await.must("a second worker");
    send_pack(&h, &tasks).await;
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let mut workers = BTreeSet::new();
    for i in 0..3 {
        let t = h.task(&job, &format!("t{i}")).await;
        let a = attempts(&t);
        assert_eq!(a.len(), 1, "{t}");
        workers.insert(a[0]["worker_id"].as_str().must("a worker id").to_string());
    }
    // One slot each: had the worker that took the pack kept it, it would have run all
    // three, one after another.
    assert_eq!(workers.len(), 2, "{workers:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_whose_worker_dies_comes_back_whole_and_only_its_unfinished_tasks_run_again() {
    // The slow tasks outlast the wait for them by seconds and the lease holds through a
    // late heartbeat, on a machine loaded by other tests: with three-second sleeps and
    // leases, a slow task could end before the kill that was meant to catch it running.
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.worker_cpus = 2.0;
        o.lease_seconds = 6;
    })
    .await;
    let marker = shared_file(&h.dir.join("attempts.log"));
    let slow = format!(
        "echo $BATCHPLANE_TASK_ID $BATCHPLANE_ATTEMPT >> {}; sleep 8",
        marker.display()
    );
    let commands = vec!["true".to_string(), slow.clone(), "true".to_string(), slow];
    let job = h.submit(&spec("survivors", &commands)).await;
    let (_, mut tasks) = take_all(&h, 4).await;
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let pid = h.stack.spawn_worker().await.must("a worker");
    send_pack(&h, &tasks).await;
    // Two slots: t0 and t1 start, t2 follows t0, t3 follows t2; then the worker dies
    // with t1 and t3 running and the pack's message not deleted.
    wait_for("t0 and t2 done, t1 and t3 started", MINUTE, || async {
        let seen = lines(&marker);
        let t0 = h.task(&job, "t0").await["state"].clone();
        let t2 = h.task(&job, "t2").await["state"].clone();
        (seen.len() == 2 && t0 == "SUCCEEDED" && t2 == "SUCCEEDED")
            .then_some(())
            .ok_or(format!("{seen:?} t0 {t0} t2 {t2}"))
    })
    .await;
    h.stack
        .signal_worker(pid, nix::sys::signal::Signal::SIGKILL)
        .must("killing the worker");
    h.stack.spawn_worker().await.must("a second worker");
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    for (task, runs) in [("t0", 1), ("t1", 2), ("t2", 1), ("t3", 2)] {
        let t = h.task(&job, task).await;
        assert_eq!(attempts(&t).len(), runs, "{t}");
    }
    let mut seen = lines(&marker);
    seen.sort();
    assert_eq!(seen, ["t1 1", "t1 2", "t3 1", "t3 2"]);
    h.shutdown().await;
}
