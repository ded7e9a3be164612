//! Every sample event in `events/<function>/` is one its function accepts: a new or
//! edited sample that the handler's decoding would reject fails here (the handlers'
//! own tests run the samples end to end where they can without AWS).

use batchplane_testing::Must;
use serde_json::Value;
use std::path::PathBuf;

fn samples(function: &str) -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(function);
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.must("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).must("a sample");
            (p, text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no samples in {}", dir.display());
    out
}

#[test]
fn every_function_has_samples_and_each_decodes_as_its_function_reads_it() {
    let dirs: Vec<String> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events"))
            .must("events/")
            .map(|e| {
                e.must("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
    for f in [
        "api",
        "fanout",
        "placement",
        "autoscaler",
        "publisher",
        "trigger",
    ] {
        assert!(
            dirs.iter().any(|d| d == f),
            "events/{f}/ is missing: {dirs:?}"
        );
    }
    for (p, text) in samples("api") {
        serde_json::from_str::<lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest>(
            &text,
        )
        .unwrap_or_else(|e| panic!("{}: not an HTTP API v2 request: {e}", p.display()));
    }
    for (p, text) in samples("fanout") {
        let e: aws_lambda_events::event::dynamodb::Event = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a stream batch: {e}", p.display()));
        for r in &e.records {
            batchplane::stream::decode_record(r).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    for (p, text) in samples("placement") {
        let v: Value = serde_json::from_str(&text).must("JSON");
        batchplane::placement::PlacementCall::from_event(&v)
            .unwrap_or_else(|e| panic!("{}: {}", p.display(), e.message));
    }
    for (p, text) in samples("autoscaler") {
        let v: Value = serde_json::from_str(&text).must("JSON");
        autoscaler_fn::Invocation::from_event(&v)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, text) in samples("publisher") {
        let v: Value = serde_json::from_str(&text).must("JSON");
        if v.get("Records").is_some() {
            let e: aws_lambda_events::event::dynamodb::Event = serde_json::from_value(v)
                .unwrap_or_else(|e| panic!("{}: not a stream batch: {e}", p.display()));
            for r in &e.records {
                batchplane::stream::decode_record(r)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        } else {
            assert_eq!(v["detail-type"], "Scheduled Event", "{}", p.display());
        }
    }
    for (p, text) in samples("trigger") {
        let v: Value = serde_json::from_str(&text).must("JSON");
        trigger_fn::Trigger::from_event(&v).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
