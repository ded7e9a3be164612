//! The native API's single and array jobs: the same model as AWS Batch's SubmitJob,
//! written as a spec without `tasks:`, through the real router, stream and workers.

use batchplane_testing::{lines, millis, Harness};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Children of an array job by index: listed page by page, each then read in full.
async fn children(h: &Harness, job_id: &str) -> HashMap<u64, Value> {
    let mut out = HashMap::new();
    for t in h.all_tasks(job_id, None, 5).await {
        let id = t["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a listed task without task_id: {t}"));
        let index = id
            .parse()
            .unwrap_or_else(|e| panic!("child id {id:?} is not an index: {e}"));
        out.insert(index, h.task(job_id, id).await);
    }
    out
}

/// Lines a task's first attempt printed.
fn stdout(task: &Value) -> Vec<String> {
    let uri = task["attempts"][0]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("{task}"));
    lines(std::path::Path::new(uri.trim_start_matches("file://")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_and_its_n_to_n_successor_release_child_by_child() {
    let h = Harness::start(|_| {}).await;
    let a = h
        .submit(
            r#"
name: first
array_size: 12
command: [sh, -c, "sleep 0.$((AWS_BATCH_JOB_ARRAY_INDEX % 4)); echo first $AWS_BATCH_JOB_ARRAY_INDEX"]
cpu: 0.5
memory_mib: 64
"#,
        )
        .await;
    let b = h
        .submit(&format!(
            r#"{{"name": "second", "array_size": 12, "command": ["sh", "-c", "echo second $AWS_BATCH_JOB_ARRAY_INDEX"],
                "depends_on": [{{"job": "{a}", "type": "N_TO_N"}}]}}"#
        ))
        .await;
    let second = h.wait(&b, MINUTE).await;
    assert_eq!(second["state"], "SUCCEEDED", "{second}");
    assert_eq!(second["array"]["size"], 12);
    assert_eq!(second["task_counts"]["SUCCEEDED"], 12, "{second}");
    let first = h.wait(&a, MINUTE).await;
    assert_eq!(first["state"], "SUCCEEDED", "{first}");
    let (ka, kb) = (children(&h, &a).await, children(&h, &b).await);
    assert_eq!((ka.len(), kb.len()), (12, 12));
    for i in 0..12 {
        assert!(
            millis(&kb[&i]["started_at"]) >= millis(&ka[&i]["finished_at"]),
            "second:{i} started before first:{i} ended"
        );
        assert_eq!(stdout(&kb[&i]), vec![format!("second {i}")]);
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_by_name_a_sequential_array_and_a_dependency_on_one_child() {
    let h = Harness::start(|_| {}).await;
    // The AWS-compatible route registers the definition; the native spec names it.
    let r = h
        .post(
            "/v1/registerjobdefinition",
            r#"{"jobDefinitionName": "greet", "type": "container",
                "parameters": {"who": "world"},
                "containerProperties": {"image": "unused", "command": ["sh", "-c", "echo $0 $AWS_BATCH_JOB_ARRAY_INDEX", "Ref::who"],
                  "resourceRequirements": [{"type": "VCPU", "value": "0.25"}, {"type": "MEMORY", "value": "32"}]}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seq = h
        .submit(
            "name: seq\narray_size: 4\nsequential: true\njob_definition: greet\nparameters: {who: batch}\n",
        )
        .await;
    let after_child = h
        .submit(&format!(
            "name: after-child\njob_definition: greet:1\ndepends_on: [{{job: \"{seq}:1\"}}]\n"
        ))
        .await;
    let job = h.wait(&seq, MINUTE).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["array"]["sequential"], true);
    let kids = children(&h, &seq).await;
    for i in 1..4u64 {
        assert!(
            millis(&kids[&i]["started_at"]) >= millis(&kids[&(i - 1)]["finished_at"]),
            "child {i} overlapped child {}",
            i - 1
        );
    }
    assert_eq!(stdout(&kids[&2]), vec!["batch 2"]);
    let single = h.wait(&after_child, MINUTE).await;
    assert_eq!(single["state"], "SUCCEEDED", "{single}");
    assert!(single.get("array").is_some_and(|a| a.get("size").is_none()));
    let only = h.task(&after_child, "0").await;
    assert!(millis(&only["started_at"]) >= millis(&kids[&1]["finished_at"]));
    // A single job has no array index.
    assert_eq!(stdout(&only), vec!["world"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_array_specs_are_refused_with_the_field_named() {
    let h = Harness::start(|o| o.workers = 0).await;
    for (spec, field, needle) in [
        (
            "name: x\narray_size: 1\ncommand: [true]\n",
            "array_size",
            "2 to 1000000",
        ),
        (
            "name: x\nsequential: true\ncommand: [true]\n",
            "sequential",
            "array_size",
        ),
        ("name: x\narray_size: 3\n", "command", "required"),
        (
            "name: x\ncommand: [true]\ndepends_on: [{job: j-1, type: SOMETIMES}]\n",
            "depends_on[0]",
            "SOMETIMES",
        ),
        ("name: x\ncommand: [true]\ncpu: 0\n", "cpu", "(0, 1024]"),
    ] {
        let r = h.post("/v1/jobs", spec).await;
        assert_eq!(r.status, 400, "{spec}: {}", r.body);
        assert_eq!(
            r.body["error"]["details"]["field"], field,
            "{spec}: {}",
            r.body
        );
        let msg = r.body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{spec}: no error message in {}", r.body));
        assert!(msg.contains(needle), "{spec}: {msg}");
    }
    // A misspelt field is named, not ignored.
    let r = h
        .post("/v1/jobs", "name: x\ncommand: [true]\narray_sise: 3\n")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("array_sise")),
        "{}",
        r.body
    );
    // A dependency on a job that does not exist, and an unknown definition.
    let r = h
        .post(
            "/v1/jobs",
            "name: x\ncommand: [true]\ndepends_on: [{job: j-0-nope}]\n",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = h.post("/v1/jobs", "name: x\njob_definition: nope\n").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "job_definition");
    h.shutdown().await;
}
