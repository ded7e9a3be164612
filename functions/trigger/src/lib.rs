//! The trigger function: an EventBridge rule (a schedule, or a pattern such as an S3
//! object created) invokes it with `{"template": NAME, "event": <aws.events.event.json>}`
//! (the rule target's input transformer); it renders the stored job template with
//! values from the event and submits the job, idempotent on the event's id, so a
//! redelivered event submits nothing new.
//!
//! A template or event that cannot make a valid job is answered with `{"error"}` (a
//! retry could not help); a store failure fails the invocation, so EventBridge retries
//! it (and sends it to the rule's dead-letter queue in the end).

use batchplane::api::Service;
use serde_json::{json, Value};

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub template: String,
    pub event: Value,
}

impl Trigger {
    pub fn from_event(payload: &Value) -> Result<Trigger, String> {
        let template = payload["template"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("template: missing; the rule's input transformer names the job template")?;
        let event = payload
            .get("event")
            .filter(|e| e.is_object())
            .ok_or("event: missing; pass the EventBridge event as <aws.events.event.json>")?;
        Ok(Trigger {
            template: template.to_string(),
            event: event.clone(),
        })
    }
}

/// One invocation.
pub async fn handle(service: &Service, payload: Value) -> Result<Value, lambda_runtime::Error> {
    let t = match Trigger::from_event(&payload) {
        Ok(t) => t,
        Err(m) => return Ok(json!({"error": {"code": "BadRequest", "message": m}})),
    };
    // The trigger is the deployment's own: an admin, submitting as the team the admin
    // who stored the template named in it.
    let trigger = batchplane::domain::access::Access::system("trigger");
    match service
        .submit_from_template(&trigger, &t.template, &t.event)
        .await
    {
        Ok(s) => {
            tracing::info!(template = %t.template, event_id = t.event["id"].as_str().unwrap_or(""),
                job_id = %s.job_id, created = s.created, "triggered");
            Ok(json!({"job_id": s.job_id, "created": s.created}))
        }
        Err(e) if e.kind.is_client() => {
            tracing::warn!(template = %t.template, error = %e.message, "the event cannot make a job");
            Ok(e.body())
        }
        Err(e) => Err(e.message.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Value {
        let path = format!("{}/../../events/trigger/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).expect("a sample event")).expect("JSON")
    }

    #[test]
    fn sample_invocations_name_their_template_and_carry_the_event() {
        let s3 = Trigger::from_event(&sample("s3-object-created.json")).expect("decodes");
        assert_eq!(s3.template, "ingest");
        assert_eq!(
            s3.event["detail"]["object"]["key"],
            "incoming/2026/11/22/orders.csv"
        );
        let cron = Trigger::from_event(&sample("scheduled.json")).expect("decodes");
        assert_eq!(cron.event["detail-type"], "Scheduled Event");
        assert!(Trigger::from_event(&json!({"event": {}}))
            .unwrap_err()
            .starts_with("template:"));
        assert!(Trigger::from_event(&json!({"template": "t"}))
            .unwrap_err()
            .starts_with("event:"));
    }
}
