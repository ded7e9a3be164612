//! DynamoDB item encoding: keys, attribute helpers, and records ↔ items.
//!
//! Table design (one table, `pk`/`sk` strings, stream NEW_AND_OLD_IMAGES):
//!
//! | item | pk | sk | written |
//! |---|---|---|---|
//! | job | `J#<job>` | `META` | submit, first start, finish, cancel |
//! | task | `J#<job>#<shard>` | `T#<task>` | create, release, claim, heartbeat, finish |
//! | counts of one stream batch | `J#<job>` | `C#<first seq>-<last seq>` | once per batch per job |
//! | folded counts | `J#<job>` | `C#base` | when batches are folded |
//! | idempotency key | `K#<team>#<key>` | `KEY` | submit with `Idempotency-Key` |
//!
//! Task items of one job spread over `shard_count` partitions (hash of the task id), so
//! no partition takes every write of a big job.

use crate::domain::{AttemptRecord, JobRecord, JobState, TaskKind, TaskRecord, TaskState};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};

pub type Item = HashMap<String, AttributeValue>;

pub fn job_pk(job_id: &str) -> String {
    format!("J#{job_id}")
}
pub fn task_pk(job_id: &str, shard: u32) -> String {
    format!("J#{job_id}#{shard}")
}
pub fn task_sk(task_id: &str) -> String {
    format!("T#{task_id}")
}
/// Where the edges from one shard's tasks to tasks of later pages are kept (an open
/// job's pages): beside the shard's tasks, so walks of its tasks never read them.
pub fn page_edge_pk(job_id: &str, shard: u32) -> String {
    format!("J#{job_id}#{shard}#E")
}
/// An edge from `from` (the dependency) to `to`; `.` cannot end a task id's prefix
/// search wrongly because the id is followed by `/`, which no task id holds.
pub fn page_edge_sk(from: &str, to: &str) -> String {
    format!("E#{from}/{to}")
}
pub fn page_edge_prefix(from: &str) -> String {
    format!("E#{from}/")
}
/// Where a job's ready tasks wait while its release window is full: beside the shard's
/// tasks (a walk of its tasks never reads them), in bundles.
pub fn held_pk(job_id: &str, shard: u32) -> String {
    format!("J#{job_id}#{shard}#H")
}
pub fn held_sk(bundle: &str) -> String {
    format!("H#{bundle}")
}
/// Where a DAG's counts by group are kept: a partition of their own beside the job's.
pub fn group_counts_pk(job_id: &str) -> String {
    format!("J#{job_id}#Q")
}
/// A job's ended-task tally (see `Store::add_ended`): a partition of its own, so the
/// write each stream batch makes to it does not load the job's.
pub fn ended_pk(job_id: &str) -> String {
    format!("J#{job_id}#E")
}
/// A job's free release-window slots, in the job's partition.
pub const SLOTS_SK: &str = "SLOTS";
/// A page of an open job, in the job's partition.
pub fn page_sk(page_id: &str) -> String {
    format!("P#{page_id}")
}
pub const META_SK: &str = "META";
pub const COUNTS_PREFIX: &str = "C#";
pub const COUNTS_BASE_SK: &str = "C#base";

pub fn key(pk: String, sk: String) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(pk)),
        ("sk".to_string(), AttributeValue::S(sk)),
    ])
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
/// The sum of two numbers as DynamoDB holds them (`None`: nothing yet, 0): whole
/// numbers stay whole.
pub fn add_numbers(a: Option<&AttributeValue>, b: &AttributeValue) -> AttributeValue {
    let text = |v: Option<&AttributeValue>| match v {
        Some(AttributeValue::N(x)) => x.clone(),
        _ => "0".to_string(),
    };
    let (x, y) = (text(a), text(Some(b)));
    match (x.parse::<i64>(), y.parse::<i64>()) {
        (Ok(x), Ok(y)) => n(x + y),
        _ => n(x.parse::<f64>().unwrap_or(0.0) + y.parse::<f64>().unwrap_or(0.0)),
    }
}

