//! `batchplane bench-placement`: placement throughput and latency under contention.
//!
//! N concurrent callers each place one worker at a time (and release it) for one of a
//! few teams across a few clusters, against DynamoDB Local, so every grant's transaction
//! races the others on the same team and cluster items. Beside each run, the floor: the
//! same callers each making the cheapest possible quota write (one conditional UpdateItem
//! on their team's counter). Reports grants/s, p50/p99 latency, DynamoDB requests and
//! transaction retries per grant, and the ratio to the floor. Prints a table and writes
//! JSON. Not a test: numbers are measured, not asserted.

use anyhow::Context;
use batchplane::aws::accounting;
use batchplane::aws::Clients;
use batchplane::domain::placement::{PlacementRequest, Resources};
use batchplane::store::placement::{ClusterRegistration, PlacementOutcome};
use batchplane::store::Store;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct PlacementBenchArgs {
    /// Concurrent callers, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    callers: Vec<usize>,
    /// Grants each caller makes (each followed by its release).
    #[arg(long, default_value_t = 10)]
    grants_per_caller: usize,
    /// Teams the callers are spread over (callers of one team contend on its item).
    #[arg(long, default_value_t = 4)]
    teams: usize,
    /// Clusters (every grant also updates one cluster's item).
    #[arg(long, default_value_t = 3)]
    clusters: usize,
    /// Use running emulators instead of starting them (`http://host:port`).
    #[arg(long)]
    dynamodb_url: Option<String>,
    #[arg(long, default_value = "bench-results/placement.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Run {
    callers: usize,
    teams: usize,
    clusters: usize,
    grants: usize,
    refusals: usize,
    grants_per_s: f64,
    grant_p50_ms: f64,
    grant_p99_ms: f64,
    release_p50_ms: f64,
    /// DynamoDB requests per grant (reads, the transaction, retries).
    dynamodb_requests_per_grant: f64,
    /// Transactions that lost a race and were tried again, per grant.
    retries_per_grant: f64,
    /// The floor: the same callers each making a conditional UpdateItem (take) and a
    /// plain one (give back) on their team's counter per cycle; cycles per second.
    floor_cycles_per_s: f64,
    /// grants/s ÷ floor cycles/s.
    ratio_to_floor: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn resources(cpu: u64, mem: u64) -> Resources {
    Resources {
        cpu_milli: cpu * 1000,
        memory_mib: mem,
        gpus: Default::default(),
    }
}

async fn fresh_store(clients: &Clients, tag: &str) -> anyhow::Result<Store> {
    let store = Store::new(
        clients.dynamodb.clone(),
        format!(
            "bench-placement-{tag}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    );
    store.create_table().await.context("creating the table")?;
    Ok(store)
}

async fn one_run(
    clients: &Clients,
    args: &PlacementBenchArgs,
    callers: usize,
) -> anyhow::Result<Run> {
    let store = fresh_store(clients, "grant").await?;
    for c in 0..args.clusters {
        store
            .register_cluster(
                &format!("c{c}"),
                &ClusterRegistration {
                    kind: "eks".into(),
                    region: "us-east-1".into(),
                    capacity: resources(1_000_000, 1 << 40),
                    ..Default::default()
                },
            )
            .await?;
    }
    for t in 0..args.teams {
        store
            .set_team_quota(&format!("team{t}"), &resources(1_000_000, 1 << 40))
            .await?;
    }
    let before = accounting::snapshot();
    let started = Instant::now();
    let work = (0..callers).map(|i| {
        let store = store.clone();
        let team = format!("team{}", i % args.teams);
        let n = args.grants_per_caller;
        async move {
            let mut grant_ms = Vec::new();
            let mut release_ms = Vec::new();
            let (mut refused, mut requests) = (0usize, 0u32);
            for k in 0..n {
                let request = PlacementRequest {
                    request_id: format!("c{i}-{k}"),
                    team: team.clone(),
                    pool: "default".into(),
                    cpu: 1.0,
                    memory_mib: 1024,
                    gpu: 0,
                    gpu_type: None,
                    workers: 1,
                    allow_partial: false,
                };
                let t0 = Instant::now();
                let out = store.place(&request, Duration::from_secs(300)).await?;
                grant_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                match out {
                    PlacementOutcome::Granted {
                        placements,
                        requests: r,
                        ..
                    } => {
                        requests += r;
                        let t1 = Instant::now();
                        for p in placements {
                            store
                                .release_slots(&p.reservation_id, Some(&p.slots), None)
                                .await?;
                        }
                        release_ms.push(t1.elapsed().as_secs_f64() * 1000.0);
                    }
                    PlacementOutcome::Refused { .. } => refused += 1,
                }
            }
            anyhow::Ok((grant_ms, release_ms, refused, requests))
        }
    });
    let results = futures::future::try_join_all(work).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = accounting::snapshot();
    let mut grant_ms: Vec<f64> = results.iter().flat_map(|r| r.0.clone()).collect();
    let mut release_ms: Vec<f64> = results.iter().flat_map(|r| r.1.clone()).collect();
    grant_ms.sort_by(f64::total_cmp);
    release_ms.sort_by(f64::total_cmp);
    let refusals: usize = results.iter().map(|r| r.2).sum();
    let grants = release_ms.len();
    let place_requests: u32 = results.iter().map(|r| r.3).sum();
    // Each attempt costs 2 reads and 1 transaction; what is above 3 per grant is retries.
    let attempts = f64::from(place_requests) / 3.0;
    let ddb_requests = after.requests_of("DynamoDB") - before.requests_of("DynamoDB");
    // The releases' requests are not the grant's: count them out (2 per release).
    let grant_requests = ddb_requests.saturating_sub(2 * grants as u64);

    let floor_per_s = floor(clients, args, callers).await?;
    let grants_per_s = grants as f64 / elapsed.max(1e-9);
    Ok(Run {
        callers,
        teams: args.teams,
        clusters: args.clusters,
        grants,
        refusals,
        grants_per_s,
        grant_p50_ms: percentile(&grant_ms, 0.5),
        grant_p99_ms: percentile(&grant_ms, 0.99),
        release_p50_ms: percentile(&release_ms, 0.5),
        dynamodb_requests_per_grant: grant_requests as f64 / grants.max(1) as f64,
        retries_per_grant: (attempts - grants as f64).max(0.0) / grants.max(1) as f64,
        floor_cycles_per_s: floor_per_s,
        ratio_to_floor: grants_per_s / floor_per_s.max(1e-9),
    })
}

/// The same callers each taking and giving back one unit of their team's counter per
/// cycle (a conditional UpdateItem and a plain one): the cheapest writes that could hold
/// a quota. Cycles per second of wall time.
async fn floor(
    clients: &Clients,
    args: &PlacementBenchArgs,
    callers: usize,
) -> anyhow::Result<f64> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let store = fresh_store(clients, "floor").await?;
    let table = store.table().to_string();
    let work = (0..callers).map(|i| {
        let ddb = clients.dynamodb.clone();
        let table = table.clone();
        let team = format!("team{}", i % args.teams);
        let n = args.grants_per_caller;
        async move {
            for _ in 0..n {
                ddb.update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(format!("FLOOR#{team}")))
                    .key("sk", AttributeValue::S("QUOTA".into()))
                    .update_expression("ADD used :one")
                    .condition_expression("attribute_not_exists(used) OR used < :limit")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .expression_attribute_values(":limit", AttributeValue::N("1000000000".into()))
                    .send()
                    .await
                    .context("the floor's UpdateItem")?;
                ddb.update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(format!("FLOOR#{team}")))
                    .key("sk", AttributeValue::S("QUOTA".into()))
                    .update_expression("ADD used :minus")
                    .expression_attribute_values(":minus", AttributeValue::N("-1".into()))
                    .send()
                    .await
                    .context("the floor's give-back UpdateItem")?;
            }
            anyhow::Ok(())
        }
    });
    let started = Instant::now();
    futures::future::try_join_all(work).await?;
    Ok((callers * args.grants_per_caller) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

pub async fn run(args: &PlacementBenchArgs) -> anyhow::Result<u8> {
    let (emulators, clients) =
        super::dynamodb_only(args.dynamodb_url.as_deref(), "placement").await?;
    let mut runs = Vec::new();
    for &n in &args.callers {
        eprintln!(
            "== {n} callers × {} grants, {} teams, {} clusters",
            args.grants_per_caller, args.teams, args.clusters
        );
        runs.push(one_run(&clients, args, n).await?);
    }
    if let Some(mut e) = emulators {
        e.stop();
    }
    println!(
        "{:>7}  {:>6}  {:>8}  {:>7}  {:>7}  {:>10}  {:>9}  {:>8}  {:>8}  {:>6}",
        "callers",
        "grants",
        "grants/s",
        "p50 ms",
        "p99 ms",
        "release ms",
        "ddb req/g",
        "retry/g",
        "floor/s",
        "ratio"
    );
    for r in &runs {
        println!(
            "{:>7}  {:>6}  {:>8.1}  {:>7.1}  {:>7.1}  {:>10.1}  {:>9.2}  {:>8.2}  {:>8.1}  {:>6.2}",
            r.callers,
            r.grants,
            r.grants_per_s,
            r.grant_p50_ms,
            r.grant_p99_ms,
            r.release_p50_ms,
            r.dynamodb_requests_per_grant,
            r.retries_per_grant,
            r.floor_cycles_per_s,
            r.ratio_to_floor
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_vec_pretty(&serde_json::json!({
            "benchmark": "placement",
            "backend": "DynamoDB Local",
            "runs": runs,
        }))?,
    )?;
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}
