//! A record of what actually ran, kept outside Batchplane: each task's command appends
//! `start`, a `tick` every so often, and `end` lines (job, task, attempt, time, pid) to
//! a ledger file, so a test or the chaos run can check from the processes themselves,
//! not from the system's own account, that every task ran, how often, and that no two
//! executions of one task overlapped. A killed execution has no `end`; its last tick
//! is when it was last seen alive.

use std::collections::BTreeMap;
use std::path::Path;

/// A shell command for a task that records itself in `ledger`: it runs for `ticks` ×
/// `tick_ms`, then exits 1 on its first `fail_attempts` attempts and 0 after (its `end`
/// line carries the exit code).
pub fn task_command(ledger: &Path, ticks: u32, tick_ms: u32, fail_attempts: u32) -> Vec<String> {
    let line = |event: &str, extra: &str| {
        format!(
            "echo {event} $BATCHPLANE_JOB_ID $BATCHPLANE_TASK_ID $BATCHPLANE_ATTEMPT $(date +%s%3N) $${extra} >> '{}'",
            ledger.display()
        )
    };
    let seconds = f64::from(tick_ms) / 1000.0;
    let script = format!(
        "{}; i=0; while [ $i -lt {ticks} ]; do sleep {seconds}; {}; i=$((i+1)); done; code=0; [ \"$BATCHPLANE_ATTEMPT\" -le {fail_attempts} ] && code=1; {}; exit $code",
        line("start", ""),
        line("tick", ""),
        line("end", " $code"),
    );
    vec!["sh".into(), "-c".into(), script]
}

/// One execution of a task: an attempt's process, as the ledger saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub job_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub pid: u32,
    pub started_at: i64,
    /// Its last line's time: its end, or the last tick before it was killed.
    pub last_seen: i64,
    pub ended: bool,
    /// How it exited, when it reached its end.
    pub exit_code: Option<i32>,
}

/// Every execution the ledger records, in the order they started.
pub fn read(ledger: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut by_key: BTreeMap<(String, String, u32, u32), Execution> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (event, job, task, attempt, at, pid, code) = match f[..] {
            [event, job, task, attempt, at, pid] => (event, job, task, attempt, at, pid, None),
            [event, job, task, attempt, at, pid, code] => {
                (event, job, task, attempt, at, pid, code.parse().ok())
            }
            _ => continue,
        };
        let (Ok(attempt), Ok(at), Ok(pid)) = (attempt.parse(), at.parse::<i64>(), pid.parse())
        else {
            continue;
        };
        let e = by_key
            .entry((job.into(), task.into(), attempt, pid))
            .or_insert_with(|| Execution {
                job_id: job.into(),
                task_id: task.into(),
                attempt,
                pid,
                started_at: at,
                last_seen: at,
                ended: false,
                exit_code: None,
            });
        if event == "start" {
            e.started_at = e.started_at.min(at);
        }
        e.last_seen = e.last_seen.max(at);
        if event == "end" {
            e.ended = true;
            e.exit_code = code;
        }
    }
    let mut all: Vec<Execution> = by_key.into_values().collect();
    all.sort_by_key(|e| e.started_at);
    all
}

/// Pairs of executions of one task that were alive at the same time.
pub fn overlaps(executions: &[Execution]) -> Vec<(Execution, Execution)> {
    let mut by_task: BTreeMap<(&str, &str), Vec<&Execution>> = BTreeMap::new();
    for e in executions {
        by_task
            .entry((e.job_id.as_str(), e.task_id.as_str()))
            .or_default()
            .push(e);
    }
    let mut found = Vec::new();
    for runs in by_task.values() {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if b.started_at <= a.last_seen && a.started_at <= b.last_seen {
                    found.push(((*a).clone(), (*b).clone()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_read_back_and_overlaps_found() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("ledger");
        std::fs::write(
            &path,
            "start j a 1 100 7\ntick j a 1 200 7\nstart j a 2 150 8\ntick j a 2 300 8\nend j a 2 400 8\nstart j b 1 100 9\nend j b 1 120 9\nstart j b 2 130 10\ngarbage\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let runs = read(&path);
        assert_eq!(runs.len(), 4);
        let a1 = runs
            .iter()
            .find(|e| e.task_id == "a" && e.attempt == 1)
            .unwrap_or_else(|| panic!("{runs:?}"));
        assert_eq!((a1.started_at, a1.last_seen, a1.ended), (100, 200, false));
        let o = overlaps(&runs);
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!((o[0].0.attempt, o[0].1.attempt), (1, 2));
        assert_eq!(o[0].0.task_id, "a");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_command_runs_and_records_itself() {
        let dir = std::env::temp_dir().join(format!("ledger-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("ledger");
        let argv = task_command(&path, 2, 10, 1);
        let status = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("BATCHPLANE_JOB_ID", "j")
            .env("BATCHPLANE_TASK_ID", "t")
            .env("BATCHPLANE_ATTEMPT", "1")
            .status()
            .unwrap_or_else(|e| panic!("running the ledger command: {e}"));
        assert_eq!(status.code(), Some(1), "attempt 1 of a task failing once");
        let runs = read(&path);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].ended && runs[0].last_seen >= runs[0].started_at);
        assert_eq!(runs[0].exit_code, Some(1));
        let _ = std::fs::remove_dir_all(dir);
    }
}
