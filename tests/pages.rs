//! A job in pages: opened, filled page by page (each idempotent under its name, each
//! checked against what is stored), committed; nothing runs before the commit, edges
//! that cross pages release and fail their dependents like any other, and a job whose
//! pages stopped coming is closed by the reconciler.

use batchplane::reconcile::{Reconciler, ABANDON_AFTER_MS, OPEN_IDLE_MS};
use batchplane_testing::{attempts, millis, Harness, Must};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn task(id: &str, cmd: &str, deps: &[&str]) -> Value {
    json!({"id": id, "command": ["sh", "-c", cmd], "cpu": 0.5, "memory_mib": 64, "depends_on": deps})
}

fn page(tasks: &[Value]) -> String {
    json!({ "tasks": tasks }).to_string()
}

async fn open(h: &Harness, name: &str, tasks: &[Value]) -> String {
    let body = json!({"name": name, "open": true, "expected_tasks": 10, "tasks": tasks});
    h.submit(&body.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sent_in_pages_runs_only_after_its_commit_and_its_edges_cross_pages() {
    let h = Harness::start(|_| {}).await;
    let job = open(&h, "paged", &[task("root", "true", &[])]).await;
    let p1 = page(&[
        task("a1", "sleep 0.2", &["root"]),
        task("a2", "sleep 0.2", &["root"]),
    ]);
    let put = |p: &'static str, body: String| {
        let h = &h;
        let job = job.clone();
        async move {
            h.put_json(&format!("/v1/jobs/{job}/pages/{p}"), &body)
                .await
        }
    };
    let r = put("p1", p1.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["tasks"], 2, "{}", r.body);
    let r = put(
        "p2",
        page(&[
            task("join", "true", &["a1", "a2"]),
            task("tail", "true", &["root", "join"]),
        ]),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // The same page again is the same answer, counted once.
    let r = put("p1", p1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["already_stored"], true, "{}", r.body);
    // Other tasks under a name taken: refused, naming the page.
    let r = put("p1", page(&[task("other", "true", &[])])).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "PageConflict", "{}", r.body);
    // A dependency the job does not have, and an id it has: refused, naming both.
    let r = put("p3", page(&[task("x", "true", &["nope"])])).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.body["error"]["message"].as_str().must("message");
    assert!(msg.contains("p3") && msg.contains("nope"), "{msg}");
    let r = put("p3", page(&[task("a1", "true", &[])])).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "DuplicateTaskId", "{}", r.body);
    // Another principal cannot add to the job.
    let r = h
        .request_as(
            Some("AKIDSTRANGER"),
            reqwest::Method::PUT,
            &format!("/v1/jobs/{job}/pages/p9"),
            Some(&page(&[task("z", "true", &[])])),
        )
        .await;
    assert!(matches!(r.status, 403 | 404), "{}: {}", r.status, r.body);

    // Nothing runs before the commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = h.job(&job).await;
    assert_eq!(view["total_tasks"], 5, "{view}");
    assert!(
        attempts(&h.task(&job, "root").await).is_empty(),
        "root ran before the commit"
    );

    let r = h.post(&format!("/v1/jobs/{job}/commit"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["committed_now"], true, "{}", r.body);
    assert_eq!(r.body["total_tasks"], 5, "{}", r.body);
    let r = h.post(&format!("/v1/jobs/{job}/commit"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["committed_now"], false, "{}", r.body);
    let r = put("p4", page(&[task("late", "true", &[])])).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "JobNotOpen", "{}", r.body);

    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    // Each task started after its dependencies ended, across pages.
    let ended = |t: &Value| millis(&attempts(t)[0]["finished_at"]);
    let started = |t: &Value| millis(&attempts(t)[0]["started_at"]);
    let root = h.task(&job, "root").await;
    let a1 = h.task(&job, "a1").await;
    let a2 = h.task(&job, "a2").await;
    let join = h.task(&job, "join").await;
    let tail = h.task(&job, "tail").await;
    assert!(started(&a1) >= ended(&root) && started(&a2) >= ended(&root));
    assert!(started(&join) >= ended(&a1).max(ended(&a2)));
    assert!(started(&tail) >= ended(&join));
    // A task's view lists its dependents in later pages.
    let listed: Vec<&str> = root["dependents"]
        .as_array()
        .must("dependents")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for d in ["a1", "a2", "tail"] {
        assert!(listed.contains(&d), "{d} not among {listed:?}");
    }
    // Each page added its edges between groups (`a1` and `a2` are the group `a`),
    // the page sent twice and the refused ones none.
    let groups = h.get(&format!("/v1/jobs/{job}/groups")).await;
    assert_eq!(groups.status, 200, "{}", groups.body);
    let edges: Vec<String> = groups.body["edges"]
        .as_array()
        .must("edges")
        .iter()
        .map(|e| {
            format!(
                "{}>{}",
                e["from"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        edges,
        ["a>join", "join>tail", "root>a", "root>tail"],
        "{}",
        groups.body
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_fails_its_dependents_in_later_pages() {
    let h = Harness::start(|o| o.workers = 1).await;
    let job = open(&h, "paged-failure", &[task("root", "exit 3", &[])]).await;
    let r = h
        .put_json(
            &format!("/v1/jobs/{job}/pages/next"),
            &page(&[task("child", "true", &["root"])]),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = h.post(&format!("/v1/jobs/{job}/commit"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let child = h.task(&job, "child").await;
    assert_eq!(child["state"], "FAILED", "{child}");
    let reason = child["status_reason"].as_str().must("status_reason");
    assert!(reason.contains("dependency root failed"), "{reason}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_died_part_way_holds_the_commit_and_an_idle_open_job_is_closed() {
    let h = Harness::start(|o| o.workers = 0).await;
    let svc = &h.stack.service;
    let job = open(&h, "paged-idle", &[task("first", "true", &[])]).await;
    // A page whose request died after it began: its tasks are not all written.
    let tasks = vec![task("second", "true", &["first"])];
    let parsed = batchplane::domain::parse_task_list(&page(&tasks)).must("page");
    let digest = format!(
        "{:016x}",
        batchplane::domain::ids::stable_hash(&serde_json::to_string(&parsed).must("json"))
    );
    svc.store
        .begin_page(&job, "half", &digest, 1, true)
        .await
        .must("begin");
    let r = h.post(&format!("/v1/jobs/{job}/commit"), "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "PagesIncomplete", "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .must("message")
            .contains("\"half\""),
        "{}",
        r.body
    );
    // Sent again, the page is finished and counted once.
    let r = h
        .put_json(&format!("/v1/jobs/{job}/pages/half"), &page(&tasks))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(h.job(&job).await["total_tasks"], 2);

    // The reconciler leaves an open job alone while its pages may still come.
    let reconciler = Reconciler {
        store: &svc.store,
        queues: &svc.queues,
        dead_letter_queue: None,
    };
    let now = batchplane::store::now_ms();
    let run = reconciler.run(now + ABANDON_AFTER_MS + 60_000).await;
    assert!(!run.abandoned.contains(&job), "{run:?}");
    let run = reconciler.run(now + OPEN_IDLE_MS + 60_000).await;
    assert!(run.abandoned.contains(&job), "{run:?}");
    let closed = h.job(&job).await;
    assert_eq!(closed["state"], "FAILED", "{closed}");
    let reason = closed["reason"].as_str().must("reason");
    assert!(reason.contains("opened for pages"), "{reason}");
    let r = h
        .put_json(
            &format!("/v1/jobs/{job}/pages/more"),
            &page(&[task("third", "true", &[])]),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = h.post(&format!("/v1/jobs/{job}/commit"), "").await;
    assert_eq!(r.status, 409, "{}", r.body);

    // Pages go only to an open job.
    let whole = h
        .submit(&json!({"name": "whole", "tasks": [task("t", "true", &[])]}).to_string())
        .await;
    let r = h
        .put_json(
            &format!("/v1/jobs/{whole}/pages/p"),
            &page(&[task("u", "true", &[])]),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .must("message")
            .contains("open: true"),
        "{}",
        r.body
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_a_big_file_in_pages_and_a_rerun_with_its_key_is_the_same_job() {
    let h = Harness::start(|_| {}).await;
    // Dependents listed before their dependencies, and a job-level image default: the
    // pages must still follow the dependencies and carry the default.
    let mut tasks = vec![
        json!({"id": "last", "command": ["true"], "depends_on": ["m0", "m1", "m2", "m3", "m4", "m5"]}),
    ];
    for i in 0..6 {
        tasks.push(json!({"id": format!("m{i}"), "command": ["true"], "cpu": 0.5, "memory_mib": 64, "depends_on": ["first"]}));
    }
    tasks.push(json!({"id": "first", "command": ["true"], "cpu": 0.5, "memory_mib": 64}));
    let spec = json!({"name": "paged-by-cli", "image": "python:3.12-slim", "tasks": tasks});
    let file = h.dir.join("paged.json");
    std::fs::write(&file, spec.to_string()).must("writing the spec");
    let path = file.to_string_lossy().to_string();
    let args = [
        "submit",
        path.as_str(),
        "--page-tasks",
        "3",
        "--idempotency-key",
        "paged-once",
    ];
    let out = h.cli_as(None, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("in 3 pages"), "{stderr}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["total_tasks"], 8, "{done}");
    let last = h.task(&job, "last").await;
    assert_eq!(attempts(&last)[0]["image"], "python:3.12-slim", "{last}");
    // Run again with the key: the same job, its pages stored once, nothing run twice.
    let again = h.cli(&args);
    assert_eq!(again.trim(), job);
    assert_eq!(h.job(&job).await["total_tasks"], 8);
    assert_eq!(attempts(&h.task(&job, "first").await).len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_open_job_takes_no_more_pages_and_ends_cancelled() {
    let h = Harness::start(|o| o.workers = 0).await;
    let job = open(&h, "paged-cancel", &[task("first", "true", &[])]).await;
    let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = h
        .put_json(
            &format!("/v1/jobs/{job}/pages/p"),
            &page(&[task("more", "true", &[])]),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "JobNotOpen", "{}", r.body);
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "CANCELLED", "{done}");
    assert_eq!(done["total_tasks"], 1, "{done}");
    h.shutdown().await;
}

/// An addition (or a page) counts the user's tasks into the job's total, not the join
/// barriers a task with more than 100 dependencies is given: counted, they would keep
/// the job from ever closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_with_a_wide_fan_in_counts_only_its_own_tasks() {
    let h = Harness::start(|_| {}).await;
    let mut tasks: Vec<Value> = (0..101)
        .map(|i| task(&format!("w{i}"), "true", &[]))
        .collect();
    tasks.push(task("hold", "sleep 4", &[]));
    let job = h
        .submit(&json!({"name": "wide-addition", "tasks": tasks}).to_string())
        .await;
    let deps: Vec<String> = (0..101).map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = deps.iter().map(String::as_str).collect();
    let r = h
        .post(
            &format!("/v1/jobs/{job}/tasks"),
            &page(&[task("gather", "true", &refs)]),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let done = h.wait(&job, 3 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["total_tasks"], 103, "{done}");
    h.shutdown().await;
}
