//! The EC2 adapter against moto's EC2: a launch template, instant fleets with tags, spot
//! prices, termination. moto always fulfils a fleet, so short fleets and capacity errors
//! are injected through the `Ec2Api` seam: the config is marked capacity-limited, skipped
//! while the mark holds (the next config gets the nodes in the same tick), and used again
//! once it expires.

use aws_sdk_ec2::types::Filter;
use batchplane::aws::{sdk_config, Clients, Endpoints};
use batchplane::domain::launch::{Fleet, LaunchConfig, Limits, Purchase, WorkerShape};
use batchplane::store::Store;
use batchplane_ec2::{
    launch_nodes, Ec2, Ec2Api, Ec2Error, FleetOutcome, FleetRequest, LaunchContext, Node, SpotPrice,
};
use batchplane_testing::{ManualClock, Must, TestEmulators};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Real EC2 (moto) with a cap on what chosen configs give, and a log of what was asked.
struct ShortFleets {
    inner: Ec2,
    caps: Mutex<BTreeMap<String, u64>>,
    asked: Mutex<Vec<(String, u64)>>,
}

impl ShortFleets {
    fn caps(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.caps.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn asked(&self) -> std::sync::MutexGuard<'_, Vec<(String, u64)>> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ec2Api for ShortFleets {
    async fn create_fleet(&self, r: &FleetRequest) -> Result<FleetOutcome, Ec2Error> {
        let key = r.config.key();
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.clone(), r.nodes));
        let cap = self
            .caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        match cap {
            Some(0) => Err(Ec2Error::NoCapacity {
                operation: "CreateFleet",
                code: "InsufficientInstanceCapacity".into(),
                message: format!(
                    "no {} capacity in {}",
                    r.config.instance_type, r.config.zone
                ),
            }),
            Some(cap) if cap < r.nodes => {
                let mut short = r.clone();
                short.nodes = cap;
                let mut out = self.inner.create_fleet(&short).await?;
                out.errors.push((
                    "InsufficientInstanceCapacity".into(),
                    "fewer instances than asked".into(),
                ));
                Ok(out)
            }
            _ => self.inner.create_fleet(r).await,
        }
    }

    async fn spot_prices(&self, types: &[String]) -> Result<Vec<SpotPrice>, Ec2Error> {
        self.inner.spot_prices(types).await
    }

    async fn nodes(&self, deployment: &str) -> Result<Vec<Node>, Ec2Error> {
        self.inner.nodes(deployment).await
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), Ec2Error> {
        self.inner.terminate(ids).await
    }
}

fn config(purchase: Purchase, price: f64) -> LaunchConfig {
    LaunchConfig {
        instance_type: "m5.large".into(),
        zone: "us-east-1a".into(),
        purchase,
        cpu_milli: 2000,
        memory_mib: 8192,
        gpus: 0,
        price_per_hour: price,
        reserved: false,
        capacity_score: None,
    }
}

/// A store on its own table, reading the time from `clock`, and EC2 with short fleets.
async fn setup(clock: &ManualClock) -> (Store, ShortFleets, String) {
    let emu = TestEmulators::get();
    let endpoints = Endpoints {
        dynamodb: Some(emu.dynamodb_url.clone()),
        sqs: Some(emu.sqs_url.clone()),
        ..Default::default()
    };
    let clients = Clients::new(&endpoints).await;
    let store = Store::new(
        clients.dynamodb,
        format!("ec2-{}", uuid::Uuid::new_v4().simple()),
    )
    .with_clock(clock.clock());
    store.create_table().await.expect("creating the test table");
    let shared = sdk_config(&endpoints).await;
    let client = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&shared)
            .endpoint_url(&emu.sqs_url)
            .build(),
    );
    let ec2 = Ec2 { client };
    let template = format!("bp-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    for _ in 0..2 {
        ec2.ensure_launch_template(&template, "ami-12c6146b", "#!/bin/sh\necho node")
            .await
            .expect("the launch template (twice: the second finds it)");
    }
    let short = ShortFleets {
        inner: ec2,
        caps: Mutex::new(BTreeMap::new()),
        asked: Mutex::new(Vec::new()),
    };
    (store, short, template)
}

fn context<'a>(
    store: &'a Store,
    ec2: &'a ShortFleets,
    template: &'a str,
    mark_for: Duration,
) -> LaunchContext<'a, ShortFleets> {
    LaunchContext {
        store,
        ec2,
        launch_template: template,
        // Spot first: it is cheaper.
        ranked: vec![
            config(Purchase::Spot, 0.04),
            config(Purchase::OnDemand, 0.096),
        ],
        global: Fleet::default(),
        global_limits: Limits::default(),
        per_config: BTreeMap::new(),
        config_limits: BTreeMap::new(),
        mark_for,
        tags: BTreeMap::from([
            ("batchplane:team".to_string(), "vision".to_string()),
            (
                "batchplane:pool".to_string(),
                "default--1cpu-4096mib".to_string(),
            ),
        ]),
    }
}

const SHAPE: WorkerShape = WorkerShape {
    cpu_milli: 1000,
    memory_mib: 4096,
    gpus: 0,
};

