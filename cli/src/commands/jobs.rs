//! The job commands: submit, status, tasks, task, logs, cancel, add.

use crate::client::Api;
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

const STATES: [&str; 7] = [
    "PENDING",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
];

/// The jobs in a spec file: one document, or several separated by `---`.
pub fn read_jobs(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut jobs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| {
            let loc = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow::anyhow!("{}{loc}: {e}", file.display())
        })?;
        if !v.is_null() {
            jobs.push(v);
        }
    }
    if jobs.is_empty() {
        bail!("{}: no job in the file", file.display());
    }
    Ok(jobs)
}

/// Pick one job from a file by name, or the first.
pub fn pick_job(file: &Path, name: Option<&str>) -> anyhow::Result<Value> {
    let jobs = read_jobs(file)?;
    match name {
        None => Ok(jobs[0].clone()),
        Some(n) => jobs
            .into_iter()
            .find(|j| j["name"].as_str() == Some(n))
            .with_context(|| format!("{}: no job named {n:?}", file.display())),
    }
}

/// Check every job of a spec file as the API checks it (the same parser and rules),
/// before anything is sent: a file with a bad job submits none of its jobs. The error
/// names the job and, from the spec's own check, the task, field or line. Returns each
/// job's parsed DAG spec (`None` for a single or array job).
pub fn validate(
    file: &Path,
    jobs: &[Value],
) -> anyhow::Result<Vec<Option<batchplane::domain::spec::JobSpec>>> {
    use batchplane::domain::spec::{parse_submission, Submission};
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let what = job["name"].as_str().unwrap_or("(unnamed)");
            match parse_submission(&job.to_string()) {
                Ok(Submission::Dag(spec)) => Ok(Some(spec)),
                Ok(Submission::Array(_)) => Ok(None),
                Err(e) => bail!(
                    "{}: job {} of {} ({what}): {} (nothing was submitted)",
                    file.display(),
                    i + 1,
                    jobs.len(),
                    e.message
                ),
            }
        })
        .collect()
}

/// `submit --dry-run`: read and check the file, say what it holds and how long that
/// took; send nothing.
pub fn dry_run(file: &Path, name: Option<&str>) -> anyhow::Result<u8> {
    let started = Instant::now();
    let jobs = match name {
        Some(_) => vec![pick_job(file, name)?],
        None => read_jobs(file)?,
    };
    let read = started.elapsed();
    let specs = validate(file, &jobs)?;
    println!(
        "{}: {} job(s), {} task(s) valid; read in {:.2} s, checked in {:.2} s; nothing sent",
        file.display(),
        jobs.len(),
        specs.iter().flatten().map(|s| s.tasks.len()).sum::<usize>(),
        read.as_secs_f64(),
        (started.elapsed() - read).as_secs_f64()
    );
    Ok(0)
}

/// Submit the file's jobs (or the one `name` picks), printing each job id; with `wait`,
/// wait for every one and succeed only if all did. With several jobs, each gets its own
/// idempotency key: `KEY-<n>`, `n` its place in the file, so a retry of the whole file
/// submits none twice. A DAG of more than `page_tasks` tasks goes in pages.
pub async fn submit(
    api: &Api,
    file: &Path,
    name: Option<&str>,
    wait: bool,
    key: Option<&str>,
    page_tasks: usize,
) -> anyhow::Result<u8> {
    let jobs = match name {
        Some(_) => vec![pick_job(file, name)?],
        None => read_jobs(file)?,
    };
    // Every job is checked here first: a file with a bad job sends none.
    let specs = validate(file, &jobs)?;
    let several = jobs.len() > 1;
    let mut ids = Vec::new();
    for (i, (job, spec)) in jobs.iter().zip(&specs).enumerate() {
        let key = key.map(|k| match several {
            true => format!("{k}-{i}"),
            false => k.to_string(),
        });
        let what = job["name"].as_str().unwrap_or("(unnamed)");
        let sent = match spec {
            Some(spec) if spec.tasks.len() > page_tasks && !spec.open => {
                super::pages::submit_in_pages(api, spec, key.as_deref(), page_tasks)
                    .await
                    .map(|job_id| serde_json::json!({ "job_id": job_id }))
            }
            _ => api.post("/v1/jobs", job.to_string(), key.as_deref()).await,
        };
        let resp = sent.with_context(|| match several {
            true => format!(
                "submitting job {} of {} ({what}); those before it were submitted: {}",
                i + 1,
                jobs.len(),
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            ),
            false => format!("submitting {what}"),
        })?;
        let job_id = resp["job_id"]
            .as_str()
            .context("the API answered without a job_id")?
            .to_string();
        println!("{job_id}");
        ids.push(job_id);
    }
    if !wait {
        return Ok(0);
    }
    let mut all_succeeded = true;
    for job_id in &ids {
        let job = wait_for(api, job_id, !several).await?;
        print_summary(&job);
        all_succeeded &= job["state"] == "SUCCEEDED";
    }
    Ok(if all_succeeded { 0 } else { 1 })
}