pub fn list_s(v: &[String]) -> AttributeValue {
    AttributeValue::L(v.iter().map(|x| s(x.clone())).collect())
}

/// The one problem a stored item can have: it is not what this code wrote.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stored item {key}: {problem}")]
pub struct Malformed {
    pub key: String,
    pub problem: String,
}

pub struct Reader<'a> {
    item: &'a Item,
    key: String,
}

impl<'a> Reader<'a> {
    pub fn new(item: &'a Item) -> Self {
        let get = |k: &str| match item.get(k) {
            Some(AttributeValue::S(v)) => v.clone(),
            _ => "?".into(),
        };
        Reader {
            key: format!("{}/{}", get("pk"), get("sk")),
            item,
        }
    }
    pub(crate) fn bad(&self, attr: &str, what: &str) -> Malformed {
        Malformed {
            key: self.key.clone(),
            problem: format!("attribute {attr}: {what}"),
        }
    }
    pub fn opt_s(&self, attr: &str) -> Result<Option<String>, Malformed> {
        match self.item.get(attr) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.bad(attr, "expected a string")),
        }
    }
    pub fn req_s(&self, attr: &str) -> Result<String, Malformed> {
        self.opt_s(attr)?.ok_or_else(|| self.bad(attr, "missing"))
    }
    pub fn opt_n<T: std::str::FromStr>(&self, attr: &str) -> Result<Option<T>, Malformed> {
        match self.item.get(attr) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| self.bad(attr, "not a number of the expected kind")),
            Some(_) => Err(self.bad(attr, "expected a number")),
        }
    }
    pub fn req_n<T: std::str::FromStr>(&self, attr: &str) -> Result<T, Malformed> {
        self.opt_n(attr)?.ok_or_else(|| self.bad(attr, "missing"))
    }
    pub fn bool(&self, attr: &str) -> bool {
        matches!(self.item.get(attr), Some(AttributeValue::Bool(true)))
    }
    pub fn strings(&self, attr: &str) -> Result<Vec<String>, Malformed> {
        match self.item.get(attr) {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::Ss(v)) => Ok(v.clone()),
            Some(AttributeValue::L(v)) => v
                .iter()
                .map(|x| match x {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err(self.bad(attr, "expected a list of strings")),
                })
                .collect(),
            Some(_) => Err(self.bad(attr, "expected a list of strings")),
        }
    }
    pub fn string_map(&self, attr: &str) -> Result<BTreeMap<String, String>, Malformed> {
        match self.item.get(attr) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeMap::new()),
            Some(AttributeValue::M(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    AttributeValue::S(s) => Ok((k.clone(), s.clone())),
                    _ => Err(self.bad(attr, "expected string values")),
                })
                .collect(),
            Some(_) => Err(self.bad(attr, "expected a map")),
        }
    }
    pub fn task_state(&self, attr: &str) -> Result<TaskState, Malformed> {
        self.req_s(attr)?
            .parse()
            .map_err(|e: String| self.bad(attr, &e))
    }
}

