//! A task cannot reach its neighbours or its worker: it runs as a uid of its own, so it
//! cannot read another task's environment or log, signal it, or read the taskhost's
//! credentials; its cgroup is root's, so it cannot raise its memory limit or leave; and
//! a cancel (or the end of its main process) kills everything it started, `setsid`
//! children too. These need the taskhost to be root, as CI's is; a taskhost that is not
//! (or has isolation off) records `isolation: none`, and explain says so.

use batchplane_testing::{attempts, wait_for, Harness};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Every process whose argv is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// What the snooping task tries; it exits with the first code whose attempt worked.
const SNOOP: &str = r#"
m="marker-""3e7"
for i in $(seq 1 100); do
  pids=$(grep -l "$m" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)
  [ -n "$pids" ] && break
  sleep 0.1
done
[ -n "$pids" ] || { echo "never saw the neighbour"; exit 10; }
for pid in $pids; do
  if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -q s3cret; then echo "read the neighbour's environment"; exit 11; fi
  if kill -0 $pid 2>/dev/null; then echo "may signal the neighbour $pid"; exit 14; fi
done
if grep -qs s3cret "$LOGS/$BATCHPLANE_JOB_ID/secret/attempt-1.stdout"; then echo "read the neighbour's log"; exit 12; fi
if ls "$LOGS/$BATCHPLANE_JOB_ID/secret/" >/dev/null 2>&1; then echo "listed the neighbour's files"; exit 13; fi
if env | grep -qE '^AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)='; then echo "has AWS credentials in its environment"; exit 15; fi
for p in /proc/[0-9]*; do
  if tr '\0' '\n' < $p/environ 2>/dev/null | grep -q '^AWS_SECRET_ACCESS_KEY='; then echo "read credentials of $p"; exit 16; fi
done
cg=$(grep -E '^[0-9]+:(memory|[^:]*,memory[^:]*):' /proc/self/cgroup | cut -d: -f3)
if [ -n "$cg" ] && [ -d "/sys/fs/cgroup/memory$cg" ]; then
  d="/sys/fs/cgroup/memory$cg"
  if echo 9999999999999 > "$d/memory.limit_in_bytes" 2>/dev/null; then echo "raised its memory limit"; exit 17; fi
  if echo $$ > "$d/../cgroup.procs" 2>/dev/null; then echo "left its cgroup"; exit 18; fi
  echo "cgroup held: $d"
fi
v2=$(grep '^0::' /proc/self/cgroup | cut -d: -f3)
for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  if [ -n "$v2" ] && [ -f "$root$v2/memory.max" ]; then
    if echo max > "$root$v2/memory.max" 2>/dev/null; then echo "raised its memory limit"; exit 17; fi
  fi
done
[ "$(id -u)" != 0 ] || { echo "runs as root"; exit 19; }
echo "isolated as uid $(id -u) in $(pwd)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cannot_read_or_signal_its_neighbour_or_its_worker() {
    if !is_root() {
        eprintln!("skipped: the taskhost must be root to run tasks as other uids");
        return;
    }
    let h = Harness::start(|o| {
        o.workers = 1;
        o.lease_seconds = 3;
    })
    .await;
    let logs = h.dir.join("tasks");
    let indented: String = SNOOP.lines().map(|l| format!("        {l}\n")).collect();
    let spec = format!(
        r#"
name: neighbours
tasks:
  - id: secret
    command: [sh, -c, 'echo marker-3e7 $TOKEN; sleep 30']
    env: {{TOKEN: s3cret-token}}
    memory_mib: 64
  - id: snoop
    memory_mib: 64
    env: {{LOGS: "{}"}}
    command:
      - sh
      - -c
      - |
{indented}"#,
        logs.display()
    );
    let job = h.submit(&spec).await;
    let snoop = h.wait_task(&job, "snoop", "SUCCEEDED", MINUTE).await;
    let a = &attempts(&snoop)[0];
    let out = std::fs::read_to_string(
        a["stdout"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("file://"),
    )
    .unwrap_or_default();
    assert!(out.contains("isolated as uid"), "{out}");
    assert_eq!(a["isolation"], "uid", "{a}");
    assert!(a["uid"].as_u64().is_some_and(|u| u >= 100_000), "{a}");
    let secret = h.task(&job, "secret").await;
    assert_eq!(
        secret["state"], "RUNNING",
        "the neighbour was left alone: {secret}"
    );
    // Logs are the worker's alone, and a finished attempt's working directory is gone.
    let log = logs.join(&job).join("snoop").join("attempt-1.stdout");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "{} is open to others: {mode:o}",
        log.display()
    );
    assert!(!logs
        .join(&job)
        .join("snoop")
        .join("attempt-1.work")
        .exists());
    let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kills_a_setsid_child_and_an_exit_kills_what_was_left_behind() {
    escapes_are_killed(None, 3001).await;
}

