//! The shim holds a task to its memory limit with each mechanism this host offers, and
//! tells an out-of-memory kill apart from the task's own failure.

use serde_json::Value;
use std::process::Command;

fn run(limit_mib: u64, how: &str, alloc_mib: u64, exit_code: i32) -> Value {
    let dir =
        std::env::temp_dir().join(format!("bp-shim-{}-{how}-{alloc_mib}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let report = dir.join("report.json");
    let script = format!(
        "import sys, time\nx = b'x' * ({alloc_mib} << 20)\ntime.sleep(0.5)\nsys.exit({exit_code})"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--memory-limit-mib", &limit_mib.to_string()])
        .args(["--memory-enforcement", how])
        .args(["--", "python3", "-c", &script])
        .status()
        .expect("running taskhost exec");
    assert!(status.success(), "the shim itself failed: {status}");
    let text = std::fs::read_to_string(&report).expect("the shim wrote no report");
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_str(&text).expect("the report is JSON")
}

#[test]
fn polling_kills_a_task_that_grows_past_its_limit_and_spares_one_within_it() {
    let over = run(64, "rlimit+rss-poll", 200, 0);
    assert_eq!(over["out_of_memory"], true, "{over}");
    assert_eq!(over["memory_enforcement"], "rlimit+rss-poll", "{over}");
    assert_eq!(over["signal"], 9, "{over}");

    let within = run(256, "rlimit+rss-poll", 64, 0);
    assert_eq!(within["out_of_memory"], false, "{within}");
    assert_eq!(within["exit_code"], 0, "{within}");
    assert!(
        within["peak_rss_kib"].as_u64().unwrap_or(0) >= 64 * 1024,
        "{within}"
    );
}

#[test]
fn the_hosts_best_mechanism_kills_an_oom_and_not_an_ordinary_failure() {
    let over = run(64, "auto", 200, 0);
    let how = over["memory_enforcement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["cgroup-v2", "cgroup-v1", "rlimit+rss-poll"].contains(&how.as_str()),
        "{over}"
    );
    eprintln!("this host holds tasks to their memory with {how}");
    assert_eq!(over["out_of_memory"], true, "{over}");

    // A task that fails by itself, well within its limit, is not an OOM.
    let failed = run(256, "auto", 16, 3);
    assert_eq!(failed["out_of_memory"], false, "{failed}");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert_eq!(failed["memory_enforcement"], how.as_str(), "{failed}");
}