pub fn job_to_item(job: &JobRecord) -> Item {
    let mut item = key(job_pk(&job.job_id), META_SK.into());
    item.insert("type".into(), s("job"));
    item.insert("job_id".into(), s(&job.job_id));
    item.insert("name".into(), s(&job.name));
    item.insert("team".into(), s(&job.team));
    item.insert("queue".into(), s(&job.queue));
    item.insert("state".into(), s(job.state.as_str()));
    item.insert("created_at".into(), n(job.created_at));
    for (name, at) in [
        ("started_at", job.started_at),
        ("finished_at", job.finished_at),
    ] {
        if let Some(at) = at {
            item.insert(name.into(), n(at));
        }
    }
    item.insert("total_tasks".into(), n(job.total_tasks));
    item.insert("shard_count".into(), n(job.shard_count));
    if let Some(r) = &job.reason {
        item.insert("reason".into(), s(r));
    }
    // Only job items carry `jq` and the other listing keys: the sparse listing indexes
    // list jobs, never tasks.
    item.insert(JOB_QUEUE_ATTR.into(), s(&job.queue));
    // (An index key may not be empty: a job without a team, which only a test stores,
    // is in no team's listing.)
    if !job.team.is_empty() {
        item.insert(JOB_TEAM_ATTR.into(), s(&job.team));
    }
    let listed = crate::domain::listing::listing_keys(job);
    item.insert(LISTED_STATUS_ATTR.into(), s(listed.status));
    item.insert(NAME_KEY_ATTR.into(), s(listed.name));
    if let Some((k, arn)) = listed.definition {
        item.insert(DEFINITION_KEY_ATTR.into(), s(k));
        item.insert(DEFINITION_ATTR.into(), s(arn));
    }
    if let Some((k, share)) = listed.share {
        item.insert(SHARE_KEY_ATTR.into(), s(k));
        item.insert(SHARE_ATTR.into(), s(share));
    }
    if let Some(a) = &job.array {
        item.insert(
            "array".into(),
            s(serde_json::to_string(a).unwrap_or_default()),
        );
        item.insert("gates_met".into(), n(job.gates_met));
        item.insert("gate_count".into(), n(a.gate_count));
        item.insert("dispatched".into(), n(job.dispatched));
    }
    if job.cancel_requested {
        item.insert("cancel_requested".into(), AttributeValue::Bool(true));
    }
    if let Some(stop) = job.stopped_by {
        item.insert("stopped_by".into(), s(stop.as_str()));
    }
    if let Some(r) = &job.stop_reason {
        item.insert("stop_reason".into(), s(r));
    }
    if let Some(at) = job.stopped_at {
        item.insert("stopped_at".into(), n(at));
    }
    if job.uncommitted {
        item.insert("uncommitted".into(), AttributeValue::Bool(true));
    }
    if job.paging.open {
        item.insert("open".into(), AttributeValue::Bool(true));
    }
    if let Some(at) = job.paging.last_page_at {
        item.insert("last_page_at".into(), n(at));
    }
    if job.paging.page_edges {
        item.insert("page_edges".into(), AttributeValue::Bool(true));
    }
    if let Some(w) = job.dag_window {
        item.insert("dag_window".into(), n(w));
    }
    if !job.notify.is_empty() {
        item.insert(
            "notify".into(),
            s(serde_json::to_string(&job.notify).unwrap_or_default()),
        );
    }
    item
}

/// The attribute the `by_queue` index is keyed on (with `created_at`).
pub const JOB_QUEUE_ATTR: &str = "jq";
/// Set (to the job id) on a task item when it fails, and never removed (FAILED is
/// final): the key of the sparse `failures` index, so a job's failed tasks are a query
/// however many tasks succeeded beside them.
pub const FAILED_IN_ATTR: &str = "failed_in";
pub const FAILURES_INDEX: &str = "failures";
pub const BY_QUEUE_INDEX: &str = "by_queue";
/// A job's queue and AWS Batch status ([`crate::domain::listing::status_key`]): the key
/// of `by_status`, kept by the fanout as the job's state moves.
pub const LISTED_STATUS_ATTR: &str = "ls";
pub const BY_STATUS_INDEX: &str = "by_status";
/// `by_name`'s sort key under `jq` ([`crate::domain::listing::name_key`]).
pub const NAME_KEY_ATTR: &str = "nk";
pub const BY_NAME_INDEX: &str = "by_name";
/// `by_definition`'s sort key under `jq`, and the definition's ARN it projects.
pub const DEFINITION_KEY_ATTR: &str = "dk";
pub const DEFINITION_ATTR: &str = "jd";
pub const BY_DEFINITION_INDEX: &str = "by_definition";
/// `by_share`'s key (queue and share identifier), and the share it projects.
pub const SHARE_KEY_ATTR: &str = "sq";
pub const SHARE_ATTR: &str = "share";
pub const BY_SHARE_INDEX: &str = "by_share";
/// The attribute the `by_team` index is keyed on (with `created_at`): the job's team,
/// on job items only (access grants and reservations carry `team` too, so the index
/// needs a key of its own to stay a listing of jobs).
pub const JOB_TEAM_ATTR: &str = "jt";
pub const BY_TEAM_INDEX: &str = "by_team";
/// What `by_team` carries besides its keys: what the native listing filters on.
pub const TEAM_LISTING_PROJECTION: [&str; 3] = [JOB_QUEUE_ATTR, "state", NAME_KEY_ATTR];
/// The partition of the teams that have ever had a job (`sk` the team): who an
/// administrator's listing of every job merges over.
pub const JOB_TEAMS_PK: &str = "JOBTEAMS";
/// What the listing indexes carry besides their keys: what a listing filters on.
pub const LISTING_PROJECTION: [&str; 3] = ["team", DEFINITION_ATTR, SHARE_ATTR];

