//! `batchplane bench-keys`: where a million-task job's writes land, shown rather than
//! claimed. The writes of a 1,000,000-task DAG (and of an array of 1,000,000) running
//! at the seeds' 11,600 tasks/s are replayed through the store's own key functions
//! (`job_pk`, `task_pk`, `task_shard`, `shard_count_for`) and item builders
//! (`new_task_item`, `attempt_to_value`), second by second, and each partition key's
//! write units per second are summed. The busiest key of each item kind is reported
//! against DynamoDB's 1,000 WCU per partition. No AWS is involved: a replay of the key
//! design, deterministic.

use aws_sdk_dynamodb::types::AttributeValue;
use batchplane::domain::batch::child_task_id;
use batchplane::domain::ids::{shard_count_for, task_shard, TASKS_PER_SHARD};
use batchplane::domain::{plan_job, AttemptRecord, TaskSpec};
use batchplane::store::item::{
    attempt_to_value, ended_pk, group_counts_pk, job_pk, n, new_task_item, s, task_pk, Item,
};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KeysBenchArgs {
    /// Tasks in the job.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    /// Tasks finishing per second.
    #[arg(long, default_value_t = 11_600.0)]
    rate: f64,
    /// Width of each DAG level: task `i` of a level depends on tasks `i` and `i + 1`
    /// of the level before (fan-out and fan-in of two), levels of this many.
    #[arg(long, default_value_t = 10_000)]
    width: usize,
    /// Stream records per fanout invocation (the template's BatchSize is 500; a lightly
    /// loaded stream delivers fewer): each invocation writes one count item per job.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    stream_batches: Vec<usize>,
    /// Children of an array queued at once (the job window): the job item is written
    /// once per window refill.
    #[arg(long, default_value_t = 256)]
    job_window: usize,
    /// DAG sizes whose busiest shard is shown under the shard count each gets, beside
    /// one shard per 2,000 tasks.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "20000,60000,100000,200000"
    )]
    sizes: Vec<usize>,
    #[arg(long, default_value = "bench-results/keys.json")]
    out: PathBuf,
}

/// DynamoDB's write limit per partition.
const PARTITION_WCU: f64 = 1000.0;

#[derive(Debug, Serialize)]
struct Row {
    job: &'static str,
    kind: String,
    /// The busiest partition key of this kind, as the key functions make it.
    partition_key: String,
    partition_keys: usize,
    peak_writes_per_second: f64,
    peak_wcu_per_second: f64,
    share_of_partition_limit: f64,
}

/// The bytes DynamoDB bills an item for: attribute names plus values (strings as
/// UTF-8, numbers about one byte per two digits plus one, containers three bytes plus
/// one per element).
fn attr_bytes(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|x| 1 + attr_bytes(x)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, x)| 1 + k.len() + attr_bytes(x))
                .sum::<usize>()
        }
        AttributeValue::Ss(l) => l.iter().map(String::len).sum(),
        _ => 8,
    }
}

fn item_bytes(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + attr_bytes(v)).sum()
}

