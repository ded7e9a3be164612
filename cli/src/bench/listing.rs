//! `batchplane bench-listing`: ListJobs' questions against a queue with no history and
//! with a long one (10,000 finished jobs by default), side by side, against DynamoDB
//! Local. Each question is asked of its own index, and, as the baseline, the way it was
//! answered before those indexes: the queue's jobs read newest first and filtered until a
//! page is full. Reports p50 latency, DynamoDB read units and index entries looked at per
//! call. Prints a table and writes JSON. Not a test: numbers are measured, not asserted.

use anyhow::Context;
use batchplane::aws::accounting;
use batchplane::domain::batch::ArrayJob;
use batchplane::domain::listing::{aws_status, definition_name};
use batchplane::domain::{JobRecord, JobState};
use batchplane::store::{JobQuery, ListPosition, Store, StoreError};
use futures::{stream, TryStreamExt};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

const QUEUE: &str = "history";
const DEFINITION: &str = "arn:aws:batch:us-east-1:123456789012:job-definition/render";

#[derive(clap::Args, Debug)]
pub struct ListingBenchArgs {
    /// Finished jobs in the long history (the other run has none).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Calls per question, for the latency percentile.
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Use a running DynamoDB Local instead of starting one (`http://host:port`).
    #[arg(long)]
    dynamodb_url: Option<String>,
    #[arg(long, default_value = "bench-results/listing.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    question: String,
    history: usize,
    returned: usize,
    index_p50_ms: f64,
    index_read_units: f64,
    index_entries_examined: usize,
    /// The baseline: the queue's jobs read newest first and filtered.
    scan_p50_ms: f64,
    scan_read_units: f64,
}

/// The questions asked, with what each matches (for the baseline's filter).
fn questions() -> Vec<(&'static str, JobQuery)> {
    vec![
        ("jobStatus RUNNING", JobQuery::Status("RUNNING".into())),
        (
            "JOB_NAME nightly",
            JobQuery::Name {
                value: "nightly".into(),
                prefix: false,
            },
        ),
        (
            "JOB_NAME live*",
            JobQuery::Name {
                value: "live".into(),
                prefix: true,
            },
        ),
        (
            "JOB_DEFINITION render-live",
            JobQuery::Definition {
                name: "render-live".into(),
                prefix: false,
            },
        ),
        (
            "SHARE_IDENTIFIER gold + RUNNABLE",
            JobQuery::Share {
                share: "gold".into(),
                status: Some("RUNNABLE".into()),
            },
        ),
    ]
}

fn matches(q: &JobQuery, j: &JobRecord) -> bool {
    let array = j.array.as_ref();
    match q {
        JobQuery::All => true,
        JobQuery::Created { at, after } => (j.created_at > *at) == *after,
        JobQuery::Status(s) => aws_status(j) == s,
        JobQuery::Front => aws_status(j) == "RUNNABLE",
        JobQuery::Name { value, prefix } => {
            let name = j.name.to_lowercase();
            if *prefix {
                name.starts_with(value.as_str())
            } else {
                name == *value
            }
        }
        JobQuery::Definition { name, prefix } => array
            .and_then(|a| a.job_definition.as_deref())
            .and_then(definition_name)
            .is_some_and(|n| {
                if *prefix {
                    n.starts_with(name.as_str())
                } else {
                    n == name
                }
            }),
        JobQuery::DefinitionArn(arn) => {
            array.and_then(|a| a.job_definition.as_deref()) == Some(arn.as_str())
        }
        JobQuery::Share { share, status } => {
            array.and_then(|a| a.share_identifier.as_deref()) == Some(share.as_str())
                && status.as_deref().is_none_or(|s| aws_status(j) == s)
        }
    }
}

fn job(
    id: String,
    name: &str,
    definition: &str,
    share: &str,
    at: i64,
    state: JobState,
) -> JobRecord {
    let array: Option<ArrayJob> = serde_json::from_value(serde_json::json!({
        "template": {"command": ["true"], "cpu_milli": 1000, "memory_mib": 64},
        "window": 1,
        "job_definition": definition,
        "share_identifier": share,
    }))
    .ok();
    JobRecord {
        state,
        created_at: at,
        started_at: (state != JobState::Runnable).then_some(at),
        finished_at: state.is_terminal().then_some(at + 1),
        total_tasks: 1,
        array,
        ..JobRecord::new(&id, name, "bench", QUEUE)
    }
}