fn counts_line(job: &Value) -> String {
    STATES
        .iter()
        .filter_map(|s| {
            let n = job["task_counts"][s].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{s} {n}"))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// How often [`wait_for`] looks at first, and at most how long it lets pass between
/// looks once a job has run a while. A look reads the job's count items, of which a
/// fast job has one per stream batch of the last quarter hour: thousands, for a big one.
const FIRST_POLL: Duration = Duration::from_millis(250);
const LONGEST_POLL: Duration = Duration::from_secs(5);

/// The pause after `pause`: half as long again, up to [`LONGEST_POLL`].
fn next_poll(pause: Duration) -> Duration {
    (pause * 3 / 2).min(LONGEST_POLL)
}

/// Poll a job until it ends, drawing a progress bar on a terminal (a line every few
/// seconds otherwise): often at first, so a short job is seen ending at once, less and
/// less as it runs on (see [`FIRST_POLL`]).
pub async fn wait_for(api: &Api, job_id: &str, progress: bool) -> anyhow::Result<Value> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut pause = FIRST_POLL;
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let job = api.get(&format!("/v1/jobs/{job_id}")).await?;
        let state = job["state"].as_str().unwrap_or("");
        let done = state
            .parse::<batchplane::JobState>()
            .is_ok_and(|s| s.is_terminal());
        if progress {
            let total = job["total_tasks"].as_u64().unwrap_or(0).max(1);
            let finished: u64 = batchplane::TaskState::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .map(|s| job["task_counts"][s.as_str()].as_u64().unwrap_or(0))
                .sum();
            let width = 30;
            let filled = (finished * width / total) as usize;
            let bar = format!(
                "[{}{}]",
                "#".repeat(filled),
                "-".repeat(width as usize - filled)
            );
            let line = format!(
                "{bar} {finished}/{total} {:>6.1}s  {}",
                started.elapsed().as_secs_f64(),
                counts_line(&job)
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
                if done {
                    eprintln!();
                }
            } else if done || last_line.elapsed() > Duration::from_secs(5) {
                eprintln!("{line}");
                last_line = Instant::now();
            }
        }
        if done {
            return Ok(job);
        }
        tokio::time::sleep(pause).await;
        pause = next_poll(pause);
    }
}

pub fn print_summary(job: &Value) {
    println!(
        "job       {}  ({})",
        job["job_id"].as_str().unwrap_or(""),
        job["name"].as_str().unwrap_or("")
    );
    println!("state     {}", job["state"].as_str().unwrap_or(""));
    if let Some(r) = job["reason"].as_str() {
        println!("reason    {r}");
    }
    println!(
        "team      {}   queue {}",
        job["team"].as_str().unwrap_or(""),
        job["queue"].as_str().unwrap_or("")
    );
    println!("created   {}", job["created_at"].as_str().unwrap_or("-"));
    println!("started   {}", job["started_at"].as_str().unwrap_or("-"));
    println!("finished  {}", job["finished_at"].as_str().unwrap_or("-"));
    if let (Some(c), Some(f)) = (job["created_at"].as_str(), job["finished_at"].as_str()) {
        if let (Ok(c), Ok(f)) = (
            chrono::DateTime::parse_from_rfc3339(c),
            chrono::DateTime::parse_from_rfc3339(f),
        ) {
            println!(
                "elapsed   {:.1}s",
                (f - c).num_milliseconds() as f64 / 1000.0
            );
        }
    }
    println!(
        "tasks     {}  ({})",
        job["total_tasks"].as_u64().unwrap_or(0),
        counts_line(job)
    );
}

pub async fn status(api: &Api, job_id: &str, output: Output) -> anyhow::Result<u8> {
    let job = api.get(&format!("/v1/jobs/{job_id}")).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&job)?),
        Output::Text => print_summary(&job),
    }
    Ok(0)
}