pub fn job_from_item(item: &Item) -> Result<JobRecord, Malformed> {
    let r = Reader::new(item);
    let state = r.req_s("state")?;
    Ok(JobRecord {
        job_id: r.req_s("job_id")?,
        name: r.req_s("name")?,
        team: r.req_s("team")?,
        queue: r.req_s("queue")?,
        state: state.parse().map_err(|e: String| r.bad("state", &e))?,
        reason: r.opt_s("reason")?,
        created_at: r.req_n("created_at")?,
        started_at: r.opt_n("started_at")?,
        finished_at: r.opt_n("finished_at")?,
        total_tasks: r.req_n("total_tasks")?,
        shard_count: r.req_n("shard_count")?,
        cancel_requested: r.bool("cancel_requested"),
        stopped_by: match r.opt_s("stopped_by")? {
            Some(v) => {
                Some(crate::domain::Stop::parse(&v).ok_or_else(|| r.bad("stopped_by", "unknown"))?)
            }
            None => None,
        },
        stop_reason: r.opt_s("stop_reason")?,
        stopped_at: r.opt_n("stopped_at")?,
        uncommitted: r.bool("uncommitted"),
        array: match r.opt_s("array")? {
            Some(json) => {
                Some(serde_json::from_str(&json).map_err(|e| r.bad("array", &e.to_string()))?)
            }
            None => None,
        },
        gates_met: r.opt_n("gates_met")?.unwrap_or(0),
        dispatched: r.opt_n("dispatched")?.unwrap_or(0),
        dependents: r.strings("dependents")?,
        notify: match r.opt_s("notify")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| r.bad("notify", &e.to_string()))?
            }
            None => Default::default(),
        },
        paging: crate::domain::Paging {
            open: r.bool("open"),
            last_page_at: r.opt_n("last_page_at")?,
            page_edges: r.bool("page_edges"),
        },
        dag_window: r.opt_n("dag_window")?,
    })
}

