//! Bounded input: nothing stored can pass DynamoDB's 400 KB, a body over Lambda's 6 MB
//! is a 413, YAML aliases cannot blow a small body up, and the AWS Batch API refuses
//! numbers out of range instead of truncating them, and a task larger than every worker
//! of its pool is refused instead of waiting forever — each with the field named and in
//! its API's error shape, while the API's memory stays bounded.

use batchplane::store::JobQuery;
use batchplane_testing::Harness;
use serde_json::{json, Value};

/// This process's peak resident memory, in KiB (the local stack's API runs in it).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// POST a body over the limit on a connection of its own: the server answers 413 as
/// soon as it reads the length and closes the connection rather than read the rest.
/// The close can win the race with the client's sending the rest, which then hears a
/// reset instead of the answer: such a try is made again, a few times.
async fn too_large(h: &Harness, path: &str, body: &str) -> (u16, Value) {
    let mut last = String::new();
    for _ in 0..5 {
        match reqwest::Client::new()
            .post(h.url(path))
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                return (status, r.json().await.unwrap_or(Value::Null));
            }
            Err(e) => last = e.to_string(),
        }
    }
    panic!("POST {path}: no answer in five tries: {last}")
}

/// A YAML "billion laughs": nine levels of nine aliases each.
fn laughs(top: &str) -> String {
    let mut doc = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let refs: Vec<String> = (0..9).map(|_| format!("*a{}", i - 1)).collect();
        doc.push_str(&format!("a{i}: &a{i} [{}]\n", refs.join(", ")));
    }
    doc.push_str(top);
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_alias_bombed_native_input_is_refused_with_the_field_named() {
    let h = Harness::start(|o| o.workers = 0).await;
    let before = peak_rss_kib();

    let huge = format!(
        "name: x\ntasks:\n  - {{id: a, command: [echo, '{}']}}\n",
        "x".repeat(7 * 1024 * 1024)
    );
    for _ in 0..5 {
        let (status, body) = too_large(&h, "/v1/jobs", &huge).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["code"], "RequestTooLarge", "{body}");
    }
    for _ in 0..20 {
        let r = h.post("/v1/jobs", &laughs("name: bomb\ntasks: []\n")).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("aliases expand"),
            "{}",
            r.body
        );
    }
    let r = h.put_json("/v1/templates/bomb", &laughs("name: t\n")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    println!("peak RSS grew {grown_mib} MiB over 5 bodies of 7 MB and 21 alias bombs");
    assert!(grown_mib < 256, "the API's memory grew {grown_mib} MiB");

    // A retry rule, a tag map, a template: each too big for its item, each named.
    let rule = format!(
        "name: x\ntasks:\n  - id: a\n    command: ['true']\n    retry_strategy: {{attempts: 2, evaluate_on_exit: [{{on_reason: '{}', action: EXIT}}]}}\n",
        "r".repeat(600)
    );
    let r = h.post("/v1/jobs", &rule).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["field"], "retry_strategy.evaluate_on_exit[0].on_reason",
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["details"]["task"], "a", "{}", r.body);
    let tags: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("tag{i}"), json!("v".repeat(1024))))
        .collect();
    let array = json!({"name": "tagged", "command": ["true"], "array_size": 2, "tags": tags});
    let r = h.post("/v1/jobs", &array.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "tags", "{}", r.body);
    let template =
        json!({"name": "t", "tasks": [{"id": "a", "command": ["echo", "y".repeat(300 * 1024)]}]});
    let r = h.put_json("/v1/templates/big", &template.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "tasks", "{}", r.body);

    // Ids that would name a directory, and more pools than one submission may make.
    for id in [".", ".."] {
        let r = h
            .post(
                "/v1/jobs",
                &format!("name: x\ntasks:\n  - {{id: '{id}', command: ['true']}}\n"),
            )
            .await;
        assert_eq!(r.status, 400, "task id {id:?}: {}", r.body);
    }
    let mut many = String::from("name: pools\ntasks:\n");
    for t in 0..3 {
        let tiers: Vec<String> = (0..6)
            .map(|i| format!("{{cpu: 1, memory_mib: {}}}", 1024 * (t * 6 + i + 1)))
            .collect();
        many.push_str(&format!(
            "  - {{id: t{t}, command: ['true'], tiers: [{}]}}\n",
            tiers.join(", ")
        ));
    }
    let r = h.post("/v1/jobs", &many).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "tiers", "{}", r.body);
    let listed = h.get("/v1/templates").await;
    assert_eq!(
        listed.body["templates"],
        json!([]),
        "nothing refused was stored: {}",
        listed.body
    );
    h.shutdown().await;
}

