//! `batchplane repro JOB TASK [--run]`: the exact command line and environment a task ran
//! with, shell-quoted, so one element out of a million can be re-run (and debugged) here.

use crate::client::Api;
use anyhow::{bail, Context};
use std::collections::BTreeMap;

/// Quote a word for a POSIX shell: bare when it is plainly safe, else single-quoted.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The environment the taskhost gives the task: the task's own variables and
/// Batchplane's. (`PATH`, `HOME`, `LANG`, `TZ`, `TMPDIR` and `USER` come from the machine
/// it runs on, here as on the worker.)
pub fn task_env(task: &serde_json::Value, attempt: u64, api_url: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = task["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    env.insert(
        "BATCHPLANE_JOB_ID".into(),
        task["job_id"].as_str().unwrap_or_default().into(),
    );
    env.insert(
        "BATCHPLANE_TASK_ID".into(),
        task["task_id"].as_str().unwrap_or_default().into(),
    );
    env.insert("BATCHPLANE_ATTEMPT".into(), attempt.to_string());
    env.insert("BATCHPLANE_API_URL".into(), api_url.into());
    env
}

/// `env -i` with the worker's basics passed through, the task's environment, the argv.
pub fn command_line(argv: &[String], env: &BTreeMap<String, String>) -> String {
    let mut words = vec!["env".to_string(), "-i".to_string()];
    for k in ["PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER"] {
        words.push(format!("{k}=\"${k}\""));
    }
    words.extend(env.iter().map(|(k, v)| shell_quote(&format!("{k}={v}"))));
    words.extend(argv.iter().map(|a| shell_quote(a)));
    words.join(" ")
}

pub async fn run(
    api: &Api,
    api_url: &str,
    job: &str,
    task_id: &str,
    execute: bool,
) -> anyhow::Result<u8> {
    let task = api.get(&format!("/v1/jobs/{job}/tasks/{task_id}")).await?;
    let argv: Vec<String> = task["command"]
        .as_array()
        .context("the task has no command")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    if argv.is_empty() {
        bail!("task {task_id} has an empty command");
    }
    let attempt = task["attempt"].as_u64().unwrap_or(0).max(1);
    let env = task_env(&task, attempt, api_url);
    if !execute {
        println!("{}", command_line(&argv, &env));
        return Ok(0);
    }
    eprintln!("running {task_id} of {job} here (attempt {attempt}'s environment)…");
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))),
        )
        .envs(&env)
        .status()
        .with_context(|| format!("starting {}", argv[0]))?;
    eprintln!("{task_id}: {status}");
    Ok(status.code().map(|c| c.clamp(0, 255) as u8).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("plain-word_1.txt"), "plain-word_1.txt");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
        // Round trip through a real shell: what prints is what went in.
        let words = ["it's", "a \"b\" $c `d`", "tab\there", "*", "~"];
        let line = format!(
            "printf '%s\\n' {}",
            words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(got, words);
    }

    #[test]
    fn command_line_carries_the_task_environment() {
        let task = serde_json::json!({"job_id": "j-1", "task_id": "t", "env": {"GREETING": "hello world"}});
        let env = task_env(&task, 2, "http://127.0.0.1:8750");
        let line = command_line(&["sh".into(), "-c".into(), "echo $GREETING".into()], &env);
        assert!(line.starts_with("env -i PATH=\"$PATH\""), "{line}");
        assert!(line.contains("'GREETING=hello world'"), "{line}");
        assert!(line.contains("BATCHPLANE_ATTEMPT=2"), "{line}");
        assert!(line.ends_with("sh -c 'echo $GREETING'"), "{line}");
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    }
}
