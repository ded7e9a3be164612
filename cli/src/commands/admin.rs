//! Operator commands: team quotas and clusters, with used/limit tables.

use crate::client::Api;
use crate::commands::jobs::Output;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum TeamsCommand {
    /// Create a team or replace its quota (usage is kept).
    Set {
        team: String,
        /// vCPUs, fractions allowed.
        #[arg(long)]
        cpu: f64,
        #[arg(long)]
        memory_mib: u64,
        /// GPUs of a type, `TYPE=COUNT` (`a100=8`); repeat for more types.
        #[arg(long = "gpu", value_parser = parse_gpu)]
        gpus: Vec<(String, u64)>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClustersCommand {
    /// Register a cluster or update its registration and capacity.
    Register {
        name: String,
        /// `eks` or `local`.
        #[arg(long, default_value = "eks")]
        kind: String,
        #[arg(long, default_value = "")]
        region: String,
        /// The EKS cluster's own name (default: NAME).
        #[arg(long)]
        eks_cluster_name: Option<String>,
        /// The Kubernetes API server URL (`https://…`).
        #[arg(long, default_value = "")]
        endpoint: String,
        /// The API server's CA bundle, base64 (as `aws eks describe-cluster` gives it).
        #[arg(long)]
        certificate_authority: Option<String>,
        /// Namespace for worker pods (default `batchplane`).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        cpu: f64,
        #[arg(long)]
        memory_mib: u64,
        #[arg(long = "gpu", value_parser = parse_gpu)]
        gpus: Vec<(String, u64)>,
    },
    /// Stop placing new workers in a cluster; its workers drain and finish.
    Disable { name: String },
    /// Place workers in a cluster again.
    Enable { name: String },
}

fn parse_gpu(text: &str) -> Result<(String, u64), String> {
    let (t, n) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected TYPE=COUNT, e.g. a100=8"))?;
    let n = n
        .parse()
        .map_err(|_| format!("{text:?}: {n:?} is not a whole number"))?;
    Ok((t.to_string(), n))
}

fn resources(cpu: f64, memory_mib: u64, gpus: &[(String, u64)]) -> Value {
    let gpu: serde_json::Map<String, Value> =
        gpus.iter().map(|(t, n)| (t.clone(), json!(n))).collect();
    json!({"cpu": cpu, "memory_mib": memory_mib, "gpu": gpu})
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// `96/100` with the share in per cent.
fn used_of(used: f64, limit: f64) -> String {
    let pct = if limit > 0.0 {
        format!(" ({:.0}%)", used * 100.0 / limit)
    } else {
        String::new()
    };
    format!("{}/{}{pct}", trim(used), trim(limit))
}

fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One `used/limit` cell per GPU type.
fn gpu_cells(used: &Value, limit: &Value) -> String {
    let mut cells = Vec::new();
    if let Some(l) = limit["gpu"].as_object() {
        for (t, n) in l {
            cells.push(format!("{t} {}", used_of(num(&used["gpu"][t]), num(n))));
        }
    }
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(", ")
    }
}

pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

pub async fn teams(api: &Api, cmd: Option<&TeamsCommand>, output: Output) -> anyhow::Result<u8> {
    if let Some(TeamsCommand::Set {
        team,
        cpu,
        memory_mib,
        gpus,
    }) = cmd
    {
        let body = json!({"quota": resources(*cpu, *memory_mib, gpus)});
        let t = api
            .put(&format!("/v1/teams/{team}"), body.to_string())
            .await?;
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&t)?);
            return Ok(0);
        }
        println!("team {team}: quota set");
    }
    let all = api.get("/v1/teams").await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let teams = all["teams"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = teams
        .iter()
        .map(|t| {
            let workers = t["workers"]
                .as_object()
                .map(|w| {
                    w.iter()
                        .map(|(c, n)| format!("{c}:{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                t["team"].as_str().unwrap_or("?").to_string(),
                used_of(num(&t["used"]["cpu"]), num(&t["limit"]["cpu"])),
                used_of(
                    num(&t["used"]["memory_mib"]),
                    num(&t["limit"]["memory_mib"]),
                ),
                gpu_cells(&t["used"], &t["limit"]),
                workers,
            ]
        })
        .collect();
    print_table(
        &[
            "TEAM",
            "CPU (used/limit)",
            "MEMORY MiB",
            "GPU",
            "WORKERS BY CLUSTER",
        ],
        &rows,
    );
    for t in &teams {
        if let Some(refusals) = t["refusals"].as_object() {
            for (pool, r) in refusals {
                println!(
                    "  {} pool {pool}: refused: {}",
                    t["team"].as_str().unwrap_or("?"),
                    r["reason"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(0)
}

pub async fn clusters(
    api: &Api,
    cmd: Option<&ClustersCommand>,
    output: Output,
) -> anyhow::Result<u8> {
    match cmd {
        Some(ClustersCommand::Register {
            name,
            kind,
            region,
            eks_cluster_name,
            endpoint,
            certificate_authority,
            namespace,
            cpu,
            memory_mib,
            gpus,
        }) => {
            let mut body = json!({
                "kind": kind, "region": region, "endpoint": endpoint,
                "capacity": resources(*cpu, *memory_mib, gpus),
            });
            for (k, v) in [
                ("eks_cluster_name", eks_cluster_name),
                ("certificate_authority", certificate_authority),
                ("namespace", namespace),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            api.put(&format!("/v1/clusters/{name}"), body.to_string())
                .await?;
            println!("cluster {name}: registered");
        }
        Some(ClustersCommand::Disable { name }) => {
            api.post(&format!("/v1/clusters/{name}/disable"), String::new(), None)
                .await?;
            println!("cluster {name}: disabled (no new placements; its workers drain)");
        }
        Some(ClustersCommand::Enable { name }) => {
            api.post(&format!("/v1/clusters/{name}/enable"), String::new(), None)
                .await?;
            println!("cluster {name}: enabled");
        }
        None => {}
    }
    let all = api.get("/v1/clusters").await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                c["name"].as_str().unwrap_or("?").to_string(),
                c["kind"].as_str().unwrap_or("?").to_string(),
                if c["enabled"].as_bool() == Some(true) {
                    "enabled".into()
                } else {
                    "DISABLED".into()
                },
                used_of(num(&c["used"]["cpu"]), num(&c["capacity"]["cpu"])),
                used_of(
                    num(&c["used"]["memory_mib"]),
                    num(&c["capacity"]["memory_mib"]),
                ),
                gpu_cells(&c["used"], &c["capacity"]),
                c["region"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "CLUSTER",
            "KIND",
            "STATE",
            "CPU (used/capacity)",
            "MEMORY MiB",
            "GPU",
            "REGION",
        ],
        &rows,
    );
    Ok(0)
}

pub async fn capacity(api: &Api, output: Output) -> anyhow::Result<u8> {
    let all = api.get("/v1/capacity").await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let marks = all["capacity_limited"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if marks.is_empty() {
        println!("no launch config is capacity-limited");
        return Ok(0);
    }
    let now = chrono::Utc::now().timestamp_millis();
    let rows: Vec<Vec<String>> = marks
        .iter()
        .map(|m| {
            let until = m["until"].as_i64().unwrap_or(0);
            vec![
                m["launch_config"].as_str().unwrap_or("?").to_string(),
                chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.format("%H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
                format!("{}s", (until - now).max(0) / 1000),
                m["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print_table(&["LAUNCH CONFIG", "UNTIL", "LEFT", "REASON"], &rows);
    Ok(0)
}