/// A new task's item. Empty lists and maps are left out: they cost bytes on every write.
#[allow(clippy::too_many_arguments)]
pub fn new_task_item(
    job_id: &str,
    shard: u32,
    (queue, team): (&str, &str),
    max_attempts: u32,
    now: i64,
    t: &crate::domain::PlannedTask,
) -> Item {
    let mut item = key(task_pk(job_id, shard), task_sk(&t.id));
    item.insert("job_id".into(), s(job_id));
    item.insert("task_id".into(), s(&t.id));
    item.insert("shard".into(), n(shard));
    item.insert("kind".into(), s(t.kind.as_str()));
    item.insert("queue".into(), s(queue));
    item.insert("state".into(), s(t.state.as_str()));
    item.insert("attempt".into(), n(0));
    // A worker lost mid-task costs an attempt too; the retry strategy can raise the budget.
    item.insert("max_attempts".into(), n(max_attempts.max(t.retry.attempts)));
    if t.retry != crate::domain::retry::RetryStrategy::default() {
        item.insert(
            "retry".into(),
            s(serde_json::to_string(&t.retry).unwrap_or_default()),
        );
    }
    item.insert("created_at".into(), n(now));
    if !t.command.is_empty() {
        item.insert("command".into(), list_s(&t.command));
    }
    if !t.env.is_empty() {
        item.insert(
            "env".into(),
            AttributeValue::M(t.env.iter().map(|(k, v)| (k.clone(), s(v))).collect()),
        );
    }
    if t.kind == TaskKind::Command {
        item.insert("cpu_milli".into(), n(t.cpu_milli));
        item.insert("memory_mib".into(), n(t.memory_mib));
        // The team's pool: only the team's workers take it.
        item.insert(
            "pool".into(),
            s(
                crate::domain::tiers::WorkerPool::for_task(queue, team, &t.tiers, 0)
                    .in_container(t.container.as_ref().map(|c| c.key()))
                    .name(),
            ),
        );
    }
    if let Some(first) = t.tiers.first() {
        item.insert("tiers".into(), s(tiers_json(&t.tiers)));
        if first.gpu > 0 {
            item.insert("gpu".into(), n(first.gpu));
        }
    }
    if let Some(secs) = t.timeout_seconds {
        item.insert("timeout_seconds".into(), n(secs));
    }
    if !t.deps.is_empty() {
        item.insert("deps".into(), list_s(&t.deps));
    }
    if !t.dependents.is_empty() {
        item.insert("dependents".into(), list_s(&t.dependents));
    }
    item
}

/// Tiers as stored: the JSON of the spec's form.
pub fn tiers_json(tiers: &[crate::domain::tiers::Tier]) -> String {
    serde_json::to_string(tiers).unwrap_or_default()
}

pub fn attempt_to_value(a: &AttemptRecord) -> AttributeValue {
    let mut m: HashMap<String, AttributeValue> = HashMap::new();
    m.insert("attempt".into(), n(a.attempt));
    m.insert("worker_id".into(), s(&a.worker_id));
    m.insert("started_at".into(), n(a.started_at));
    let opt = |m: &mut HashMap<String, AttributeValue>, k: &str, v: Option<AttributeValue>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    opt(&mut m, "finished_at", a.finished_at.map(n));
    opt(&mut m, "exit_code", a.exit_code.map(n));
    opt(&mut m, "signal", a.signal.map(n));
    opt(&mut m, "reason", a.reason.clone().map(s));
    opt(&mut m, "tier", a.tier.map(n));
    opt(&mut m, "cpu_milli", a.cpu_milli.map(n));
    opt(&mut m, "memory_mib", a.memory_mib.map(n));
    opt(
        &mut m,
        "memory_enforcement",
        a.memory_enforcement.clone().map(s),
    );
    opt(&mut m, "isolation", a.isolation.clone().map(s));
    opt(&mut m, "uid", a.uid.map(n));
    opt(&mut m, "cpu_user_seconds", a.cpu_user_seconds.map(n));
    opt(&mut m, "cpu_system_seconds", a.cpu_system_seconds.map(n));
    opt(&mut m, "max_rss_kib", a.max_rss_kib.map(n));
    opt(&mut m, "avg_rss_kib", a.avg_rss_kib.map(n));
    opt(&mut m, "peak_rss_kib", a.peak_rss_kib.map(n));
    opt(&mut m, "gpu_peak_memory_mib", a.gpu_peak_memory_mib.map(n));
    opt(
        &mut m,
        "gpu_utilization_percent",
        a.gpu_utilization_percent.map(n),
    );
    opt(
        &mut m,
        "usage_series",
        a.usage_series
            .as_ref()
            .and_then(|u| serde_json::to_string(u).ok())
            .map(s),
    );
    opt(&mut m, "stdout", a.stdout.clone().map(s));
    opt(&mut m, "stderr", a.stderr.clone().map(s));
    opt(&mut m, "log_group", a.log_group.clone().map(s));
    opt(&mut m, "log_stream", a.log_stream.clone().map(s));
    opt(&mut m, "log_shipping", a.log_shipping.clone().map(s));
    opt(&mut m, "image", a.image.clone().map(s));
    opt(&mut m, "job_role_arn", a.job_role_arn.clone().map(s));
    opt(
        &mut m,
        "image_enforcement",
        a.image_enforcement.clone().map(s),
    );
    opt(&mut m, "followed_by", a.followed_by.clone().map(s));
    AttributeValue::M(m)
}