#[tokio::test]
async fn a_short_config_is_marked_skipped_and_used_again_after_its_mark_expires() {
    // Capacity marks expire by the store's clock, which this test moves.
    let clock = ManualClock::default();
    let (store, ec2, template) = setup(&clock).await;
    let spot = "m5.large:us-east-1a:spot".to_string();
    let on_demand = "m5.large:us-east-1a:on-demand".to_string();

    // Spot has no capacity: marked, and on-demand gets the 2 nodes in the same tick.
    ec2.caps().insert(spot.clone(), 0);
    let mut ctx = context(&store, &ec2, &template, Duration::from_secs(2));
    let done = launch_nodes(&mut ctx, &SHAPE, 4).await.expect("a launch");
    assert_eq!(done.unplaced_workers, 0, "{done:?}");
    assert_eq!(done.marked.len(), 1, "{done:?}");
    assert!(
        done.marked[0].1.starts_with("InsufficientInstanceCapacity"),
        "{done:?}"
    );
    assert_eq!(done.fleets.len(), 1);
    assert_eq!(
        (done.fleets[0].0.as_str(), done.fleets[0].1.len()),
        (on_demand.as_str(), 2)
    );
    let marks = store
        .capacity_marks(store.now())
        .await
        .must("store.capacity_marks");
    let marked: Vec<&str> = marks.iter().map(|m| m.launch_config.as_str()).collect();
    assert_eq!(marked, [spot.as_str()]);

    // The instances exist in EC2 with the cost-accounting tags.
    let described = ec2
        .inner
        .client
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:batchplane:team")
                .values("vision")
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let tagged: Vec<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    for id in &done.fleets[0].1 {
        assert!(tagged.contains(id), "{id} not tagged: {tagged:?}");
    }

    // DescribeInstances finds them as managed nodes of their launch config and pool.
    let nodes = ec2
        .nodes(store.table())
        .await
        .expect("DescribeInstances of managed nodes");
    for id in &done.fleets[0].1 {
        let node = nodes
            .iter()
            .find(|n| &n.instance_id == id)
            .unwrap_or_else(|| panic!("{id} is not listed as a managed node: {nodes:?}"));
        assert_eq!(node.launch_config(), on_demand);
        assert_eq!(
            node.tag(batchplane::scaling::fleet::TAG_POOL),
            "default--1cpu-4096mib"
        );
        assert!(node.launched_at > 0, "{node:?}");
    }

    // While the mark holds, spot is not even asked.
    ec2.asked().clear();
    let mut ctx = context(&store, &ec2, &template, Duration::from_secs(2));
    let again = launch_nodes(&mut ctx, &SHAPE, 2).await.expect("a launch");
    assert_eq!(*ec2.asked(), [(on_demand.clone(), 1)]);
    assert!(again.marked.is_empty());

    // A fleet that comes back short is marked too, and the rest goes on.
    clock.advance(Duration::from_millis(2200));
    ec2.caps().insert(spot.clone(), 1);
    ec2.asked().clear();
    let mut ctx = context(&store, &ec2, &template, Duration::from_secs(2));
    let short = launch_nodes(&mut ctx, &SHAPE, 6).await.expect("a launch");
    assert_eq!(
        *ec2.asked(),
        [(spot.clone(), 3), (on_demand.clone(), 2)],
        "the expired mark let spot be asked first; its shortfall went to on-demand"
    );
    assert!(short.marked[0].1.contains("got 1 of 3"), "{short:?}");
    assert_eq!(short.unplaced_workers, 0);

    // Expired again, with capacity back: spot is used.
    clock.advance(Duration::from_millis(2200));
    ec2.caps().clear();
    ec2.asked().clear();
    let mut ctx = context(&store, &ec2, &template, Duration::from_secs(2));
    let back = launch_nodes(&mut ctx, &SHAPE, 2).await.expect("a launch");
    assert_eq!(*ec2.asked(), [(spot.clone(), 1)]);
    assert!(back.marked.is_empty());

    // Scale-down terminates what was launched.
    let all: Vec<String> = [done, again, short, back]
        .iter()
        .flat_map(|d| d.fleets.iter().flat_map(|(_, ids)| ids.clone()))
        .collect();
    ec2.terminate(&all).await.expect("TerminateInstances");
    let states = ec2
        .inner
        .client
        .describe_instances()
        .set_instance_ids(Some(all.clone()))
        .send()
        .await
        .expect("DescribeInstances");
    for i in states.reservations().iter().flat_map(|r| r.instances()) {
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string());
        assert!(
            matches!(state.as_deref(), Some("terminated" | "shutting-down")),
            "{:?} is {state:?}",
            i.instance_id()
        );
    }
}

#[tokio::test]
async fn limits_bind_and_spot_prices_come_from_ec2() {
    let (store, ec2, template) = setup(&ManualClock::default()).await;
    let mut ctx = context(&store, &ec2, &template, Duration::from_secs(180));
    ctx.global_limits.max_nodes_added_per_tick = Some(2);
    let done = launch_nodes(&mut ctx, &SHAPE, 10).await.expect("a launch");
    assert_eq!(done.unplaced_workers, 6, "{done:?}");
    assert!(
        done.binding_limits
            .iter()
            .any(|l| l == "global max_nodes_added_per_tick 2"),
        "{done:?}"
    );
    let prices = ec2
        .spot_prices(&["m5.large".to_string()])
        .await
        .expect("DescribeSpotPriceHistory");
    assert!(!prices.is_empty(), "moto answers spot prices");
    let mut configs = vec![
        config(Purchase::Spot, 1.0),
        config(Purchase::OnDemand, 0.096),
    ];
    batchplane_ec2::with_spot_prices(&mut configs, &prices);
    assert!(configs[0].price_per_hour < 1.0, "{configs:?}");
    assert_eq!(configs[1].price_per_hour, 0.096);
}
