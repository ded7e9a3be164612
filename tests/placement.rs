//! Placement against DynamoDB Local: quotas and capacities hold under hundreds of
//! concurrent grants, usage equals the sum of live reservations, releases happen once,
//! disabled clusters get nothing new, the sweeper reclaims lapsed leases.

use batchplane::domain::placement::{PlacementRequest, Resources};
use batchplane::store::placement::{ClusterRegistration, PlacementOutcome};
use batchplane::store::Store;
use batchplane_testing::{ManualClock, Must, TestEmulators};
use std::collections::BTreeMap;
use std::time::Duration;

async fn store() -> Store {
    batchplane_testing::test_store(&TestEmulators::get(), "placement").await
}

fn res(cpu: u64, mem: u64, gpus: &[(&str, u64)]) -> Resources {
    Resources {
        cpu_milli: cpu * 1000,
        memory_mib: mem,
        gpus: gpus.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
    }
}

async fn cluster(store: &Store, name: &str, capacity: Resources) {
    store
        .register_cluster(
            name,
            &ClusterRegistration {
                kind: "local".into(),
                region: "us-east-1".into(),
                capacity,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("registering cluster {name}: {e}"));
}

fn request(id: &str, team: &str, workers: u32, cpu: f64, mem: u64) -> PlacementRequest {
    PlacementRequest {
        request_id: id.into(),
        team: team.into(),
        pool: "default".into(),
        cpu,
        memory_mib: mem,
        gpu: 0,
        gpu_type: None,
        workers,
        allow_partial: false,
    }
}

const LEASE: Duration = Duration::from_secs(300);

/// Usage recorded on teams and clusters equals the sum of live slots in reservations.
async fn assert_usage_matches_reservations(store: &Store) {
    let clusters = store.clusters().await.expect("reading clusters");
    let mut by_team: BTreeMap<String, Resources> = BTreeMap::new();
    for c in &clusters {
        let mut held = Resources::default();
        for r in store
            .reservations(&c.name)
            .await
            .expect("reading reservations")
        {
            let amount = r.per_worker.times(r.slots.len() as u64);
            held.add(&amount);
            by_team.entry(r.team.clone()).or_default().add(&amount);
        }
        for r in c.capacity.resources() {
            assert_eq!(
                c.used.get(&r),
                held.get(&r),
                "cluster {} records {:?} used of {r:?}, its reservations hold {}",
                c.name,
                c.used.get(&r),
                held.get(&r)
            );
            assert!(
                c.used.get(&r) <= c.capacity.get(&r),
                "cluster {} over capacity on {r:?}",
                c.name
            );
        }
    }
    for t in store.teams().await.expect("reading teams") {
        let held = by_team.remove(&t.quota.team).unwrap_or_default();
        for r in t.quota.limit.resources() {
            assert_eq!(
                t.quota.used.get(&r),
                held.get(&r),
                "team {} records {} of {r:?}, its reservations hold {}",
                t.quota.team,
                t.quota.used.get(&r),
                held.get(&r)
            );
            assert!(
                t.quota.used.get(&r) <= t.quota.limit.get(&r),
                "team {} over quota on {r:?}",
                t.quota.team
            );
        }
    }
}

#[tokio::test]
async fn concurrent_placements_never_exceed_quota_or_capacity() {
    let store = store().await;
    cluster(&store, "east", res(120, 480 * 1024, &[])).await;
    cluster(&store, "west", res(80, 320 * 1024, &[])).await;
    // Ten teams whose quotas add up to more than the clusters hold (250 > 200 vCPU), so
    // both the team and the cluster conditions bind.
    let teams: Vec<String> = (0..10).map(|i| format!("team{i}")).collect();
    for (i, t) in teams.iter().enumerate() {
        store
            .set_team_quota(t, &res(15 + 2 * i as u64, 1024 * 1024, &[]))
            .await
            .expect("setting a quota");
    }

    // 200 requests at once: 1 to 3 workers of 1 or 2 vCPU each (600 vCPU asked of 200),
    // half allowing partial grants. (bench-placement runs thousands.)
    let calls = (0..200).map(|i| {
        let store = store.clone();
        let team = teams[i % teams.len()].clone();
        async move {
            let mut r = request(
                &format!("req-{i}"),
                &team,
                1 + (i % 3) as u32,
                1.0 + (i % 2) as f64,
                1024,
            );
            r.allow_partial = i % 2 == 0;
            let out = store.place(&r, LEASE).await;
            (r, out)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut granted = 0u32;
    let mut refused = 0u32;
    let mut grants = Vec::new();
    for (r, out) in results {
        match out.unwrap_or_else(|e| panic!("request {} failed: {e}", r.request_id)) {
            o @ PlacementOutcome::Granted { .. } => {
                let n = o.granted_workers();
                assert!(
                    n >= 1 && n <= r.workers,
                    "{} got {n} of {}",
                    r.request_id,
                    r.workers
                );
                if !r.allow_partial {
                    assert_eq!(n, r.workers, "{} is all or nothing", r.request_id);
                }
                granted += n;
                grants.push(o);
            }
            PlacementOutcome::Refused { reason, .. } => {
                assert!(
                    reason.starts_with("team quota exhausted")
                        || reason.starts_with("no enabled cluster has capacity"),
                    "{reason}"
                );
                refused += 1;
            }
        }
    }
    assert!(granted > 50, "only {granted} workers granted");
    assert!(
        refused > 0,
        "nothing was refused: the test is not at its limits"
    );
    assert_usage_matches_reservations(&store).await;

    // Releasing every slot, twice over and concurrently, gives everything back once.
    let releases = grants.iter().flat_map(|g| match g {
        PlacementOutcome::Granted { placements, .. } => placements.clone(),
        PlacementOutcome::Refused { .. } => vec![],
    });
    let calls = releases.flat_map(|p| {
        p.slots
            .iter()
            .flat_map(|s| {
                [
                    (p.reservation_id.clone(), *s),
                    (p.reservation_id.clone(), *s),
                ]
            })
            .collect::<Vec<_>>()
    });
    let released: u32 = futures::future::join_all(calls.map(|(id, slot)| {
        let store = store.clone();
        async move {
            store
                .release_slots(&id, Some(&[slot]), None)
                .await
                .unwrap_or_else(|e| panic!("releasing {id}/{slot}: {e}"))
        }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(released, granted, "each granted slot released exactly once");
    for c in store.clusters().await.expect("reading clusters") {
        for r in c.used.resources() {
            assert_eq!(
                c.used.get(&r),
                0,
                "cluster {} still holds {:?}",
                c.name,
                c.used
            );
        }
    }
    for t in store.teams().await.expect("reading teams") {
        assert_eq!(
            t.quota.used.cpu_milli, 0,
            "team {} still holds cpu",
            t.quota.team
        );
        assert_eq!(
            t.quota.used.memory_mib, 0,
            "team {} still holds memory",
            t.quota.team
        );
        assert!(
            t.quota.workers.is_empty(),
            "team {} still has workers {:?}",
            t.quota.team,
            t.quota.workers
        );
    }
}

#[tokio::test]
async fn a_disabled_cluster_gets_no_new_placements_and_its_workers_drain() {
    let store = store().await;
    cluster(&store, "a", res(64, 256 * 1024, &[])).await;
    cluster(&store, "b", res(64, 256 * 1024, &[])).await;
    store
        .set_team_quota("research", &res(100, 1024 * 1024, &[]))
        .await
        .expect("setting a quota");
    let first = store
        .place(&request("r1", "research", 4, 1.0, 1024), LEASE)
        .await
        .expect("placing");
    let PlacementOutcome::Granted { placements, .. } = &first else {
        panic!("expected a grant, got {first:?}")
    };
    let clusters: Vec<&str> = placements.iter().map(|p| p.cluster.as_str()).collect();
    assert_eq!(clusters, ["a", "b"], "spread over both clusters");

    store
        .set_cluster_enabled("a", false)
        .await
        .expect("disabling a");
    // The very next call places everything on b.
    let next = store
        .place(&request("r2", "research", 6, 1.0, 1024), LEASE)
        .await
        .expect("placing");
    let PlacementOutcome::Granted { placements, .. } = &next else {
        panic!("expected a grant, got {next:?}")
    };
    assert_eq!(placements.len(), 1);
    assert_eq!(
        (placements[0].cluster.as_str(), placements[0].count),
        ("b", 6)
    );
    // Workers already on a keep their reservation until they release it.
    let a = store
        .clusters()
        .await
        .must("store.clusters")
        .into_iter()
        .find(|c| c.name == "a")
        .must("the cluster named a");
    assert!(!a.enabled);
    assert_eq!(a.used.cpu_milli, 2000);
    assert!(store
        .set_cluster_enabled("nowhere", false)
        .await
        .is_err_and(|e| e.is_condition_failed()));

    // Every cluster disabled: the refusal says so.
    store
        .set_cluster_enabled("b", false)
        .await
        .expect("disabling b");
    match store
        .place(&request("r3", "research", 1, 1.0, 1024), LEASE)
        .await
        .must("store.place")
    {
        PlacementOutcome::Refused { reason, .. } => {
            assert!(
                reason.starts_with("no enabled cluster has capacity"),
                "{reason}"
            )
        }
        o => panic!("expected a refusal, got {o:?}"),
    }
    assert_usage_matches_reservations(&store).await;
}

#[tokio::test]
async fn a_team_at_quota_is_refused_with_the_reason_recorded_for_its_pool() {
    let store = store().await;
    cluster(&store, "a", res(64, 256 * 1024, &[("a100", 8)])).await;
    store
        .set_team_quota("vision", &res(4, 64 * 1024, &[("a100", 2)]))
        .await
        .expect("setting a quota");
    let mut r = request("g1", "vision", 2, 1.0, 4096);
    r.gpu = 1;
    r.gpu_type = Some("a100".into());
    assert_eq!(
        store
            .place(&r, LEASE)
            .await
            .must("store.place")
            .granted_workers(),
        2
    );
    r.request_id = "g2".into();
    r.workers = 1;
    let out = store.place(&r, LEASE).await.must("store.place");
    let PlacementOutcome::Refused { code, reason, .. } = out else {
        panic!("expected a refusal, got {out:?}")
    };
    assert_eq!(code, "TeamQuotaExhausted");
    assert!(
        reason.starts_with("team quota exhausted: gpu a100 2/2"),
        "{reason}"
    );
    let team = store
        .team("vision")
        .await
        .must("store.team")
        .expect("the team");
    assert_eq!(team.refusals["default"].refusal.reason, reason);

    // Asking again with a granted request's id returns that grant, not a refusal.
    r.request_id = "g1".into();
    r.workers = 2;
    assert_eq!(
        store
            .place(&r, LEASE)
            .await
            .must("store.place")
            .granted_workers(),
        2
    );

    // A team nobody gave a quota is refused by name.
    let out = store
        .place(&request("x", "nobody", 1, 1.0, 512), LEASE)
        .await
        .must("store.place");
    assert!(
        matches!(&out, PlacementOutcome::Refused { code, .. } if code == "NoQuota"),
        "{out:?}"
    );

    // Raising the quota lets the next request through and clears the pool's refusal.
    store
        .set_team_quota("vision", &res(4, 64 * 1024, &[("a100", 3)]))
        .await
        .must("store.set_team_quota");
    r.request_id = "g3".into();
    r.workers = 1;
    assert_eq!(
        store
            .place(&r, LEASE)
            .await
            .must("store.place")
            .granted_workers(),
        1
    );
    assert!(store
        .team("vision")
        .await
        .must("store.team")
        .must("team record")
        .refusals
        .is_empty());
    assert_usage_matches_reservations(&store).await;
}

#[tokio::test]
async fn the_sweeper_reclaims_slots_whose_lease_lapsed_and_renewals_keep_them() {
    // Leases lapse by the store's clock, which this test moves.
    let clock = ManualClock::default();
    let store = store().await.with_clock(clock.clock());
    cluster(&store, "a", res(64, 256 * 1024, &[])).await;
    store
        .set_team_quota("research", &res(16, 64 * 1024, &[]))
        .await
        .must("store.set_team_quota");
    let out = store
        .place(
            &request("s1", "research", 3, 2.0, 1024),
            Duration::from_secs(60),
        )
        .await
        .must("store.place");
    let PlacementOutcome::Granted { placements, .. } = out else {
        panic!("expected a grant")
    };
    let id = &placements[0].reservation_id;
    // Slot 0's worker keeps renewing; 1 and 2 vanished.
    let far = store.now() + 600_000;
    assert!(store.renew_slot(id, 0, far).await.must("store.renew_slot"));
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        store
            .sweep_reservations(store.now())
            .await
            .must("store.sweep_reservations"),
        2
    );
    // A second sweep finds nothing more; the vanished workers' renewals now fail.
    assert_eq!(
        store
            .sweep_reservations(store.now())
            .await
            .must("store.sweep_reservations"),
        0
    );
    assert!(!store.renew_slot(id, 1, far).await.must("store.renew_slot"));
    let team = store
        .team("research")
        .await
        .must("store.team")
        .must("team record");
    assert_eq!(team.quota.used.cpu_milli, 2000);
    assert_eq!(team.quota.workers.get("a"), Some(&1));
    assert_usage_matches_reservations(&store).await;
    // The last worker releases; the emptied reservation is dropped by the next sweep.
    assert_eq!(
        store
            .release_slots(id, Some(&[0]), None)
            .await
            .must("store.release_slots"),
        1
    );
    assert_eq!(
        store
            .release_slots(id, Some(&[0]), None)
            .await
            .must("store.release_slots"),
        0
    );
    store
        .sweep_reservations(store.now())
        .await
        .must("store.sweep_reservations");
    assert!(store
        .reservation(id)
        .await
        .must("store.reservation")
        .is_none());
    assert_usage_matches_reservations(&store).await;
}
