//! The local stack with the autoscaler on its timer and no fixed workers: a job's tier
//! pool gets its workers from the autoscaler alone (reuse targeting, placement), the
//! job succeeds, and `batchplane autoscaler history` shows what each tick decided. A
//! team without quota for the pool is refused, and the decision says why.

use batchplane_testing::{wait_for, Harness, Must};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_alone_starts_the_workers_a_job_needs() {
    let h = Harness::start(|o| {
        o.workers = 0;
        o.idle_timeout_seconds = 3;
        o.autoscale_every = Some(Duration::from_secs(1));
    })
    .await;
    let r = h
        .put_json(
            "/v1/autoscaler/settings",
            r#"{"pools": [{"pool": "default--t-vision--1cpu-256mib", "team": "vision"}],
                "startup_seconds": 2, "default_task_seconds": 1}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tasks: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"id": "t{i}", "command": ["sh", "-c", "sleep 0.5"], "tiers": [{{"cpu": 1, "memory_mib": 512}}]}}"#
            )
        })
        .collect();
    let job = h
        .submit(&format!(
            r#"{{"name": "autoscaled", "tasks": [{}]}}"#,
            tasks.join(",")
        ))
        .await;
    let done = h.wait(&job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");

    let history = h.cli(&["autoscaler", "history", "--limit", "100"]);
    assert!(history.contains("GRANTED/ASKED"), "{history}");
    assert!(
        history.contains("default--t-default--1cpu-512mib"),
        "{history}"
    );
    let decisions = h.get("/v1/autoscaler/history?limit=100").await;
    let granted: u64 = decisions.body["decisions"]
        .as_array()
        .must("decisions")
        .iter()
        .flat_map(|d| d["pools"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["pool"] == "default--t-default--1cpu-512mib")
        .map(|p| p["granted"].as_u64().unwrap_or(0))
        .sum();
    assert!(granted >= 1, "{}", decisions.body);

    // Team vision has no quota: its pool's workers are refused, and the decision says so.
    let tasks: Vec<String> = (0..2)
        .map(|i| {
            format!(
                r#"{{"id": "v{i}", "command": ["true"], "tiers": [{{"cpu": 1, "memory_mib": 256}}]}}"#
            )
        })
        .collect();
    let vision = h
        .submit(&format!(
            r#"{{"name": "vision", "team": "vision", "tasks": [{}]}}"#,
            tasks.join(",")
        ))
        .await;
    let p = wait_for(
        "a refusal recorded for vision's pool",
        Duration::from_secs(60),
        || async {
            let d = h.get("/v1/autoscaler/history?limit=5").await;
            d.body["decisions"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|d| d["pools"].as_array().cloned().unwrap_or_default())
                .find(|p| p["pool"] == "default--t-vision--1cpu-256mib" && p["refused"].is_string())
                .ok_or_else(|| d.body.to_string())
        },
    )
    .await;
    assert_eq!(p["team"], "vision", "{p}");
    assert!(
        p["refused"].as_str().unwrap_or("").contains("vision"),
        "{p}"
    );
    let r = h
        .put_json(
            "/v1/teams/vision",
            r#"{"quota": {"cpu": 8, "memory_mib": 8192}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = h.wait(&vision, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    h.shutdown().await;
}