fn wcu(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// The write units of one DAG task's writes, from the items the store builds: its
/// creation, its claim (state, worker, lease, attempt), its finish (the attempt record
/// added) and a release into it (`deps_done` grows by one).
struct TaskWrites {
    claim: f64,
    finish: f64,
    release: f64,
}

fn task_writes(job_id: &str, shard_count: u32) -> anyhow::Result<TaskWrites> {
    let spec = |id: &str, deps: &[&str]| TaskSpec {
        id: id.into(),
        command: vec!["sh".into(), "-c".into(), "sleep 0.1".into()],
        env: Default::default(),
        cpu: Some(1.0),
        memory_mib: Some(512),
        tiers: Vec::new(),
        timeout_seconds: None,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        retry_strategy: None,
        image: None,
        job_role_arn: None,
    };
    // A level task as the workload has them: two dependencies, two dependents.
    let plan = plan_job(&[
        spec("l0-0", &[]),
        spec("l0-1", &[]),
        spec("l1-0", &["l0-0", "l0-1"]),
        spec("l2-0", &["l1-0"]),
        spec("l2-1", &["l1-0"]),
    ]);
    let t = plan
        .iter()
        .find(|t| t.id == "l1-0")
        .ok_or_else(|| anyhow::anyhow!("the plan of the sample level has no task l1-0"))?;
    let shard = task_shard(&t.id, shard_count);
    let created = new_task_item(
        job_id,
        shard,
        ("default", "default"),
        3,
        1_760_000_000_000,
        t,
    );
    let mut claimed = created.clone();
    for (k, v) in [
        ("state", s("RUNNING")),
        (
            "worker_id",
            s("bp-default--t-default-autoscaler-20261206t120000-17"),
        ),
        ("lease_expires", n(1_760_000_030_000i64)),
        ("started_at", n(1_760_000_000_000i64)),
        ("attempt", n(1)),
        (
            "deps_done",
            AttributeValue::Ss(vec!["l0-0".into(), "l0-1".into()]),
        ),
    ] {
        claimed.insert(k.into(), v);
    }
    let mut finished = claimed.clone();
    let attempt = AttemptRecord {
        attempt: 1,
        worker_id: "bp-default--t-default-autoscaler-20261206t120000-17".into(),
        started_at: 1_760_000_000_000,
        finished_at: Some(1_760_000_000_150),
        exit_code: Some(0),
        cpu_milli: Some(1000),
        memory_mib: Some(512),
        memory_enforcement: Some("cgroup-v2".into()),
        isolation: Some("uid".into()),
        uid: Some(100_017),
        cpu_user_seconds: Some(0.01),
        cpu_system_seconds: Some(0.01),
        max_rss_kib: Some(2048),
        avg_rss_kib: Some(1800),
        peak_rss_kib: Some(2048),
        stdout: Some("file:///tmp/batchplane/logs/j/l1-0/1.out".into()),
        stderr: Some("file:///tmp/batchplane/logs/j/l1-0/1.err".into()),
        log_group: Some("/aws/batch/job".into()),
        log_stream: Some("default/default/0123456789abcdef".into()),
        ..Default::default()
    };
    finished.insert(
        "attempts".into(),
        AttributeValue::L(vec![attempt_to_value(&attempt)]),
    );
    finished.insert("state".into(), s("SUCCEEDED"));
    finished.insert("finished_at".into(), n(1_760_000_000_150i64));
    finished.insert("exit_code".into(), n(0));
    // An update is billed by the larger of the item before and after it.
    Ok(TaskWrites {
        claim: wcu(item_bytes(&claimed)),
        finish: wcu(item_bytes(&finished)),
        release: wcu(item_bytes(&claimed)),
    })
}

/// Write units per partition key per second of the run.
#[derive(Default)]
struct Ledger {
    seconds: Vec<HashMap<String, (f64, f64)>>,
}

impl Ledger {
    fn add(&mut self, second: usize, pk: &str, units: f64) {
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, HashMap::new);
        }
        let e = self.seconds[second].entry(pk.to_string()).or_default();
        e.0 += 1.0;
        e.1 += units;
    }

    /// The busiest key of any second: (key, writes, units), and how many keys.
    fn busiest(&self) -> (String, f64, f64, usize) {
        let mut keys = std::collections::HashSet::new();
        let mut best = (String::new(), 0.0, 0.0);
        // The first and last seconds are partial: they would understate.
        let full = self.seconds.len().saturating_sub(1).max(1);
        for sec in self.seconds.iter().take(full) {
            for (k, (w, u)) in sec {
                keys.insert(k.clone());
                if *u > best.2 {
                    best = (k.clone(), *w, *u);
                }
            }
        }
        (best.0, best.1, best.2, keys.len())
    }
}

