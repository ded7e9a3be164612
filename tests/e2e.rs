//! End-to-end: jobs through the real api router, DynamoDB Local, the stream poller and
//! fanout, moto's SQS, and taskhost processes running real commands.

use batchplane::queue::TaskMessage;
use batchplane_testing::{attempts, binary, lines, millis, wait_for, Harness, Must};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_in_dependency_order() {
    // The stack's workers are research's: a team's tasks run only on its workers.
    let h = Harness::start(|o| o.team = "research".into()).await;
    let job = h
        .submit(
            r#"
name: diamond
team: research
tasks:
  - {id: a, command: [sh, -c, "echo a; sleep 0.2"]}
  - {id: b, command: [sh, -c, "echo b; sleep 0.3"], depends_on: [a]}
  - {id: c, command: [sh, -c, "echo c >&2; sleep 0.3"], depends_on: [a]}
  - {id: d, command: [echo, d], depends_on: [b, c], env: {GREETING: hello}}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["team"], "research");
    assert_eq!(done["task_counts"]["SUCCEEDED"], 4);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let t: HashMap<&str, Value> = futures_join(&h, &job, &["a", "b", "c", "d"]).await;
    let start = |id: &str| millis(&attempts(&t[id])[0]["started_at"]);
    let end = |id: &str| millis(&attempts(&t[id])[0]["finished_at"]);
    assert!(start("b") >= end("a") && start("c") >= end("a"));
    assert!(start("d") >= end("b").max(end("c")));
    for id in ["a", "b", "c", "d"] {
        let a = &attempts(&t[id])[0];
        assert_eq!(a["exit_code"], 0);
        assert!(
            a["cpu_user_seconds"].is_number() && a["max_rss_kib"].as_u64().unwrap() > 0,
            "{a}"
        );
        // Workers are named after their pool and placement: `bp-<pool>-<request>-<slot>`.
        assert!(
            a["worker_id"].as_str().unwrap().starts_with("bp-default-"),
            "{a}"
        );
    }
    assert_eq!(t["d"]["env"]["GREETING"], "hello");
    assert_eq!(t["d"]["depends_on"], serde_json::json!(["b", "c"]));
    // Logs are kept per attempt and `batchplane logs` prints them.
    let out = std::process::Command::new(binary("batchplane"))
        .args(["logs", &job, "c", "--stderr", "--api-url", &h.stack.api_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("c\n"));
    h.shutdown().await;
}

async fn futures_join(
    h: &Harness,
    job: &str,
    ids: &[&'static str],
) -> HashMap<&'static str, Value> {
    let mut out = HashMap::new();
    for id in ids {
        out.insert(*id, h.task(job, id).await);
    }
    out
}

fn fan_spec(n: usize, command: &str) -> String {
    let mut spec = String::from("name: fan\ntasks:\n  - {id: root, command: ['true']}\n");
    for i in 0..n {
        spec.push_str(&format!("  - {{id: w{i}, command: [sh, -c, '{command}'], cpu: 0.25, memory_mib: 16, depends_on: [root]}}\n"));
    }
    let all: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    spec.push_str(&format!(
        "  - {{id: sink, command: ['true'], depends_on: [{}]}}\n",
        all.join(", ")
    ));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_fan_in_of_250_tasks() {
    let h = Harness::start(|o| o.workers = 3).await;
    let job = h.submit(&fan_spec(250, "true")).await;
    let done = h.wait(&job, 4 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["total_tasks"], 252);
    assert_eq!(done["task_counts"]["SUCCEEDED"], 252);
    // The list is paginated across shards, shows user tasks only (no barriers), once each.
    let tasks = h.all_tasks(&job, None, 70).await;
    assert_eq!(tasks.len(), 252);
    let mut ids: Vec<&str> = tasks
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 252);
    assert!(ids.iter().all(|id| !id.starts_with('~')));
    // The sink ran after every worker task finished.
    let sink = h.task(&job, "sink").await;
    let sink_start = millis(&attempts(&sink)[0]["started_at"]);
    for i in (0..250).step_by(25) {
        let w = h.task(&job, &format!("w{i}")).await;
        assert!(millis(&attempts(&w)[0]["finished_at"]) <= sink_start);
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_stops_its_dependents_and_other_branches_finish() {
    let h = Harness::start(|_| {}).await;
    let job = h
        .submit(
            r#"
name: one-branch-fails
tasks:
  - {id: ok, command: ['true']}
  - {id: broken, command: [sh, -c, 'echo oops >&2; exit 3']}
  - {id: after-ok, command: [sh, -c, 'sleep 0.5'], depends_on: [ok]}
  - {id: after-broken, command: [echo, never], depends_on: [broken]}
  - {id: after-after, command: [echo, never], depends_on: [after-broken, ok]}
  - {id: missing, command: [/no/such/program]}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    assert_eq!(done["task_counts"]["SUCCEEDED"], 2);
    assert_eq!(done["task_counts"]["FAILED"], 4);
    let broken = h.task(&job, "broken").await;
    assert_eq!(broken["status_reason"], "exit code 3");
    assert_eq!(attempts(&broken)[0]["exit_code"], 3);
    let after = h.task(&job, "after-broken").await;
    assert_eq!(after["state"], "FAILED");
    assert_eq!(after["status_reason"], "dependency broken failed");
    assert!(
        attempts(&after).is_empty(),
        "a dependent of a failed task never runs"
    );
    let after2 = h.task(&job, "after-after").await;
    assert_eq!(after2["status_reason"], "dependency after-broken failed");
    assert!(attempts(&after2).is_empty());
    let missing = h.task(&job, "missing").await;
    assert_eq!(
        missing["status_reason"],
        "command not found: /no/such/program"
    );
    assert_eq!(h.task(&job, "after-ok").await["state"], "SUCCEEDED");
    // The failures are a query, not a search.
    let failed = h.all_tasks(&job, Some("FAILED"), 100).await;
    let mut ids: Vec<&str> = failed
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["after-after", "after-broken", "broken", "missing"]
    );
    // The failed element can be re-run here, exactly as it ran.
    let bp = binary("batchplane");
    let printed = std::process::Command::new(&bp)
        .args(["repro", &job, "broken", "--api-url", &h.stack.api_url])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&printed.stdout);
    assert!(
        line.contains(&format!("BATCHPLANE_JOB_ID={job}"))
            && line.contains("'echo oops >&2; exit 3'"),
        "{line}"
    );
    let rerun = std::process::Command::new(&bp)
        .args([
            "repro",
            &job,
            "broken",
            "--run",
            "--api-url",
            &h.stack.api_url,
        ])
        .output()
        .unwrap();
    assert_eq!(rerun.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("oops"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_adds_100_tasks_to_its_own_job() {
    let h = Harness::start(|_| {}).await;
    let bp = batchplane_testing::binary_for_tasks("batchplane", &h.dir);
    let spec = format!(
        r#"
name: dynamic
tasks:
  - {{id: first, command: ['true']}}
  - id: spawner
    depends_on: [first]
    env: {{BP: "{}"}}
    command:
      - sh
      - -c
      - |
        f=$(mktemp)
        echo "tasks:" > $f
        for i in $(seq 1 99); do echo "  - {{id: child-$i, command: [sh, -c, 'exit 0'], depends_on: [spawner, first]}}" >> $f; done
        echo "  - {{id: child-100, command: ['true'], depends_on: [child-1, child-99]}}" >> $f
        "$BP" add "$BATCHPLANE_JOB_ID" $f
        sleep 1
"#,
        bp.display()
    );
    let job = h.submit(&spec).await;
    // A hundred short tasks on two workers: seconds alone, but a loaded machine has
    // stretched each attempt to seconds (it is one of the emulator-heavy tests).
    let done = h.wait(&job, 4 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["total_tasks"], 102);
    assert_eq!(done["task_counts"]["SUCCEEDED"], 102);
    let spawner = h.task(&job, "spawner").await;
    let spawner_end = millis(&attempts(&spawner)[0]["finished_at"]);
    for id in ["child-1", "child-50", "child-99", "child-100"] {
        let c = h.task(&job, id).await;
        assert!(
            millis(&attempts(&c)[0]["started_at"]) >= spawner_end,
            "{id} waited for the running spawner"
        );
    }
    // A finished job takes no more tasks.
    let r = h
        .post(
            &format!("/v1/jobs/{job}/tasks"),
            "- {id: late, command: ['true']}",
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_running_tasks_and_skips_waiting_ones() {
    let h = Harness::start(|o| o.lease_seconds = 3).await;
    let pid_file = batchplane_testing::shared_file(&h.dir.join("long.pid"));
    let job = h
        .submit(&format!(
            r#"
name: long
tasks:
  - {{id: long, command: [sh, -c, "echo $$ > {}; exec sleep 300"]}}
  - {{id: later, command: ['true'], depends_on: [long]}}
  - {{id: queued, command: [sleep, "300"], memory_mib: 8192}} # more than a worker here has
"#,
            pid_file.display()
        ))
        .await;
    h.wait_task(&job, "long", "RUNNING", MINUTE).await;
    let pid: i32 = wait_for("the long task's pid", MINUTE, || async {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        text.trim().parse().map_err(|_| format!("{text:?}"))
    })
    .await;
    let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let started = std::time::Instant::now();
    // The process itself is gone within two heartbeats (a second each, with a 3 s lease).
    wait_for(
        "the cancelled task's process to be gone",
        Duration::from_secs(3),
        || async {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            (!alive)
                .then_some(())
                .ok_or_else(|| format!("pid {pid} is alive"))
        },
    )
    .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "CANCELLED", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "running tasks are killed within seconds"
    );
    let long = h.task(&job, "long").await;
    assert_eq!(long["state"], "CANCELLED");
    assert_eq!(attempts(&long).len(), 1);
    assert_eq!(h.task(&job, "later").await["state"], "CANCELLED");
    let queued = h.task(&job, "queued").await;
    assert_eq!(queued["state"], "CANCELLED");
    assert!(attempts(&queued).is_empty());
    let again = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(again.status, 409);
    h.shutdown().await;
}

/// Each task appends its id to a shared file, so a second run would show.
fn counted_spec(dir: &std::path::Path, n: usize, sleep: &str) -> String {
    let log = batchplane_testing::shared_file(&dir.join("runs.log"));
    let mut spec = String::from("name: counted\ntasks:\n");
    spec.push_str(&format!(
        "  - {{id: root, command: [sh, -c, 'echo root >> {}']}}\n",
        log.display()
    ));
    for i in 0..n {
        spec.push_str(&format!(
            "  - {{id: t{i}, command: [sh, -c, 'echo t{i} >> {}; sleep {sleep}'], cpu: 0.5, depends_on: [root]}}\n",
            log.display()
        ));
    }
    let all: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    spec.push_str(&format!(
        "  - {{id: sink, command: [sh, -c, 'echo sink >> {}'], depends_on: [{}]}}\n",
        log.display(),
        all.join(", ")
    ));
    spec
}

fn assert_each_ran_once(dir: &std::path::Path, n: usize) {
    let mut runs = lines(&dir.join("runs.log"));
    runs.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    want.push("root".into());
    want.push("sink".into());
    want.sort();
    assert_eq!(runs, want, "every task ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_stream_records_release_nothing_twice() {
    // Every batch is delivered twice, and most are first delivered cut short at a
    // random record (a function error part-way, then Lambda's retry of the batch), so
    // the retries overlap the first deliveries with different boundaries.
    let h = Harness::start(|o| {
        o.poller.duplicate_batches = true;
        o.poller.retry_cut_short = 0.7;
    })
    .await;
    let job = h.submit(&counted_spec(&h.dir, 30, "0")).await;
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    // Each record is counted once, however often and however cut it was delivered.
    assert_eq!(done["task_counts"]["SUCCEEDED"], 32, "{done}");
    assert_each_ran_once(&h.dir, 30);
    for t in h.all_tasks(&job, None, 100).await {
        assert_eq!(t["attempt"], 1, "{t}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_sqs_deliveries_run_each_task_once() {
    let h = Harness::start(|o| o.workers = 3).await;
    let job = h.submit(&counted_spec(&h.dir, 20, "5")).await;
    let queues = &h.stack.service.queues;
    let jobrec = h.stack.service.store.get_job(&job).await.unwrap().unwrap();
    let mut dupes = Vec::new();
    for i in 0..20 {
        let id = format!("t{i}");
        dupes.push(TaskMessage {
            job_id: job.clone(),
            shard: batchplane::domain::ids::task_shard(&id, jobrec.shard_count),
            task_id: id,
            cpu_milli: 500,
            memory_mib: 512,
            gpu: 0,
            array_child: false,
            windowed: false,
            chained: false,
        });
    }
    // Twice more while every task runs (a copy of a message a worker holds), as SQS may
    // deliver one...
    wait_for("all 20 tasks running at once", MINUTE, || async {
        let running = h.all_tasks(&job, Some("RUNNING"), 100).await.len();
        if running >= 20 {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await;
    for _ in 0..2 {
        queues
            .send("default--t-default", &dupes)
            .await
            .must("sending copies while the tasks run");
    }
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    // ...and once more after each has succeeded.
    queues
        .send("default--t-default", &dupes)
        .await
        .must("sending copies after the tasks succeeded");
    // Every copy is received and dropped: the pool's queue drains.
    let url = queues
        .url("default--t-default")
        .await
        .must("the pool's queue");
    wait_for("the duplicates to be dropped", MINUTE, || async {
        let (visible, in_flight) = queues.depth(&url).await.map_err(|e| e.to_string())?;
        (visible + in_flight == 0)
            .then_some(())
            .ok_or_else(|| format!("{visible} visible, {in_flight} in flight"))
    })
    .await;
    assert_each_ran_once(&h.dir, 20);
    for i in 0..20 {
        let t = h.task(&job, &format!("t{i}")).await;
        assert_eq!(t["attempt"], 1, "{t}");
        assert_eq!(attempts(&t).len(), 1, "{t}");
    }
    h.shutdown().await;
}

/// A worker running tasks of steady length claims the next task just before a slot
/// frees; a task claimed ahead still waits for its slot, so the worker never runs more
/// at once than it has room for, and every task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_claimed_ahead_wait_for_a_free_slot() {
    let h = Harness::start(|o| {
        o.workers = 1;
        o.worker_cpus = 2.0;
    })
    .await;
    let runs = batchplane_testing::shared_file(&h.dir.join("runs.log"));
    let mut spec = String::from("name: steady\ntasks:\n");
    for i in 0..12 {
        spec.push_str(&format!(
            "  - {{id: t{i}, command: [sh, -c, 'echo t{i} >> {}; sleep 0.5']}}\n",
            runs.display()
        ));
    }
    let job = h.submit(&spec).await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let mut ran = lines(&runs);
    ran.sort();
    assert_eq!(ran.len(), 12, "every task ran once: {ran:?}");
    ran.dedup();
    assert_eq!(ran.len(), 12, "no task ran twice");

    // Never more than two processes at once: at each attempt's start, count the
    // attempts already under way (a few ms of slack for the end being stamped after
    // the slot is handed on).
    let mut spans = Vec::new();
    for i in 0..12 {
        let t = h.task(&job, &format!("t{i}")).await;
        let a = &attempts(&t)[0];
        spans.push((millis(&a["started_at"]), millis(&a["finished_at"])));
    }
    for &(start, _) in &spans {
        let under_way = spans
            .iter()
            .filter(|&&(s, f)| s <= start && start < f - 30)
            .count();
        assert!(
            under_way <= 2,
            "{under_way} tasks at once at {start}: {spans:?}"
        );
    }

    // And it did claim ahead once it had seen the tasks' length.
    let workers = h.dir.join("workers");
    let logs = std::fs::read_dir(&workers)
        .unwrap_or_else(|e| panic!("listing worker logs in {}: {e}", workers.display()));
    let mut ahead = 0;
    for entry in logs {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", workers.display()))
            .path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading worker log {}: {e}", path.display()));
        let plain = strip_ansi(&text);
        ahead += plain
            .lines()
            .filter(|l| l.contains("task claimed") && l.contains("ahead=true"))
            .count();
    }
    assert!(ahead > 0, "no task was claimed ahead");
    h.shutdown().await;
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_taskhosts_task_is_claimed_again_after_its_lease() {
    // A lease of six seconds: short enough to keep the test quick, long enough that a
    // heartbeat every two seconds holds it on a machine loaded by other tests (at three,
    // one late heartbeat let the second attempt's lease lapse and a third begin).
    let mut h = Harness::start(|o| {
        o.workers = 1;
        o.lease_seconds = 6;
    })
    .await;
    let marker = batchplane_testing::shared_file(&h.dir.join("attempts.log"));
    let job = h
        .submit(&format!(
            "name: survivor\ntasks:\n  - {{id: slow, command: [sh, -c, 'echo $BATCHPLANE_ATTEMPT >> {0}; sleep 3; echo end $BATCHPLANE_ATTEMPT >> {0}']}}\n",
            marker.display()
        ))
        .await;
    let running = h.wait_task(&job, "slow", "RUNNING", MINUTE).await;
    let first_worker = running["worker_id"].as_str().unwrap().to_string();
    // Kill the worker once the task's process has started (the claim comes a moment
    // before the process: its memory limit is set up in between).
    wait_for("the first attempt's process", MINUTE, || async {
        let seen = lines(&marker);
        (!seen.is_empty())
            .then_some(())
            .ok_or_else(|| format!("{seen:?}"))
    })
    .await;
    assert_eq!(lines(&marker), vec!["1"], "the first attempt started");
    let pid = h.stack.worker_pids()[0];
    h.stack
        .signal_worker(pid, nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    h.stack.spawn_worker().await.unwrap();
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let slow = h.task(&job, "slow").await;
    assert_eq!(slow["attempt"], 2, "{slow}");
    let a = attempts(&slow);
    assert_eq!(a.len(), 2, "{slow}");
    assert_eq!(a[0]["worker_id"], first_worker.as_str());
    assert!(
        a[0]["reason"].as_str().unwrap().contains("lease expired"),
        "{}",
        a[0]
    );
    assert_ne!(a[1]["worker_id"], first_worker.as_str());
    assert_eq!(a[1]["exit_code"], 0);
    // The first attempt died with its worker: it never reached its end, not even
    // after the second one had.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lines(&marker), vec!["1", "2", "end 2"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_rejected_with_their_place_and_write_nothing() {
    let h = Harness::start(|o| o.workers = 0).await;
    let cases: &[(&str, &str, &[&str])] = &[
        ("name: x\ntasks:\n - {id: a, command: ['true'], depends_on: [ghost]}\n", "UnknownDependency", &["\"a\"", "depends_on", "ghost"]),
        ("name: x\ntasks:\n - {id: a, command: ['true']}\n - {id: a, command: ['true']}\n", "DuplicateTaskId", &["\"a\"", "tasks[1]"]),
        ("name: x\ntasks:\n - {id: 'a/b', command: ['true']}\n", "InvalidTaskId", &["a/b", "id"]),
        ("name: x\ntasks:\n - {id: a, command: ['true'], depends_on: [b]}\n - {id: b, command: ['true'], depends_on: [a]}\n", "DependencyCycle", &["a -> b -> a"]),
        ("name: x\ntasks:\n - {id: a, command: []}\n", "EmptyCommand", &["\"a\"", "command"]),
        ("name: x\ntasks:\n - {id: a, command: ['true']\n", "ParseError", &["line"]),
        ("{\"name\": \"x\", \"tasks\": [\n  {\"id\": \"a\", \"command\": [\"true\"],}\n]}", "ParseError", &["line 2"]),
        ("name: x\nqueue: nowhere\ntasks:\n - {id: a, command: ['true']}\n", "UnknownQueue", &["nowhere"]),
    ];
    for (spec, code, needles) in cases {
        let r = h.post("/v1/jobs", spec).await;
        assert_eq!(r.status, 400, "{spec}: {}", r.body);
        assert_eq!(r.body["error"]["code"], *code, "{spec}: {}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        for n in *needles {
            assert!(
                message.contains(n),
                "{code}: {message:?} should mention {n:?}"
            );
        }
    }
    let cycle = h.post("/v1/jobs", cases[3].0).await;
    assert_eq!(
        cycle.body["error"]["details"]["cycle"],
        serde_json::json!(["a", "b", "a"])
    );
    let parse = h.post("/v1/jobs", cases[5].0).await;
    assert!(parse.body["error"]["details"]["line"].as_u64().unwrap() >= 3);
    // Nothing was written.
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(
            &batchplane::aws::sdk_config(&batchplane::aws::Endpoints {
                dynamodb: Some(h.emulators.dynamodb_url.clone()),
                sqs: None,
                ..Default::default()
            })
            .await,
        )
        .endpoint_url(&h.emulators.dynamodb_url)
        .build(),
    );
    let scan = ddb
        .scan()
        .table_name(&h.stack.opts.table)
        .send()
        .await
        .unwrap();
    // The stack's own placement records (clusters, its team's quota) are not the job's.
    let job_items: Vec<_> = scan
        .items()
        .iter()
        .filter(|it| {
            let pk = it
                .get("pk")
                .and_then(|v| v.as_s().ok())
                .map_or("", |s| s.as_str());
            ![
                "CLUSTERS",
                "TEAMS",
                "TEAM#",
                "RESERVATIONS#",
                "PLACEMENT#",
                "WORKERS",
            ]
            .iter()
            .any(|p| pk.starts_with(p))
        })
        .collect();
    assert!(
        job_items.is_empty(),
        "a rejected job writes nothing: {job_items:?}"
    );
    // Unknown jobs and routes are 404s with the same error shape.
    let r = h.get("/v1/jobs/j-nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "NotFound");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job() {
    let h = Harness::start(|o| o.workers = 0).await;
    let spec = "name: once\ntasks:\n - {id: a, command: ['true']}\n";
    let send = || {
        h.http
            .post(h.url("/v1/jobs"))
            .header("Idempotency-Key", "nightly-2026-11-22")
            .body(spec)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_hold_long_tasks_timeouts_kill_and_idle_workers_exit() {
    // Idle long enough to outlast the wait for its first message on a loaded machine
    // (a worker counts its idle time from its start): at 2 s, a slow first release
    // once left the job RUNNABLE with no worker.
    let mut h = Harness::start(|o| {
        o.workers = 1;
        // Heartbeats 2 s apart: one may come 4 s late (a loaded machine) before the
        // lease lapses. The task outlives three heartbeats.
        o.lease_seconds = 6;
        o.idle_timeout_seconds = 8;
    })
    .await;
    let job = h
        .submit(
            r#"
name: lease-and-timeout
tasks:
  - {id: longer-than-the-lease, command: [sleep, "9"]}
  - {id: too-slow, command: [sleep, "60"], timeout_seconds: 1}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let long = h.task(&job, "longer-than-the-lease").await;
    assert_eq!(long["state"], "SUCCEEDED", "{long}");
    assert_eq!(
        long["attempt"], 1,
        "heartbeats kept the lease: no second attempt"
    );
    let slow = h.task(&job, "too-slow").await;
    assert_eq!(slow["state"], "FAILED");
    assert!(
        slow["status_reason"]
            .as_str()
            .unwrap()
            .starts_with("Job attempt duration exceeded timeout"),
        "{slow}"
    );
    let a = &attempts(&slow)[0];
    assert_eq!(a["signal"], Value::Null);
    let ran = millis(&a["finished_at"]) - millis(&a["started_at"]);
    assert!(
        (900..10_000).contains(&ran),
        "killed after about a second, not 60: {ran} ms"
    );
    // With nothing left to run, the worker exits after its idle time.
    let pid = h.stack.worker_pids()[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !h.stack.worker_exited(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "idle worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_strategy_retries_failures_and_evaluate_on_exit_can_stop_it() {
    let h = Harness::start(|_| {}).await;
    let job = h
        .submit(
            r#"
name: retries
retry_strategy: {attempts: 3}
tasks:
  - {id: flaky, command: [sh, -c, 'test "$BATCHPLANE_ATTEMPT" -ge 2']}
  - {id: always-fails, command: [sh, -c, 'exit 4']}
  - id: fatal
    command: [sh, -c, 'exit 3']
    retry_strategy:
      attempts: 5
      evaluate_on_exit:
        - {on_exit_code: "3", action: EXIT}
  - id: after-flaky
    command: ['true']
    depends_on: [flaky]
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let flaky = h.task(&job, "flaky").await;
    assert_eq!(flaky["state"], "SUCCEEDED", "{flaky}");
    assert_eq!(flaky["attempt"], 2);
    let a = attempts(&flaky);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["exit_code"], 1);
    assert_eq!(a[1]["exit_code"], 0);
    assert_eq!(h.task(&job, "after-flaky").await["state"], "SUCCEEDED");
    let always = h.task(&job, "always-fails").await;
    assert_eq!(always["state"], "FAILED");
    assert_eq!(
        attempts(&always).len(),
        3,
        "all three attempts used: {always}"
    );
    assert_eq!(always["status_reason"], "exit code 4");
    let fatal = h.task(&job, "fatal").await;
    assert_eq!(fatal["state"], "FAILED");
    assert_eq!(
        attempts(&fatal).len(),
        1,
        "the EXIT rule stopped the retries: {fatal}"
    );
    assert_eq!(fatal["retry_strategy"]["attempts"], 5);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_carry_sampled_memory_and_no_gpu_figures_without_a_gpu() {
    let h = Harness::start(|o| o.workers = 1).await;
    let job = h
        .submit(
            "name: memory\ntasks:\n  - {id: big, command: [python3, -c, 'x = bytearray(200 * 1024 * 1024); import time; time.sleep(0.5)']}\n",
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let big = h.task(&job, "big").await;
    let a = &attempts(&big)[0];
    let peak = a["peak_rss_kib"].as_u64().unwrap();
    assert!(
        peak >= 200 * 1024,
        "sampled peak RSS covers the 200 MiB: {a}"
    );
    assert!(a["avg_rss_kib"].as_u64().unwrap() <= peak);
    assert!(a["wall_seconds"].as_f64().unwrap() >= 0.5);
    // This machine has no GPU: the GPU figures are absent, not zero.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(a.get("gpu_peak_memory_mib").is_none(), "{a}");
        assert!(a.get("gpu_utilization_percent").is_none(), "{a}");
    }
    h.shutdown().await;
}

/// A long attempt keeps its use over its life, a point a step: memory as it grew, CPU
/// as it was busy then idle; a short one keeps only its totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_attempt_carries_its_memory_and_cpu_over_its_life() {
    let h = Harness::start(|o| o.workers = 1).await;
    let job = h
        .submit(
            r#"
name: phases
tasks:
  - id: phases
    command:
      - python3
      - -c
      - |
        import time
        small = bytearray(64 * 1024 * 1024)
        end = time.time() + 2
        while time.time() < end:
            pass
        big = bytearray(256 * 1024 * 1024)
        time.sleep(4)
  - {id: short, command: ["true"]}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let phases = h.task(&job, "phases").await;
    let a = &attempts(&phases)[0];
    let u = &a["usage_series"];
    let series = |k: &str| -> Vec<u64> {
        u[k].as_array()
            .unwrap_or_else(|| panic!("{k} in {u}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let (rss, cpu) = (series("rss_mib"), series("cpu_percent"));
    let step = u["step_ms"].as_u64().unwrap();
    assert_eq!(rss.len(), cpu.len(), "{u}");
    let lived = step * rss.len() as u64;
    assert!((6_000..=20_000).contains(&lived), "six seconds or so: {u}");
    // The first two seconds: 64 MiB and a busy core; the last three: 320 MiB, idle.
    let two_s = (2_000 / step) as usize;
    let early_rss = rss[..two_s].iter().max().unwrap();
    let late_rss = rss[rss.len() - 3..].iter().max().unwrap();
    assert!((64..200).contains(early_rss), "{u}");
    assert!(*late_rss >= 320, "{u}");
    // How much CPU a busy loop gets depends on what else the machine runs; that it was
    // busy first and idle after does not, nor that the steps add up to what getrusage
    // measured.
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let (busy, idle) = (
        mean(&cpu[..two_s]),
        mean(&cpu[cpu.len() - 5..cpu.len() - 1]),
    );
    assert!(
        busy >= 10.0 && busy > 4.0 * idle,
        "busy at first, idle after: {u}"
    );
    let from_steps = cpu.iter().map(|c| c * step).sum::<u64>() as f64 / 100_000.0;
    let measured = a["cpu_user_seconds"].as_f64().unwrap_or(0.0)
        + a["cpu_system_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        (from_steps - measured).abs() <= 0.1 + measured / 10.0,
        "the steps add up to {from_steps} s, getrusage says {measured} s: {u}"
    );
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(u.get("gpu_memory_mib").is_none(), "{u}");
    }
    let short = h.task(&job, "short").await;
    assert!(attempts(&short)[0].get("usage_series").is_none(), "{short}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reports_requested_versus_used_cpu_and_memory() {
    let h = Harness::start(|_| {}).await;
    let job = h
        .submit(
            r#"
name: usage
tasks:
  - {id: idle, command: [sleep, "1"], cpu: 2, memory_mib: 1024}
  - {id: busy, command: [python3, -c, "print(sum(range(20000000)))"], cpu: 1, memory_mib: 256}
"#,
        )
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let u = &done["usage"];
    assert_eq!(u["attempts"], 2.0, "{u}");
    let requested = u["cpu_seconds_requested"].as_f64().unwrap();
    let used = u["cpu_seconds_used"].as_f64().unwrap();
    // idle reserves 2 vCPUs and 1024 MiB for at least 1 s and uses almost none; busy
    // does a fixed amount of real CPU work whose wall time depends on the machine, so
    // only idle's share of the request is certain.
    assert!(requested >= 2.0, "{u}");
    assert!(used >= 0.1 && used < requested, "{u}");
    let mem_req = u["memory_mib_seconds_requested"].as_f64().unwrap();
    let mem_used = u["memory_mib_seconds_used"].as_f64().unwrap();
    assert!(
        mem_req >= 1024.0 && mem_used > 0.0 && mem_used < mem_req,
        "{u}"
    );
    let out = std::process::Command::new(binary("batchplane"))
        .args(["usage", &job, "--api-url", &h.stack.api_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cpu") && text.contains("memory") && text.contains('%'),
        "{text}"
    );
    // The team's rollup holds the job once it has closed (its own table: one job).
    let team = wait_for("the team's rollup to hold the job", MINUTE, || async {
        let team = h.get("/v1/teams/default/usage?days=1").await.body;
        if team["jobs"] == 1 {
            Ok(team)
        } else {
            Err(team.to_string())
        }
    })
    .await;
    assert_eq!(team["usage"], done["usage"], "{team}");
    let out = std::process::Command::new(binary("batchplane"))
        .args(["usage", "--team", "default", "--api-url", &h.stack.api_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("team default: 1 jobs"), "{text}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_several_jobs_is_submitted_whole_and_waited_on() {
    let h = Harness::start(|_| {}).await;
    let file = h.dir.join("two.yaml");
    std::fs::write(
        &file,
        "name: ok\ntasks:\n  - {id: a, command: ['true']}\n---\nname: broken\ntasks:\n  - {id: b, command: ['false'], retry_strategy: {attempts: 1}}\n",
    )
    .must("writing the file");
    let file = file.to_string_lossy().into_owned();
    let args = ["submit", &file, "--wait", "--idempotency-key", "nightly"];
    let out = h.cli_as(None, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids: Vec<&str> = job_ids(&stdout);
    assert_eq!(ids.len(), 2, "both jobs were submitted: {stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "one of them failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let states: Vec<String> = {
        let mut s = Vec::new();
        for id in &ids {
            s.push(
                h.wait(id, MINUTE).await["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
        s
    };
    assert_eq!(states, ["SUCCEEDED", "FAILED"], "waited on both: {stdout}");
    // The same file and key again: the same two jobs, none submitted twice.
    let again = h.cli_as(None, &["submit", &file, "--idempotency-key", "nightly"]);
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    let again_ids: Vec<&str> = job_ids(&again);
    assert_eq!(again_ids, ids, "{again}");
    // --job picks one.
    let one = h.cli(&["submit", &file, "--job", "ok"]);
    assert_eq!(job_ids(&one).len(), 1, "{one}");
    h.shutdown().await;
}

/// The job ids `batchplane submit` printed, one a line (its summaries name them too).
fn job_ids(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("j-")).collect()
}

/// The CLI checks every job of a file as the API would before sending any: a file whose
/// second job has a cycle sends nothing (the API here is a closed port, so a request
/// would have failed otherwise), and the error names the job and the cycle.
/// `--dry-run` checks a good file and says what it holds.
#[test]
fn the_cli_checks_a_whole_file_before_sending_any_of_it() {
    let dir = batchplane_testing::scratch_dir("cli-validate");
    let file = dir.join("two.yaml");
    std::fs::write(
        &file,
        "name: fine\ntasks:\n  - {id: a, command: ['true']}\n---\nname: looped\ntasks:\n  - {id: x, command: ['true'], depends_on: [y]}\n  - {id: y, command: ['true'], depends_on: [x]}\n",
    )
    .must("writing the file");
    let nowhere = "http://127.0.0.1:1";
    let out = std::process::Command::new(binary("batchplane"))
        .args(["submit", &file.to_string_lossy(), "--api-url", nowhere])
        .output()
        .must("running batchplane");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("job 2 of 2 (looped)")
            && (stderr.contains("x -> y -> x") || stderr.contains("y -> x -> y"))
            && stderr.contains("nothing was submitted"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no job id: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "name: fine\ntasks:\n  - {id: a, command: ['true']}\n  - {id: b, command: ['true'], depends_on: [a]}\n",
    )
    .must("writing the file");
    let out = std::process::Command::new(binary("batchplane"))
        .args([
            "submit",
            &good.to_string_lossy(),
            "--dry-run",
            "--api-url",
            nowhere,
        ])
        .output()
        .must("running batchplane");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 job(s), 2 task(s) valid") && stdout.contains("nothing sent"),
        "{stdout}"
    );
}