fn attempt_from_value(item: &Item) -> Result<AttemptRecord, Malformed> {
    let r = Reader::new(item);
    Ok(AttemptRecord {
        attempt: r.req_n("attempt")?,
        worker_id: r.req_s("worker_id")?,
        started_at: r.req_n("started_at")?,
        finished_at: r.opt_n("finished_at")?,
        exit_code: r.opt_n("exit_code")?,
        signal: r.opt_n("signal")?,
        reason: r.opt_s("reason")?,
        tier: r.opt_n("tier")?,
        cpu_milli: r.opt_n("cpu_milli")?,
        memory_mib: r.opt_n("memory_mib")?,
        memory_enforcement: r.opt_s("memory_enforcement")?,
        isolation: r.opt_s("isolation")?,
        uid: r.opt_n("uid")?,
        cpu_user_seconds: r.opt_n("cpu_user_seconds")?,
        cpu_system_seconds: r.opt_n("cpu_system_seconds")?,
        max_rss_kib: r.opt_n("max_rss_kib")?,
        avg_rss_kib: r.opt_n("avg_rss_kib")?,
        peak_rss_kib: r.opt_n("peak_rss_kib")?,
        gpu_peak_memory_mib: r.opt_n("gpu_peak_memory_mib")?,
        gpu_utilization_percent: r.opt_n("gpu_utilization_percent")?,
        usage_series: r
            .opt_s("usage_series")?
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| r.bad("usage_series", &e.to_string()))?,
        stdout: r.opt_s("stdout")?,
        stderr: r.opt_s("stderr")?,
        log_group: r.opt_s("log_group")?,
        log_stream: r.opt_s("log_stream")?,
        log_shipping: r.opt_s("log_shipping")?,
        image: r.opt_s("image")?,
        job_role_arn: r.opt_s("job_role_arn")?,
        image_enforcement: r.opt_s("image_enforcement")?,
        followed_by: r.opt_s("followed_by")?,
    })
}

pub fn task_from_item(item: &Item) -> Result<TaskRecord, Malformed> {
    let r = Reader::new(item);
    let attempts = match item.get("attempts") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| match v {
                AttributeValue::M(m) => attempt_from_value(m),
                _ => Err(r.bad("attempts", "expected a list of maps")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(TaskRecord {
        job_id: r.req_s("job_id")?,
        task_id: r.req_s("task_id")?,
        shard: r.req_n("shard")?,
        kind: TaskKind::parse(&r.opt_s("kind")?.unwrap_or_default()),
        queue: r.req_s("queue")?,
        state: r.task_state("state")?,
        reason: r.opt_s("reason")?,
        attempt: r.opt_n("attempt")?.unwrap_or(0),
        max_attempts: r.opt_n("max_attempts")?.unwrap_or(1),
        command: r.strings("command")?,
        env: r.string_map("env")?,
        cpu_milli: r.opt_n("cpu_milli")?.unwrap_or(0),
        memory_mib: r.opt_n("memory_mib")?.unwrap_or(0),
        gpu: r.opt_n("gpu")?.unwrap_or(0),
        tiers: match r.opt_s("tiers")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| r.bad("tiers", &e.to_string()))?
            }
            None => Vec::new(),
        },
        tier: r.opt_n("tier")?.unwrap_or(0),
        pool: r.opt_s("pool")?,
        timeout_seconds: r.opt_n("timeout_seconds")?,
        retry: match r.opt_s("retry")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| r.bad("retry", &e.to_string()))?
            }
            None => Default::default(),
        },
        deps: r.strings("deps")?,
        deps_done: r.strings("deps_done")?,
        dependents: r.strings("dependents")?,
        failed_dependency: r.opt_s("failed_dependency")?,
        worker_id: r.opt_s("worker_id")?,
        lease_expires: r.opt_n("lease_expires")?,
        cancel_requested: r.bool("cancel_requested"),
        enqueued_on_release: r.bool("enqueued"),
        chained: r.bool("chained"),
        created_at: r.opt_n("created_at")?.unwrap_or(0),
        started_at: r.opt_n("started_at")?,
        finished_at: r.opt_n("finished_at")?,
        exit_code: r.opt_n("exit_code")?,
        attempts,
        index: r.opt_n("idx")?,
        log: None,
        definition: None,
        page: r.opt_s("page")?,
    })
}