fn row(job: &'static str, kind: impl Into<String>, ledger: &Ledger) -> Row {
    let (partition_key, writes, units, keys) = ledger.busiest();
    Row {
        job,
        kind: kind.into(),
        partition_key,
        partition_keys: keys,
        peak_writes_per_second: writes,
        peak_wcu_per_second: units,
        share_of_partition_limit: units / PARTITION_WCU,
    }
}

/// One DAG's task writes replayed over `shards` shards.
struct DagReplay {
    tasks: Ledger,
    releases: Ledger,
    all: Ledger,
    /// Stream records per second (each write makes one).
    records: Vec<f64>,
}

/// The DAG: every task's claim and finish on its own shard, one release into each of
/// its dependents on theirs.
fn replay_dag(
    job_id: &str,
    task_count: usize,
    rate: f64,
    width: usize,
    shards: u32,
) -> anyhow::Result<DagReplay> {
    let w = task_writes(job_id, shards)?;
    let width = width.max(2);
    let levels = task_count.div_ceil(width);
    let id = |level: usize, i: usize| format!("l{level}-{i}");
    let mut r = DagReplay {
        tasks: Ledger::default(),
        releases: Ledger::default(),
        all: Ledger::default(),
        records: Vec::new(),
    };
    for k in 0..task_count {
        let (level, i) = (k / width, k % width);
        let second = (k as f64 / rate) as usize;
        let me = id(level, i);
        let pk = task_pk(job_id, task_shard(&me, shards));
        for units in [w.claim, w.finish] {
            r.tasks.add(second, &pk, units);
            r.all.add(second, &pk, units);
        }
        let mut out = 2.0;
        if level + 1 < levels {
            // Task i of the next level depends on i and i + 1 of this one: this task
            // releases i - 1 and i of the next.
            for j in [(i + width - 1) % width, i] {
                let d = task_pk(job_id, task_shard(&id(level + 1, j), shards));
                r.releases.add(second, &d, w.release);
                r.all.add(second, &d, w.release);
                out += 1.0;
            }
        }
        if r.records.len() <= second {
            r.records.resize(second + 1, 0.0);
        }
        r.records[second] += out;
    }
    Ok(r)
}

const DAG_JOB: &str = "j-19b0f0c4e00-0123456789ab";

/// The DAG's task rows, and its stream records counted on the job's key.
fn dag_rows(args: &KeysBenchArgs, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let shards = shard_count_for(args.tasks);
    let r = replay_dag(DAG_JOB, args.tasks, args.rate, args.width, shards)?;
    rows.push(row("dag", "task items: claim + finish", &r.tasks));
    rows.push(row("dag", "task items: release (deps_done)", &r.releases));
    rows.push(row("dag", "task items: all writes of a shard", &r.all));
    counts_rows("dag", DAG_JOB, &r.records, &args.stream_batches, rows);
    Ok(())
}

/// A job's busiest shard by its size, under the shard count it gets
/// ([`shard_count_for`]) beside one shard per 2,000 tasks (the size alone).
#[derive(Debug, Serialize)]
struct SizeRow {
    tasks: usize,
    shards_by_size: u32,
    busiest_share_by_size: f64,
    shards: u32,
    busiest_share: f64,
}

fn size_rows(args: &KeysBenchArgs) -> anyhow::Result<Vec<SizeRow>> {
    let mut out = Vec::new();
    for &n in &args.sizes {
        let by_size = n.div_ceil(TASKS_PER_SHARD).clamp(4, 512) as u32;
        let shards = shard_count_for(n);
        let share = |shards: u32| -> anyhow::Result<f64> {
            let r = replay_dag(DAG_JOB, n, args.rate, args.width, shards)?;
            Ok(r.all.busiest().2 / PARTITION_WCU)
        };
        out.push(SizeRow {
            tasks: n,
            shards_by_size: by_size,
            busiest_share_by_size: share(by_size)?,
            shards,
            busiest_share: share(shards)?,
        });
    }
    Ok(out)
}

