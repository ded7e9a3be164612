//! Correctness under faults: each guarantee shown with its fault injected, through the
//! fault proxy in front of the emulators (`batchplane_local::faults`), or by stopping
//! and killing real taskhosts. What actually ran is read from a ledger the tasks write
//! themselves (`batchplane_local::ledger`), not from the system's own account.

use batchplane::aws::{Clients, Endpoints};
use batchplane::domain::{parse_job_spec, plan_job, AttemptRecord, TaskState};
use batchplane::store::{Claim, JobQuery, Store};
use batchplane_local::faults::{FaultPlan, FaultProxy};
use batchplane_local::ledger;
use batchplane_local::WorkerEndpoints;
use batchplane_testing::{attempts, shared_file, wait_for, Harness, Must, TestEmulators};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

async fn proxy(upstream: &str) -> FaultProxy {
    FaultProxy::start(upstream, FaultPlan::none())
        .await
        .must("starting a fault proxy")
}

/// A store on `table` whose every request goes through `proxy`.
async fn store_through(proxy: &FaultProxy, table: &str) -> Store {
    let clients = Clients::new(&Endpoints {
        dynamodb: Some(proxy.url.clone()),
        ..Default::default()
    })
    .await;
    Store::new(clients.dynamodb, table)
}

/// A stored job of `n` independent tasks `t0…`; its id and shard count.
async fn stored_job(store: &Store, n: usize) -> (String, u32) {
    let tasks: String = (0..n)
        .map(|i| format!(" - {{id: t{i}, command: ['true']}}\n"))
        .collect();
    batchplane_testing::stored_job(store, &format!("name: x\ntasks:\n{tasks}")).await
}

#[tokio::test]
async fn batch_reads_and_writes_get_every_item_through_unprocessed_entries_and_throttling() {
    let emu = TestEmulators::get();
    let direct = batchplane_testing::test_store(&emu, "faults").await;
    let ddb = proxy(&emu.dynamodb_url).await;
    let store = store_through(&ddb, direct.table()).await;
    ddb.set_plan(FaultPlan {
        unprocessed: 1.0,
        throttle: 0.3,
        ..FaultPlan::none()
    });
    let (job, shards) = stored_job(&store, 300).await;
    let ids: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let found = store
        .get_tasks(&job, shards, &ids)
        .await
        .must("reading the tasks back");
    let counts = ddb.counts();
    ddb.set_plan(FaultPlan::none());
    // Every item was written and every one found, though each batch came back with
    // entries left over, and a third of the requests were throttled.
    assert_eq!(found.len(), 300, "missing: {:?}", {
        let mut m: Vec<&String> = ids.iter().filter(|i| !found.contains_key(*i)).collect();
        m.truncate(10);
        m
    });
    let direct_read = direct.get_tasks(&job, shards, &ids).await.must("reading");
    assert_eq!(direct_read.len(), 300);
    let held = counts
        .by_kind
        .get("unprocessed")
        .cloned()
        .unwrap_or_default();
    assert!(
        held.get("BatchWriteItem").copied().unwrap_or(0) >= 12
            && held.get("BatchGetItem").copied().unwrap_or(0) >= 3,
        "the proxy held entries back: {counts:?}"
    );
    assert!(counts.total("throttle") > 0, "{counts:?}");
}

#[tokio::test]
async fn a_result_write_whose_answer_was_lost_counts_as_recorded() {
    let emu = TestEmulators::get();
    let direct = batchplane_testing::test_store(&emu, "faults").await;
    let ddb = proxy(&emu.dynamodb_url).await;
    let store = store_through(&ddb, direct.table()).await;
    let (job, shards) = stored_job(&direct, 1).await;
    let shard = batchplane::domain::ids::task_shard("t0", shards);
    let Claim::Claimed(task) = direct
        .claim_task(&job, shard, "t0", "w", Duration::from_secs(30))
        .await
        .must("claiming")
    else {
        panic!("the task was claimable")
    };
    // The write reaches DynamoDB and is applied; its answer never comes back, so the
    // SDK sends it again, and that copy's condition (still RUNNING) fails.
    ddb.set_plan(FaultPlan {
        lose_answer: 1.0,
        operations: vec!["UpdateItem".into()],
        limit: Some(1),
        ..FaultPlan::none()
    });
    let rec = AttemptRecord {
        attempt: task.attempt,
        worker_id: "w".into(),
        started_at: 1_000,
        finished_at: Some(2_000),
        exit_code: Some(0),
        ..Default::default()
    };
    let recorded = store
        .finish_attempt(&task, "w", TaskState::Succeeded, None, &rec, None)
        .await
        .must("finishing");
    assert_eq!(ddb.counts().total("lose_answer"), 1);
    assert!(recorded, "the write was applied: the attempt is recorded");
    let t = direct
        .get_task(&job, shards, "t0")
        .await
        .must("reading")
        .must("the task");
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.attempts.len(), 1);
    // Another worker's claim of it is not mistaken for this one's write.
    let other = AttemptRecord {
        worker_id: "x".into(),
        ..rec.clone()
    };
    assert!(!store
        .finish_attempt(&task, "x", TaskState::Succeeded, None, &other, None)
        .await
        .must("finishing as another worker"));
}