pub async fn tasks(
    api: &Api,
    job_id: &str,
    state: Option<&str>,
    output: Output,
) -> anyhow::Result<u8> {
    let mut token: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut path = format!("/v1/jobs/{job_id}/tasks?limit=1000");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        if let Some(t) = &token {
            path.push_str(&format!("&next_token={t}"));
        }
        let page = api.get(&path).await?;
        all.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&all)?),
        Output::Text => {
            println!(
                "{:<32} {:<10} {:>7} {:>5}  REASON",
                "TASK", "STATE", "ATTEMPT", "EXIT"
            );
            for t in &all {
                println!(
                    "{:<32} {:<10} {:>7} {:>5}  {}",
                    t["task_id"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    t["attempt"].as_u64().unwrap_or(0),
                    t["exit_code"]
                        .as_i64()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    t["status_reason"].as_str().unwrap_or("")
                );
            }
            eprintln!("{} tasks", all.len());
        }
    }
    Ok(0)
}

pub async fn task(api: &Api, job_id: &str, task_id: &str, output: Output) -> anyhow::Result<u8> {
    let t = api
        .get(&format!("/v1/jobs/{job_id}/tasks/{task_id}"))
        .await?;
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(0);
    }
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    println!("task      {} / {}", s(&t["job_id"]), s(&t["task_id"]));
    println!("state     {}", s(&t["state"]));
    if let Some(r) = t["status_reason"].as_str() {
        println!("reason    {r}");
    }
    println!("command   {}", serde_json::to_string(&t["command"])?);
    println!("env       {}", serde_json::to_string(&t["env"])?);
    println!(
        "resources cpu {}  memory {} MiB  timeout {}  pool {}",
        t["cpu"],
        t["memory_mib"],
        t["timeout_seconds"],
        s(&t["pool"])
    );
    if let Some(tiers) = t["tiers"].as_array() {
        let current = t["tier"].as_u64().unwrap_or(0) as usize;
        let list: Vec<String> = tiers
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let mark = if i == current { "*" } else { "" };
                let gpu = x["gpu"]
                    .as_u64()
                    .map(|g| format!(" {g} GPU"))
                    .unwrap_or_default();
                format!("{mark}{} vCPU {} MiB{gpu}", x["cpu"], x["memory_mib"])
            })
            .collect();
        println!("tiers     {}  (* = current)", list.join(" → "));
    }
    let deps: Vec<String> = t["depends_on"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let id = d.as_str().unwrap_or("");
            format!(
                "{id} ({})",
                t["dependency_states"][id].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "depends   {}",
        if deps.is_empty() {
            "-".into()
        } else {
            deps.join(", ")
        }
    );
    println!("dependents {}", serde_json::to_string(&t["dependents"])?);
    for a in t["attempts"].as_array().cloned().unwrap_or_default() {
        let tier = a["tier"]
            .as_u64()
            .map(|i| format!(" tier {}", i + 1))
            .unwrap_or_default();
        println!(
            "attempt {}{tier} on {}: {} → {}  exit {} signal {}  {}",
            a["attempt"],
            s(&a["worker_id"]),
            s(&a["started_at"]),
            s(&a["finished_at"]),
            a["exit_code"],
            a["signal"],
            a["reason"].as_str().unwrap_or("")
        );
        let kib = |k: &str| {
            a[k].as_u64()
                .map(|v| format!("{:.1} MiB", v as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "  reserved {} vCPU {} MiB ({})  cpu user {}s sys {}s  wall {}s  rss avg {} peak {}",
            a["cpu"],
            a["memory_mib"],
            a["memory_enforcement"].as_str().unwrap_or("no limit"),
            a["cpu_user_seconds"],
            a["cpu_system_seconds"],
            a["wall_seconds"],
            kib("avg_rss_kib"),
            kib("peak_rss_kib"),
        );
        if a.get("gpu_peak_memory_mib").is_some() {
            println!(
                "  gpu peak {} MiB  utilisation {}%",
                a["gpu_peak_memory_mib"], a["gpu_utilization_percent"]
            );
        }
        print_usage_series(&a["usage_series"]);
        println!("  stdout {}\n  stderr {}", s(&a["stdout"]), s(&a["stderr"]));
    }
    Ok(0)
}

/// An attempt's use over its life, a sparkline a measure (a point a step).
fn print_usage_series(u: &serde_json::Value) {
    let Some(step) = u["step_ms"].as_u64() else {
        return;
    };
    for (key, label, unit) in [
        ("rss_mib", "memory", "MiB"),
        ("cpu_percent", "cpu", "%"),
        ("gpu_memory_mib", "gpu memory", "MiB"),
        ("gpu_percent", "gpu", "%"),
    ] {
        let values: Vec<u64> = u[key]
            .as_array()
            .map(|v| v.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        if values.is_empty() {
            continue;
        }
        let peak = values.iter().copied().max().unwrap_or(0);
        println!(
            "  {label:<10} {} peak {peak} {unit} (every {:.1} s)",
            sparkline(&values),
            step as f64 / 1000.0
        );
    }
}

fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|v| BARS[((v * 7).div_ceil(top)) as usize])
        .collect()
}

pub async fn cancel(api: &Api, job_id: &str) -> anyhow::Result<u8> {
    let job = api
        .post(&format!("/v1/jobs/{job_id}/cancel"), String::new(), None)
        .await?;
    println!("cancelling {job_id}: {}", counts_line(&job));
    Ok(0)
}

pub async fn add(api: &Api, job_id: &str, file: &Path) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let resp = api
        .post(&format!("/v1/jobs/{job_id}/tasks"), text, None)
        .await?;
    println!("added {} tasks to {job_id}", resp["added"]);
    Ok(0)
}

