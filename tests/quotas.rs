//! Quotas and clusters through the local stack: a team without room gets no worker and
//! `explain` says why for its waiting tasks; raising the quota lets the worker start and
//! the job finish; `batchplane teams` / `clusters` show used/limit; disabling a cluster
//! moves placements to the others.

use batchplane_local::PoolWorkers;
use batchplane_testing::{wait_for, Harness};
use serde_json::Value;
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);

async fn explain_reasons(h: &Harness, job: &str, task: &str) -> Vec<Value> {
    let body = h.explain(job, task).await;
    body["reasons"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no reasons in {body}"))
}

/// Wait until the task's explanation has a PlacementRefused reason containing `text`.
async fn wait_for_refusal(h: &Harness, job: &str, task: &str, text: &str) -> String {
    let what = format!("a PlacementRefused reason containing {text:?}");
    wait_for(&what, Duration::from_secs(30), || async {
        let reasons = explain_reasons(h, job, task).await;
        reasons
            .iter()
            .find(|r| {
                r["code"] == "PlacementRefused"
                    && r["message"].as_str().is_some_and(|m| m.contains(text))
            })
            .map(|r| r["message"].as_str().unwrap_or_default().to_string())
            .ok_or_else(|| format!("{reasons:?}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_at_quota_waits_with_the_reason_shown_until_its_quota_is_raised() {
    // The stack's own worker serves the queue's own pool; the 128 MiB tier pool has one
    // worker, placed for team vision, which has no quota yet.
    let h = Harness::start(|o| {
        o.workers = 1;
        o.pools = vec![PoolWorkers {
            shape: batchplane::domain::tiers::Tier::parse_shape("1:128").expect("a shape"),
            slots: 1,
            team: Some("vision".into()),
        }];
    })
    .await;
    let job = h
        .submit(
            "name: quota\nteam: vision\ntasks:\n  - {id: t, command: [sh, -c, \"echo hi\"], tiers: [{cpu: 1, memory_mib: 128}]}\n",
        )
        .await;
    let why = wait_for_refusal(&h, &job, "t", "team vision has no quota").await;
    assert!(why.contains("pool default--t-vision--1cpu-128mib"), "{why}");

    // A quota too small for one worker: the reason names the binding resource.
    let shown = h.cli(&[
        "teams",
        "set",
        "vision",
        "--cpu",
        "0.5",
        "--memory-mib",
        "1024",
    ]);
    assert!(shown.contains("vision"), "{shown}");
    let why = wait_for_refusal(&h, &job, "t", "team quota exhausted: cpu 0/0.5").await;
    assert!(why.contains("a worker needs 1 vCPU, 128 MiB"), "{why}");
    let text = h.cli(&["explain", &job, "t"]);
    assert!(text.contains("team quota exhausted: cpu 0/0.5"), "{text}");

    // Room for it: the waiting worker is placed, runs the task, the job finishes.
    h.cli(&[
        "teams",
        "set",
        "vision",
        "--cpu",
        "2",
        "--memory-mib",
        "1024",
    ]);
    let done = h.wait(&job, MINUTES).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let reasons = explain_reasons(&h, &job, "t").await;
    assert!(
        reasons.iter().all(|r| r["code"] != "PlacementRefused"),
        "the grant cleared the refusal: {reasons:?}"
    );

    // The table shows the team's use of its quota and where its worker is.
    let teams = h.cli(&["teams"]);
    let vision = teams
        .lines()
        .find(|l| l.starts_with("vision"))
        .unwrap_or_else(|| panic!("no vision row in\n{teams}"));
    assert!(vision.contains("1/2 (50%)"), "{vision}");
    assert!(vision.contains("128/1024"), "{vision}");
    assert!(vision.contains("local-"), "{vision}");
    assert!(teams.lines().any(|l| l.starts_with("default")), "{teams}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_cluster_drains_it_and_moves_new_workers_to_the_others() {
    // Two workers of the default team: one in each local cluster.
    let mut h = Harness::start(|o| {
        o.workers = 2;
    })
    .await;
    let used = |clusters: &Value, name: &str| -> f64 {
        clusters["clusters"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["used"]["cpu"].as_f64().unwrap_or(0.0))
            .unwrap_or_else(|| panic!("no cluster {name} in {clusters}"))
    };
    let clusters: Value = h.get("/v1/clusters").await.body;
    // The harness's workers are 8 vCPU each.
    assert_eq!(
        (used(&clusters, "local-a"), used(&clusters, "local-b")),
        (8.0, 8.0),
        "{clusters}"
    );
    let table = h.cli(&["clusters"]);
    assert!(
        table.contains("local-a") && table.contains("8/256 (3%)"),
        "{table}"
    );

    let out = h.cli(&["clusters", "disable", "local-a"]);
    assert!(out.contains("local-a: disabled"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("local-a"))
        .unwrap_or_else(|| panic!("no local-a row in\n{out}"));
    assert!(row.contains("DISABLED"), "{row}");
    // Its worker drains and exits, giving its placement back.
    wait_for("local-a to drain", Duration::from_secs(60), || async {
        let clusters: Value = h.get("/v1/clusters").await.body;
        (used(&clusters, "local-a") == 0.0)
            .then_some(())
            .ok_or_else(|| clusters.to_string())
    })
    .await;
    // The launcher forgets the exited worker on its next round.
    wait_for("one worker left", Duration::from_secs(30), || async {
        let pids = h.stack.worker_pids();
        (pids.len() == 1)
            .then_some(())
            .ok_or_else(|| format!("workers {pids:?}"))
    })
    .await;
    // Every new worker lands in local-b.
    for _ in 0..3 {
        h.stack.spawn_worker().await.expect("a worker");
    }
    let clusters: Value = h.get("/v1/clusters").await.body;
    assert_eq!(used(&clusters, "local-a"), 0.0, "{clusters}");
    assert_eq!(used(&clusters, "local-b"), 32.0, "{clusters}");
    // Work still runs on the remaining workers.
    let job = h
        .submit("name: after\ntasks:\n  - {id: a, command: [\"true\"]}\n")
        .await;
    assert_eq!(h.wait(&job, MINUTES).await["state"], "SUCCEEDED");
    // A cluster nobody registered is a 404 naming it.
    let r = h.post("/v1/clusters/nowhere/disable", "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("nowhere"));
    // Bad registrations name the field.
    let r = h
        .put_json(
            "/v1/clusters/c1",
            r#"{"kind": "eks", "region": "us-east-1", "endpoint": "http://x", "capacity": {"cpu": 1, "memory_mib": 1}}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["field"], "endpoint",
        "{}",
        r.body
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_limited_launch_configs_are_listed_until_they_expire_and_explained() {
    use batchplane::store::capacity::CapacityMark;
    let h = Harness::start(|o| {
        o.workers = 0;
    })
    .await;
    assert!(h
        .cli(&["capacity"])
        .contains("no launch config is capacity-limited"));
    let now = batchplane::store::now_ms();
    let store = &h.stack.service.store;
    for (config, until) in [
        ("m5.2xlarge:us-east-1a:spot", now + 180_000),
        ("r5.xlarge:us-east-1b:on-demand", now - 1_000),
    ] {
        store
            .mark_capacity_limited(&CapacityMark {
                launch_config: config.into(),
                reason: "InsufficientInstanceCapacity: got 3 of 10 instances".into(),
                marked_at: now,
                until,
            })
            .await
            .unwrap_or_else(|e| panic!("marking {config}: {e}"));
    }
    let table = h.cli(&["capacity"]);
    assert!(table.contains("m5.2xlarge:us-east-1a:spot"), "{table}");
    assert!(table.contains("got 3 of 10 instances"), "{table}");
    assert!(
        !table.contains("r5.xlarge"),
        "an expired mark is not listed: {table}"
    );

    // A task waiting with no worker names the mark among its reasons.
    let job = h
        .submit("name: waits\ntasks:\n  - {id: t, command: [\"true\"]}\n")
        .await;
    let reasons = explain_reasons(&h, &job, "t").await;
    let limited = reasons
        .iter()
        .find(|r| r["code"] == "CapacityLimited")
        .unwrap_or_else(|| panic!("no CapacityLimited reason: {reasons:?}"));
    let message = limited["message"].as_str().unwrap_or_default();
    assert!(message.contains("m5.2xlarge:us-east-1a:spot"), "{message}");
    h.shutdown().await;
}
