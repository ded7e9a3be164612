//! Resource tiers end to end: tasks that allocate real memory under the taskhost's
//! limits, each worker pool served by its own workers, escalation on OOM.

use batchplane::domain::tiers::{Tier, OOM_ON_LARGEST_TIER, OUT_OF_MEMORY};
use batchplane_local::PoolWorkers;
use batchplane_testing::{attempts, wait_for, Harness};
use serde_json::Value;
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);

fn pool(cpu: u32, memory_mib: u64, slots: u32) -> PoolWorkers {
    PoolWorkers {
        shape: Tier {
            cpu_milli: cpu * 1000,
            memory_mib,
            gpu: 0,
        },
        slots,
        team: None,
    }
}

/// A task that grows to `mib` MiB of real memory in 4 MiB steps, then holds it for a
/// moment, on tiers of 96, 256 and 640 MiB. Growing in steps, not in one allocation,
/// is what a real task does, and what lets every enforcement mechanism see it cross
/// its limit (a single huge allocation is refused by the fallback's address-space
/// backstop, an ordinary MemoryError, before any limit is crossed).
fn allocating(id: &str, mib: u64) -> String {
    format!(
        "  - {{id: {id}, command: [python3, -c, \"import time\\nx = []\\nfor _ in range({mib} // 4): x.append(b'x' * (4 << 20)); time.sleep(0.005)\\ntime.sleep(0.4)\"], \
         tiers: [{{cpu: 1, memory_mib: 96}}, {{cpu: 1, memory_mib: 256}}, {{cpu: 1, memory_mib: 640}}]}}\n"
    )
}

/// The enforcement mechanism this machine must use, when CI says
/// (`BATCHPLANE_EXPECT_MEMORY_ENFORCEMENT`), else any of them.
fn expected_enforcement() -> Vec<String> {
    match std::env::var("BATCHPLANE_EXPECT_MEMORY_ENFORCEMENT") {
        Ok(m) if !m.is_empty() => vec![m],
        _ => ["cgroup-v2", "cgroup-v1", "rlimit+rss-poll"]
            .map(String::from)
            .to_vec(),
    }
}