pub async fn explain(
    api: &Api,
    job_id: &str,
    task_id: Option<&str>,
    output: Output,
) -> anyhow::Result<u8> {
    let path = match task_id {
        Some(t) => format!("/v1/jobs/{job_id}/tasks/{t}/explain"),
        None => format!("/v1/jobs/{job_id}/explain"),
    };
    let e = api.get(&path).await?;
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(0);
    }
    let what = match task_id {
        Some(t) => format!("task {t} of job {job_id}"),
        None => format!("job {job_id}"),
    };
    println!("{what} is {}", e["state"].as_str().unwrap_or("?"));
    for r in e["reasons"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<22} {}",
            r["code"].as_str().unwrap_or(""),
            r["message"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

pub async fn team_usage(api: &Api, team: &str, days: u32, output: Output) -> anyhow::Result<u8> {
    let t = api
        .get(&format!("/v1/teams/{team}/usage?days={days}"))
        .await?;
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(0);
    }
    println!(
        "team {team}: {} jobs finished since {}",
        t["jobs"],
        t["since"].as_str().unwrap_or("")
    );
    usage_table(&t["usage"]);
    Ok(0)
}

pub async fn usage(api: &Api, job_id: &str, output: Output) -> anyhow::Result<u8> {
    let job = api.get(&format!("/v1/jobs/{job_id}")).await?;
    let u = &job["usage"];
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(u)?);
        return Ok(0);
    }
    println!(
        "job {job_id} ({}), {} attempts measured",
        job["name"].as_str().unwrap_or(""),
        u["attempts"].as_f64().unwrap_or(0.0)
    );
    usage_table(u);
    Ok(0)
}

/// The requested-vs-used table of a usage document.
fn usage_table(u: &Value) {
    let f = |k: &str| u[k].as_f64().unwrap_or(0.0);
    let ratio = |used: f64, requested: f64| {
        if requested > 0.0 {
            format!("{:.1}%", 100.0 * used / requested)
        } else {
            "-".into()
        }
    };
    println!(
        "{:<8} {:>16} {:>16} {:>8}",
        "", "requested", "used", "used/req"
    );
    let (cr, cu) = (f("cpu_seconds_requested"), f("cpu_seconds_used"));
    println!(
        "{:<8} {:>14.1} s {:>14.1} s {:>8}",
        "cpu",
        cr,
        cu,
        ratio(cu, cr)
    );
    let (mr, mu) = (
        f("memory_mib_seconds_requested") / 3600.0 / 1024.0,
        f("memory_mib_seconds_used") / 3600.0 / 1024.0,
    );
    println!(
        "{:<8} {:>12.4} GiB·h {:>12.4} GiB·h {:>8}",
        "memory",
        mr,
        mu,
        ratio(mu, mr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of a few seconds is seen ending within a second of it; one of an hour is
    /// looked at every five seconds, not four times a second.
    #[test]
    fn waiting_looks_often_at_first_and_every_five_seconds_in_the_end() {
        let mut pause = FIRST_POLL;
        let mut waited = Duration::ZERO;
        let mut looks = 0;
        while waited < Duration::from_secs(3600) {
            waited += pause;
            looks += 1;
            if waited < Duration::from_secs(3) {
                assert!(pause < Duration::from_secs(1), "{pause:?} at {waited:?}");
            }
            pause = next_poll(pause);
            assert!(pause <= LONGEST_POLL);
        }
        assert_eq!(pause, LONGEST_POLL);
        assert!(looks < 3600 / 5 + 20, "{looks} looks in an hour");
    }
}
