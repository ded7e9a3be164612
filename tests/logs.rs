//! Tasks' output in CloudWatch Logs (moto's): shipped while the attempt runs, one
//! stream per attempt named as AWS Batch names it, read back through the API and
//! `batchplane logs` (`-f` following a running attempt), and a CloudWatch that refuses
//! everything never holding a task up.

use batchplane_local::faults::{FaultPlan, FaultProxy};
use batchplane_local::WorkerEndpoints;
use batchplane_testing::{attempts, wait_for, Harness, Must};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// The messages of a stream, read from CloudWatch Logs itself.
async fn stream_messages(h: &Harness, group: &str, stream: &str) -> Vec<String> {
    let client = batchplane::aws::logs_client(&batchplane::aws::Endpoints {
        logs: Some(h.stack.opts.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    match client
        .get_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .start_from_head(true)
        .send()
        .await
    {
        Ok(out) => out
            .events()
            .iter()
            .filter_map(|e| e.message().map(String::from))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn messages(page: &serde_json::Value) -> Vec<String> {
    page["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempts_output_is_in_cloudwatch_while_it_runs_and_after() {
    let h = Harness::start(|_| {}).await;
    let job = h
        .submit(
            r#"
name: talkative
tasks:
  - {id: talk, command: [sh, -c, "echo one; echo two >&2; echo three"]}
  - {id: slow, command: [sh, -c, "for i in 0 1 2 3 4 5 6 7 8 9; do echo tick $i; sleep 0.3; done"]}
"#,
        )
        .await;
    h.wait_task(&job, "slow", "RUNNING", MINUTE).await;
    // While it runs: the lines so far, from CloudWatch, and `logs -f` follows it to its end.
    let path = format!("/v1/jobs/{job}/tasks/slow/logs");
    let early = wait_for("the first ticks in CloudWatch", MINUTE, || async {
        let page = h.get(&path).await;
        let lines = messages(&page.body);
        if page.status == 200 && !lines.is_empty() {
            Ok(page.body)
        } else {
            Err(format!("{} {}", page.status, page.body))
        }
    })
    .await;
    assert_eq!(early["running"], true, "{early}");
    assert_eq!(early["log_group"], "/aws/batch/job");
    assert_eq!(
        early["log_stream"],
        format!("batchplane/default/{job}.slow.1")
    );
    let (api, bin) = (
        h.stack.api_url.clone(),
        batchplane_testing::binary("batchplane"),
    );
    let (job_id, dir) = (job.clone(), h.dir.clone());
    let followed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["logs", &job_id, "slow", "-f"])
            .env("BATCHPLANE_API_URL", api)
            .current_dir(dir)
            .output()
    })
    .await
    .must("the follower ran")
    .must("batchplane logs -f");
    let out = String::from_utf8_lossy(&followed.stdout);
    let ticks: Vec<String> = (0..10).map(|i| format!("tick {i}")).collect();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ticks,
        "followed to the end: {out}"
    );

    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let talk = h.task(&job, "talk").await;
    let a = &attempts(&talk)[0];
    let stream = format!("batchplane/default/{job}.talk.1");
    assert_eq!(a["log_group"], "/aws/batch/job", "{talk}");
    assert_eq!(a["log_stream"], stream.as_str(), "{talk}");
    assert!(
        a["log_shipping"].is_null(),
        "everything was shipped: {talk}"
    );
    // In CloudWatch itself, stdout and stderr in one stream as AWS Batch has them.
    let mut shipped = stream_messages(&h, "/aws/batch/job", &stream).await;
    shipped.sort();
    assert_eq!(shipped, ["one", "three", "two"]);
    let page = h.get(&format!("/v1/jobs/{job}/tasks/talk/logs")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["running"], false);
    assert_eq!(messages(&page.body).len(), 3, "{}", page.body);
    let none = h
        .get(&format!("/v1/jobs/{job}/tasks/talk/logs?attempt=2"))
        .await;
    assert_eq!(none.status, 404, "{}", none.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudwatch_that_refuses_everything_never_holds_a_task_up() {
    let mut h = Harness::start(|o| o.workers = 0).await;
    let moto = FaultProxy::start(&h.emulators.sqs_url, FaultPlan::none())
        .await
        .must("a fault proxy in front of moto");
    // Every PutLogEvents of the worker is throttled; SQS and the rest pass.
    moto.set_plan(FaultPlan {
        throttle: 1.0,
        operations: vec!["PutLogEvents".into()],
        ..FaultPlan::none()
    });
    h.stack.opts.worker_endpoints = Some(WorkerEndpoints {
        dynamodb_url: h.emulators.dynamodb_url.clone(),
        sqs_url: moto.url.clone(),
    });
    h.stack.spawn_worker().await.must("a worker");
    let started = Instant::now();
    let job = h
        .submit("name: muted\ntasks:\n  - {id: t, command: [sh, -c, 'for i in 1 2 3 4 5; do echo line $i; done']}\n")
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "shipping held the task up: {:?}",
        started.elapsed()
    );
    let t = h.task(&job, "t").await;
    let note = attempts(&t)[0]["log_shipping"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.contains("5 of 5 lines were not shipped"),
        "the attempt says what was lost: {t}"
    );
    assert!(moto.counts().total("throttle") > 0);
    // `batchplane logs` finds nothing in CloudWatch and reads the attempt's files.
    let out = h.cli(&["logs", &job, "t"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["line 1", "line 2", "line 3", "line 4", "line 5"],
        "{out}"
    );
    moto.set_plan(FaultPlan::none());
    h.shutdown().await;
}
