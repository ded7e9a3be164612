//! Configuration, read from the environment once. The names are the ones the SAM
//! template sets; a missing or malformed variable is an error that names it.

use crate::aws::Endpoints;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}: {problem}")]
    Invalid { name: &'static str, problem: String },
}

/// What every Batchplane process needs to find its table and queues.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BATCHPLANE_TABLE`: the DynamoDB table holding jobs, tasks and counters.
    pub table: String,
    /// `BATCHPLANE_QUEUE_PREFIX`: SQS queue names are `<prefix><queue>`.
    pub queue_prefix: String,
    /// `BATCHPLANE_LEASE_SECONDS`: how long a claim holds a task without a heartbeat.
    pub lease: Duration,
    /// `BATCHPLANE_MAX_ATTEMPTS`: how many times a task whose worker vanished is claimed.
    pub max_attempts: u32,
    /// `BATCHPLANE_JOB_WINDOW`: children of one array job queued at once; what a job
    /// submitted later waits behind, per job ahead of it.
    pub job_window: u32,
    /// `BATCHPLANE_WINDOW_SECONDS`: a windowed job's window (DAGs, N_TO_N arrays) starts
    /// at `job_window` and follows its claim rate, to about this many seconds of its
    /// claims; 0 keeps it at `job_window`.
    pub window_seconds: f64,
    /// `BATCHPLANE_RESERVATION_LEASE_SECONDS`: how long a worker's placement holds its
    /// team's quota without the worker renewing it; the sweeper reclaims it after.
    pub reservation_lease: Duration,
    /// `BATCHPLANE_DEAD_LETTER_QUEUE_ARN`: where queues created at run time (job queues,
    /// worker pools) send messages that keep coming back unclaimable.
    pub dead_letter_queue_arn: Option<String>,
    /// `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_EKS`:
    /// local emulators.
    pub endpoints: Endpoints,
    /// `BATCHPLANE_PARTITION`, `AWS_REGION`, `BATCHPLANE_ACCOUNT_ID`: what the ARNs the
    /// API hands out name (the template sets them from the deployment).
    pub arns: crate::aws_batch::ArnContext,
    /// `BATCHPLANE_EVENT_BUS`: where job and task state changes are published.
    pub event_bus: String,
    /// `BATCHPLANE_MIN_ATTEMPT_SECONDS`: the shortest attempt timeout a job may ask for
    /// (AWS Batch's floor, 60 s; the local stack's tests lower it).
    pub min_attempt_seconds: u64,
    /// `BATCHPLANE_ADMINS`: comma-separated principals or ARN patterns that are admins
    /// of the deployment (the template's `Admins` parameter).
    pub admins: Vec<String>,
    /// `BATCHPLANE_IDENTITY`: `iam` (the principal API Gateway authenticated) or
    /// `access-key-id` (the key id a SigV4 header names, unchecked: the local stack).
    pub identity: IdentitySource,
    /// `BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS` (a JSON object of job role ARN to
    /// service account): the job roles tasks may name, since a worker pod can run as
    /// those only. `None` where it is not set: roles are taken and recorded, not
    /// assumed (the local stack, whose workers run on the host).
    pub job_roles: Option<std::collections::BTreeSet<String>>,
}

/// Where the API reads who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// The IAM principal in API Gateway's request context; nothing the caller writes
    /// in a header or body counts. No context: `anonymous`.
    #[default]
    Iam,
    /// The access key id of the request's SigV4 `Authorization` header, taken on trust
    /// without checking the signature (the local stack, which has no IAM). No header:
    /// `anonymous`.
    AccessKeyId,
    /// As `AccessKeyId`, but a request signed for any other service than `execute-api`
    /// is refused, as API Gateway's IAM authorizer refuses it: the local stack as
    /// stock clients meet a deployment.
    ApiGatewayKeyId,
}

impl std::str::FromStr for IdentitySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iam" => Ok(IdentitySource::Iam),
            "access-key-id" => Ok(IdentitySource::AccessKeyId),
            "api-gateway-key-id" => Ok(IdentitySource::ApiGatewayKeyId),
            other => Err(format!(
                "{other:?} is not iam, access-key-id or api-gateway-key-id"
            )),
        }
    }
}

/// A comma-separated list of principals or patterns, each checked.
pub fn parse_admins(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            crate::domain::access::check_principal(a)
                .map(|()| a.to_string())
                .map_err(|e| e.to_string())
        })
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            table: "batchplane".into(),
            queue_prefix: "batchplane-".into(),
            lease: Duration::from_secs(30),
            max_attempts: 3,
            job_window: 256,
            window_seconds: 1.0,
            reservation_lease: Duration::from_secs(300),
            dead_letter_queue_arn: None,
            endpoints: Endpoints::default(),
            arns: crate::aws_batch::ArnContext::default(),
            event_bus: "default".into(),
            min_attempt_seconds: 60,
            admins: Vec::new(),
            identity: IdentitySource::Iam,
            job_roles: None,
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Seconds, from 0 to an hour, fractions allowed.
fn seconds(name: &'static str, default: f64) -> Result<f64, ConfigError> {
    let Some(v) = var(name) else {
        return Ok(default);
    };
    match v.parse::<f64>() {
        Ok(s) if (0.0..=3600.0).contains(&s) => Ok(s),
        Ok(_) => Err(ConfigError::Invalid {
            name,
            problem: format!("{v} is not from 0 to 3600 seconds"),
        }),
        Err(e) => Err(ConfigError::Invalid {
            name,
            problem: format!("{v:?} is not a number of seconds ({e})"),
        }),
    }
}

fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().map_err(|e| ConfigError::Invalid {
            name,
            problem: format!("{v:?} is not a whole number ({e})"),
        }),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let d = Config::default();
        let lease = number("BATCHPLANE_LEASE_SECONDS", d.lease.as_secs())?;
        if lease < 3 {
            return Err(ConfigError::Invalid {
                name: "BATCHPLANE_LEASE_SECONDS",
                problem: format!("{lease} is too short; at least 3 seconds"),
            });
        }
        Ok(Config {
            table: var("BATCHPLANE_TABLE").unwrap_or(d.table),
            queue_prefix: var("BATCHPLANE_QUEUE_PREFIX").unwrap_or(d.queue_prefix),
            lease: Duration::from_secs(lease),
            max_attempts: number("BATCHPLANE_MAX_ATTEMPTS", u64::from(d.max_attempts))? as u32,
            job_window: number("BATCHPLANE_JOB_WINDOW", u64::from(d.job_window))?.clamp(1, 100_000)
                as u32,
            window_seconds: seconds("BATCHPLANE_WINDOW_SECONDS", d.window_seconds)?,
            reservation_lease: Duration::from_secs(
                number(
                    "BATCHPLANE_RESERVATION_LEASE_SECONDS",
                    d.reservation_lease.as_secs(),
                )?
                .max(3),
            ),
            dead_letter_queue_arn: var("BATCHPLANE_DEAD_LETTER_QUEUE_ARN"),
            endpoints: Endpoints {
                dynamodb: var("AWS_ENDPOINT_URL_DYNAMODB"),
                sqs: var("AWS_ENDPOINT_URL_SQS"),
                eks: var("AWS_ENDPOINT_URL_EKS"),
                logs: var("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"),
            },
            arns: crate::aws_batch::ArnContext::current().clone(),
            event_bus: var("BATCHPLANE_EVENT_BUS").unwrap_or(d.event_bus),
            min_attempt_seconds: number("BATCHPLANE_MIN_ATTEMPT_SECONDS", d.min_attempt_seconds)?,
            admins: parse_admins(&var("BATCHPLANE_ADMINS").unwrap_or_default()).map_err(
                |problem| ConfigError::Invalid {
                    name: "BATCHPLANE_ADMINS",
                    problem,
                },
            )?,
            identity: match var("BATCHPLANE_IDENTITY") {
                None => IdentitySource::Iam,
                Some(v) => v.parse().map_err(|problem| ConfigError::Invalid {
                    name: "BATCHPLANE_IDENTITY",
                    problem,
                })?,
            },
            job_roles: match var("BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS") {
                None => None,
                Some(v) => Some(
                    serde_json::from_str::<std::collections::BTreeMap<String, String>>(&v)
                        .map_err(|e| ConfigError::Invalid {
                            name: "BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS",
                            problem: format!(
                                "not a JSON object of role ARN to service account: {e}"
                            ),
                        })?
                        .into_keys()
                        .collect(),
                ),
            },
        })
    }

    /// How windowed jobs' windows follow their claims.
    pub fn window_policy(&self) -> crate::store::WindowPolicy {
        crate::store::WindowPolicy {
            seconds: self.window_seconds,
        }
    }

    /// The task queues, with the dead-letter queue for those created at run time.
    pub fn queues(&self, sqs: aws_sdk_sqs::Client) -> crate::queue::Queues {
        let q = crate::queue::Queues::new(sqs, self.queue_prefix.clone());
        match &self.dead_letter_queue_arn {
            Some(arn) => q.with_dead_letter(arn.clone()),
            None => q,
        }
    }

    /// The SQS queue name for a Batchplane queue.
    pub fn sqs_queue_name(&self, queue: &str) -> String {
        format!("{}{}", self.queue_prefix, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_read_checked_and_named_when_wrong() {
        // Names of this test's own, so no other test's environment is touched.
        assert_eq!(
            seconds("BATCHPLANE_TEST_SECONDS_UNSET", 1.0).ok(),
            Some(1.0)
        );
        std::env::set_var("BATCHPLANE_TEST_SECONDS_HALF", "0.5");
        assert_eq!(seconds("BATCHPLANE_TEST_SECONDS_HALF", 1.0).ok(), Some(0.5));
        for (name, value, says) in [
            (
                "BATCHPLANE_TEST_SECONDS_NEGATIVE",
                "-1",
                "not from 0 to 3600",
            ),
            (
                "BATCHPLANE_TEST_SECONDS_WORD",
                "soon",
                "not a number of seconds",
            ),
            ("BATCHPLANE_TEST_SECONDS_NAN", "NaN", "not from 0 to 3600"),
        ] {
            std::env::set_var(name, value);
            let e = seconds(name, 1.0).expect_err(value).to_string();
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
    }
}