/// Counts of one stream batch: attributes `n_<STATE>`.
pub fn counts_attr(state: TaskState) -> String {
    format!("n_{}", state.as_str())
}

pub fn counts_from_item(item: &Item) -> crate::domain::TaskCounts {
    let mut c = crate::domain::TaskCounts::default();
    for st in TaskState::ALL {
        if let Some(AttributeValue::N(v)) = item.get(&counts_attr(st)) {
            c.add(st, v.parse::<i64>().unwrap_or(0));
        }
    }
    c
}

/// Whether an item is a job's own item.
pub fn is_job_item(item: &Item) -> bool {
    matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk == META_SK)
        && matches!(item.get("pk"), Some(AttributeValue::S(pk)) if pk.starts_with("J#"))
}

/// The sort key of a job's paged-work cursor of `kind` (see [`crate::store::WorkCursor`]).
pub fn work_sk(kind: &str) -> String {
    format!("W#{kind}")
}

/// Whether an item is a job's paged-work cursor.
pub fn is_work_item(item: &Item) -> bool {
    matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk.starts_with("W#"))
        && matches!(item.get("pk"), Some(AttributeValue::S(pk)) if pk.starts_with("J#"))
}

/// The job whose release-window slot a worker gave back in this change, if it is one
/// (its slots item's `freed_at` moved).
pub fn slot_freed(old: &Item, new: &Item) -> Option<String> {
    if !matches!(new.get("sk"), Some(AttributeValue::S(sk)) if sk == SLOTS_SK) {
        return None;
    }
    if new.get("freed_at").is_none() || new.get("freed_at") == old.get("freed_at") {
        return None;
    }
    match new.get("pk") {
        Some(AttributeValue::S(pk)) => pk.strip_prefix("J#").map(str::to_string),
        _ => None,
    }
}

/// Whether an item is a task item (by its sort key).
pub fn is_task_item(item: &Item) -> bool {
    matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk.starts_with("T#"))
}

pub fn state_of(item: &Item) -> Option<TaskState> {
    match item.get("state") {
        Some(AttributeValue::S(v)) => v.parse().ok(),
        _ => None,
    }
}

/// The status key a job item is listed under (`ls`), if it has one.
pub fn listed_status_of(item: &Item) -> Option<String> {
    match item.get(LISTED_STATUS_ATTR) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub fn job_state_of(item: &Item) -> Option<JobState> {
    match item.get("state") {
        Some(AttributeValue::S(v)) => v.parse().ok(),
        _ => None,
    }
}

/// Usage sums on a count item: attributes `u_<field>`.
pub fn usage_attr(field: &str) -> String {
    format!("u_{field}")
}

pub fn usage_from_item(item: &Item) -> crate::domain::Usage {
    let get = |f: &str| match item.get(&usage_attr(f)) {
        Some(AttributeValue::N(v)) => v.parse::<f64>().unwrap_or(0.0),
        _ => 0.0,
    };
    crate::domain::Usage::from_values(crate::domain::Usage::FIELDS.map(get))
}
