//! `batchplane autoscaler`: what the autoscaler decided tick by tick, and its settings;
//! `batchplane templates`: the job templates events submit.

use crate::client::Api;
use crate::commands::admin::print_table;
use crate::commands::jobs::Output;
use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AutoscalerCommand {
    /// The newest decisions: per tick and pool, the backlog, workers, what reuse
    /// targeting wanted, what placement granted; nodes launched, marked, cordoned,
    /// terminated; the limits that bound.
    History {
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(short = 'o', long, default_value = "text")]
        output: Output,
    },
    /// Show the settings, or replace them from a JSON file (`settings FILE`).
    Settings {
        file: Option<PathBuf>,
        #[arg(short = 'o', long, default_value = "json")]
        output: Output,
    },
}

pub async fn run(api: &Api, cmd: &AutoscalerCommand) -> anyhow::Result<u8> {
    match cmd {
        AutoscalerCommand::History { limit, output } => history(api, *limit, *output).await,
        AutoscalerCommand::Settings { file, .. } => {
            let settings = match file {
                Some(f) => {
                    let body = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    api.put("/v1/autoscaler/settings", body).await?
                }
                None => api.get("/v1/autoscaler/settings").await?,
            };
            println!("{}", serde_json::to_string_pretty(&settings)?);
            Ok(0)
        }
    }
}

fn time_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default()
}

async fn history(api: &Api, limit: usize, output: Output) -> anyhow::Result<u8> {
    let all = api
        .get(&format!("/v1/autoscaler/history?limit={limit}"))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let decisions = all["decisions"].as_array().cloned().unwrap_or_default();
    if decisions.is_empty() {
        println!("no autoscaler decisions yet");
        return Ok(0);
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for d in &decisions {
        let at = time_of(d["at"].as_i64().unwrap_or(0));
        let pools = d["pools"].as_array().cloned().unwrap_or_default();
        if pools.is_empty() {
            rows.push(vec![
                at.clone(),
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for p in &pools {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            let u = |k: &str| p[k].as_u64().unwrap_or(0).to_string();
            let mut outcome = format!("{}/{}", u("granted"), u("asked"));
            if let Some(r) = p["refused"].as_str() {
                outcome = format!("refused: {r}");
            } else if let Some(l) = p["limited_by"].as_str() {
                outcome.push_str(&format!(" ({l})"));
            }
            rows.push(vec![
                at.clone(),
                s("pool"),
                s("team"),
                format!(
                    "{} ({:.0}s)",
                    u("queued"),
                    p["oldest_seconds"].as_f64().unwrap_or(0.0)
                ),
                format!("{}+{}", u("live_workers"), u("starting_workers")),
                format!("{:.1}", p["weight"].as_f64().unwrap_or(0.0)),
                u("wanted"),
                outcome,
            ]);
        }
        if let Some(n) = d["nodes"].as_object() {
            let ids = |k: &str| -> usize { n.get(k).and_then(Value::as_array).map_or(0, Vec::len) };
            let launched: usize = n.get("fleets").and_then(Value::as_array).map_or(0, |f| {
                f.iter()
                    .map(|f| f["instance_ids"].as_array().map_or(0, Vec::len))
                    .sum()
            });
            let mut line = format!(
                "{at} nodes: {} (${:.2}/h) · launched {launched} · cordoned {} · terminated {}",
                n.get("nodes").and_then(Value::as_u64).unwrap_or(0),
                n.get("dollars_per_hour")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                ids("cordoned"),
                ids("terminated"),
            );
            for m in n
                .get("marked")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                line.push_str(&format!(
                    " · marked {} ({})",
                    m[0].as_str().unwrap_or("?"),
                    m[1].as_str().unwrap_or("")
                ));
            }
            for l in n
                .get("binding_limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                line.push_str(&format!(" · limit {}", l.as_str().unwrap_or("?")));
            }
            notes.push(line);
        }
        for e in d["errors"].as_array().into_iter().flatten() {
            notes.push(format!("{at} error: {}", e.as_str().unwrap_or("?")));
        }
    }
    print_table(
        &[
            "TICK",
            "POOL",
            "TEAM",
            "QUEUED (OLDEST)",
            "WORKERS",
            "Σw",
            "WANTED",
            "GRANTED/ASKED",
        ],
        &rows,
    );
    for n in notes {
        println!("{n}");
    }
    Ok(0)
}

/// `batchplane templates`: job templates that events submit.
#[derive(Subcommand, Debug)]
pub enum TemplatesCommand {
    /// Store a template (YAML or JSON job spec with `{{ $.path }}` references).
    Put { name: String, file: PathBuf },
    /// Show one template.
    Show { name: String },
    /// Submit a template's job for an event (a JSON file), once per event id.
    Submit { name: String, event: PathBuf },
}

pub async fn templates(api: &Api, cmd: Option<&TemplatesCommand>) -> anyhow::Result<u8> {
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))
    };
    let out = match cmd {
        Some(TemplatesCommand::Put { name, file }) => {
            api.put(&format!("/v1/templates/{name}"), read(file)?)
                .await?
        }
        Some(TemplatesCommand::Show { name }) => api.get(&format!("/v1/templates/{name}")).await?,
        Some(TemplatesCommand::Submit { name, event }) => {
            api.post(&format!("/v1/templates/{name}/submit"), read(event)?, None)
                .await?
        }
        None => {
            let all = api.get("/v1/templates").await?;
            for t in all["templates"].as_array().into_iter().flatten() {
                println!("{}", t["name"].as_str().unwrap_or("?"));
            }
            return Ok(0);
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
