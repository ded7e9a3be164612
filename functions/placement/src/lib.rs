//! The placement function: decodes an invocation (a placement call, or the scheduled
//! event that means "sweep"), carries it out, and answers with JSON. Bad input is an
//! answer too (`{"error": ...}`), not a failed invocation the caller has to retry.

use batchplane::placement::{handle as handle_call, PlacementCall};
use batchplane::store::Store;
use serde_json::Value;
use std::time::Duration;

/// What the function holds between invocations.
pub struct Placement {
    pub store: Store,
    pub lease: Duration,
}

/// Build from configuration (cold start).
pub async fn placement_from_env() -> anyhow::Result<Placement> {
    let config = batchplane::config::Config::from_env()?;
    let clients = batchplane::aws::Clients::new(&config.endpoints).await;
    Ok(Placement {
        store: Store::new(clients.dynamodb, config.table.clone()),
        lease: config.reservation_lease,
    })
}

/// One invocation.
pub async fn handle(placement: &Placement, event: Value) -> Value {
    let answer = match PlacementCall::from_event(&event) {
        Ok(call) => handle_call(&placement.store, placement.lease, call).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| e.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_call_is_answered_with_an_error_naming_it() {
        let clients = batchplane::aws::Clients::new(&batchplane::aws::Endpoints {
            dynamodb: Some("http://127.0.0.1:9".into()),
            sqs: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        })
        .await;
        let p = Placement {
            store: Store::new(clients.dynamodb, "batchplane"),
            lease: Duration::from_secs(60),
        };
        let out = handle(&p, serde_json::json!({"action": "place", "team": "x"})).await;
        assert_eq!(out["error"]["code"], "BadRequest", "{out}");
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing field"),
            "{out}"
        );
        let event: Value =
            serde_json::from_str(include_str!("../../../events/placement/place.json"))
                .expect("the sample event");
        let mut bad = event.clone();
        bad["workers"] = serde_json::json!(0);
        let out = handle(&p, bad).await;
        assert!(
            out["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("workers:"),
            "{out}"
        );
    }
}
