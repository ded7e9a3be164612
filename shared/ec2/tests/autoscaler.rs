//! The autoscaler's tick end to end: a local stack (DynamoDB Local, moto's SQS, real
//! taskhost processes placed in a local cluster) with moto's EC2 for nodes. A backlog
//! gets workers (reuse targeting, through placement) and nodes for them (an instant
//! fleet per launch config, tagged for cost accounting); once the work is done and the
//! workers have exited, the idle nodes are cordoned on one tick and terminated on the
//! next, within the per-tick removal limit; every tick leaves a decision record.

use batchplane::aws::{sdk_config, Endpoints};
use batchplane::scaling::fleet::{Ec2Api, TAG_CLUSTER, TAG_POOL, TAG_TEAM};
use batchplane::scaling::Decision;
use batchplane::store::now_ms;
use batchplane_ec2::Ec2;
use batchplane_local::LocalCluster;
use batchplane_testing::{wait_for, Harness, Must};
use std::time::Duration;

async fn moto_ec2(sqs_url: &str) -> Ec2 {
    let shared = sdk_config(&Endpoints {
        dynamodb: None,
        sqs: Some(sqs_url.to_string()),
        ..Default::default()
    })
    .await;
    Ec2 {
        client: aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&shared)
                .endpoint_url(sqs_url)
                .build(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_gets_workers_and_nodes_and_idle_nodes_are_cordoned_then_terminated() {
    let cluster = format!("as-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let h = Harness::start(|o| {
        o.workers = 0;
        o.idle_timeout_seconds = 2;
        o.clusters = vec![format!("{cluster}:64:65536")
            .parse::<LocalCluster>()
            .unwrap()];
    })
    .await;
    let ec2 = moto_ec2(&h.emulators.sqs_url).await;
    let template = format!("bp-{cluster}");
    ec2.ensure_launch_template(
        &template,
        "ami-12c6146b",
        "#!/bin/sh\n/etc/eks/bootstrap.sh",
    )
    .await
    .must("the launch template");
    let settings = serde_json::json!({
        "teams": {"default": {"half_life_seconds": 0}},
        "default_worker": {"cpu": 1, "memory_mib": 1024},
        "startup_seconds": 30,
        "default_task_seconds": 5,
        "nodes": {
            "launch_templates": {&cluster: template},
            "zones": ["us-east-1a"],
            "instance_types": ["m5.large"],
            "purchase": ["on-demand"],
            "idle_node_seconds": 0,
            "max_nodes_removed_per_tick": 4
        }
    });
    let r = h
        .put_json("/v1/autoscaler/settings", &settings.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = h
        .put_json("/v1/autoscaler/settings", r#"{"nodes": {"zones": []}}"#)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.to_string().contains("nodes.zones"), "{}", bad.body);
    assert_eq!(
        bad.body["error"]["details"]["field"], "nodes.zones",
        "{}",
        bad.body
    );

    let tasks: Vec<String> = (0..6)
        .map(|i| {
            format!(r#"{{"id": "t{i}", "command": ["sleep", "1"], "cpu": 1, "memory_mib": 256}}"#)
        })
        .collect();
    let job = h
        .submit(&format!(
            r#"{{"name": "scaled", "tasks": [{}]}}"#,
            tasks.join(",")
        ))
        .await;
    let queues = &h.stack.service.queues;
    let url = queues
        .url("default--t-default")
        .await
        .must("the default team's pool of the default queue");
    wait_for("6 tasks queued", Duration::from_secs(30), || async {
        let depth = queues.depth(&url).await.map(|(v, _)| v).unwrap_or(0);
        (depth >= 6)
            .then_some(())
            .ok_or_else(|| format!("{depth} queued"))
    })
    .await;

    // Tick 1: six 1-slot workers (half-life 0: every unreached task gets one), six
    // m5.large nodes for them.
    let autoscaler = h.stack.autoscaler(Some(&ec2));
    let first = autoscaler
        .tick(now_ms())
        .await
        .must("tick 1")
        .must("tick 1 holds the lease");
    let pool = first
        .pools
        .iter()
        .find(|p| p.pool == "default--t-default")
        .unwrap_or_else(|| panic!("no decision for the default pool: {first:?}"));
    assert_eq!((pool.queued, pool.live_workers), (6, 0), "{pool:?}");
    assert_eq!(
        (pool.wanted, pool.granted, pool.launched),
        (6, 6, 6),
        "{pool:?}"
    );
    let nodes = first.nodes.clone().must("a node decision");
    let launched: Vec<String> = nodes
        .fleets
        .iter()
        .flat_map(|f| f.instance_ids.clone())
        .collect();
    assert_eq!(launched.len(), 6, "{nodes:?}");
    assert!(nodes
        .fleets
        .iter()
        .all(|f| f.launch_config == "m5.large:us-east-1a:on-demand" && f.cluster == cluster));
    let deployment = h.stack.service.store.table().to_string();
    let managed = ec2.nodes(&deployment).await.must("DescribeInstances");
    for id in &launched {
        let n = managed
            .iter()
            .find(|n| &n.instance_id == id)
            .unwrap_or_else(|| panic!("{id} is not a managed node"));
        assert_eq!(
            (n.tag(TAG_TEAM), n.tag(TAG_POOL), n.tag(TAG_CLUSTER)),
            ("default", "default--t-default", cluster.as_str())
        );
    }

    // The autoscaled workers run the job, then exit when idle.
    let done = h.wait(&job, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let pids = h.stack.worker_pids();
    assert_eq!(pids.len(), 6, "the six autoscaled workers: {pids:?}");
    wait_for("idle workers exit", Duration::from_secs(60), || async {
        let running: Vec<&u32> = pids
            .iter()
            .filter(|p| !h.stack.backend.exited(**p))
            .collect();
        running
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("still running: {running:?}"))
    })
    .await;

    // Tick 2: no backlog, no workers: no new workers, and the nodes are cordoned.
    let second = autoscaler
        .tick(now_ms())
        .await
        .must("tick 2")
        .must("the lease");
    assert!(
        second.pools.iter().all(|p| p.asked == 0),
        "{:?}",
        second.pools
    );
    let n2 = second.nodes.clone().must("a node decision");
    let mut cordoned = n2.cordoned.clone();
    cordoned.sort();
    let mut expected = launched.clone();
    expected.sort();
    assert_eq!(cordoned, expected, "{n2:?}");
    assert!(n2.terminated.is_empty(), "{n2:?}");

    // Tick 3: four terminated (the per-tick limit binds and says so), tick 4 the rest.
    let third = autoscaler
        .tick(now_ms())
        .await
        .must("tick 3")
        .must("the lease");
    let n3 = third.nodes.clone().must("a node decision");
    assert_eq!(n3.terminated.len(), 4, "{n3:?}");
    assert!(
        n3.binding_limits
            .contains(&"global max_nodes_removed_per_tick 4".to_string()),
        "{n3:?}"
    );
    let fourth = autoscaler
        .tick(now_ms())
        .await
        .must("tick 4")
        .must("the lease");
    let n4 = fourth.nodes.clone().must("a node decision");
    assert_eq!(n4.terminated.len(), 2, "{n4:?}");
    let left = ec2.nodes(&deployment).await.must("DescribeInstances");
    for id in &launched {
        assert!(
            !left.iter().any(|n| &n.instance_id == id),
            "{id} is still running"
        );
    }

    // One tick at a time: of two at once, one skips.
    let (a, b) = tokio::join!(autoscaler.tick(now_ms()), autoscaler.tick(now_ms()));
    let ran = [a.must("tick"), b.must("tick")]
        .iter()
        .filter(|d| d.is_some())
        .count();
    assert_eq!(ran, 1, "exactly one of two concurrent ticks runs");

    // Every tick is in the history, newest first, through the API.
    let history = h.get("/v1/autoscaler/history?limit=10").await;
    assert_eq!(history.status, 200, "{}", history.body);
    let decisions: Vec<Decision> =
        serde_json::from_value(history.body["decisions"].clone()).must("decisions");
    let ids: Vec<&str> = decisions.iter().map(|d| d.tick_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[4], first.tick_id);
    assert_eq!(ids[3], second.tick_id);
    assert!(decisions.windows(2).all(|w| w[0].at >= w[1].at));
    h.shutdown().await;
}
