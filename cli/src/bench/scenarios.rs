//! The benchmark's scenarios (flat no-op and sleep jobs, a DAG) and their floor: the same
//! commands run level by level by `xargs -P` at the same parallelism.

use anyhow::Context;
use serde_json::{json, Value};
use std::time::Instant;

pub(super) struct Scenario {
    pub(super) name: &'static str,
    pub(super) spec: Value,
    /// Levels of commands for the floor: each level runs under xargs after the previous.
    pub(super) levels: Vec<Vec<String>>,
}

pub(super) fn task(id: &str, cmd: &str, deps: &[String]) -> Value {
    json!({"id": id, "command": ["sh", "-c", cmd], "cpu": 1, "memory_mib": 64, "depends_on": deps})
}

pub(super) fn flat(name: &'static str, n: usize, cmd: &str) -> Scenario {
    let tasks: Vec<Value> = (0..n).map(|i| task(&format!("t{i}"), cmd, &[])).collect();
    Scenario {
        name,
        spec: json!({"name": format!("bench-{name}"), "tasks": tasks}),
        levels: vec![vec![cmd.to_string(); n]],
    }
}

/// Ten levels alternating one task and `width` tasks: fan-out, fan-in, five times.
pub(super) fn dag(width: usize) -> Scenario {
    let cmd = "sleep 0.5";
    let mut tasks = Vec::new();
    let mut levels = Vec::new();
    let mut prev: Vec<String> = Vec::new();
    for level in 0..10 {
        let n = if level % 2 == 0 { 1 } else { width };
        let ids: Vec<String> = (0..n).map(|i| format!("l{level}-{i}")).collect();
        for id in &ids {
            tasks.push(task(id, cmd, &prev));
        }
        levels.push(vec![cmd.to_string(); n]);
        prev = ids;
    }
    Scenario {
        name: "dag",
        spec: json!({"name": "bench-dag", "tasks": tasks}),
        levels,
    }
}

/// Run the levels with `xargs -P parallelism`, one level after another.
pub(super) fn floor(levels: &[Vec<String>], parallelism: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for level in levels {
        let mut child = std::process::Command::new("xargs")
            .args([
                "-P",
                &parallelism.to_string(),
                "-I{}",
                "-d",
                "\n",
                "sh",
                "-c",
                "{}",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running xargs")?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("xargs stdin")?;
            stdin.write_all(level.join("\n").as_bytes())?;
        }
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "xargs failed: {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}
