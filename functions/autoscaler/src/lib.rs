//! The autoscaler function: an EventBridge schedule (`rate(1 minute)`) or an on-demand
//! invocation (`{"action": "tick"}`) runs one autoscaler tick over the registered EKS
//! clusters and EC2; `{"action": "history", "limit": N}` answers the newest decisions.
//! Bad input is an answer (`{"error": ...}`), not a failed invocation.

use batchplane::queue::Queues;
use batchplane::scaling::{Autoscaler, Decision};
use batchplane::store::Store;
use batchplane_ec2::Ec2;
use batchplane_kubernetes::{KubernetesBackend, PodSettings};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the function holds between invocations.
pub struct AutoscalerFn {
    pub store: Store,
    pub queues: Queues,
    pub backend: KubernetesBackend,
    /// `None` when `BATCHPLANE_NODES=off`: the clusters' nodes are someone else's.
    pub ec2: Option<Ec2>,
    pub worker_env: BTreeMap<String, String>,
    pub reservation_lease: Duration,
}

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Tick,
    History { limit: usize },
}

impl Invocation {
    /// A scheduled event (or any EventBridge event from the schedule) ticks; otherwise
    /// `action` says what to do.
    pub fn from_event(event: &Value) -> Result<Invocation, String> {
        if event["detail-type"] == "Scheduled Event" {
            return Ok(Invocation::Tick);
        }
        match event["action"].as_str() {
            Some("tick") => Ok(Invocation::Tick),
            Some("history") => {
                let limit = match &event["limit"] {
                    Value::Null => 10,
                    v => v
                        .as_u64()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("limit: {v} must be a whole number from 1 to 1000"))?
                        as usize,
                };
                Ok(Invocation::History { limit })
            }
            Some(other) => Err(format!(
                "action: {other:?} is not one of \"tick\", \"history\""
            )),
            None => Err(
                "action: missing (send a scheduled event, {\"action\": \"tick\"} or {\"action\": \"history\"})"
                    .into(),
            ),
        }
    }
}

/// The environment the taskhost pods get: the table, queues and leases this function
/// was configured with.
fn worker_env(config: &batchplane::config::Config) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("BATCHPLANE_TABLE".to_string(), config.table.clone()),
        (
            "BATCHPLANE_QUEUE_PREFIX".to_string(),
            config.queue_prefix.clone(),
        ),
        (
            "BATCHPLANE_LEASE_SECONDS".to_string(),
            config.lease.as_secs().to_string(),
        ),
        (
            "BATCHPLANE_RESERVATION_LEASE_SECONDS".to_string(),
            config.reservation_lease.as_secs().to_string(),
        ),
        (
            "BATCHPLANE_IDLE_TIMEOUT_SECONDS".to_string(),
            "60".to_string(),
        ),
    ]);
    for k in ["AWS_REGION", "BATCHPLANE_API_URL"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_string(), v);
        }
    }
    env
}

/// Build from configuration (cold start).
pub async fn autoscaler_from_env() -> anyhow::Result<AutoscalerFn> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    let mut settings = PodSettings::default();
    if let Ok(image) = std::env::var("BATCHPLANE_TASKHOST_IMAGE") {
        settings.image = image;
    }
    if let Ok(sa) = std::env::var("BATCHPLANE_TASKHOST_SERVICE_ACCOUNT") {
        settings.service_account = sa;
    }
    if let Ok(path) = std::env::var("BATCHPLANE_TASKHOST_PATH") {
        settings.taskhost_path = path;
    }
    // `{"arn:aws:iam::…:role/x": "service-account-name", …}`
    if let Ok(map) = std::env::var("BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS") {
        if !map.trim().is_empty() {
            settings.job_role_service_accounts = serde_json::from_str(&map).map_err(|e| {
                anyhow::anyhow!("BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS: not a JSON object of role ARN to service account: {e}")
            })?;
        }
    }
    let ec2 = match std::env::var("BATCHPLANE_NODES").as_deref() {
        Ok("off") => None,
        Ok("on") | Err(_) => {
            let shared = batchplane::aws::sdk_config(&config.endpoints).await;
            Some(Ec2 {
                client: aws_sdk_ec2::Client::new(&shared),
            })
        }
        Ok(other) => anyhow::bail!("BATCHPLANE_NODES: {other:?} must be on or off"),
    };
    Ok(AutoscalerFn {
        store: Store::new(clients.dynamodb.clone(), config.table.clone()),
        queues: config.queues(clients.sqs),
        backend: KubernetesBackend::eks(settings).asking_eks_at(config.endpoints.eks.clone()),
        ec2,
        worker_env: worker_env(&config),
        reservation_lease: config.reservation_lease,
    })
}

