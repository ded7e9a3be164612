//! Events out, against moto: every job status change (submission included) arrives on an
//! SQS target of an EventBridge rule exactly once, even though the stack delivers every
//! stream batch twice; task state changes arrive only for jobs that asked. A job
//! submitted with a Step Functions task token completes the waiting execution (moto runs
//! the state machine: it hands the token out through SQS), fails it when the job fails,
//! and gets heartbeats while it runs.

use aws_sdk_sqs::types::QueueAttributeName;
use batchplane_testing::{wait_for, Harness, Must};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn moto<B>(h: &Harness, build: impl FnOnce(&aws_config::SdkConfig) -> B) -> B {
    build(&h.stack.shared_config)
}

async fn queue_with_arn(h: &Harness, name: &str) -> (String, String) {
    let sqs = h.stack.service.queues.client();
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .must("CreateQueue")
        .queue_url()
        .must("a queue URL")
        .to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .must("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .must("a queue ARN");
    (url, arn)
}

/// `seq` is a lifecycle: statuses in AWS Batch's order, none twice, holding `must`,
/// ending in `last`.
fn assert_lifecycle(seq: &[String], must: &[&str], last: &str) {
    const ORDER: [&str; 8] = [
        "SUBMITTED",
        "PENDING",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    ];
    let rank = |s: &str| {
        ORDER
            .iter()
            .position(|o| *o == s)
            .unwrap_or_else(|| panic!("unknown status {s} in {seq:?}"))
    };
    assert!(
        seq.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
        "out of order or repeated: {seq:?}"
    );
    for m in must {
        assert!(seq.iter().any(|s| s == m), "{m} missing: {seq:?}");
    }
    assert_eq!(seq.last().map(String::as_str), Some(last), "{seq:?}");
}

/// Every message on the queue until `complete` says what came is whole and the queue has
/// then been quiet for `quiet` (so a late duplicate would still show), or a minute passed.
async fn drain(
    h: &Harness,
    url: &str,
    quiet: Duration,
    complete: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let sqs = h.stack.service.queues.client();
    let mut got = Vec::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (last.elapsed() < quiet || !complete(&got)) && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .must("ReceiveMessage");
        for m in out.messages() {
            got.push(serde_json::from_str(m.body().unwrap_or("null")).must("an event body"));
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .must("DeleteMessage");
            last = Instant::now();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_transition_is_published_once_and_task_events_only_when_asked() {
    // Every batch twice, most first cut short: redeliveries overlap the first delivery
    // with other boundaries, not only follow it.
    let h = Harness::start(|o| {
        o.poller.duplicate_batches = true;
        o.poller.retry_cut_short = 0.7;
    })
    .await;
    let (url, arn) = queue_with_arn(&h, &format!("{}events", h.stack.opts.queue_prefix)).await;
    let eventbridge = moto(&h, |c| {
        aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(c)
                .endpoint_url(&h.emulators.sqs_url)
                .build(),
        )
    });
    let bus = h.stack.opts.table.clone();
    eventbridge
        .put_rule()
        .name("all-batchplane")
        .event_bus_name(&bus)
        .event_pattern(json!({"source": ["batchplane"]}).to_string())
        .send()
        .await
        .must("PutRule");
    eventbridge
        .put_targets()
        .rule("all-batchplane")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&arn)
                .build()
                .must("a target"),
        )
        .send()
        .await
        .must("PutTargets");

    let chatty = h
        .submit(r#"{"name": "chatty", "task_events": true, "tasks": [
            {"id": "a", "command": ["true"]}, {"id": "b", "command": ["true"], "depends_on": ["a"]}]}"#)
        .await;
    let quiet = h
        .submit(r#"{"name": "quiet", "tasks": [{"id": "only", "command": ["false"]}]}"#)
        .await;
    // Every stream batch goes to the fanout two or three times here, and this test may
    // share the emulators with the heaviest of the suite: it is about what is published,
    // not how soon, so it waits longer than most.
    for j in [&chatty, &quiet] {
        h.wait(j, Duration::from_secs(120)).await;
    }
    // The publisher follows the stream on a poller of its own and may trail the jobs'
    // ends by seconds on a loaded machine: wait for both final events.
    let ended = |events: &[Value], job: &str, status: &str| {
        events.iter().any(|e| {
            e["detail-type"] == "Job State Change"
                && e["detail"]["jobId"] == job
                && e["detail"]["status"] == status
        })
    };
    let events = drain(&h, &url, Duration::from_secs(4), |got| {
        ended(got, &chatty, "SUCCEEDED") && ended(got, &quiet, "FAILED")
    })
    .await;
    assert!(events.iter().all(|e| e["source"] == "batchplane"));

    // No transition twice, though every stream batch was delivered twice.
    let mut seen = BTreeMap::new();
    for e in &events {
        let id = e["detail"]["transitionId"]
            .as_str()
            .must("a transition id")
            .to_string();
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");

    let statuses = |job: &str, kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["detail-type"] == kind && e["detail"]["jobId"] == job)
            .map(|e| match e["detail"]["taskId"].as_str() {
                Some(t) => format!("{t}:{}", e["detail"]["status"].as_str().unwrap_or("?")),
                None => e["detail"]["status"].as_str().unwrap_or("?").to_string(),
            })
            .collect()
    };
    // Each job's whole sequence: in lifecycle order, each status once, from SUBMITTED
    // through RUNNING to its end.
    let chatty_jobs = statuses(&chatty, "Job State Change");
    assert_lifecycle(&chatty_jobs, &["SUBMITTED", "RUNNING"], "SUCCEEDED");
    let chatty_tasks = statuses(&chatty, "Task State Change");
    for t in ["a", "b"] {
        let seq: Vec<String> = chatty_tasks
            .iter()
            .filter_map(|s| s.strip_prefix(&format!("{t}:")).map(str::to_string))
            .collect();
        assert_lifecycle(&seq, &["RUNNING"], "SUCCEEDED");
    }
    let quiet_jobs = statuses(&quiet, "Job State Change");
    assert_lifecycle(&quiet_jobs, &["SUBMITTED"], "FAILED");
    assert!(
        statuses(&quiet, "Task State Change").is_empty(),
        "task events were not asked for"
    );
    let failed = events
        .iter()
        .find(|e| e["detail"]["jobId"] == quiet.as_str() && e["detail"]["status"] == "FAILED")
        .must("the FAILED event");
    assert!(failed["detail"]["statusReason"].is_string(), "{failed}");
    assert!(
        failed["detail"]["jobArn"]
            .as_str()
            .unwrap_or("")
            .ends_with(&quiet),
        "{failed}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_with_a_task_token_completes_or_fails_the_waiting_execution() {
    let h = Harness::start(|_| {}).await;
    reqwest::Client::new()
        .post(format!("{}/moto-api/config", h.emulators.sqs_url))
        .json(&json!({"stepfunctions": {"execute_state_machine": true}}))
        .send()
        .await
        .must("configuring moto to run state machines");
    let (tokens_url, _) = queue_with_arn(&h, &format!("{}tokens", h.stack.opts.queue_prefix)).await;
    let sfn = moto(&h, |c| {
        aws_sdk_sfn::Client::from_conf(
            aws_sdk_sfn::config::Builder::from(c)
                .endpoint_url(&h.emulators.sqs_url)
                .build(),
        )
    });
    // The step hands its task token out through SQS (moto runs that integration); the
    // test plays the submitter.
    let asl = json!({"StartAt": "Run", "States": {"Run": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": tokens_url, "MessageBody": {"token.$": "$$.Task.Token", "command.$": "$.command", "execution.$": "$$.Execution.Name"}},
        "End": true}}});
    let machine = sfn
        .create_state_machine()
        .name(format!("{}run-job", h.stack.opts.queue_prefix))
        .definition(asl.to_string())
        .role_arn("arn:aws:iam::123456789012:role/batchplane-sfn")
        .send()
        .await
        .must("CreateStateMachine")
        .state_machine_arn()
        .to_string();
    let run = |name: &'static str, command: &'static str| {
        let (sfn, machine) = (sfn.clone(), machine.clone());
        async move {
            sfn.start_execution()
                .state_machine_arn(machine)
                .name(name)
                .input(json!({"command": command}).to_string())
                .send()
                .await
                .must("StartExecution")
                .execution_arn()
                .to_string()
        }
    };
    let wait_status = |arn: String| {
        let sfn = sfn.clone();
        async move {
            wait_for("the execution to end", Duration::from_secs(60), || async {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&arn)
                    .send()
                    .await
                    .must("DescribeExecution");
                if d.status().as_str() != "RUNNING" {
                    Ok(d)
                } else {
                    Err(format!("{d:?}"))
                }
            })
            .await
        }
    };

    for (name, command, expect) in [
        // Long enough to be seen RUNNING however slowly a loaded machine polls.
        ("ok", "sleep 8", "SUCCEEDED"),
        ("broken", "exit 3", "FAILED"),
        ("stopped", "sleep 60", "CANCELLED"),
    ] {
        let execution = run(name, command).await;
        // Each token message is deleted once read: one left behind would come back after
        // its visibility timeout, and a later round would report to an ended execution.
        let sqs = h.stack.service.queues.client();
        let body = loop {
            let out = sqs
                .receive_message()
                .queue_url(&tokens_url)
                .wait_time_seconds(2)
                .send()
                .await
                .must("ReceiveMessage");
            let Some(m) = out.messages().first() else {
                continue;
            };
            sqs.delete_message()
                .queue_url(&tokens_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .must("DeleteMessage");
            let body =
                serde_json::from_str::<Value>(m.body().unwrap_or("{}")).must("the token message");
            if body["execution"] == name {
                break body;
            }
        };
        let token = body["token"].as_str().must("a task token");
        let spec = json!({"name": name, "task_token": token,
            "tasks": [{"id": "step", "command": ["sh", "-c", body["command"]]}]});
        let job = h.submit(&spec.to_string()).await;
        if expect == "SUCCEEDED" {
            // While it runs, its token is where the schedule's heartbeats read them
            // (moto answers SendTaskHeartbeat with InvalidToken even for a live token,
            // so the heartbeat itself cannot be sent here).
            // The publisher function records it from the job's submission record, on a
            // stream poller of its own, so it may come a moment after the task starts.
            h.wait_task(&job, "step", "RUNNING", Duration::from_secs(30))
                .await;
            wait_for(
                "the running job's token recorded",
                Duration::from_secs(10),
                || async {
                    let tokens = h
                        .stack
                        .service
                        .store
                        .task_tokens()
                        .await
                        .must("task tokens");
                    if tokens.iter().any(|(j, t)| j == &job && t == token) {
                        Ok(())
                    } else {
                        Err(format!("{tokens:?}"))
                    }
                },
            )
            .await;
        }
        if expect == "CANCELLED" {
            h.wait_task(&job, "step", "RUNNING", Duration::from_secs(30))
                .await;
            let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let done = h.wait(&job, Duration::from_secs(60)).await;
        let d = wait_status(execution).await;
        // The execution fails on a failed or cancelled job, with the error a Catch or
        // Retry names and the job's own reason as the cause.
        let (status, error) = match expect {
            "SUCCEEDED" => ("SUCCEEDED", None),
            "FAILED" => ("FAILED", Some(batchplane_publisher::JOB_FAILED)),
            _ => ("FAILED", Some(batchplane_publisher::JOB_CANCELLED)),
        };
        assert_eq!(d.status().as_str(), status, "{done} {d:?}");
        assert_eq!(d.error(), error, "{d:?}");
        if error.is_some() {
            // moto keeps no cause (its DescribeExecution and history leave it out), so
            // the callback the publisher sent is checked from the job it was made of.
            let record = h
                .stack
                .service
                .store
                .get_job(&job)
                .await
                .must("reading the job")
                .must("the job");
            let want = if expect == "FAILED" {
                "1 of 1 tasks failed"
            } else {
                "cancelled by request"
            };
            match batchplane_publisher::job_callback(&record) {
                Some(batchplane_publisher::Callback::Failure {
                    error: e, cause, ..
                }) => {
                    assert_eq!(Some(e.as_str()), error);
                    assert!(cause.contains(want), "cause {cause:?} of {done}");
                }
                other => panic!("not a failure callback: {other:?}"),
            }
        }
        if expect == "SUCCEEDED" {
            let output: Value = serde_json::from_str(d.output().unwrap_or("{}")).must("the output");
            assert_eq!(
                (output["jobId"].as_str(), output["status"].as_str()),
                (Some(job.as_str()), Some("SUCCEEDED")),
                "{output}"
            );
        }
    }
    // Both jobs ended: no token is left to heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h
        .stack
        .service
        .store
        .task_tokens()
        .await
        .must("task tokens")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "a finished job's token is still kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.stack.publisher.heartbeats().await.must("heartbeats"), 0);
    // A bad token is refused, not retried forever: the job still ends.
    let job = h
        .submit(r#"{"name": "orphan", "task_token": "not-a-token", "tasks": [{"id": "x", "command": ["true"]}]}"#)
        .await;
    assert_eq!(
        h.wait(&job, Duration::from_secs(60)).await["state"],
        "SUCCEEDED"
    );
    h.shutdown().await;
}