/// `history` finished jobs of a nightly pipeline, then a handful of live ones.
async fn fill(store: &Store, history: usize) -> anyhow::Result<()> {
    let base = 1_700_000_000_000i64;
    let old = (0..history).map(|i| {
        let state = if i.is_multiple_of(10) {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        Ok::<_, StoreError>(job(
            format!("old-{i}"),
            if i.is_multiple_of(2) {
                "nightly"
            } else {
                "hourly"
            },
            &format!("{DEFINITION}:{}", 1 + i % 3),
            if i.is_multiple_of(2) {
                "gold"
            } else {
                "silver"
            },
            base + i as i64,
            state,
        ))
    });
    stream::iter(old)
        .try_for_each_concurrent(16, |j| async move { store.put_job(&j).await })
        .await
        .context("writing the history")?;
    let now = base + history as i64 + 1000;
    for i in 0..5 {
        let state = if i < 2 {
            JobState::Runnable
        } else {
            JobState::Pending
        };
        let mut j = job(
            format!("live-{i}"),
            &format!("live-{i}"),
            &format!("{DEFINITION}-live:1"),
            "gold",
            now + i,
            state,
        );
        // A single job of a definition, RUNNABLE or RUNNING.
        if let Some(a) = j.array.as_mut() {
            a.array_size = None;
        }
        j.state = JobState::Runnable;
        if i >= 2 {
            j.started_at = Some(now + i);
        }
        store.put_job(&j).await.context("a live job")?;
    }
    Ok(())
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(0.0)
}

/// The baseline: up to 100 matches, reading the queue's jobs newest first.
async fn scan(store: &Store, q: &JobQuery) -> anyhow::Result<usize> {
    let mut found = 0;
    let mut start: Option<ListPosition> = None;
    loop {
        let page = store
            .list_jobs(QUEUE, &JobQuery::All, None, 100, start.as_ref())
            .await?;
        found += page.jobs.iter().filter(|j| matches(q, j)).count();
        match page.next {
            Some(n) if found < 100 => start = Some(n),
            _ => return Ok(found.min(100)),
        }
    }
}

async fn measure(store: &Store, history: usize, calls: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (label, q) in questions() {
        let (mut index_ms, mut scan_ms) = (Vec::new(), Vec::new());
        let (mut returned, mut examined) = (0, 0);
        let before = accounting::snapshot();
        for _ in 0..calls {
            let t = Instant::now();
            let page = store.list_jobs(QUEUE, &q, None, 100, None).await?;
            index_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            returned = page.jobs.len();
            examined = page.examined;
        }
        let mid = accounting::snapshot();
        for _ in 0..calls {
            let t = Instant::now();
            scan(store, &q).await?;
            scan_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let after = accounting::snapshot();
        rows.push(Row {
            question: label.to_string(),
            history,
            returned,
            index_p50_ms: p50(index_ms),
            index_read_units: mid.since(&before).total_read_units() / calls as f64,
            index_entries_examined: examined,
            scan_p50_ms: p50(scan_ms),
            scan_read_units: after.since(&mid).total_read_units() / calls as f64,
        });
    }
    Ok(rows)
}

pub async fn run(args: &ListingBenchArgs) -> anyhow::Result<u8> {
    let (emulators, clients) =
        super::dynamodb_only(args.dynamodb_url.as_deref(), "listing").await?;
    let mut rows = Vec::new();
    for history in [0, args.history] {
        let store = Store::new(
            clients.dynamodb.clone(),
            format!(
                "bench-listing-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        );
        store.create_table().await.context("creating the table")?;
        eprintln!("== a queue with {history} finished jobs");
        let result = async {
            fill(&store, history).await?;
            measure(&store, history, args.calls).await
        }
        .await;
        store.delete_table().await.ok();
        rows.extend(result?);
    }
    if let Some(mut e) = emulators {
        e.stop();
    }
    println!(
        "{:<34}  {:>7}  {:>4}  {:>9}  {:>8}  {:>8}  {:>9}  {:>8}",
        "question", "history", "jobs", "index ms", "index RU", "examined", "scan ms", "scan RU"
    );
    for r in &rows {
        println!(
            "{:<34}  {:>7}  {:>4}  {:>9.1}  {:>8.1}  {:>8}  {:>9.1}  {:>8.1}",
            r.question,
            r.history,
            r.returned,
            r.index_p50_ms,
            r.index_read_units,
            r.index_entries_examined,
            r.scan_p50_ms,
            r.scan_read_units
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_vec_pretty(&serde_json::json!({
            "benchmark": "listing",
            "backend": "DynamoDB Local",
            "calls_per_question": args.calls,
            "rows": rows,
        }))?,
    )?;
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}
