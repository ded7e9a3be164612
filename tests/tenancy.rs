//! Tenancy: two principals on two teams. The second cannot see, list, cancel or add to
//! the first's job, on the native API, the CLI and (in `aws_batch`) boto3; cannot submit
//! as the first team; and neither can change quotas, clusters, settings, templates or
//! access. The local stack names the caller by the access key id it is signed with.

use batchplane_testing::Harness;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "AKIDALICE";
const BOB: &str = "AKIDBOB";
const CAROL: &str = "AKIDCAROL";

/// Alice is a member of research, Bob of finance, Carol a viewer of research.
async fn two_teams() -> Harness {
    let h = Harness::start(|o| o.workers = 0).await;
    h.grant(ALICE, Some("research"), "member").await;
    h.grant(BOB, Some("finance"), "member").await;
    h.grant(CAROL, Some("research"), "viewer").await;
    h
}

const PRIVATE: &str = r#"
name: private
tasks:
  - id: a
    command: ["sh", "-c", "sleep 30"]
    env: {TOKEN: research-secret}
"#;

async fn call(
    h: &Harness,
    who: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let r = h.request_as(Some(who), method, path, body).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_job_does_not_exist_and_a_viewer_cannot_change_it() {
    let h = two_teams().await;
    let (status, body) = call(&h, ALICE, Method::POST, "/v1/jobs", Some(PRIVATE)).await;
    assert_eq!(status, 201, "{body}");
    let job = body["job_id"].as_str().unwrap_or_default().to_string();
    let (status, view) = call(&h, ALICE, Method::GET, &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(
        (status, view["team"].as_str()),
        (200, Some("research")),
        "{view}"
    );

    // To Bob the job does not exist: every route answers as for an unknown id.
    let unknown = "j-00000000000-000000000000";
    for (method, path, body) in [
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (Method::GET, format!("/v1/jobs/{job}/tasks"), None),
        (Method::GET, format!("/v1/jobs/{job}/tasks/a"), None),
        (Method::GET, format!("/v1/jobs/{job}/explain"), None),
        (Method::GET, format!("/v1/jobs/{job}/tasks/a/explain"), None),
        (Method::POST, format!("/v1/jobs/{job}/cancel"), None),
        (
            Method::POST,
            format!("/v1/jobs/{job}/tasks"),
            Some(r#"[{"id": "b", "command": ["true"]}]"#),
        ),
    ] {
        let (status, got) = call(&h, BOB, method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path} as Bob: {got}");
        assert_eq!(got["error"]["code"], "NotFound", "{got}");
        let (_, never) = call(&h, BOB, method.clone(), &path.replace(&job, unknown), body).await;
        assert_eq!(
            got["error"]["message"]
                .as_str()
                .map(|m| m.replace(&job, unknown)),
            never["error"]["message"].as_str().map(String::from),
            "an existing job reads exactly as an unknown one"
        );
    }
    let (status, got) = call(&h, BOB, Method::GET, "/v1/teams/research/usage", None).await;
    assert_eq!(status, 404, "{got}");

    // Bob cannot submit as research; Carol may look but not change.
    let as_research = PRIVATE.replace("name: private", "name: x\nteam: research");
    let (status, got) = call(&h, BOB, Method::POST, "/v1/jobs", Some(&as_research)).await;
    assert_eq!(
        (status, got["error"]["code"].as_str()),
        (403, Some("Forbidden")),
        "{got}"
    );
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("research"),
        "{got}"
    );
    let (status, got) = call(
        &h,
        CAROL,
        Method::GET,
        &format!("/v1/jobs/{job}/tasks/a"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["env"]["TOKEN"], "research-secret",
        "a viewer sees the task: {got}"
    );
    for path in [
        format!("/v1/jobs/{job}/cancel"),
        format!("/v1/jobs/{job}/tasks"),
    ] {
        let (status, got) = call(&h, CAROL, Method::POST, &path, Some("[]")).await;
        assert_eq!(status, 403, "POST {path} as a viewer: {got}");
        assert!(
            got["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("viewer"),
            "{got}"
        );
    }
    let (status, got) = call(&h, CAROL, Method::POST, "/v1/jobs", Some(PRIVATE)).await;
    assert_eq!(
        status, 403,
        "a viewer of one team is a member of none: {got}"
    );

    // Nothing Bob or Carol did touched the job; Alice may cancel it.
    let (_, view) = call(&h, ALICE, Method::GET, &format!("/v1/jobs/{job}"), None).await;
    assert!(
        !matches!(
            view["state"].as_str(),
            Some("SUCCEEDED" | "FAILED" | "CANCELLED")
        ),
        "{view}"
    );
    let (status, got) = call(
        &h,
        ALICE,
        Method::POST,
        &format!("/v1/jobs/{job}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_goes_to_the_callers_only_team_or_must_name_one() {
    let h = two_teams().await;
    h.grant(ALICE, Some("finance"), "member").await;
    let (status, got) = call(&h, ALICE, Method::POST, "/v1/jobs", Some(PRIVATE)).await;
    assert_eq!(status, 400, "{got}");
    assert_eq!(got["error"]["details"]["field"], "team", "{got}");
    assert_eq!(
        got["error"]["details"]["teams"],
        json!(["finance", "research"]),
        "{got}"
    );
    let named = PRIVATE.replace("name: private", "name: named\nteam: finance");
    let (status, got) = call(&h, ALICE, Method::POST, "/v1/jobs", Some(&named)).await;
    assert_eq!(status, 201, "{got}");
    let job = got["job_id"].as_str().unwrap_or_default();
    // Now Bob, a member of finance, sees it and may cancel it.
    let (status, view) = call(&h, BOB, Method::GET, &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(
        (status, view["team"].as_str()),
        (200, Some("finance")),
        "{view}"
    );
    let (status, got) = call(
        &h,
        BOB,
        Method::POST,
        &format!("/v1/jobs/{job}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_change_quotas_clusters_settings_templates_and_access() {
    let h = two_teams().await;
    let cluster = r#"{"kind": "local", "endpoint": "", "region": "", "capacity": {"cpu": 64, "memory_mib": 65536}}"#;
    let template = r#"{"name": "t", "tasks": [{"id": "a", "command": ["true"]}]}"#;
    let attempts = [
        (
            Method::PUT,
            "/v1/teams/finance",
            Some(r#"{"quota": {"cpu": 1000, "memory_mib": 1048576}}"#),
        ),
        (Method::PUT, "/v1/clusters/mine", Some(cluster)),
        (Method::POST, "/v1/clusters/local-a/disable", None),
        (Method::GET, "/v1/clusters", None),
        (Method::PUT, "/v1/autoscaler/settings", Some("{}")),
        (Method::GET, "/v1/autoscaler/settings", None),
        (Method::PUT, "/v1/templates/t", Some(template)),
        (
            Method::POST,
            "/v1/placements",
            Some(r#"{"action": "sweep"}"#),
        ),
        (Method::GET, "/v1/access", None),
        (
            Method::POST,
            "/v1/access/grants",
            Some(r#"{"principal": "AKIDBOB", "role": "admin"}"#),
        ),
        (
            Method::POST,
            "/v1/access/revoke",
            Some(r#"{"principal": "AKIDALICE", "team": "research"}"#),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, got) = call(&h, BOB, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path} as Bob: {got}");
        assert_eq!(got["error"]["code"], "Forbidden", "{got}");
        assert!(
            got["error"]["message"].as_str().unwrap_or("").contains(BOB),
            "{got}"
        );
    }
    // Nothing changed: Bob is still only a member of finance, Alice still of research,
    // and the cluster is still enabled.
    let (_, me) = call(&h, BOB, Method::GET, "/v1/access/me", None).await;
    assert_eq!(
        (me["admin"].as_bool(), &me["teams"]),
        (Some(false), &json!({"finance": "member"})),
        "{me}"
    );
    let (_, me) = call(&h, ALICE, Method::GET, "/v1/access/me", None).await;
    assert_eq!(me["teams"], json!({"research": "member"}), "{me}");
    let clusters = h.get("/v1/clusters").await;
    assert!(
        clusters.body["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["enabled"] != false),
        "{}",
        clusters.body
    );
    // A member sees its own team's quota but not another's, and lists only its own.
    let (status, _) = call(&h, BOB, Method::GET, "/v1/teams/default", None).await;
    assert_eq!(status, 404);
    let (_, teams) = call(&h, BOB, Method::GET, "/v1/teams", None).await;
    assert_eq!(teams["teams"], json!([]), "{teams}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_as_its_credentials_and_manages_access() {
    let h = two_teams().await;
    let spec = h.dir.join("private.yaml");
    std::fs::write(&spec, PRIVATE).unwrap_or_else(|e| panic!("writing the spec: {e}"));
    let spec = spec.to_string_lossy().into_owned();
    let out = h.cli_as(Some(ALICE), &["submit", &spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job = stdout
        .split_whitespace()
        .find(|w| w.starts_with("j-"))
        .unwrap_or_else(|| panic!("no job id in {stdout}"))
        .to_string();
    let more = h.dir.join("more.yaml");
    std::fs::write(&more, "tasks:\n  - {id: b, command: ['true']}\n")
        .unwrap_or_else(|e| panic!("writing the addition: {e}"));
    let more = more.to_string_lossy().into_owned();
    for args in [
        vec!["status", &job],
        vec!["cancel", &job],
        vec!["tasks", &job],
        vec!["explain", &job],
        vec!["add", &job, &more],
    ] {
        let out = h.cli_as(Some(BOB), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("404"),
            "batchplane {args:?} as Bob: {err}"
        );
    }
    for args in [
        vec!["access", "grant", BOB, "--role", "admin"],
        vec![
            "teams",
            "set",
            "finance",
            "--cpu",
            "1000",
            "--memory-mib",
            "1048576",
        ],
        vec!["clusters", "disable", "local-a"],
    ] {
        let out = h.cli_as(Some(BOB), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("403"),
            "batchplane {args:?} as Bob: {err}"
        );
    }
    let out = h.cli_as(Some(ALICE), &["status", &job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The admin (unsigned, on this stack) lists and changes grants with the CLI.
    let listed = h.cli(&["access"]);
    assert!(
        listed.contains(ALICE) && listed.contains("research") && listed.contains("anonymous"),
        "{listed}"
    );
    h.cli(&["access", "revoke", ALICE, "--team", "research"]);
    let me =
        String::from_utf8_lossy(&h.cli_as(Some(ALICE), &["access", "whoami"]).stdout).into_owned();
    assert!(me.contains(ALICE) && !me.contains("research"), "{me}");
    let out = h.cli_as(Some(ALICE), &["status", &job]);
    assert!(
        !out.status.success(),
        "a revoked member no longer sees the job"
    );
    h.cli(&[
        "access",
        "grant",
        "arn:aws:iam::123456789012:role/research-*",
        "--team",
        "research",
        "--role",
        "viewer",
    ]);
    assert!(h.cli(&["access"]).contains("role/research-*"));
    let out = h.cli_as(
        None,
        &[
            "access", "grant", "x", "--team", "research", "--role", "owner",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("owner"), "{err}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_stack_makes_anonymous_nobody() {
    let h = Harness::start(|o| {
        o.workers = 0;
        o.admins.clear();
    })
    .await;
    let r = h.post("/v1/jobs", PRIVATE).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h
        .put_json(
            "/v1/teams/default",
            r#"{"quota": {"cpu": 1, "memory_mib": 1024}}"#,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = h.get("/v1/access/me").await;
    assert_eq!(r.body["principal"]["id"], "anonymous", "{}", r.body);
    assert_eq!(r.body["admin"], false, "{}", r.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_cannot_take_its_team_from_the_event() {
    let h = Harness::start(|o| o.workers = 0).await;
    let r = h
        .put_json(
            "/v1/templates/sneaky",
            r#"{"name": "x", "team": "{{ $.detail.team }}", "tasks": [{"id": "a", "command": ["true"]}]}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "team", "{}", r.body);
    h.shutdown().await;
}

/// An EKS cluster in moto, and what EKS reports as its endpoint.
async fn eks_cluster(h: &Harness, name: &str) -> String {
    let shared = batchplane::aws::sdk_config(&batchplane::aws::Endpoints {
        eks: Some(h.emulators.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let eks = aws_sdk_eks::Client::from_conf(
        aws_sdk_eks::config::Builder::from(&shared)
            .endpoint_url(&h.emulators.sqs_url)
            .build(),
    );
    let vpc = aws_sdk_eks::types::VpcConfigRequest::builder()
        .subnet_ids("subnet-1")
        .build();
    let out = eks
        .create_cluster()
        .name(name)
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(vpc)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating EKS cluster {name} in moto: {e:?}"));
    out.cluster()
        .and_then(|c| c.endpoint())
        .unwrap_or_else(|| panic!("moto gave cluster {name} no endpoint"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_registration_must_name_the_endpoint_eks_reports() {
    let h = Harness::start(|o| o.workers = 0).await;
    let name = format!("prod-{}", &h.stack.opts.table[11..]);
    let endpoint = eks_cluster(&h, &name).await;
    let register = |endpoint: &str, cluster: &str| {
        json!({"kind": "eks", "region": "us-east-1", "eks_cluster_name": cluster, "endpoint": endpoint,
            "capacity": {"cpu": 64, "memory_mib": 262144}})
        .to_string()
    };
    let r = h
        .put_json(
            "/v1/clusters/prod",
            &register("https://attacker.example.com", &name),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["field"], "endpoint",
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&endpoint),
        "{}",
        r.body
    );
    let r = h
        .put_json("/v1/clusters/prod", &register(&endpoint, "no-such-cluster"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["field"], "eks_cluster_name",
        "{}",
        r.body
    );
    let clusters = h.get("/v1/clusters").await;
    assert!(
        !clusters.body.to_string().contains("attacker"),
        "nothing refused was stored: {}",
        clusters.body
    );
    let r = h
        .put_json("/v1/clusters/prod", &register(&endpoint, &name))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["endpoint"], endpoint.as_str(), "{}", r.body);
    // As a member, not an admin: refused before EKS is asked.
    h.grant(BOB, Some("finance"), "member").await;
    let r = h
        .request_as(
            Some(BOB),
            Method::PUT,
            "/v1/clusters/prod",
            Some(&register(&endpoint, &name)),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_tasks_run_only_on_its_own_workers() {
    use batchplane_local::PoolWorkers;
    let shape =
        batchplane::domain::tiers::Tier::parse_shape("1:256").unwrap_or_else(|e| panic!("{e}"));
    // The stack's one worker is research's, for 1 vCPU, 256 MiB tasks.
    let mut h = Harness::start(|o| {
        o.workers = 0;
        o.team = "research".into();
        o.pools = vec![PoolWorkers {
            shape,
            slots: 1,
            team: None,
        }];
    })
    .await;
    let spec = |team: &str| {
        let task = |id: &str| {
            format!("  - {{id: {id}, command: ['true'], tiers: [{{cpu: 1, memory_mib: 256}}]}}\n")
        };
        format!(
            "name: {team}-job\nteam: {team}\ntasks:\n{}{}",
            task("a"),
            task("b")
        )
    };
    let finance = h.submit(&spec("finance")).await;
    let research = h.submit(&spec("research")).await;
    let done = h.wait(&research, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    // Finance's tasks wait: no worker of finance's exists, and research's will not take them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = h.job(&finance).await;
    assert_eq!(waiting["task_counts"]["SUCCEEDED"], 0, "{waiting}");
    let why = h.explain(&finance, "b").await;
    assert!(
        why.to_string().contains("default--t-finance--1cpu-256mib"),
        "{why}"
    );

    // Finance gets a quota and workers of its own: its tasks run there, and only there.
    let r = h
        .put_json(
            "/v1/teams/finance",
            r#"{"quota": {"cpu": 8, "memory_mib": 8192}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    h.stack
        .spawn_pool_worker(PoolWorkers {
            shape,
            slots: 1,
            team: Some("finance".into()),
        })
        .await
        .unwrap_or_else(|e| panic!("finance's worker: {e:#}"));
    let done = h.wait(&finance, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    for (job, team) in [(&finance, "finance"), (&research, "research")] {
        for id in ["a", "b"] {
            let t = h.task(job, id).await;
            let worker = batchplane_testing::attempts(&t)[0]["worker_id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(
                worker.contains(&format!("-t-{team}")),
                "{team}'s task {id} ran on {worker}"
            );
        }
    }
    h.shutdown().await;
}
