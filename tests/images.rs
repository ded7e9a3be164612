//! Images: a task's image (and job role) puts it in a pool of its own, whose workers run
//! in that container; on this machine, which has no container runtime, workers run the
//! tasks on the host and every attempt and `explain` say that the image was not
//! enforced. Bad images and roles are refused with their place, writing nothing.

use batchplane::domain::containers::{Container, IMAGE_NOT_ENFORCED};
use batchplane_testing::{attempts, Harness, Must};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const ROLE: &str = "arn:aws:iam::123456789012:role/reader";

fn key(image: &str, role: Option<&str>) -> String {
    Container {
        image: image.into(),
        job_role_arn: role.map(String::from),
    }
    .key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_image_gets_a_pool_and_local_workers_say_they_did_not_enforce_it() {
    let h = Harness::start(|o| o.workers = 1).await;
    let job = h
        .submit(&format!(
            r#"
name: images
image: python:3.12-slim
job_role_arn: {ROLE}
tasks:
  - {{id: job-image, command: [sh, -c, "echo in job image"]}}
  - {{id: own-image, command: [true], image: "busybox:1.36", job_role_arn: {ROLE}}}
  - {{id: tiered, command: [true], image: "busybox:1.36", job_role_arn: {ROLE}, tiers: [{{cpu: 1, memory_mib: 256}}]}}
"#
        ))
        .await;
    // The tiered task needs a worker of its shape; the stack's own worker is not one.
    for (task, image) in [
        ("job-image", "python:3.12-slim"),
        ("own-image", "busybox:1.36"),
    ] {
        let t = h.wait_task(&job, task, "SUCCEEDED", MINUTE).await;
        let k = key(image, Some(ROLE));
        assert_eq!(t["pool"], format!("default--t-default--c-{k}"), "{t}");
        let a = &attempts(&t)[0];
        assert_eq!(a["image"], image, "{a}");
        assert_eq!(a["job_role_arn"], ROLE, "{a}");
        assert_eq!(a["image_enforcement"], IMAGE_NOT_ENFORCED, "{a}");
        let why = h.explain(&job, task).await;
        let reason = why["reasons"]
            .as_array()
            .must("reasons")
            .iter()
            .find(|r| r["code"] == "ImageNotEnforced")
            .cloned()
            .unwrap_or_else(|| panic!("no ImageNotEnforced reason: {why}"));
        let text = reason["message"].as_str().must("message");
        assert!(
            text.contains(image) && text.contains("not enforced") && text.contains(ROLE),
            "{text}"
        );
    }
    // The tier pool is the same container's, of the tier's shape.
    let tiered = h.task(&job, "tiered").await;
    assert_eq!(
        tiered["pool"],
        format!(
            "default--t-default--c-{}--1cpu-256mib",
            key("busybox:1.36", Some(ROLE))
        ),
        "{tiered}"
    );
    assert_eq!(tiered["state"], "RUNNABLE", "{tiered}");
    h.post(&format!("/v1/jobs/{job}/cancel"), "").await;

    // A job without images runs in the queue's own pool, and says nothing of images.
    let plain = h
        .submit("name: plain\ntasks:\n  - {id: t, command: [true]}\n")
        .await;
    assert_eq!(h.wait(&plain, MINUTE).await["state"], "SUCCEEDED");
    let t = h.task(&plain, "t").await;
    assert_eq!(t["pool"], "default--t-default", "{t}");
    assert!(attempts(&t)[0].get("image").is_none(), "{t}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_starts_workers_of_an_images_pool_in_that_container() {
    let h = Harness::start(|o| {
        o.workers = 0;
        o.idle_timeout_seconds = 3;
        o.autoscale_every = Some(Duration::from_secs(1));
    })
    .await;
    let job = h
        .submit("name: scaled\nimage: alpine:3.20\ntasks:\n  - {id: a, command: [true]}\n  - {id: b, command: [true]}\n")
        .await;
    let done = h.wait(&job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let pool = format!("default--t-default--c-{}", key("alpine:3.20", None));
    let a = &attempts(&h.task(&job, "a").await)[0].clone();
    assert_eq!(a["image"], "alpine:3.20", "{a}");
    assert_eq!(a["image_enforcement"], IMAGE_NOT_ENFORCED, "{a}");
    let decisions = h.get("/v1/autoscaler/history?limit=100").await;
    let granted: u64 = decisions.body["decisions"]
        .as_array()
        .must("decisions")
        .iter()
        .flat_map(|d| d["pools"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["pool"] == pool.as_str())
        .map(|p| p["granted"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        granted >= 1,
        "no worker granted for {pool}: {}",
        decisions.body
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_roles_are_refused_with_their_place_and_write_nothing() {
    let h = Harness::start(|o| o.workers = 0).await;
    for (spec, says) in [
        (
            "name: x\nimage: Not/An/Image\ntasks:\n  - {id: t, command: [true]}\n",
            "field `image`",
        ),
        (
            "name: x\ntasks:\n  - {id: t, command: [true], image: 'ok:1', job_role_arn: 'role/x'}\n",
            "task \"t\", field `job_role_arn`",
        ),
        (
            "name: x\ntasks:\n  - {id: t, command: [true], job_role_arn: 'arn:aws:iam::123456789012:role/r'}\n",
            "needs an `image`",
        ),
        (
            "name: x\ntasks:\n  - {id: t, command: [true], image: 'ubuntu@sha256:abc'}\n",
            "task \"t\", field `image`",
        ),
    ] {
        let r = h.post("/v1/jobs", spec).await;
        assert_eq!(r.status, 400, "{spec}: {}", r.body);
        let msg = r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(msg.contains(says), "{spec}: {msg}");
    }
    // Each image is a pool (a queue and, under load, workers): one submission may bring
    // at most 16 into being beside the queue's own.
    let tasks: Vec<String> = (0..17)
        .map(|i| format!("  - {{id: t{i}, command: [true], image: 'tool:{i}'}}"))
        .collect();
    let r = h
        .post(
            "/v1/jobs",
            &format!("name: many\ntasks:\n{}\n", tasks.join("\n")),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("17 worker pools") && msg.contains("at most 16"),
        "{msg}"
    );
    // Nothing of any job, and no container, was written.
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&h.stack.shared_config)
            .endpoint_url(&h.emulators.dynamodb_url)
            .build(),
    );
    let scan = ddb
        .scan()
        .table_name(&h.stack.opts.table)
        .send()
        .await
        .must("scan");
    let written: Vec<String> = scan
        .items()
        .iter()
        .filter_map(|it| it.get("pk").and_then(|v| v.as_s().ok()).cloned())
        .filter(|pk| pk.starts_with("J#") || pk == "R#container")
        .collect();
    assert!(
        written.is_empty(),
        "a refused job writes nothing: {written:?}"
    );
    h.shutdown().await;
}

/// What a worker pod of the Kubernetes backend would be told, from the stored
/// container: the pool's key resolves to the image and role a submission named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_container_is_stored_under_its_key_at_submission() {
    let h = Harness::start(|o| o.workers = 0).await;
    let job = h
        .submit(&format!(
            "name: stored\nimage: 'ghcr.io/acme/tool:2'\njob_role_arn: '{ROLE}'\ntasks:\n  - {{id: t, command: [true]}}\n"
        ))
        .await;
    let t = h.task(&job, "t").await;
    let pool = t["pool"].as_str().must("pool");
    let parsed = batchplane::domain::tiers::WorkerPool::parse(pool).must("a pool name");
    let stored = h
        .stack
        .service
        .store
        .container(parsed.container.as_deref().must("a container key"))
        .await
        .must("read")
        .must("stored");
    assert_eq!(stored.image, "ghcr.io/acme/tool:2");
    assert_eq!(stored.job_role_arn.as_deref(), Some(ROLE));
    let cancelled = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    h.shutdown().await;
}

/// Where the deployment lists its job roles (each with a service account for its pods),
/// a task naming another is refused at submission, naming the field; a listed one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_role_the_deployment_cannot_run_as_is_refused() {
    let h = Harness::start(|o| {
        o.workers = 1;
        o.job_roles = Some([ROLE.to_string()].into());
    })
    .await;
    let other = "arn:aws:iam::123456789012:role/not-listed";
    let r = h
        .post(
            "/v1/jobs",
            &format!("name: x\nimage: 'busybox:1'\njob_role_arn: '{other}'\ntasks:\n  - {{id: t, command: [true]}}\n"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("job_role_arn") && msg.contains(other) && msg.contains("not a job role"),
        "{msg}"
    );
    let job = h
        .submit(&format!(
            "name: ok\nimage: 'busybox:1'\njob_role_arn: '{ROLE}'\ntasks:\n  - {{id: t, command: [true]}}\n"
        ))
        .await;
    assert_eq!(h.wait(&job, MINUTE).await["state"], "SUCCEEDED");
    h.shutdown().await;
}
