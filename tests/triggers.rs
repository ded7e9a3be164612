//! Events in: a stored job template rendered from an EventBridge event (an S3 object
//! created) and submitted by the trigger function, exactly once per event id however
//! often the event is delivered; bad templates and events that lack a referenced value
//! are refused with the place named.

use batchplane_testing::{Harness, Must};
use serde_json::{json, Value};
use std::time::Duration;

const INGEST: &str = include_str!("../events/trigger/ingest-template.yaml");

fn sample(name: &str) -> Value {
    let path = format!("{}/../events/trigger/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).must("a sample event")).must("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_event_submits_one_job_from_its_template() {
    // The template's jobs are team data's, and run on data's workers.
    let h = Harness::start(|o| o.team = "data".into()).await;
    // Stored with the CLI, as an operator would.
    let file = format!(
        "{}/../events/trigger/ingest-template.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new(batchplane_testing::binary("batchplane"))
        .args([
            "templates",
            "put",
            "ingest",
            &file,
            "--api-url",
            &h.stack.api_url,
        ])
        .output()
        .must("running batchplane templates put");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = h.get("/v1/templates/ingest").await;
    assert_eq!(stored.body["template"]["team"], "data", "{}", stored.body);
    assert!(INGEST.contains("{{ $.detail.object.key }}"));
    let bad = h
        .put_json(
            "/v1/templates/broken",
            r#"{"name": "x", "tasks": [{"id": "a", "command": ["echo", "{{ detail.key }}"]}]}"#,
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.body["error"]["details"]["field"], "tasks[0].command[1]",
        "{}",
        bad.body
    );

    let payload = sample("s3-object-created.json");
    let first = trigger_fn::handle(&h.stack.service, payload.clone())
        .await
        .must("the trigger");
    assert_eq!(first["created"], true, "{first}");
    let job = first["job_id"].as_str().must("a job id").to_string();
    // EventBridge delivers at least once: the same event again is the same job.
    for _ in 0..2 {
        let again = trigger_fn::handle(&h.stack.service, payload.clone())
            .await
            .must("the trigger");
        assert_eq!(
            (again["job_id"].as_str(), again["created"].as_bool()),
            (Some(job.as_str()), Some(false)),
            "{again}"
        );
    }
    let via_api = h
        .post("/v1/templates/ingest/submit", &payload["event"].to_string())
        .await;
    assert_eq!(
        (via_api.status, via_api.body["job_id"].as_str()),
        (200, Some(job.as_str())),
        "{}",
        via_api.body
    );

    let done = h.wait(&job, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["name"], "ingest incoming/2026/11/22/orders.csv");
    assert_eq!(done["team"], "data");
    let fetch = h.task(&job, "fetch").await;
    assert_eq!(
        fetch["env"]["KEY"], "incoming/2026/11/22/orders.csv",
        "{fetch}"
    );
    assert_eq!(fetch["env"]["SIZE"], "5242880", "{fetch}");
    let load = h.task(&job, "load").await;
    assert_eq!(
        load["command"],
        json!([
            "echo",
            "loaded Object Created from arn:aws:s3:::example-raw-data"
        ])
    );

    // Another object is another event: another job.
    let mut other = payload.clone();
    other["event"]["id"] = json!("5a8c3d0e-1f2b-4c6d-8e9f-0a1b2c3d4e5f");
    other["event"]["detail"]["object"]["key"] = json!("incoming/2026/11/23/orders.csv");
    let second = trigger_fn::handle(&h.stack.service, other)
        .await
        .must("the trigger");
    assert_eq!(second["created"], true, "{second}");
    assert_ne!(second["job_id"].as_str(), Some(job.as_str()));

    // A schedule's event has no object: the template cannot be rendered, and the answer
    // says where; nothing is submitted (the same event with a fixed template would be).
    let mut cron = sample("scheduled.json");
    cron["template"] = json!("ingest");
    let refused = trigger_fn::handle(&h.stack.service, cron)
        .await
        .must("the trigger");
    assert_eq!(refused["error"]["code"], "BadRequest", "{refused}");
    assert_eq!(refused["error"]["details"]["field"], "name", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("$.detail.object.key"),
        "{refused}"
    );
    let missing = trigger_fn::handle(
        &h.stack.service,
        json!({"template": "nope", "event": {"id": "x"}}),
    )
    .await
    .must("the trigger");
    assert_eq!(missing["error"]["code"], "NotFound", "{missing}");
    h.shutdown().await;
}
