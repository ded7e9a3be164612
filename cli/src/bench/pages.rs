//! `batchplane bench-pages`: a DAG too big for one request, checked by the CLI and sent
//! in pages through the local stack's API exactly as `batchplane submit` sends it,
//! against the emulator's own floor: the same items (each page's task items and its
//! edge items) written with plain BatchWriteItem at the same concurrency (pages at
//! once × BatchWriteItems a page), side by side on the same DynamoDB Local. The ratio
//! is what the API's checks, reads, transactions and HTTP cost on top of the writes.

use crate::client::Api;
use crate::commands::pages::{paginate, submit_in_pages, PAGES_AT_ONCE, PAGE_TASKS};
use anyhow::Context;
use batchplane::domain::spec::{parse_submission, Submission};
use batchplane::domain::{ids::shard_count_for, plan_addition, TaskSpec};
use batchplane_local::emulators::{free_port, Emulators};
use batchplane_local::{LocalStack, StackOptions};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct PagesBenchArgs {
    /// Tasks in the DAG.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    /// Width of each level: task `i` of a level depends on tasks `i` and `i + 1` of the
    /// level before (fan-out and fan-in of two).
    #[arg(long, default_value_t = 10_000)]
    width: usize,
    /// Tasks a page.
    #[arg(long, default_value_t = PAGE_TASKS)]
    page_tasks: usize,
    #[arg(long, default_value = "bench-results/pages.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    tasks: usize,
    pages: usize,
    /// Items written for the tasks: task items plus edge items (edges to earlier pages).
    items: usize,
    spec_bytes: usize,
    /// The CLI's whole-file check (parse and validate, as the API does).
    check_s: f64,
    /// Open, every page, commit: through the API, as `submit` sends them.
    paged_s: f64,
    paged_tasks_per_s: f64,
    /// The same items with plain BatchWriteItem at the same concurrency.
    floor_s: f64,
    floor_tasks_per_s: f64,
    /// floor / paged: 1.0 is as fast as the writes alone.
    ratio: f64,
}

/// Levels of `width`; task `i` depends on `i` and `i + 1` of the level before.
fn dag(tasks: usize, width: usize) -> serde_json::Value {
    let width = width.max(2);
    let list: Vec<serde_json::Value> = (0..tasks)
        .map(|k| {
            let (level, i) = (k / width, k % width);
            let deps: Vec<String> = if level == 0 {
                Vec::new()
            } else {
                vec![
                    format!("l{}-{i}", level - 1),
                    format!("l{}-{}", level - 1, (i + 1) % width),
                ]
            };
            json!({"id": format!("l{level}-{i}"), "command": ["true"], "cpu": 0.25, "memory_mib": 64, "depends_on": deps})
        })
        .collect();
    json!({"name": "bench-pages", "tasks": list})
}

/// The floor: every page's items, written with BatchWriteItem, pages at once as the
/// CLI sends them.
async fn floor(
    store: &batchplane::store::Store,
    tasks: &[TaskSpec],
    page_tasks: usize,
) -> anyhow::Result<(f64, usize)> {
    let pages = paginate(tasks, page_tasks);
    let shards = shard_count_for(tasks.len());
    let started = Instant::now();
    let items: Vec<usize> = futures::stream::iter(&pages)
        .map(|p| async move {
            let page: Vec<TaskSpec> = p.tasks.iter().map(|&i| tasks[i].clone()).collect();
            let (plan, edges) = plan_addition(&page);
            let items = store.page_items(
                "floor",
                shards,
                ("default", "default"),
                3,
                &p.id,
                &plan,
                &edges,
            );
            let n = items.len();
            store.put_items(items).await.map(|()| n)
        })
        .buffer_unordered(PAGES_AT_ONCE)
        .try_collect()
        .await?;
    Ok((started.elapsed().as_secs_f64(), items.iter().sum()))
}

pub async fn run(args: &PagesBenchArgs) -> anyhow::Result<u8> {
    let text = dag(args.tasks, args.width).to_string();
    eprintln!(
        "== a {}-task DAG ({} MB of JSON) in pages of {}",
        args.tasks,
        text.len() / 1_000_000,
        args.page_tasks
    );
    let started = Instant::now();
    let spec = match parse_submission(&text).map_err(|e| anyhow::anyhow!(e.message))? {
        Submission::Dag(spec) => spec,
        Submission::Array(_) => anyhow::bail!("the generated spec is not a DAG"),
    };
    let check_s = started.elapsed().as_secs_f64();
    eprintln!("   checked in {check_s:.1} s");

    let state = std::env::temp_dir().join(format!("batchplane-bench-pages-{}", std::process::id()));
    let mut emulators = Emulators::start(&state.join("emulators"), free_port()?, free_port()?)?;
    let outcome = async {
        let mut opts = StackOptions::new(
            &emulators.dynamodb_url,
            &emulators.sqs_url,
            &state.join("stack"),
        )?;
        opts.workers = 0;
        opts.autoscale_every = None;
        let stack = LocalStack::start(opts).await?;
        let store = stack.service.store.clone();
        let (floor_s, items) = floor(&store, &spec.tasks, args.page_tasks).await?;
        eprintln!("   floor: {items} items in {floor_s:.1} s");
        let api = Api::new(&stack.api_url)?;
        let started = Instant::now();
        let job = submit_in_pages(&api, &spec, None, args.page_tasks)
            .await
            .context("the paged submission")?;
        let paged_s = started.elapsed().as_secs_f64();
        eprintln!("   paged: job {job} in {paged_s:.1} s");
        stack.shutdown().await?;
        anyhow::Ok(Report {
            tasks: args.tasks,
            pages: args.tasks.div_ceil(args.page_tasks.max(1)),
            items,
            spec_bytes: text.len(),
            check_s,
            paged_s,
            paged_tasks_per_s: args.tasks as f64 / paged_s,
            floor_s,
            floor_tasks_per_s: args.tasks as f64 / floor_s,
            ratio: floor_s / paged_s,
        })
    }
    .await;
    emulators.stop();
    let report = outcome?;
    println!("| tasks | pages | items written | spec | CLI check | paged submission | BatchWriteItem floor | floor / paged |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} MB | {:.1} s | {:.1} s ({:.0} tasks/s) | {:.1} s ({:.0} tasks/s) | {:.2} |",
        report.tasks,
        report.pages,
        report.items,
        report.spec_bytes as f64 / 1e6,
        report.check_s,
        report.paged_s,
        report.paged_tasks_per_s,
        report.floor_s,
        report.floor_tasks_per_s,
        report.ratio
    );
    super::write_results(
        &args.out,
        json!({"pages_at_once": PAGES_AT_ONCE, "result": report}),
    )?;
    Ok(0)
}