/// The same without a cgroup to find the processes by: the shim, a child subreaper,
/// finds them as its descendants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_a_setsid_child_still_dies_with_its_task() {
    escapes_are_killed(Some("poll"), 3101).await;
}

async fn escapes_are_killed(memory_enforcement: Option<&str>, base: u32) {
    let h = Harness::start(|o| {
        o.workers = 1;
        o.memory_enforcement = memory_enforcement.map(String::from);
        // Heartbeats a second apart: a cancel reaches the worker within one.
        o.lease_seconds = 3;
    })
    .await;
    let (left, escaped, main) = (
        base.to_string(),
        (base + 1).to_string(),
        (base + 2).to_string(),
    );
    let spec = format!(
        "name: escapes\ntasks:\n  - {{id: leaver, command: [sh, -c, 'sleep {left} & exit 0']}}\n  - {{id: escaper, command: [sh, -c, 'setsid sleep {escaped} & sleep {main}']}}\n"
    );
    let job = h.submit(&spec).await;
    h.wait_task(&job, "leaver", "SUCCEEDED", MINUTE).await;
    wait_for(
        "the leaver's background child to be killed",
        Duration::from_secs(5),
        || async {
            let left = processes(&["sleep", &left]);
            left.is_empty()
                .then_some(())
                .ok_or_else(|| format!("{left:?}"))
        },
    )
    .await;
    wait_for("the escaper's setsid child", MINUTE, || async {
        let seen = processes(&["sleep", &escaped]);
        (!seen.is_empty())
            .then_some(())
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    let r = h.post(&format!("/v1/jobs/{job}/cancel"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(
        "every process of the cancelled task to be gone",
        Duration::from_secs(10),
        || async {
            let left = [
                processes(&["sleep", &escaped]),
                processes(&["sleep", &main]),
            ]
            .concat();
            left.is_empty()
                .then_some(())
                .ok_or_else(|| format!("still running: {left:?}"))
        },
    )
    .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "CANCELLED", "{done}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_isolation_says_so_on_every_attempt_and_explain_shows_it() {
    let h = Harness::start(|o| {
        o.workers = 1;
        o.task_uids = Some("none".into());
    })
    .await;
    let job = h
        .submit("name: plain\ntasks:\n  - {id: a, command: ['true']}\n")
        .await;
    let done = h.wait(&job, MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    let a = h.task(&job, "a").await;
    assert_eq!(attempts(&a)[0]["isolation"], "none", "{a}");
    let why = h.explain(&job, "a").await;
    assert!(
        why["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["code"] == "NotIsolated"),
        "{why}"
    );
    h.shutdown().await;
}

/// The quick start's job (the first of `samples.yaml`) runs to success with its tasks
/// isolated: they share only the directory they open to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_starts_sample_job_succeeds_with_tasks_isolated() {
    let samples = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../samples.yaml"))
        .unwrap_or_else(|e| panic!("reading samples.yaml: {e}"));
    let first = samples.split("\n---\n").next().unwrap_or_default();
    let h = Harness::start(|o| o.workers = 2).await;
    let job = h.submit(first).await;
    let done = h.wait(&job, 2 * MINUTE).await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["task_counts"]["SUCCEEDED"], 12, "{done}");
    h.shutdown().await;
}