/// A job of one task running `command`, as JSON the API takes.
fn one_task_job(name: &str, command: Vec<String>) -> String {
    json!({"name": name, "tasks": [{"id": "t", "command": command}]}).to_string()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Wait until the ledger shows `attempt` of the job's task started; that execution.
async fn started(ledger_file: &std::path::Path, attempt: u32) -> ledger::Execution {
    wait_for("the attempt's process to start", MINUTE, || async {
        let runs = ledger::read(ledger_file);
        runs.iter()
            .find(|e| e.attempt == attempt)
            .cloned()
            .ok_or_else(|| format!("{runs:?}"))
    })
    .await
}

/// The ledger of a finished one-task job: the first attempt never reached its end, the
/// second did, and they never ran at once; the first's process is gone.
fn assert_fenced_then_taken_over(ledger_file: &std::path::Path) {
    let runs = ledger::read(ledger_file);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let overlapping = ledger::overlaps(&runs);
    assert!(
        overlapping.is_empty(),
        "the first attempt still ran when the second started: {overlapping:?}"
    );
    assert!(!runs[0].ended, "the first attempt was stopped: {runs:?}");
    assert!(runs[1].ended && runs[1].attempt == 2, "{runs:?}");
    assert!(!alive(runs[0].pid), "the first attempt's process is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_aws_stops_its_attempt_before_it_can_be_taken_over() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.lease_seconds = 4;
    })
    .await;
    let (ddb, sqs) = (
        proxy(&h.emulators.dynamodb_url).await,
        proxy(&h.emulators.sqs_url).await,
    );
    h.stack.opts.worker_endpoints = Some(WorkerEndpoints {
        dynamodb_url: ddb.url.clone(),
        sqs_url: sqs.url.clone(),
    });
    h.stack.spawn_worker().await.must("the first worker");
    let ledger_file = shared_file(&h.dir.join("ledger"));
    // About ten seconds: longer than the lease and its margins.
    let job = h
        .submit(&one_task_job(
            "fenced",
            ledger::task_command(&ledger_file, 100, 100, 0),
        ))
        .await;
    started(&ledger_file, 1).await;
    // From now on every DynamoDB and SQS call of the first worker fails: it can no
    // longer renew its lease, nor learn that it lost it.
    let cut = FaultPlan {
        reset: 1.0,
        ..FaultPlan::none()
    };
    ddb.set_plan(cut.clone());
    sqs.set_plan(cut);
    h.stack.opts.worker_endpoints = None;
    h.stack.spawn_worker().await.must("the second worker");
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_fenced_then_taken_over(&ledger_file);
    let t = h.task(&job, "t").await;
    let a = attempts(&t);
    assert_eq!(a.len(), 2, "{t}");
    assert!(
        a[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lease expired")),
        "{t}"
    );
    assert!(ddb.counts().total("reset") > 0);
    ddb.set_plan(FaultPlan::none());
    sqs.set_plan(FaultPlan::none());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workers_attempt_is_fenced_by_its_shim_before_the_takeover() {
    // A lease of eight seconds: the second worker's heartbeats must hold it on a machine
    // loaded by other tests (at four, one late heartbeat let a third attempt begin).
    let mut h = Harness::start(|o| {
        o.workers = 1;
        o.lease_seconds = 8;
    })
    .await;
    let ledger_file = shared_file(&h.dir.join("ledger"));
    let job = h
        .submit(&one_task_job(
            "stopped",
            ledger::task_command(&ledger_file, 100, 100, 0),
        ))
        .await;
    started(&ledger_file, 1).await;
    // SIGSTOP: the worker can do nothing at all, past its lease; only the shim, a
    // process of its own, can still stop the attempt.
    let first = h.stack.worker_pids()[0];
    h.stack
        .signal_worker(first, nix::sys::signal::Signal::SIGSTOP)
        .must("stopping the worker");
    h.stack.spawn_worker().await.must("the second worker");
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_fenced_then_taken_over(&ledger_file);
    // Woken up, the first worker records nothing over the second's result.
    h.stack
        .signal_worker(first, nix::sys::signal::Signal::SIGCONT)
        .must("waking the worker");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = h.task(&job, "t").await;
    assert_eq!(t["state"], "SUCCEEDED", "{t}");
    assert_eq!(attempts(&t).len(), 2, "{t}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_result_write_is_tried_again_not_turned_into_a_rerun() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.lease_seconds = 10;
    })
    .await;
    let ddb = proxy(&h.emulators.dynamodb_url).await;
    h.stack.opts.worker_endpoints = Some(WorkerEndpoints {
        dynamodb_url: ddb.url.clone(),
        sqs_url: h.emulators.sqs_url.clone(),
    });
    h.stack.spawn_worker().await.must("the worker");
    let ledger_file = shared_file(&h.dir.join("ledger"));
    let job = h
        .submit(&one_task_job(
            "throttled",
            ledger::task_command(&ledger_file, 10, 100, 0),
        ))
        .await;
    started(&ledger_file, 1).await;
    // The result write is throttled more times than the SDK tries one call.
    let throttles = u64::from(batchplane::aws::MAX_CALL_ATTEMPTS) + 2;
    ddb.set_plan(FaultPlan {
        throttle: 1.0,
        operations: vec!["UpdateItem".into()],
        body_contains: Some("SET #state = :to".into()),
        limit: Some(throttles),
        ..FaultPlan::none()
    });
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(ddb.counts().total("throttle"), throttles);
    let t = h.task(&job, "t").await;
    assert_eq!(t["attempt"], 1, "recorded on the first attempt: {t}");
    assert_eq!(attempts(&t).len(), 1, "{t}");
    let runs = ledger::read(&ledger_file);
    assert_eq!(runs.len(), 1, "it ran once: {runs:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_failed_send_retries_the_batch_from_the_earliest_record_it_carried() {
    use batchplane::stream::{Change, Fanout, TaskChange};
    let emu = TestEmulators::get();
    let store = batchplane_testing::test_store(&emu, "faults").await;
    let sqs = proxy(&emu.sqs_url).await;
    let clients = Clients::new(&Endpoints {
        sqs: Some(sqs.url.clone()),
        ..Default::default()
    })
    .await;
    let prefix = format!("f{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queues = batchplane::queue::Queues::new(clients.sqs, prefix);
    let pool = batchplane::domain::tiers::WorkerPool::new("default", "default", None).name();
    queues
        .create(&pool, Duration::from_secs(30))
        .await
        .must("creating the pool's queue");
    // a → d, and r on its own: record 0 is a's success (releasing d), record 1 is r
    // becoming RUNNABLE. Both go to one pool, r's message first in the send.
    let spec = parse_job_spec(
        "name: x\ntasks:\n - {id: a, command: ['true']}\n - {id: d, command: ['true'], depends_on: [a]}\n - {id: r, command: ['true']}\n",
    )
    .must("the spec");
    let plan = plan_job(&spec.tasks);
    let job = batchplane::domain::ids::new_job_id(batchplane::store::now_ms());
    store
        .put_job(&batchplane::domain::JobRecord {
            state: batchplane::JobState::Pending,
            total_tasks: plan.len() as u64,
            shard_count: 1,
            ..batchplane::domain::JobRecord::new(&job, "x", "default", "default")
        })
        .await
        .must("storing the job");
    store
        .write_tasks(&job, 1, ("default", "default"), 2, &plan)
        .await
        .must("writing the tasks");
    let read = |id: &'static str| {
        let (store, job) = (store.clone(), job.clone());
        async move { store.get_task(&job, 1, id).await.must("reading").must(id) }
    };
    let mut a = read("a").await;
    a.state = TaskState::Succeeded;
    let r = read("r").await;
    let changes = vec![
        Change::Task(Box::new(TaskChange {
            sequence_number: "100".into(),
            old_state: Some(TaskState::Running),
            task: a,
        })),
        Change::Task(Box::new(TaskChange {
            sequence_number: "101".into(),
            old_state: None,
            task: r,
        })),
    ];
    let fanout = Fanout::new(store.clone(), queues);
    // The send fails through every try the SDK makes.
    sqs.set_plan(FaultPlan {
        throttle: 1.0,
        operations: vec!["SendMessageBatch".into()],
        limit: Some(u64::from(batchplane::aws::MAX_CALL_ATTEMPTS)),
        ..FaultPlan::none()
    });
    let outcome = fanout.process(&changes).await;
    assert_eq!(
        outcome.failed_at.as_deref(),
        Some("100"),
        "retried from a's record, whose release of d was not sent"
    );
    assert_eq!(read("d").await.state, TaskState::Runnable);
    // The retry from there sends d (and r) after all.
    let retried = fanout.process(&changes).await;
    assert!(retried.failed_at.is_none(), "{retried:?}");
    assert!(retried.enqueued >= 2, "{retried:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_additions_of_one_task_id_add_it_once_and_the_losers_hear_409() {
    let h = Harness::start(|o| o.workers = 1).await;
    let job = h
        .submit("name: growing\ntasks:\n  - {id: gate, command: [sleep, '2']}\n")
        .await;
    h.wait_task(&job, "gate", "RUNNING", MINUTE).await;
    let add = json!([{"id": "x", "command": ["true"], "depends_on": ["gate"]}]).to_string();
    let path = format!("/v1/jobs/{job}/tasks");
    let answers = futures::future::join_all((0..6).map(|_| h.post(&path, &add))).await;
    let won = answers.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, &r.body))
            .collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| r.status != 201) {
        // A loser either saw x already (400, the id is taken) or lost the write (409).
        let code = r.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            (r.status == 409 && code == "TaskExists")
                || (r.status == 400 && code == "DuplicateTaskId"),
            "{} {}",
            r.status,
            r.body
        );
        assert!(
            r.body.to_string().contains("\"x\""),
            "names the id: {}",
            r.body
        );
    }
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["total_tasks"], 2, "{done}");
    assert_eq!(done["task_counts"]["SUCCEEDED"], 2, "{done}");
    let x = h.task(&job, "x").await;
    assert_eq!(attempts(&x).len(), 1, "x ran once: {x}");
    // The addition's edge between groups, once.
    let groups = h.get(&format!("/v1/jobs/{job}/groups")).await;
    assert_eq!(
        groups.body["edges"],
        json!([{"from": "gate", "to": "x"}]),
        "{}",
        groups.body
    );
    h.shutdown().await;
}

