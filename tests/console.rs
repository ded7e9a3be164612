//! The console and what it reads: the native job listing (every job the caller may see,
//! newest first, across teams), task search by id prefix, and the console's pages in a
//! real browser (headless Chromium through ChromeDriver) against the local stack, as
//! one principal and as another of a different team.

use batchplane::domain::TaskState;
use batchplane::store::GroupRecordCounts;
use batchplane_testing::browser::Browser;
use batchplane_testing::{
    binary, stored_job, test_store, Harness, ManualClock, Must, TestEmulators,
};
use reqwest::Method;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

const ALICE: &str = "AKIDALICE";
const BOB: &str = "AKIDBOB";

async fn get_as(h: &Harness, who: Option<&str>, path: &str) -> (u16, Value) {
    let r = h.request_as(who, Method::GET, path, None).await;
    (r.status, r.body)
}

async fn submit_as(h: &Harness, who: &str, spec: &str) -> String {
    let r = h
        .request_as(Some(who), Method::POST, "/v1/jobs", Some(spec))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["job_id"].as_str().unwrap_or_default().to_string()
}

/// Every job `who` is listed, page by page of `limit`, with the query `filters`.
async fn listed(h: &Harness, who: Option<&str>, filters: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/v1/jobs?limit={limit}{filters}");
        if let Some(t) = &token {
            path.push_str(&format!("&next_token={t}"));
        }
        let (status, body) = get_as(h, who, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        assert!(jobs.len() <= limit, "{body}");
        out.extend(
            jobs.iter()
                .map(|j| j["job_id"].as_str().unwrap_or_default().to_string()),
        );
        match body["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
    panic!("the listing of {filters:?} never ended");
}

fn job(name: &str, team: &str) -> String {
    format!("name: {name}\nteam: {team}\ntasks:\n  - id: a\n    command: [\"true\"]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_listing_merges_a_callers_teams_newest_first_and_shows_no_one_elses() {
    let h = Harness::start(|o| o.workers = 0).await;
    h.grant(ALICE, Some("research"), "member").await;
    h.grant(ALICE, Some("ops"), "member").await;
    h.grant(BOB, Some("finance"), "member").await;
    // Alice's jobs on two teams, interleaved in time; Bob's on a third.
    let mut alices = Vec::new();
    let mut bobs = Vec::new();
    for (i, (name, team)) in [
        ("nightly-1", "research"),
        ("ops-a", "ops"),
        ("nightly-2", "research"),
        ("adhoc", "research"),
        ("ops-b", "ops"),
    ]
    .into_iter()
    .enumerate()
    {
        alices.push(submit_as(&h, ALICE, &job(name, team)).await);
        if i % 2 == 0 {
            bobs.push(submit_as(&h, BOB, &job(&format!("secret-{i}"), "finance")).await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newest_first = |ids: &[String]| ids.iter().rev().cloned().collect::<Vec<_>>();

    // Every page size gives the same listing: each job once, newest first.
    for limit in [1, 2, 3, 25] {
        assert_eq!(
            listed(&h, Some(ALICE), "", limit).await,
            newest_first(&alices),
            "limit {limit}"
        );
    }
    assert_eq!(listed(&h, Some(BOB), "", 2).await, newest_first(&bobs));
    // The deployment's admin (the local stack's anonymous caller) sees every team.
    let all = listed(&h, None, "", 4).await;
    assert_eq!(all.len(), alices.len() + bobs.len(), "{all:?}");

    // Filters: team, name (a case-insensitive prefix), queue.
    let research: Vec<String> = [&alices[0], &alices[2], &alices[3]]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(
        listed(&h, Some(ALICE), "&team=research", 2).await,
        newest_first(&research)
    );
    assert_eq!(
        listed(&h, Some(ALICE), "&name=NIGHTLY", 1).await,
        vec![alices[2].clone(), alices[0].clone()]
    );
    assert_eq!(listed(&h, Some(ALICE), "&queue=default", 10).await.len(), 5);
    assert!(listed(&h, Some(ALICE), "&queue=elsewhere", 10)
        .await
        .is_empty());
    // Another team's name lists nothing, as a team with no jobs would.
    assert!(listed(&h, Some(BOB), "&team=research", 10).await.is_empty());

    // By state: cancel one; once closed it lists under CANCELLED and nowhere else.
    let cancel = h
        .request_as(
            Some(ALICE),
            Method::POST,
            &format!("/v1/jobs/{}/cancel", alices[3]),
            None,
        )
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    h.wait(&alices[3], Duration::from_secs(60)).await;
    let cancelled =
        batchplane_testing::wait_for("the listing by state", Duration::from_secs(30), || async {
            let l = listed(&h, Some(ALICE), "&state=CANCELLED", 10).await;
            match l.is_empty() {
                true => Err("nothing listed yet".to_string()),
                false => Ok(l),
            }
        })
        .await;
    assert_eq!(cancelled, vec![alices[3].clone()]);
    assert_eq!(
        listed(&h, Some(ALICE), "&state=succeeded,CANCELLED", 10).await,
        cancelled
    );
    assert!(!listed(
        &h,
        Some(ALICE),
        "&state=RUNNABLE,PENDING,SUBMITTED,RUNNING",
        10
    )
    .await
    .contains(&alices[3]));

    // A page's token carries teams, never rights: Bob replaying Alice's sees nothing.
    let (_, first) = get_as(&h, Some(ALICE), "/v1/jobs?limit=1").await;
    let token = first["next_token"].as_str().unwrap_or_default();
    let (status, replay) = get_as(&h, Some(BOB), &format!("/v1/jobs?next_token={token}")).await;
    assert_eq!(
        (status, replay["jobs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{replay}"
    );

    // Bad input names the parameter.
    for (query, parameter) in [
        ("state=LOST", "state"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("next_token=not-ours", "next_token"),
    ] {
        let (status, body) = get_as(&h, Some(ALICE), &format!("/v1/jobs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(
            body["error"]["details"]["parameter"], parameter,
            "{query}: {body}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_found_by_id_prefix_in_every_shard_and_among_the_failed() {
    let h = Harness::start(|_| {}).await;
    let mut spec = String::from("name: prefixes\ntasks:\n");
    for i in 0..30 {
        spec.push_str(&format!("  - {{id: shard-{i:02}, command: [\"true\"]}}\n"));
    }
    for i in 0..12 {
        let code = if i % 3 == 0 { 1 } else { 0 };
        spec.push_str(&format!(
            "  - {{id: part-{i:02}, command: [sh, -c, 'exit {code}']}}\n"
        ));
    }
    let job = h.submit(&spec).await;
    h.wait(&job, Duration::from_secs(120)).await;
    let ids = |tasks: Vec<Value>| {
        let mut v: Vec<String> = tasks
            .iter()
            .map(|t| t["task_id"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    let page_through = |filters: &'static str| {
        let h = &h;
        let job = job.clone();
        async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut path = format!("/v1/jobs/{job}/tasks?limit=4{filters}");
                if let Some(t) = &token {
                    path.push_str(&format!("&next_token={t}"));
                }
                let r = h.get(&path).await;
                assert_eq!(r.status, 200, "{path}: {}", r.body);
                out.extend(r.body["tasks"].as_array().cloned().unwrap_or_default());
                match r.body["next_token"].as_str() {
                    Some(t) => token = Some(t.to_string()),
                    None => return out,
                }
            }
        }
    };
    let want: Vec<String> = (0..12).map(|i| format!("part-{i:02}")).collect();
    assert_eq!(ids(page_through("&prefix=part-").await), want);
    assert_eq!(
        ids(page_through("&prefix=part-1").await),
        ["part-10", "part-11"]
    );
    assert_eq!(
        ids(page_through("&prefix=part-&state=FAILED").await),
        ["part-00", "part-03", "part-06", "part-09"]
    );
    assert_eq!(
        ids(page_through("&prefix=part-0&state=SUCCEEDED").await).len(),
        6
    );
    assert!(page_through("&prefix=nothing").await.is_empty());
    let r = h.get(&format!("/v1/jobs/{job}/tasks?prefix=a/b")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["parameter"], "prefix");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_sees_through_barriers_and_is_drawn_only_for_small_jobs() {
    let h = Harness::start(|o| o.workers = 0).await;
    // A fan-in of 120: wider than a task item holds, so it goes through a barrier.
    let mut spec = String::from("name: wide\ntasks:\n");
    for i in 0..120 {
        spec.push_str(&format!("  - {{id: leaf-{i:03}, command: [\"true\"]}}\n"));
    }
    let leaves: Vec<String> = (0..120).map(|i| format!("leaf-{i:03}")).collect();
    spec.push_str(&format!(
        "  - {{id: sink, depends_on: [{}], command: [\"true\"]}}\n",
        leaves.join(", ")
    ));
    let job = h.submit(&spec).await;
    let r = h.get(&format!("/v1/jobs/{job}/graph")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let g = r.body;
    assert_eq!(g["drawn"], true, "{g}");
    let tasks = g["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 121, "barriers are not drawn");
    let sink = tasks
        .iter()
        .find(|t| t["id"] == "sink")
        .cloned()
        .unwrap_or_default();
    let deps: Vec<String> = sink["deps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect();
    assert_eq!(
        deps, leaves,
        "the sink's dependencies, seen through the barrier"
    );
    assert!(tasks.iter().all(|t| t["state"] != "SUCCEEDED"));
    // Nothing ran: of equal weight, the longer chain, smallest id first.
    assert_eq!(g["critical_path"], serde_json::json!(["leaf-000", "sink"]));

    // Past the limit the job is not drawn, and the answer says why.
    let mut big = String::from("name: big\ntasks:\n");
    for i in 0..2001 {
        big.push_str(&format!("  - {{id: t{i}, command: [\"true\"]}}\n"));
    }
    let big = h.submit(&big).await;
    let r = h.get(&format!("/v1/jobs/{big}/graph")).await;
    assert_eq!(
        (r.status, &r.body["drawn"]),
        (200, &serde_json::json!(false)),
        "{}",
        r.body
    );
    assert!(
        r.body["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("2001 tasks")),
        "{}",
        r.body
    );
    // Another team's caller gets no graph of it.
    let other = h
        .request_as(
            Some(BOB),
            Method::GET,
            &format!("/v1/jobs/{job}/graph"),
            None,
        )
        .await;
    assert_eq!(other.status, 404, "{}", other.body);
    h.shutdown().await;
}

/// A record of one task moving from `from` (none: created) to `to`, in `group`.
fn moved(seq: u32, group: &str, from: Option<TaskState>, to: TaskState) -> GroupRecordCounts {
    let mut counts = batchplane::domain::TaskCounts::default();
    if let Some(f) = from {
        counts.add(f, -1);
    }
    counts.add(to, 1);
    GroupRecordCounts {
        sequence_number: seq.to_string(),
        group: group.to_string(),
        counts,
        ..Default::default()
    }
}

/// The same, for a task that started at `started` (and finished at `finished`).
fn ran(
    seq: u32,
    group: &str,
    to: TaskState,
    started: i64,
    finished: Option<i64>,
) -> GroupRecordCounts {
    let from = match to {
        TaskState::Running => TaskState::Pending,
        _ => TaskState::Running,
    };
    GroupRecordCounts {
        started_at: Some(started),
        finished_at: finished,
        ..moved(seq, group, Some(from), to)
    }
}

#[tokio::test]
async fn counts_by_group_are_exact_under_retries_and_fold_past_the_kept_groups_into_other() {
    let emu = TestEmulators::get();
    let clock = ManualClock::default();
    let store = test_store(&emu, "group-counts")
        .await
        .with_clock(clock.clock());
    let (job, _) = stored_job(&store, "name: x\ntasks:\n - {id: a, command: ['true']}\n").await;
    // Batch 100: three tasks of `a-` and one of `b-` created; batch 200: two of `a-`
    // start and one ends.
    let first: Vec<GroupRecordCounts> = [("a-", 100), ("a-", 101), ("b-", 102), ("a-", 103)]
        .iter()
        .map(|(g, s)| moved(*s, g, None, TaskState::Pending))
        .collect();
    assert!(store
        .add_batch_group_counts(&job, "100", &first[..2])
        .await
        .must("a first try"));
    // A retry that got further adds only what the first try had not.
    assert!(store
        .add_batch_group_counts(&job, "100", &first)
        .await
        .must("a retry"));
    assert!(!store
        .add_batch_group_counts(&job, "100", &first)
        .await
        .must("a duplicate"));
    // Their spans: the earliest start and the latest finish, whatever order the
    // records come in and however often a batch is tried.
    let second = [
        ran(200, "a-", TaskState::Running, 1_200, None),
        ran(201, "a-", TaskState::Running, 1_000, None),
        ran(202, "a-", TaskState::Succeeded, 1_200, Some(1_500)),
    ];
    assert!(store
        .add_batch_group_counts(&job, "200", &second[..1])
        .await
        .must("batch 200, a first try"));
    assert!(store
        .add_batch_group_counts(&job, "200", &second)
        .await
        .must("batch 200, its retry"));
    let (groups, _) = store
        .job_group_counts(&job)
        .await
        .must("the counts by group");
    let a = &groups["a-"];
    assert_eq!(
        (
            a.counts.get(TaskState::Pending),
            a.counts.get(TaskState::Running),
            a.counts.get(TaskState::Succeeded)
        ),
        (1, 1, 1),
        "{groups:?}"
    );
    assert_eq!(
        (a.first_started_at, a.last_finished_at),
        (Some(1_000), Some(1_500))
    );
    assert_eq!(groups["b-"].counts.get(TaskState::Pending), 1);
    assert_eq!(groups["b-"].first_started_at, None, "b- has not started");

    // Many batches of many groups, folded once old: the sums hold, and past the kept
    // groups the rest are counted together.
    let kept = batchplane::store::GROUPS_KEPT;
    for b in 0..3u32 {
        let parts: Vec<GroupRecordCounts> = (0..(kept as u32 / 2 + 10))
            .map(|i| {
                moved(
                    1000 * (b + 1) + i,
                    &format!("g{b}-{i}-"),
                    None,
                    TaskState::Pending,
                )
            })
            .collect();
        let start = parts[0].sequence_number.clone();
        assert!(store
            .add_batch_group_counts(&job, &start, &parts)
            .await
            .must("a wide batch"));
    }
    let (before, items) = store.job_group_counts(&job).await.must("before folding");
    let total = |g: &std::collections::BTreeMap<String, batchplane::store::GroupTotals>| {
        g.values()
            .map(|c| c.counts.0.values().sum::<i64>())
            .sum::<i64>()
    };
    assert_eq!(items, 5);
    clock.advance(Duration::from_secs(16 * 60));
    store.fold_group_counts(&job).await.must("folding");
    let (after, items) = store.job_group_counts(&job).await.must("after folding");
    assert_eq!(items, 1, "one base item");
    assert_eq!(total(&after), total(&before), "folding keeps every count");
    let other = after
        .get(batchplane::store::OTHER_GROUPS)
        .unwrap_or_else(|| panic!("no other groups in {} groups", after.len()));
    assert!(other.counts.get(TaskState::Pending) > 0);
    assert!(after.len() <= kept + 1, "{} groups kept", after.len());
    assert_eq!(
        after["a-"], before["a-"],
        "the first groups keep their own counts"
    );
}

/// Run by workers, each group keeps when it first started and last finished, and the
/// critical path over groups follows the group each one waited for longest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_keep_their_spans_and_the_path_follows_the_group_that_ended_last() {
    let h = Harness::start(|o| o.team = "research".into()).await;
    h.grant(ALICE, Some("research"), "member").await;
    let job = submit_as(
        &h,
        ALICE,
        r#"
name: spans
team: research
tasks:
  - {id: prep-1, command: ["true"]}
  - {id: prep-2, command: ["true"], depends_on: [prep-1]}
  - {id: fast-1, command: ["true"], depends_on: [prep-2]}
  - {id: slow-1, command: [sleep, "2"], depends_on: [prep-2]}
  - {id: report, command: ["true"], depends_on: [fast-1, slow-1]}
"#,
    )
    .await;
    h.wait(&job, Duration::from_secs(120)).await;
    // The last task's counts may follow its job's close by a stream batch.
    let view =
        batchplane_testing::wait_for("every group ended", Duration::from_secs(30), || async {
            let (status, view) = get_as(&h, Some(ALICE), &format!("/v1/jobs/{job}/groups")).await;
            assert_eq!(status, 200, "{view}");
            let ended = view["groups"].as_array().is_some_and(|g| {
                g.len() == 4
                    && g.iter()
                        .all(|g| g["task_counts"]["SUCCEEDED"] == g["total"])
            });
            ended.then_some(view.clone()).ok_or(format!("{view}"))
        })
        .await;
    let edges: Vec<String> = view["edges"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "{}>{}",
                        e["from"].as_str().unwrap_or(""),
                        e["to"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        edges,
        ["fast->report", "prep->fast-", "prep->slow-", "slow->report"],
        "group edges, the chain inside prep- left out: {view}"
    );
    assert_eq!(
        view["critical_path"],
        serde_json::json!(["prep-", "slow-", "report"]),
        "report waited longest for slow-: {view}"
    );
    let span = |g: &str| {
        let gr = view["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["group"] == g))
            .unwrap_or_else(|| panic!("{g} in {view}"));
        (
            gr["first_started_at"]
                .as_i64()
                .unwrap_or_else(|| panic!("{g} started: {gr}")),
            gr["last_finished_at"]
                .as_i64()
                .unwrap_or_else(|| panic!("{g} finished: {gr}")),
        )
    };
    let (prep, slow, fast, report) = (span("prep-"), span("slow-"), span("fast-"), span("report"));
    assert!(
        prep.0 < prep.1 && prep.1 <= slow.0 && prep.1 <= fast.0,
        "{view}"
    );
    assert!(slow.1 - slow.0 >= 2_000, "slow- slept two seconds: {view}");
    assert!(fast.1 < slow.1 && slow.1 <= report.0, "{view}");
    // Its tasks by state over its life end where the job did.
    let (status, history) = get_as(&h, Some(ALICE), &format!("/v1/jobs/{job}/history")).await;
    assert_eq!(status, 200, "{history}");
    let points = history["points"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        points.last().map(|p| p["counts"].clone()),
        Some(serde_json::json!({"SUCCEEDED": 5})),
        "{history}"
    );
    h.shutdown().await;
}

/// `batchplane console` as `principal`, against the harness's stack; killed on drop.
struct ConsoleProcess {
    child: std::process::Child,
    url: String,
}

impl ConsoleProcess {
    fn start(h: &Harness, principal: &str) -> ConsoleProcess {
        let mut child = std::process::Command::new(binary("batchplane"))
            .args(["console", "--api-url", &h.stack.api_url])
            .env("AWS_ACCESS_KEY_ID", principal)
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting batchplane console: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the console's URL: {e}"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("the console printed no URL: {line:?}"))
            .to_string();
        ConsoleProcess { child, url }
    }

    fn page(&self, route: &str) -> String {
        format!("{}#/{route}", self.url)
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the pages' screenshots go, for a reviewer to look at.
fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench-results/console")
        .join(format!("{name}.png"))
}

const SUCCEEDS: &str = r#"
name: histogram-small
team: research
tasks:
  - id: generate
    memory_mib: 256
    command:
      - python3
      - -c
      - |
        import time
        data = bytearray(96 * 1024 * 1024)
        end = time.time() + 2
        while time.time() < end:
            pass
        time.sleep(3.5)
        print("generated")
  - {id: count-0, depends_on: [generate], command: [sh, -c, 'echo counted 0']}
  - {id: count-1, depends_on: [generate], command: [sh, -c, 'echo counted 1']}
  - {id: merge, depends_on: [count-0, count-1], command: [sh, -c, 'echo merged']}
"#;

const FAILS: &str = r#"
name: breaks-on-purpose
team: research
tasks:
  - {id: prepare, command: [sh, -c, 'echo ready']}
  - id: boom
    depends_on: [prepare]
    env: {MODE: strict}
    command: [sh, -c, 'echo about to fail; echo the disk is full >&2; exit 3']
  - {id: after, depends_on: [boom], command: ["true"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_jobs_tasks_and_output_in_a_browser_and_nothing_of_other_teams() {
    // The stack's workers serve Alice's team.
    let h = Harness::start(|o| o.team = "research".into()).await;
    h.grant(ALICE, Some("research"), "member").await;
    h.grant(BOB, Some("finance"), "member").await;
    let ok = submit_as(&h, ALICE, SUCCEEDS).await;
    let bad = submit_as(&h, ALICE, FAILS).await;
    h.wait(&ok, Duration::from_secs(120)).await;
    h.wait(&bad, Duration::from_secs(120)).await;

    let alice = ConsoleProcess::start(&h, ALICE);
    let browser = Browser::start().await;
    let wait = Duration::from_secs(30);
    let clean = |page: &str, errors: Vec<String>| {
        assert!(
            errors.is_empty(),
            "the {page} page logged errors: {errors:#?}"
        );
    };

    // Jobs: both of Alice's, newest first, each with its state.
    browser.open(&alice.page("jobs")).await;
    browser
        .wait_for_text(&format!("tr[data-job='{bad}']"), "FAILED", wait)
        .await;
    let rows = browser
        .wait_for_text("#jobs tbody", "SUCCEEDED", wait)
        .await;
    assert!(
        rows.find("breaks-on-purpose") < rows.find("histogram-small"),
        "{rows}"
    );
    browser.screenshot(&screenshot_path("jobs")).await;
    clean("jobs", browser.console_errors().await);

    // The failed job: its reason, why (explain), and its failed tasks first.
    browser.open(&alice.page(&format!("jobs/{bad}"))).await;
    browser.wait_for_text("#job-reason", "failed", wait).await;
    browser.wait_for_text("#explain", "Finished", wait).await;
    let failed = browser
        .wait_for_text("#failed-tasks", "exit code 3", wait)
        .await;
    assert!(failed.contains("dependency boom failed"), "{failed}");
    assert!(!failed.contains("prepare"), "{failed}");
    let boom = browser
        .script("const n = document.querySelector(\"#dag circle[data-task='boom']\"); return n && n.dataset.state", serde_json::json!([]))
        .await;
    assert_eq!(boom, "FAILED", "the failed task in the graph");
    browser.screenshot(&screenshot_path("job-failed")).await;
    clean("failed job", browser.console_errors().await);

    // The failed task: reason, argv, environment, attempts, its output and repro.
    browser
        .open(&alice.page(&format!("jobs/{bad}/tasks/boom")))
        .await;
    browser
        .wait_for_text("#task-reason", "exit code 3", wait)
        .await;
    browser.wait_for_text("#argv", "exit 3", wait).await;
    browser.wait_for_text("#env", "strict", wait).await;
    browser.wait_for_text("#attempts", "3", wait).await;
    browser.wait_for_text("#log", "about to fail", wait).await;
    browser
        .wait_for_text("#repro", &format!("batchplane repro {bad} boom"), wait)
        .await;
    browser.screenshot(&screenshot_path("task-failed")).await;
    clean("failed task", browser.console_errors().await);

    // The job that succeeded: task search by id prefix.
    browser.open(&alice.page(&format!("jobs/{ok}"))).await;
    browser.wait_for_text("#tasks", "merge", wait).await;
    browser
        .script(
            "document.getElementById('task-prefix').value = 'count-'; document.getElementById('task-prefix').form.requestSubmit();",
            serde_json::json!([]),
        )
        .await;
    let found = browser
        .wait_until("#tasks tbody", "only the count- tasks", wait, |t| {
            !t.contains("merge")
        })
        .await;
    assert!(
        found.contains("count-0") && found.contains("count-1"),
        "{found}"
    );
    assert!(!found.contains("generate"), "{found}");
    // Its graph, task by task with the critical path, and its timeline.
    let nodes = browser
        .script(
            "return document.querySelectorAll('#dag circle[data-task]').length",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(nodes, 4, "the graph's nodes");
    let path = browser
        .wait_for_text("#critical-path", "generate", wait)
        .await;
    assert!(
        path.starts_with("generate") && path.ends_with("merge"),
        "{path}"
    );
    let bars = browser
        .script(
            "return document.querySelectorAll('#timeline rect[data-attempt]').length",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(bars, 4, "one bar per attempt");
    let points = browser
        .script(
            "return Number(document.getElementById('history').dataset.points)",
            serde_json::json!([]),
        )
        .await;
    assert!(
        points.as_u64().is_some_and(|p| p >= 1),
        "history points: {points}"
    );
    browser.screenshot(&screenshot_path("job-succeeded")).await;
    clean("succeeded job", browser.console_errors().await);

    // The long task's use over its life, against what it reserved.
    browser
        .open(&alice.page(&format!("jobs/{ok}/tasks/generate")))
        .await;
    let memory = browser
        .wait_for_text("#usage-1 figure", "Memory: peak", wait)
        .await;
    assert!(memory.contains("of 256 reserved"), "{memory}");
    let charts = browser
        .script(
            "return [...document.querySelectorAll('#usage-1 svg.usage-chart')].map((c) => c.dataset.measure).join(',')",
            serde_json::json!([]),
        )
        .await;
    assert!(
        charts.as_str().is_some_and(|c| c.starts_with("Memory,CPU")),
        "{charts}"
    );
    let peak = browser
        .script(
            "return Number(document.querySelector('#usage-1 figcaption').textContent.match(/peak ([0-9.,]+)/)[1].replace(',', ''))",
            serde_json::json!([]),
        )
        .await;
    assert!(peak.as_f64().is_some_and(|p| p >= 96.0), "{peak} MiB");
    browser.screenshot(&screenshot_path("task-usage")).await;
    clean("task with usage", browser.console_errors().await);

    // Teams and pools: what a member may see, and that the rest is the admins'.
    browser.open(&alice.page("pools")).await;
    browser.wait_for_text(".admins-only", "admins", wait).await;
    browser.open(&alice.page("teams")).await;
    browser.wait_for_text("h1", "Teams", wait).await;
    clean("teams", browser.console_errors().await);

    // Bob, of another team, sees none of it: no jobs, and Alice's job does not exist.
    let bob = ConsoleProcess::start(&h, BOB);
    browser.open(&bob.page("jobs")).await;
    browser.wait_for_text("#no-jobs", "No jobs", wait).await;
    let text = browser.text().await;
    assert!(
        !text.contains(&ok) && !text.contains(&bad) && !text.contains("breaks"),
        "{text}"
    );
    browser
        .screenshot(&screenshot_path("jobs-other-team"))
        .await;
    clean("other team's jobs", browser.console_errors().await);
    browser.open(&bob.page(&format!("jobs/{bad}"))).await;
    browser.wait_for_text("#error", "NotFound", wait).await;
    assert!(!browser.text().await.contains("breaks-on-purpose"));

    // The console's own API refuses a call without its page's token.
    let refused = reqwest::get(format!("{}api/jobs", alice.url))
        .await
        .unwrap_or_else(|e| panic!("asking the console: {e}"));
    assert_eq!(refused.status(), 403);

    browser.quit().await;
    drop((alice, bob));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_large_to_draw_is_shown_by_group_with_its_counts() {
    // No workers: the DAG's first level waits RUNNABLE, the rest PENDING.
    let h = Harness::start(|o| o.workers = 0).await;
    h.grant(ALICE, Some("research"), "member").await;
    let mut spec = String::from("name: ten-thousand\nteam: research\ntasks:\n");
    for level in 0..10 {
        for i in 0..1000 {
            let deps = match level {
                0 => String::new(),
                _ => format!(
                    ", depends_on: [level-{p}-{i:04}, level-{p}-{j:04}]",
                    p = level - 1,
                    j = (i + 1) % 1000
                ),
            };
            spec.push_str(&format!(
                "  - {{id: level-{level}-{i:04}, command: [\"true\"]{deps}}}\n"
            ));
        }
    }
    let job = submit_as(&h, ALICE, &spec).await;
    let alice = ConsoleProcess::start(&h, ALICE);
    let browser = Browser::start().await;
    browser.open(&alice.page(&format!("jobs/{job}"))).await;
    browser
        .wait_for_text("#dag-not-drawn", "10000 tasks", Duration::from_secs(60))
        .await;
    // The counts by group follow the stream: wait until every group has all of its
    // tasks counted (the page refreshes every five seconds).
    let read = "return [...document.querySelectorAll('#groups tbody tr')].map((r) => [r.dataset.group, Number(r.dataset.total), r.querySelector(\"[data-state='PENDING']\").textContent, r.querySelector(\"[data-state='RUNNABLE']\").textContent])";
    let rows =
        batchplane_testing::wait_for("every group counted", Duration::from_secs(180), || async {
            let rows = browser.script(read, serde_json::json!([])).await;
            let rows = rows.as_array().cloned().unwrap_or_default();
            let complete = rows.len() == 10 && rows.iter().all(|r| r[1] == 1000);
            match complete {
                true => Ok(rows),
                false => Err(format!("{rows:?}")),
            }
        })
        .await;
    for (level, row) in rows.iter().enumerate() {
        assert_eq!(
            row[0],
            format!("level-{level}-"),
            "groups in their natural order"
        );
        let (pending, runnable) = (row[2].as_str().unwrap_or(""), row[3].as_str().unwrap_or(""));
        match level {
            0 => assert_eq!((pending, runnable), ("", "1,000"), "{row:?}"),
            _ => assert_eq!((pending, runnable), ("1,000", ""), "{row:?}"),
        }
    }
    // The edges between groups, known from the spec, and before anything has run, the
    // longest chain of groups as the critical path; drawn as a graph of groups.
    let (status, view) = get_as(&h, Some(ALICE), &format!("/v1/jobs/{job}/groups")).await;
    assert_eq!(status, 200, "{view}");
    let edges: Vec<(String, String)> = view["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("edges in {view}"))
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_string(),
                e["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let levels: Vec<String> = (0..10).map(|l| format!("level-{l}-")).collect();
    let mut want: Vec<(String, String)> = levels
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect();
    want.sort();
    assert_eq!(edges, want, "one edge a level");
    assert_eq!(view["edges_complete"], true);
    assert_eq!(view["critical_path"], serde_json::json!(levels));
    let path = browser
        .wait_for_text("#group-critical-path", "level-9-", Duration::from_secs(30))
        .await;
    assert_eq!(path, levels.join(" → "));
    let drawn = browser
        .script(
            "return [document.querySelectorAll('#group-dag rect[data-group]').length, document.querySelectorAll('#group-dag line.edge.critical').length]",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(
        drawn,
        serde_json::json!([10, 9]),
        "ten groups, nine critical edges"
    );
    // A group is the way into its tasks.
    browser
        .script(
            "document.querySelector(\"#groups tr[data-group='level-7-'] a\").click()",
            serde_json::json!([]),
        )
        .await;
    let found = browser
        .wait_until(
            "#tasks tbody",
            "level-7 tasks",
            Duration::from_secs(30),
            |t| t.contains("level-7-"),
        )
        .await;
    assert!(
        !found.contains("level-6-") && !found.contains("level-8-"),
        "{found}"
    );
    browser.screenshot(&screenshot_path("job-grouped")).await;
    let errors = browser.console_errors().await;
    assert!(
        errors.is_empty(),
        "the grouped job page logged errors: {errors:#?}"
    );
    browser.quit().await;
    drop(alice);
    h.shutdown().await;
}