/// Count items: one write per fanout invocation per job, on the job's key, and one to
/// its ended-task tally, on a key of its own (an invocation that saw no task end writes
/// none: shown as if every one did). A DAG's also
/// writes its counts by group (one item per invocation, on a key of their own), and its
/// release window's slots item (on the job's key) takes slots for the tasks the
/// invocation released and gives back those its claims freed: two writes more there.
fn counts_rows(
    job: &'static str,
    job_id: &str,
    records_per_second: &[f64],
    batches: &[usize],
    rows: &mut Vec<Row>,
) {
    for &b in batches {
        let mut counts = Ledger::default();
        let mut groups = Ledger::default();
        let mut job_key = Ledger::default();
        let mut tally = Ledger::default();
        for (sec, r) in records_per_second.iter().enumerate() {
            let writes = (r / b.max(1) as f64).ceil();
            for _ in 0..writes as usize {
                counts.add(sec, &job_pk(job_id), 1.0);
                tally.add(sec, &ended_pk(job_id), 1.0);
                groups.add(sec, &group_counts_pk(job_id), 1.0);
                for _ in 0..3 {
                    job_key.add(sec, &job_pk(job_id), 1.0);
                }
            }
        }
        rows.push(row(
            job,
            format!("count items (stream batches of {b})"),
            &counts,
        ));
        rows.push(row(
            job,
            format!("ended-task tally (stream batches of {b})"),
            &tally,
        ));
        if job == "dag" {
            rows.push(row(
                job,
                format!("counts-by-group items (stream batches of {b})"),
                &groups,
            ));
            rows.push(row(
                job,
                format!("job's key: counts + window take and give (batches of {b})"),
                &job_key,
            ));
        }
    }
}

/// The array: each child's claim creates its item on its shard and its finish updates
/// it; the job item moves the dispatch cursor once per window refill.
fn array_rows(args: &KeysBenchArgs, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let job_id = "j-19b0f0c4e00-fedcba987654";
    let shards = shard_count_for(args.tasks);
    let w = task_writes(job_id, shards)?;
    let mut children = Ledger::default();
    let mut job_item = Ledger::default();
    let mut records = Vec::new();
    for k in 0..args.tasks {
        let second = (k as f64 / args.rate) as usize;
        let pk = task_pk(job_id, task_shard(&child_task_id(k as u32), shards));
        children.add(second, &pk, w.claim);
        children.add(second, &pk, w.finish);
        if k % args.job_window.max(1) == 0 {
            job_item.add(second, &job_pk(job_id), 1.0);
        }
        if records.len() <= second {
            records.resize(second + 1, 0.0);
        }
        records[second] += 2.0;
    }
    rows.push(row(
        "array",
        "child items: claim (creates) + finish",
        &children,
    ));
    rows.push(row("array", "job item: dispatch cursor", &job_item));
    counts_rows("array", job_id, &records, &args.stream_batches, rows);
    Ok(())
}

