//! The adapters against the real emulators: DynamoDB Local's conditional writes and
//! moto's SQS. Each test uses its own table and queue names.

use batchplane::aws::{Clients, Endpoints};
use batchplane::domain::{AttemptRecord, TaskCounts, TaskState};
use batchplane::queue::{QueueError, Queues, TaskMessage};
use batchplane::store::{Claim, Heartbeat, RecordCounts, Store};
use batchplane_testing::{ManualClock, Must, TestEmulators};
use std::time::Duration;

async fn store(emu: &TestEmulators) -> Store {
    batchplane_testing::test_store(emu, "adapters").await
}

use batchplane_testing::stored_job;

fn shard(id: &str, shards: u32) -> u32 {
    batchplane::domain::ids::task_shard(id, shards)
}

#[tokio::test]
async fn exactly_one_of_many_concurrent_claims_wins() {
    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let (job, shards) =
        stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    let claims = (0..10).map(|w| {
        let store = store.clone();
        let job = job.clone();
        async move {
            store
                .claim_task(
                    &job,
                    shard("a", shards),
                    "a",
                    &format!("w{w}"),
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
        }
    });
    let results = futures::future::join_all(claims).await;
    let won: Vec<_> = results
        .iter()
        .filter(|c| matches!(c, Claim::Claimed(_)))
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let Claim::Claimed(task) = won[0] else {
        unreachable!()
    };
    assert_eq!(task.attempt, 1);
    assert_eq!(task.state, TaskState::Running);
    for r in &results {
        if let Claim::NotClaimable { reason } = r {
            assert!(reason.starts_with("held by"), "{reason}");
        }
    }
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_the_old_holder_is_shut_out() {
    let emu = TestEmulators::get();
    // The store's clock is the test's: leases lapse when it moves, not after a sleep.
    let clock = ManualClock::default();
    let store = store(&emu).await.with_clock(clock.clock());
    let (job, shards) =
        stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    let s = shard("a", shards);
    let Claim::Claimed(first) = store
        .claim_task(&job, s, "a", "old", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("first claim")
    };
    // While the lease holds, nobody else gets it.
    assert!(matches!(
        store
            .claim_task(&job, s, "a", "new", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::NotClaimable { .. }
    ));
    clock.advance(Duration::from_secs(29));
    assert!(
        matches!(
            store
                .claim_task(&job, s, "a", "new", Duration::from_secs(30))
                .await
                .unwrap(),
            Claim::NotClaimable { .. }
        ),
        "a lease one second from lapsing still holds"
    );
    // Lapsed, but the holder may still be stopping its attempt: a takeover waits out
    // the fencing margin (5 s of a 30 s lease).
    clock.advance(Duration::from_secs(2));
    assert!(
        matches!(
            store
                .claim_task(&job, s, "a", "new", Duration::from_secs(30))
                .await
                .must("claiming within the fencing margin"),
            Claim::NotClaimable { .. }
        ),
        "a lease lapsed within the fencing margin still holds"
    );
    clock.advance(batchplane::domain::lease::fence_margin(
        Duration::from_secs(30),
    ));
    let Claim::Claimed(second) = store
        .claim_task(&job, s, "a", "new", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("takeover after the lease lapsed")
    };
    assert_eq!(second.attempt, 2);
    assert_eq!(second.attempts.len(), 1);
    assert!(second.attempts[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("worker old lost"));
    // The old holder can neither extend nor finish.
    assert_eq!(
        store
            .heartbeat(&first, "old", Duration::from_secs(30))
            .await
            .unwrap(),
        Heartbeat::Lost
    );
    let rec = AttemptRecord {
        attempt: 1,
        worker_id: "old".into(),
        ..Default::default()
    };
    assert!(!store
        .finish_attempt(&first, "old", TaskState::Succeeded, None, &rec, None)
        .await
        .unwrap());
    // The new holder can; after max_attempts (2) a lapsed lease fails the task.
    assert!(matches!(
        store
            .heartbeat(&second, "new", Duration::from_secs(30))
            .await
            .unwrap(),
        Heartbeat::Held {
            cancel_requested: false,
            ..
        }
    ));
    clock.advance(Duration::from_secs(36));
    assert!(matches!(
        store
            .claim_task(&job, s, "a", "third", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Exhausted
    ));
    let t = store.get_task(&job, shards, "a").await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert!(t.reason.unwrap().contains("no attempts left"));
}

#[tokio::test]
async fn releasing_an_edge_twice_changes_nothing() {
    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let (job, shards) = stored_job(
        &store,
        "name: x\ntasks:\n - {id: a, command: ['true']}\n - {id: b, command: ['true']}\n - {id: c, command: ['true'], depends_on: [a, b]}\n",
    )
    .await;
    let c = || async { store.get_task(&job, shards, "c").await.unwrap().unwrap() };
    assert!(!store.release_edge(&c().await, "a").await.unwrap());
    let stale = c().await;
    assert!(
        !store.release_edge(&c().await, "a").await.unwrap(),
        "a second release of a is a no-op"
    );
    assert_eq!(c().await.deps_done, vec!["a"]);
    assert_eq!(c().await.state, TaskState::Pending);
    // Even from a stale read (taken before a's release was seen), b releases c once.
    assert!(store.release_edge(&stale, "b").await.unwrap());
    let now = c().await;
    assert_eq!(now.state, TaskState::Runnable);
    assert!(!store.release_edge(&now, "b").await.unwrap());
    assert_eq!(c().await.state, TaskState::Runnable);
}

/// A record's part of a batch's counts: one task RUNNABLE → SUCCEEDED, with its usage.
fn one_success(seq: u32) -> RecordCounts {
    let mut counts = TaskCounts::default();
    counts.add(TaskState::Runnable, -1);
    counts.add(TaskState::Succeeded, 1);
    RecordCounts {
        sequence_number: format!("{seq}"),
        counts,
        usage: batchplane::domain::Usage {
            attempts: 1.0,
            cpu_seconds_requested: 2.0,
            cpu_seconds_used: 0.5,
            memory_mib_seconds_requested: 1024.0,
            memory_mib_seconds_used: 256.0,
        },
    }
}

#[tokio::test]
async fn batch_counts_are_recorded_once_and_survive_folding() {
    let emu = TestEmulators::get();
    let clock = ManualClock::default();
    let store = store(&emu).await.with_clock(clock.clock());
    let (job, _) = stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    for i in 0..60u32 {
        let seq = 1000 + i;
        assert!(store
            .add_batch_counts(&job, &seq.to_string(), &[one_success(seq)])
            .await
            .unwrap());
    }
    let retried = store
        .add_batch_counts(&job, "1007", &[one_success(1007)])
        .await
        .unwrap();
    assert!(!retried, "a retried batch adds nothing");
    let (before, used_before, items) = store.job_counts(&job).await.unwrap();
    assert_eq!(items, 60);
    assert_eq!(before.get(TaskState::Succeeded), 60);
    assert_eq!(used_before.attempts, 60.0);
    assert_eq!(used_before.cpu_seconds_requested, 120.0);
    // Young items stay as they are, so a retry still finds what it counted.
    store.fold_counts(&job).await.must("folding young items");
    assert_eq!(
        store.job_counts(&job).await.must("reading the counts").2,
        60
    );
    clock.advance(Duration::from_secs(16 * 60));
    store.fold_counts(&job).await.unwrap();
    let (after, used_after, items) = store.job_counts(&job).await.unwrap();
    assert!(items < 60, "folded into the base item");
    assert_eq!(after, before);
    assert_eq!(used_after, used_before, "folding keeps the usage sums");
}

#[tokio::test]
async fn a_retried_batch_counts_each_record_once_wherever_each_try_stopped() {
    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let (job, _) = stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    let parts = |seqs: &[u32]| seqs.iter().map(|s| one_success(*s)).collect::<Vec<_>>();
    // The first try got through three records; a retry of the same batch got through
    // two (a different record failed), then one got through four.
    assert!(store
        .add_batch_counts(&job, "98", &parts(&[98, 99, 100]))
        .await
        .must("the first try"));
    assert!(!store
        .add_batch_counts(&job, "98", &parts(&[98, 99]))
        .await
        .must("a retry that got less far"));
    assert!(store
        .add_batch_counts(&job, "98", &parts(&[98, 99, 100, 101]))
        .await
        .must("a retry that got further"));
    let (counts, usage, _) = store.job_counts(&job).await.must("reading the counts");
    assert_eq!(counts.get(TaskState::Succeeded), 4, "{counts:?}");
    assert_eq!(usage.attempts, 4.0);
    // Numeric order, not text order: 100 comes after 99.
    assert!(batchplane::store::sequence_after("100", "99"));
    assert!(!batchplane::store::sequence_after("99", "100"));
}

#[tokio::test]
async fn cancelling_flags_running_tasks_and_ends_waiting_ones() {
    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let (job, shards) = stored_job(
        &store,
        "name: x\ntasks:\n - {id: a, command: ['true']}\n - {id: b, command: ['true'], depends_on: [a]}\n",
    )
    .await;
    let Claim::Claimed(a) = store
        .claim_task(&job, shard("a", shards), "a", "w", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!()
    };
    let b = store.get_task(&job, shards, "b").await.unwrap().unwrap();
    assert_eq!(store.cancel_task(&b).await.unwrap(), TaskState::Cancelled);
    assert_eq!(store.cancel_task(&a).await.unwrap(), TaskState::Running);
    assert!(matches!(
        store
            .heartbeat(&a, "w", Duration::from_secs(30))
            .await
            .unwrap(),
        Heartbeat::Held {
            cancel_requested: true,
            ..
        }
    ));
}

#[tokio::test]
async fn queue_round_trip_and_unknown_queue() {
    let emu = TestEmulators::get();
    let clients = Clients::new(&Endpoints {
        dynamodb: Some(emu.dynamodb_url.clone()),
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let prefix = format!("q{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queues = Queues::new(clients.sqs, prefix);
    assert!(matches!(
        queues.url("nowhere").await,
        Err(QueueError::NoSuchQueue { .. })
    ));
    let url = queues
        .create("default", Duration::from_secs(30))
        .await
        .unwrap();
    let msgs: Vec<TaskMessage> = (0..23)
        .map(|i| TaskMessage {
            job_id: "j".into(),
            task_id: format!("t{i}"),
            shard: 1,
            cpu_milli: 250,
            memory_mib: 64,
            gpu: 0,
            array_child: false,
            windowed: false,
            chained: false,
        })
        .collect();
    queues.send("default", &msgs).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        let batch = queues
            .receive(&url, 10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        let receipts: Vec<String> = batch.iter().map(|d| d.receipt_handle.clone()).collect();
        got.extend(batch.into_iter().flat_map(|d| d.tasks));
        queues.delete(&url, &receipts).await.unwrap();
    }
    got.sort_by_key(|m| m.task_id.clone());
    let mut want = msgs.clone();
    want.sort_by_key(|m| m.task_id.clone());
    assert_eq!(got, want);
    assert_eq!(queues.depth(&url).await.unwrap(), (0, 0));
}

#[tokio::test]
async fn a_job_that_grew_is_not_closed_on_old_counts() {
    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let (job, _) = stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    let open = [batchplane::JobState::Pending];
    assert!(store.add_to_total(&job, 2).await.unwrap());
    assert!(
        !store
            .close_job(&job, &open, batchplane::JobState::Succeeded, None, 1)
            .await
            .unwrap(),
        "counts read before the job grew must not close it"
    );
    assert!(store
        .close_job(&job, &open, batchplane::JobState::Succeeded, None, 3)
        .await
        .unwrap());
    assert!(
        !store.add_to_total(&job, 1).await.unwrap(),
        "a closed job takes no more tasks"
    );
    assert_eq!(
        store.get_job(&job).await.unwrap().unwrap().state,
        batchplane::JobState::Succeeded
    );
}

#[tokio::test]
async fn queues_created_at_run_time_redrive_to_the_dead_letter_queue_and_are_listed() {
    let emu = TestEmulators::get();
    let clients = Clients::new(&Endpoints {
        dynamodb: Some(emu.dynamodb_url.clone()),
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let prefix = format!("dl{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let plain = Queues::new(clients.sqs.clone(), prefix.clone());
    let dlq_url = plain
        .create("tasks-dlq", Duration::from_secs(30))
        .await
        .expect("the dead-letter queue");
    let arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .expect("a queue ARN");
    let queues = Queues::new(clients.sqs.clone(), prefix).with_dead_letter(arn.clone());
    let url = queues
        .create("default--2cpu-4096mib", Duration::from_secs(30))
        .await
        .expect("a pool queue");
    let policy = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
        .cloned()
        .expect("a redrive policy");
    let policy: serde_json::Value = serde_json::from_str(&policy).expect("JSON");
    assert_eq!(policy["deadLetterTargetArn"], arn.as_str(), "{policy}");
    assert_eq!(
        policy["maxReceiveCount"].to_string().trim_matches('"'),
        batchplane::queue::MAX_RECEIVES.to_string()
    );
    // Creating it again with the same attributes is the same queue (racing submissions).
    assert_eq!(
        queues
            .create("default--2cpu-4096mib", Duration::from_secs(30))
            .await
            .expect("again"),
        url
    );
    // Listing names the pool queue, not the dead-letter queue.
    assert_eq!(
        queues.list().await.expect("ListQueues"),
        ["default--2cpu-4096mib"]
    );
}

/// Every transition the store writes, tried from every state: the write goes through
/// exactly when the one transition table (`TaskTransition::from`) says it may. Each
/// task is put in its state directly, and the record handed to the store claims the
/// state the transition wants, so it is DynamoDB's condition that decides.
#[tokio::test]
async fn every_store_transition_starts_only_where_the_table_says() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use batchplane::domain::TaskTransition;
    use batchplane::store::item::{key, task_pk, task_sk};
    use batchplane::store::Claim;

    let emu = TestEmulators::get();
    let store = store(&emu).await;
    let cases: Vec<(TaskTransition, TaskState)> = TaskTransition::ALL
        .iter()
        .flat_map(|t| TaskState::ALL.map(|st| (*t, st)))
        .collect();
    let id = |t: TaskTransition, st: TaskState| format!("{t}-{}", st.as_str().to_lowercase());
    let mut spec = String::from("name: table\ntasks:\n - {id: x, command: ['true']}\n");
    for (t, st) in &cases {
        spec.push_str(&format!(
            " - {{id: {}, command: ['true'], depends_on: [x]}}\n",
            id(*t, *st)
        ));
    }
    let (job, shards) = stored_job(&store, &spec).await;
    let ddb = Clients::new(&Endpoints {
        dynamodb: Some(emu.dynamodb_url.clone()),
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    })
    .await
    .dynamodb;
    let now = batchplane::store::now_ms();
    for (t, st) in cases {
        let task_id = id(t, st);
        // A lease that lapsed a minute ago for a take-over, else one held for a minute;
        // the last attempt for leases that run out.
        let lease = match t {
            TaskTransition::TakeOver | TaskTransition::ExhaustLeases => now - 60_000,
            _ => now + 60_000,
        };
        let max_attempts = if t == TaskTransition::ExhaustLeases {
            1
        } else {
            3
        };
        ddb.update_item()
            .table_name(store.table())
            .set_key(Some(key(task_pk(&job, shard(&task_id, shards)), task_sk(&task_id))))
            .update_expression("SET #state = :st, worker_id = :w, attempt = :one, lease_expires = :lease, max_attempts = :max")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":st", AttributeValue::S(st.as_str().into()))
            .expression_attribute_values(":w", AttributeValue::S("w".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":lease", AttributeValue::N(lease.to_string()))
            .expression_attribute_values(":max", AttributeValue::N(max_attempts.to_string()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("putting {task_id} in {st}: {e}"));
        let mut record = store
            .get_task(&job, shards, &task_id)
            .await
            .unwrap_or_else(|e| panic!("reading {task_id}: {e}"))
            .unwrap_or_else(|| panic!("{task_id} was written"));
        record.state = t.from()[0];
        let moved = match t {
            TaskTransition::Release => store.release_edge(&record, "x").await,
            TaskTransition::FailDependent => {
                store.fail_dependent(&record, "x", TaskState::Failed).await
            }
            TaskTransition::Claim => store
                .claim_task(&job, record.shard, &task_id, "w2", Duration::from_secs(30))
                .await
                .map(|c| matches!(c, Claim::Claimed(ref t) if t.attempts.is_empty())),
            TaskTransition::TakeOver => store
                .claim_task(&job, record.shard, &task_id, "w2", Duration::from_secs(30))
                .await
                // A take-over records the lapsed attempt; a plain claim records none.
                .map(|c| matches!(c, Claim::Claimed(ref t) if t.attempts.len() == 1)),
            TaskTransition::ExhaustLeases => store
                .claim_task(&job, record.shard, &task_id, "w2", Duration::from_secs(30))
                .await
                .map(|c| matches!(c, Claim::Exhausted)),
            TaskTransition::Finish => {
                let attempt = AttemptRecord {
                    attempt: 1,
                    worker_id: "w".into(),
                    ..Default::default()
                };
                store
                    .finish_attempt(&record, "w", TaskState::Succeeded, None, &attempt, None)
                    .await
            }
            TaskTransition::PassBarrier | TaskTransition::Cancel => {
                store.transition(&record, t, t.to()[0], None).await
            }
            TaskTransition::Undeliverable => store.fail_undeliverable(&record, "no worker").await,
        }
        .unwrap_or_else(|e| panic!("{t} from {st}: {e}"));
        assert_eq!(
            moved,
            t.from().contains(&st),
            "{t} from {st}: the table allows it from {:?}",
            t.from()
        );
        let after = store
            .get_task(&job, shards, &task_id)
            .await
            .unwrap()
            .unwrap();
        if moved {
            assert!(
                t.to().contains(&after.state),
                "{t} from {st} left it {}",
                after.state
            );
            assert!(st.can_become(after.state) || st == after.state);
        } else if matches!(t, TaskTransition::TakeOver | TaskTransition::ExhaustLeases)
            && TaskTransition::Claim.from().contains(&st)
        {
            // A claim tries the plain claim first: that transition applies here instead.
            assert_eq!(after.state, TaskState::Running, "{t} from {st}");
            assert!(
                after.attempts.is_empty(),
                "{t} from {st} recorded a lost attempt"
            );
        } else {
            assert_eq!(
                after.state, st,
                "{t} from {st} was refused but moved the task"
            );
        }
    }

    // A write the table has no transition for is refused before it is sent.
    let record = store.get_task(&job, shards, "x").await.unwrap().unwrap();
    let err = store
        .transition(&record, TaskTransition::Cancel, TaskState::Succeeded, None)
        .await
        .expect_err("cancel cannot end a task SUCCEEDED");
    assert!(err.to_string().contains("cancel"), "{err}");
    store.delete_table().await.unwrap();
}