/// A tick's answer: what it did, in short (the whole decision is in the history).
pub fn summary(d: &Decision) -> Value {
    let nodes = d.nodes.clone().unwrap_or_default();
    json!({
        "tick_id": d.tick_id,
        "took_ms": d.took_ms,
        "pools": d.pools.len(),
        "workers_launched": d.pools.iter().map(|p| p.launched).sum::<u32>(),
        "refused": d.pools.iter().filter_map(|p| p.refused.as_ref().map(|r| json!({"pool": p.pool, "reason": r}))).collect::<Vec<_>>(),
        "nodes_launched": nodes.fleets.iter().map(|f| f.instance_ids.len()).sum::<usize>(),
        "capacity_limited": nodes.marked,
        "binding_limits": nodes.binding_limits,
        "cordoned": nodes.cordoned,
        "terminated": nodes.terminated,
        "errors": d.errors,
    })
}

fn error(code: &str, message: String) -> Value {
    json!({"error": {"code": code, "message": message}})
}

/// One invocation.
pub async fn handle(f: &AutoscalerFn, event: Value) -> Value {
    let call = match Invocation::from_event(&event) {
        Ok(c) => c,
        Err(m) => return error("BadRequest", m),
    };
    match call {
        Invocation::Tick => {
            let autoscaler = Autoscaler {
                store: &f.store,
                queues: &f.queues,
                backend: &f.backend,
                ec2: f.ec2.as_ref(),
                worker_env: f.worker_env.clone(),
                reservation_lease: f.reservation_lease,
            };
            let mut answer = match autoscaler.tick(batchplane::store::now_ms()).await {
                Ok(Some(d)) => summary(&d),
                Ok(None) => json!({"skipped": "another autoscaler tick is running"}),
                Err(e) => error("TickFailed", e.to_string()),
            };
            // On the same schedule: finish what dead writers and lost messages left.
            let reconciled = batchplane::reconcile::Reconciler {
                store: &f.store,
                queues: &f.queues,
                dead_letter_queue: f.queues.dead_letter_queue(),
            }
            .run(batchplane::store::now_ms())
            .await;
            answer["reconciled"] = json!(reconciled);
            answer
        }
        Invocation::History { limit } => match f.store.decisions::<Decision>(limit).await {
            Ok(d) => json!({"decisions": d}),
            Err(e) => error("StoreError", e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> Value {
        let path = format!(
            "{}/../../events/autoscaler/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).expect("a sample event"))
            .expect("sample events are JSON")
    }

    #[test]
    fn sample_events_decode_and_bad_ones_are_named() {
        assert_eq!(
            Invocation::from_event(&event("scheduled.json")),
            Ok(Invocation::Tick)
        );
        assert_eq!(
            Invocation::from_event(&event("tick.json")),
            Ok(Invocation::Tick)
        );
        assert_eq!(
            Invocation::from_event(&event("history.json")),
            Ok(Invocation::History { limit: 5 })
        );
        let e = Invocation::from_event(&json!({"action": "scale"})).unwrap_err();
        assert!(e.starts_with("action:"), "{e}");
        let e = Invocation::from_event(&json!({"action": "history", "limit": 0})).unwrap_err();
        assert!(e.starts_with("limit:"), "{e}");
        assert!(Invocation::from_event(&json!({}))
            .unwrap_err()
            .contains("missing"));
    }
}