pub fn run(args: &KeysBenchArgs) -> anyhow::Result<u8> {
    let mut rows = Vec::new();
    dag_rows(args, &mut rows)?;
    array_rows(args, &mut rows)?;
    println!(
        "{} tasks at {} tasks/s; {} shards per job; DynamoDB allows {PARTITION_WCU} WCU per partition",
        args.tasks,
        args.rate,
        shard_count_for(args.tasks)
    );
    println!(
        "{:<6} {:<40} {:<34} {:>6} {:>9} {:>9} {:>7}",
        "JOB", "ITEM KIND", "BUSIEST PARTITION KEY", "KEYS", "WRITES/S", "WCU/S", "LIMIT"
    );
    for r in &rows {
        println!(
            "{:<6} {:<40} {:<34} {:>6} {:>9.0} {:>9.0} {:>6.1}%",
            r.job,
            r.kind,
            r.partition_key,
            r.partition_keys,
            r.peak_writes_per_second,
            r.peak_wcu_per_second,
            r.share_of_partition_limit * 100.0
        );
    }
    let sizes = size_rows(args)?;
    println!();
    println!(
        "DAG by size, all writes of its busiest shard at {} tasks/s:",
        args.rate
    );
    println!(
        "{:>9} {:>15} {:>9} {:>8} {:>9}",
        "TASKS", "SHARDS BY SIZE", "LIMIT", "SHARDS", "LIMIT"
    );
    for r in &sizes {
        println!(
            "{:>9} {:>15} {:>8.1}% {:>8} {:>8.1}%",
            r.tasks,
            r.shards_by_size,
            r.busiest_share_by_size * 100.0,
            r.shards,
            r.busiest_share * 100.0
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_vec_pretty(&serde_json::json!({
            "benchmark": "keys",
            "tasks": args.tasks,
            "tasks_per_second": args.rate,
            "partition_wcu_limit": PARTITION_WCU,
            "rows": rows,
            "dag_by_size": sizes,
        }))?,
    )?;
    println!("wrote {}", args.out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tasks: usize) -> KeysBenchArgs {
        KeysBenchArgs {
            tasks,
            rate: 11_600.0,
            width: 1000,
            stream_batches: vec![100],
            job_window: 256,
            sizes: vec![20_000, 60_000],
            out: PathBuf::from("unused"),
        }
    }

    /// The key design spreads a job's task writes over all its shards evenly enough
    /// that none nears a partition's limit, and a job's own key carries only the count
    /// items, one per stream batch.
    #[test]
    fn task_writes_spread_over_every_shard_and_counts_stay_on_the_jobs_key() {
        let a = args(1_000_000);
        let mut rows = Vec::new();
        dag_rows(&a, &mut rows).expect("the DAG's rows");
        array_rows(&a, &mut rows).expect("the array's rows");
        let shards = shard_count_for(a.tasks) as usize;
        let counts = |job: &str| {
            rows.iter()
                .find(|r| r.job == job && r.kind.starts_with("count items"))
                .map(|r| r.peak_writes_per_second)
                .expect("a count row")
        };
        for r in &rows {
            if r.kind.starts_with("job's key") {
                // Shown, not claimed: three writes an invocation on the job's key.
                assert_eq!(r.peak_writes_per_second, 3.0 * counts(r.job), "{r:?}");
                continue;
            }
            assert!(r.share_of_partition_limit < 0.5, "{r:?}");
            if r.kind.starts_with("counts-by-group") {
                assert!(r.partition_key.ends_with("#Q"), "a key of their own: {r:?}");
            }
            if r.kind.starts_with("ended-task tally") {
                assert!(r.partition_key.ends_with("#E"), "a key of their own: {r:?}");
                assert_eq!(r.peak_writes_per_second, counts(r.job), "{r:?}");
            }
            if r.kind.starts_with("task items") || r.kind.starts_with("child items") {
                assert_eq!(r.partition_keys, shards, "{r:?}");
                assert!(r.partition_key.matches('#').count() == 2, "{r:?}");
            } else {
                assert_eq!(r.partition_keys, 1, "{r:?}");
            }
        }
        // Evenly: the busiest shard takes at most twice its fair share of the writes
        // (claim + finish + two releases a task).
        let all = rows
            .iter()
            .find(|r| r.kind == "task items: all writes of a shard")
            .expect("the shard row");
        let fair = a.rate * 4.0 / shards as f64;
        assert!(
            all.peak_writes_per_second < 2.0 * fair,
            "{all:?} vs fair {fair}"
        );
    }

    /// A job of 20,000 or 60,000 tasks run at the fleet's peak: one shard per 2,000
    /// tasks puts its busiest over half a partition's limit (60,000: over the limit);
    /// the shards it gets keep it under half.
    #[test]
    fn a_mid_sized_job_gets_the_shards_its_rate_needs() {
        let rows = size_rows(&args(0)).expect("the rows by size");
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r.busiest_share_by_size > 0.5, "{r:?}");
            assert!(r.busiest_share < 0.5, "{r:?}");
            assert!(r.shards > r.shards_by_size, "{r:?}");
        }
        assert!(rows[1].busiest_share_by_size > 1.0, "{:?}", rows[1]);
    }
}