/// An AWS Batch operation's answer: its status, `__type` and message.
async fn batch(h: &Harness, op: &str, body: Value) -> (u16, String, String) {
    let r = h.post(&format!("/v1/{op}"), &body.to_string()).await;
    (
        r.status,
        r.body["__type"].as_str().unwrap_or("").to_string(),
        r.body["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_batch_api_refuses_numbers_out_of_range_instead_of_truncating() {
    let h = Harness::start(|o| o.workers = 0).await;
    let def = |container: Value, extra: Value| {
        let mut d = json!({"jobDefinitionName": "d", "type": "container", "containerProperties": container});
        if let (Some(m), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        d
    };
    let refused = [
        (
            def(
                json!({"image": "x", "command": ["true"], "vcpus": 0, "memory": 64}),
                json!({}),
            ),
            "containerProperties.vcpus",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "vcpus": 1, "memory": -5}),
                json!({}),
            ),
            "containerProperties.memory",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "inf"}, {"type": "MEMORY", "value": "64"}]}),
                json!({}),
            ),
            "resourceRequirements[0] VCPU",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "99999999999999"}]}),
                json!({}),
            ),
            "resourceRequirements[1] MEMORY",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "vcpus": 1, "memory": 64}),
                json!({"retryStrategy": {"attempts": 11}}),
            ),
            "retryStrategy.attempts",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "vcpus": 1, "memory": 64}),
                json!({"retryStrategy": {"attempts": 0}}),
            ),
            "retryStrategy.attempts",
        ),
        (
            def(
                json!({"image": "x", "command": ["true"], "vcpus": 1, "memory": 64}),
                json!({"retryStrategy": {"attempts": 2.5}}),
            ),
            "retryStrategy.attempts",
        ),
    ];
    for (body, field) in refused {
        let (status, kind, message) = batch(&h, "registerjobdefinition", body.clone()).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "ClientException"),
            "{body}: {message}"
        );
        assert!(
            message.contains(field),
            "{body}: {message} should name {field}"
        );
    }
    let ce = json!({"computeEnvironmentName": "ce", "type": "MANAGED", "state": "ENABLED",
        "computeResources": {"type": "SPOT", "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
            "minvCpus": 0, "maxvCpus": 16, "desiredvCpus": 0, "instanceTypes": ["m7g.large"],
            "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"], "instanceRole": "ecsInstanceRole"}});
    let (status, _, message) = batch(&h, "createcomputeenvironment", ce).await;
    assert_eq!(status, 200, "{message}");
    let queue = json!({"jobQueueName": "jq", "state": "ENABLED", "priority": 1,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "ce"}]});
    let (status, _, message) = batch(&h, "createjobqueue", queue).await;
    assert_eq!(status, 200, "{message}");
    let (status, _, message) = batch(
        &h,
        "createjobqueue",
        json!({"jobQueueName": "big", "state": "ENABLED", "priority": 1u64 << 40,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "ce"}]}),
    )
    .await;
    assert!(status == 400 && message.contains("priority"), "{message}");
    // A queue whose team pool's name SQS could not take: refused, named, before anything.
    let long = "q".repeat(60);
    let (status, _, message) = batch(
        &h,
        "createjobqueue",
        json!({"jobQueueName": long, "state": "ENABLED", "priority": 1,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "ce"}]}),
    )
    .await;
    assert_eq!(status, 200, "{message}");
    let r = h
        .post(
            "/v1/jobs",
            &format!("name: x\nqueue: {long}\ntasks:\n  - {{id: a, command: ['true']}}\n"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "queue", "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("80"),
        "{}",
        r.body
    );
    let ok = def(
        json!({"image": "x", "command": ["true"], "vcpus": 1, "memory": 64}),
        json!({}),
    );
    let (status, _, message) = batch(&h, "registerjobdefinition", ok).await;
    assert_eq!(status, 200, "{message}");
    let submits = [
        (
            json!({"timeout": {"attemptDurationSeconds": -1}}),
            "timeout.attemptDurationSeconds",
        ),
        (
            json!({"schedulingPriorityOverride": 10000}),
            "schedulingPriorityOverride",
        ),
        (
            json!({"arrayProperties": {"size": 1_000_000_000_000u64}}),
            "arrayProperties.size",
        ),
        (
            json!({"containerOverrides": {"command": ["echo", "z".repeat(300 * 1024)]}}),
            "containerOverrides",
        ),
    ];
    for (extra, field) in submits {
        let mut body = json!({"jobName": "j", "jobQueue": "jq", "jobDefinition": "d"});
        if let (Some(m), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let (status, kind, message) = batch(&h, "submitjob", body).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "ClientException"),
            "{field}: {message}"
        );
        assert!(message.contains(field), "{message} should name {field}");
    }
    // Method and body errors are AWS-shaped too.
    let r = h.get("/v1/describejobs").await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.body["__type"], "ClientException", "{}", r.body);
    let (status, body) = too_large(&h, "/v1/submitjob", &"{".repeat(7 * 1024 * 1024)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["__type"], "ClientException", "{body}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_of_its_pool_can_hold_is_refused_at_submission_with_the_resource_named() {
    let h = Harness::start(|o| o.workers = 0).await;
    // The default settings size a queue's own pool's workers at 4 vCPU and 16 GiB.
    let dag = "name: huge\ntasks:\n  - {id: fine, command: ['true']}\n  - {id: big, command: ['true'], cpu: 64, memory_mib: 512}\n";
    let r = h.post("/v1/jobs", dag).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let details = &r.body["error"]["details"];
    assert_eq!(
        (details["field"].as_str(), details["task_id"].as_str()),
        (Some("tasks[1].cpu"), Some("big")),
        "{}",
        r.body
    );
    let message = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("64 vCPU (the workers have 4)") && message.contains("default_worker"),
        "{message}"
    );
    let stored = h
        .stack
        .service
        .store
        .list_jobs("default", &JobQuery::All, None, 10, None)
        .await
        .unwrap_or_else(|e| panic!("listing the queue's jobs: {e}"))
        .jobs;
    assert!(stored.is_empty(), "nothing was written: {stored:?}");
    // Memory too, and an addition to a running job is held to the same rule.
    let ok = h
        .submit("name: ok\ntasks:\n  - {id: a, command: [sleep, '30']}\n")
        .await;
    let r = h
        .post(
            &format!("/v1/jobs/{ok}/tasks"),
            "- {id: b, command: ['true'], memory_mib: 65536}\n",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["field"], "tasks[0].memory_mib",
        "{}",
        r.body
    );
    // A tier pool's workers are sized from the tier: a large tier fits.
    let tiered = "name: tiered\ntasks:\n  - {id: t, command: ['true'], tiers: [{cpu: 64, memory_mib: 262144}]}\n";
    assert_eq!(h.post("/v1/jobs", tiered).await.status, 201);
    // The AWS Batch API answers in its own shape.
    let ce = json!({"computeEnvironmentName": "ce", "type": "MANAGED", "state": "ENABLED",
        "computeResources": {"type": "SPOT", "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
            "minvCpus": 0, "maxvCpus": 16, "desiredvCpus": 0, "instanceTypes": ["m7g.large"],
            "subnets": ["subnet-1"], "securityGroupIds": ["sg-1"], "instanceRole": "ecsInstanceRole"}});
    assert_eq!(batch(&h, "createcomputeenvironment", ce).await.0, 200);
    let queue = json!({"jobQueueName": "jq", "state": "ENABLED", "priority": 1,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "ce"}]});
    assert_eq!(batch(&h, "createjobqueue", queue).await.0, 200);
    let def = json!({"jobDefinitionName": "wide", "type": "container",
        "containerProperties": {"image": "x", "command": ["true"], "vcpus": 16, "memory": 64}});
    assert_eq!(batch(&h, "registerjobdefinition", def).await.0, 200);
    let (status, kind, message) = batch(
        &h,
        "submitjob",
        json!({"jobName": "j", "jobQueue": "jq", "jobDefinition": "wide"}),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "ClientException"),
        "{message}"
    );
    assert!(
        message.contains("16 vCPU (the workers have 4)"),
        "{message}"
    );
    h.shutdown().await;
}