/// A string field, or a panic that shows the whole document.
fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_ends_on_the_smallest_tier_that_fits_it() {
    // One worker per tier pool; none for the queue's own pool, so a tiered task can only
    // run where its tier's pool is served.
    let h = Harness::start(|o| {
        o.workers = 0;
        o.pools = vec![pool(1, 96, 4), pool(1, 256, 2), pool(1, 640, 1)];
    })
    .await;
    let mut spec = String::from("name: tiers\ntasks:\n");
    for i in 0..8 {
        spec.push_str(&allocating(&format!("small{i}"), 16));
    }
    spec.push_str(&allocating("medium0", 150));
    spec.push_str(&allocating("medium1", 150));
    spec.push_str(&allocating("large", 400));
    let job = h.submit(&spec).await;
    let done = h.wait(&job, MINUTES).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");

    for i in 0..8 {
        let t = h.task(&job, &format!("small{i}")).await;
        let a = attempts(&t);
        assert_eq!(a.len(), 1, "a small task needs one attempt on tier 1: {t}");
        assert_eq!(a[0]["tier"], 0, "{t}");
        assert_eq!(a[0]["memory_mib"], 96, "{t}");
        assert!(
            text(&a[0], "worker_id").contains("96mib"),
            "run by the 96 MiB pool's worker: {t}"
        );
    }
    for id in ["medium0", "medium1"] {
        let t = h.task(&job, id).await;
        let a = attempts(&t);
        assert_eq!(a.len(), 2, "{t}");
        assert_eq!(a[0]["reason"], OUT_OF_MEMORY, "{t}");
        assert_eq!(a[0]["tier"], 0, "{t}");
        assert_eq!(a[1]["tier"], 1, "{t}");
        assert_eq!(a[1]["exit_code"], 0, "{t}");
        assert!(text(&a[1], "worker_id").contains("256mib"), "{t}");
        assert_eq!(t["tier"], 1, "{t}");
        assert_eq!(t["pool"], "default--t-default--1cpu-256mib", "{t}");
    }
    let large = h.task(&job, "large").await;
    let a = attempts(&large);
    assert_eq!(a.len(), 3, "{large}");
    let tiers: Vec<u64> = a
        .iter()
        .map(|x| x["tier"].as_u64().unwrap_or_else(|| panic!("no tier: {x}")))
        .collect();
    assert_eq!(tiers, [0, 1, 2], "{large}");
    let reasons: Vec<&str> = a
        .iter()
        .map(|x| x["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons[..2], [OUT_OF_MEMORY, OUT_OF_MEMORY], "{large}");
    assert!(text(&a[2], "worker_id").contains("640mib"), "{large}");
    // Each attempt says how its memory was held; the escalations did not use up the
    // retry budget (one attempt by default).
    let expected = expected_enforcement();
    for x in a {
        let how = x["memory_enforcement"].as_str().unwrap_or_default();
        assert!(
            expected.iter().any(|e| e == how),
            "{how} not one of {expected:?}: {x}"
        );
    }
    assert_eq!(large["retry_strategy"]["attempts"], 1, "{large}");
    assert_eq!(done["task_counts"]["SUCCEEDED"], 11, "{done}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_on_the_largest_tier_fails_the_task_and_plain_failures_keep_their_budget() {
    let h = Harness::start(|o| {
        o.workers = 0;
        o.pools = vec![pool(1, 64, 2), pool(1, 128, 2)];
    })
    .await;
    let job = h
        .submit(
            r#"
name: too-big
tasks:
  - id: hog
    command: [python3, -c, "import time\nx = []\nfor _ in range(75): x.append(b'x' * (4 << 20)); time.sleep(0.005)\ntime.sleep(0.4)"]
    tiers: [{cpu: 1, memory_mib: 64}, {cpu: 1, memory_mib: 128}]
  - id: flaky
    command: [sh, -c, "exit 3"]
    tiers: [{cpu: 1, memory_mib: 64}, {cpu: 1, memory_mib: 128}]
    retry_strategy: {attempts: 2}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTES).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let hog = h.task(&job, "hog").await;
    assert_eq!(hog["status_reason"], OOM_ON_LARGEST_TIER, "{hog}");
    assert_eq!(attempts(&hog).len(), 2, "{hog}");
    let expected = expected_enforcement();
    for x in attempts(&hog) {
        let how = x["memory_enforcement"].as_str().unwrap_or_default();
        assert!(
            expected.iter().any(|e| e == how),
            "{how} not one of {expected:?}: {x}"
        );
    }
    // An ordinary failure is retried on the same tier, per its retry strategy.
    let flaky = h.task(&job, "flaky").await;
    let a = attempts(&flaky);
    assert_eq!(a.len(), 2, "{flaky}");
    assert!(a.iter().all(|x| x["tier"] == 0), "{flaky}");
    assert_eq!(flaky["status_reason"], "exit code 3", "{flaky}");

    // Failures are a query: the CLI lists both with their reasons.
    let listed = h.cli(&["tasks", &job, "--state", "FAILED"]);
    assert!(
        listed.contains("hog") && listed.contains(OOM_ON_LARGEST_TIER),
        "{listed}"
    );
    assert!(
        listed.contains("flaky") && listed.contains("exit code 3"),
        "{listed}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_child_that_runs_out_of_memory_moves_up_alone() {
    let h = Harness::start(|o| {
        o.workers = 0;
        o.pools = vec![pool(1, 96, 4), pool(1, 256, 1)];
    })
    .await;
    let job = h
        .submit(
            r#"
name: array-tiers
array_size: 6
command: [python3, -c, "import os, time\ni = int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX'])\nx = []\nfor _ in range(75 if i == 3 else 4): x.append(b'x' * (2 << 20)); time.sleep(0.005)\ntime.sleep(0.3)"]
tiers: [{cpu: 1, memory_mib: 96}, {cpu: 1, memory_mib: 256}]
"#,
        )
        .await;
    let done = h.wait(&job, MINUTES).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    for i in 0..6 {
        let t = h.task(&job, &i.to_string()).await;
        let a = attempts(&t);
        let want = if i == 3 { 2 } else { 1 };
        assert_eq!(a.len(), want, "child {i}: {t}");
        assert_eq!(t["tiers"].as_array().map(Vec::len), Some(2), "{t}");
        assert_eq!(a[a.len() - 1]["tier"], want - 1, "{t}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_missing_pool_and_the_dependency_waited_on() {
    let mut h = Harness::start(|o| o.workers = 1).await;
    let job = h
        .submit(
            r#"
name: stuck
tasks:
  - {id: big, command: ["true"], tiers: [{cpu: 1, memory_mib: 200}]}
  - {id: after, command: ["true"], depends_on: [big]}
"#,
        )
        .await;
    // Nothing serves the 200 MiB pool: the task is queued there, and explain says so.
    let big = wait_for("big to be RUNNABLE", Duration::from_secs(30), || async {
        let big = h.explain(&job, "big").await;
        if big["state"] == "RUNNABLE" {
            Ok(big)
        } else {
            Err(big.to_string())
        }
    })
    .await;
    let codes: Vec<&str> = big["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no reasons: {big}"))
        .iter()
        .map(|r| text(r, "code"))
        .collect();
    assert!(
        codes.contains(&"Queued") && codes.contains(&"NoWorkerPool"),
        "{big}"
    );
    assert!(
        big.to_string().contains("default--t-default--1cpu-200mib"),
        "{big}"
    );
    let after = h.explain(&job, "after").await;
    assert_eq!(
        after["reasons"][0]["code"], "WaitingOnDependencies",
        "{after}"
    );
    assert!(
        text(&after["reasons"][0], "message").contains("big (RUNNABLE)"),
        "{after}"
    );
    let shown = h.cli(&["explain", &job, "big"]);
    assert!(shown.contains("NoWorkerPool"), "{shown}");

    // A worker for that shape arrives: the job runs to the end.
    h.stack
        .spawn_pool_worker(pool(1, 200, 1))
        .await
        .unwrap_or_else(|e| panic!("starting a 200 MiB pool worker: {e}"));
    let done = h.wait(&job, MINUTES).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let finished = h.explain(&job, "big").await;
    assert_eq!(finished["reasons"][0]["code"], "Finished", "{finished}");
    h.shutdown().await;
}