/// Submit `spec` with an `Idempotency-Key`; the status and body.
async fn submit_with_key(h: &Harness, spec: &str, key: &str) -> (u16, serde_json::Value) {
    let r = h
        .http
        .post(h.url("/v1/jobs"))
        .header("idempotency-key", key)
        .body(spec.to_string())
        .send()
        .await
        .must("posting the job");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_that_fails_part_way_runs_nothing_and_its_key_lets_a_retry_try_again() {
    let emu = TestEmulators::get();
    let ddb = proxy(&emu.dynamodb_url).await;
    let url = ddb.url.clone();
    let h = Harness::start(move |o| o.dynamodb_url = url).await;
    let ledger_file = shared_file(&h.dir.join("ledger"));
    // Sixty ready tasks: three batches of writes, one of which fails outright (every
    // try the SDK makes is throttled), after the others were written.
    let tasks: Vec<serde_json::Value> = (0..60)
        .map(|i| json!({"id": format!("t{i}"), "command": ledger::task_command(&ledger_file, 0, 10, 0)}))
        .collect();
    let spec = json!({"name": "half-written", "tasks": tasks}).to_string();
    ddb.set_plan(FaultPlan {
        throttle: 1.0,
        operations: vec!["BatchWriteItem".into()],
        body_contains: Some("T#t59\"".into()),
        ..FaultPlan::none()
    });
    let (status, body) = submit_with_key(&h, &spec, "nightly-1").await;
    assert!(status >= 500, "the submission failed: {status} {body}");
    assert!(ddb.counts().total("throttle") > 0);
    ddb.set_plan(FaultPlan::none());
    // Nothing of it ran: its written tasks were never sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        ledger::read(&ledger_file).is_empty(),
        "{:?}",
        ledger::read(&ledger_file)
    );
    // The retry with the same key is a new submission, which runs.
    let (status, body) = submit_with_key(&h, &spec, "nightly-1").await;
    assert_eq!(status, 201, "{body}");
    let job = body["job_id"].as_str().must("a job id").to_string();
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let runs = ledger::read(&ledger_file);
    assert_eq!(runs.len(), 60, "each task ran once: {runs:?}");
    assert!(
        runs.iter().all(|r| r.job_id == job),
        "only the accepted job ran"
    );
    // Now the key is bound: the same job again.
    let (status, again) = submit_with_key(&h, &spec, "nightly-1").await;
    assert_eq!(again["job_id"], job.as_str(), "{status} {again}");
    // The failed submission is a FAILED job that says nothing of it ran.
    let failed = h
        .stack
        .service
        .store
        .list_jobs(
            "default",
            &JobQuery::Status("FAILED".into()),
            None,
            10,
            None,
        )
        .await
        .must("listing the queue's jobs")
        .jobs;
    assert!(
        failed.iter().any(|j| j
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("nothing of it ran"))),
        "{failed:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runnable_task_whose_message_was_lost_is_sent_again_by_the_reconciler() {
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.reconcile_every_seconds = 1;
    })
    .await;
    let job = h
        .submit("name: lost\ntasks:\n  - {id: t, command: ['true']}\n")
        .await;
    // Take the task's message away, as a lost send would.
    let queues = &h.stack.service.queues;
    let url = queues
        .url("default--t-default")
        .await
        .must("the pool's queue");
    let taken = wait_for("the task's message", MINUTE, || async {
        let got = queues
            .receive(&url, 10, Duration::from_secs(1), Duration::from_secs(300))
            .await
            .map_err(|e| e.to_string())?;
        (!got.is_empty())
            .then_some(got)
            .ok_or("none yet".to_string())
    })
    .await;
    let receipts: Vec<String> = taken.iter().map(|d| d.receipt_handle.clone()).collect();
    queues
        .delete(&url, &receipts)
        .await
        .must("deleting the message");
    assert_eq!(h.task(&job, "t").await["state"], "RUNNABLE");
    // A worker comes; the task runs only if its message comes back.
    h.stack.spawn_worker().await.must("a worker");
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(attempts(&h.task(&job, "t").await).len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_can_take_is_dead_lettered_redriven_once_then_failed_with_its_size() {
    let h = Harness::start(|o| {
        o.workers = 1;
        o.max_receives = 2;
        o.reconcile_every_seconds = 1;
    })
    .await;
    // The settings promise 64-vCPU workers, so the submission is taken; the stack's
    // one worker offers 4, so no worker ever takes the task.
    let settings = batchplane::scaling::Settings {
        default_worker: batchplane::domain::tiers::Tier {
            cpu_milli: 64_000,
            memory_mib: 65_536,
            gpu: 0,
        },
        ..Default::default()
    };
    h.stack
        .service
        .store
        .put_autoscaler_settings(&settings)
        .await
        .must("storing the settings");
    let job = h
        .submit("name: huge\ntasks:\n  - {id: big, command: ['true'], cpu: 64}\n  - {id: small, command: ['true']}\n")
        .await;
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let big = h.task(&job, "big").await;
    assert_eq!(big["state"], "FAILED", "{big}");
    let reason = big["status_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("no worker took it") && reason.contains("64 vCPU"),
        "{big}"
    );
    assert!(attempts(&big).is_empty(), "it never ran: {big}");
    assert_eq!(h.task(&job, "small").await["state"], "SUCCEEDED");
    // Nothing is left in the dead-letter queue.
    let queues = &h.stack.service.queues;
    let dlq = queues
        .url(batchplane_local::stack::DEAD_LETTER_QUEUE)
        .await
        .must("the dead-letter queue");
    let (visible, in_flight) = queues.depth(&dlq).await.must("its depth");
    assert_eq!((visible, in_flight), (0, 0));
    h.shutdown().await;
}
