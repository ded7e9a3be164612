//! `batchplane access`: who may do what. Lists the grants (admins only), shows the
//! caller (`access whoami`), and grants or revokes roles.

use crate::client::Api;
use crate::commands::jobs::Output;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Give a principal a role: `viewer` or `member` on a team, or `admin` (no team).
    /// PRINCIPAL is an IAM ARN, an access key id, or an ARN pattern with `*`
    /// (`arn:aws:iam::123456789012:role/research-*`).
    Grant {
        principal: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        role: String,
    },
    /// Take a principal's role on a team (or its admin role, without --team) away.
    Revoke {
        principal: String,
        #[arg(long)]
        team: Option<String>,
        /// Only if it is this role.
        #[arg(long)]
        role: Option<String>,
    },
    /// Who the API takes this caller to be, and its roles.
    Whoami,
}

fn grant_body(principal: &str, team: Option<&str>, role: Option<&str>) -> String {
    let mut body = json!({"principal": principal});
    if let Some(t) = team {
        body["team"] = json!(t);
    }
    if let Some(r) = role {
        body["role"] = json!(r);
    }
    body.to_string()
}

fn print_grants(view: &Value) {
    let admins: Vec<&str> = view["deployment_admins"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "deployment admins: {}",
        if admins.is_empty() {
            "(none)".to_string()
        } else {
            admins.join(", ")
        }
    );
    println!("{:<60} {:<24} ROLE", "PRINCIPAL", "TEAM");
    for g in view["grants"].as_array().into_iter().flatten() {
        println!(
            "{:<60} {:<24} {}",
            g["principal"].as_str().unwrap_or(""),
            g["team"].as_str().unwrap_or("*"),
            g["role"].as_str().unwrap_or("")
        );
    }
}

pub async fn run(api: &Api, cmd: Option<&AccessCommand>, output: Output) -> anyhow::Result<u8> {
    let shown = match cmd {
        None => {
            let view = api.get("/v1/access").await?;
            if output == Output::Text {
                print_grants(&view);
                return Ok(0);
            }
            view
        }
        Some(AccessCommand::Grant {
            principal,
            team,
            role,
        }) => {
            api.post(
                "/v1/access/grants",
                grant_body(principal, team.as_deref(), Some(role)),
                None,
            )
            .await?
        }
        Some(AccessCommand::Revoke {
            principal,
            team,
            role,
        }) => {
            api.post(
                "/v1/access/revoke",
                grant_body(principal, team.as_deref(), role.as_deref()),
                None,
            )
            .await?
        }
        Some(AccessCommand::Whoami) => {
            let me = api.get("/v1/access/me").await?;
            if output == Output::Text {
                println!(
                    "principal: {}",
                    me["principal"]["id"].as_str().unwrap_or("")
                );
                if me["admin"] == true {
                    println!("admin: yes");
                }
                for (team, role) in me["teams"].as_object().into_iter().flatten() {
                    println!("{team}: {}", role.as_str().unwrap_or(""));
                }
                return Ok(0);
            }
            me
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        Output::Text => match cmd {
            Some(AccessCommand::Grant { .. }) => println!(
                "granted {} {}{}",
                shown["principal"].as_str().unwrap_or(""),
                shown["role"].as_str().unwrap_or(""),
                shown["team"]
                    .as_str()
                    .map_or(String::new(), |t| format!(" on team {t}"))
            ),
            _ => println!(
                "revoked {}{}",
                shown["principal"].as_str().unwrap_or(""),
                shown["team"]
                    .as_str()
                    .map_or(String::new(), |t| format!(" on team {t}"))
            ),
        },
    }
    Ok(0)
}
