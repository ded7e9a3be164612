//! Job definitions: register (a new revision each time), describe, deregister; the
//! container fields Batchplane reads (command, environment, resources, retry strategy)
//! and the `batchplane:tiers` tag.

use crate::api::{ApiError, Need, Service};
use crate::domain::access::{Access, DEFAULT_TEAM};
use crate::domain::containers::Container;
use crate::domain::retry::{ExitRule, RetryAction, RetryStrategy};
use crate::domain::tiers::{validate_tiers, Tier};
use crate::store::registry::{revision_sk, ResourceKind};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::{arn::*, wire::*};

/// AWS's `retryStrategy` → ours, with its limits checked.
pub(super) fn retry_from(
    v: Option<&Value>,
    field: &str,
) -> Result<Option<RetryStrategy>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let attempts = opt_int(v, "attempts", &format!("{field}.attempts"), 1, 10)?.unwrap_or(1) as u32;
    let mut rules = Vec::new();
    for (i, r) in v
        .get("evaluateOnExit")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let action = match r
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("RETRY") => RetryAction::Retry,
            Some("EXIT") => RetryAction::Exit,
            other => {
                return Err(client(format!(
                    "{field}.evaluateOnExit[{i}].action {other:?} must be RETRY or EXIT"
                )))
            }
        };
        rules.push(ExitRule {
            on_exit_code: opt_str(r, "onExitCode").map(String::from),
            on_reason: opt_str(r, "onReason").map(String::from),
            on_status_reason: opt_str(r, "onStatusReason").map(String::from),
            action,
        });
    }
    let s = RetryStrategy {
        attempts,
        evaluate_on_exit: rules,
    };
    s.validate().map_err(|e| {
        let inner = e.field.trim_start_matches("retry_strategy.");
        client(format!("{field}: {inner}: {}", e.problem))
    })?;
    Ok(Some(s))
}

pub(super) fn retry_to(r: &RetryStrategy) -> Value {
    json!({
        "attempts": r.attempts,
        "evaluateOnExit": r.evaluate_on_exit.iter().map(|e| {
            let mut m = Map::new();
            if let Some(v) = &e.on_exit_code { m.insert("onExitCode".into(), json!(v)); }
            if let Some(v) = &e.on_reason { m.insert("onReason".into(), json!(v)); }
            if let Some(v) = &e.on_status_reason { m.insert("onStatusReason".into(), json!(v)); }
            m.insert("action".into(), json!(match e.action { RetryAction::Retry => "RETRY", RetryAction::Exit => "EXIT" }));
            Value::Object(m)
        }).collect::<Vec<_>>(),
    })
}

/// What a container asks for: vCPUs, MiB and GPUs, each where it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ContainerResources {
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    pub gpus: Option<u32>,
}

/// vCPUs, memory and GPUs from `resourceRequirements` (or the older `vcpus`/`memory`).
pub(super) fn resources(container: &Value, field: &str) -> Result<ContainerResources, ApiError> {
    let mut gpus = None;
    let mut cpu = match container.get("vcpus") {
        None | Some(Value::Null) => None,
        Some(v) => Some(positive_number(v, &format!("{field}.vcpus"), MAX_VCPUS)?),
    };
    let mut mem = match container.get("memory") {
        None | Some(Value::Null) => None,
        Some(v) => Some(whole_number(
            v,
            &format!("{field}.memory"),
            1,
            MAX_MEMORY_MIB,
        )?),
    };
    for (i, r) in container
        .get("resourceRequirements")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let value = r.get("value").cloned().unwrap_or(Value::Null);
        let at = |kind: &str| format!("{field}.resourceRequirements[{i}] {kind}");
        match opt_str(r, "type") {
            Some("VCPU") => cpu = Some(positive_number(&value, &at("VCPU"), MAX_VCPUS)?),
            Some("MEMORY") => mem = Some(whole_number(&value, &at("MEMORY"), 1, MAX_MEMORY_MIB)?),
            Some("GPU") => gpus = Some(whole_number(&value, &at("GPU"), 0, MAX_GPUS)? as u32),
            other => {
                return Err(client(format!(
                    "{field}.resourceRequirements[{i}].type {other:?} must be VCPU, MEMORY or GPU"
                )))
            }
        }
    }
    Ok(ContainerResources {
        cpu,
        memory_mib: mem,
        gpus,
    })
}

/// A container's `environment` list as a map; a name under AWS Batch's reserved
/// `AWS_BATCH_` prefix is refused, named by `field`.
pub(super) fn environment(
    container: &Value,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let env: BTreeMap<String, String> = container
        .get("environment")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|kv| {
                    Some((
                        opt_str(kv, "name")?.to_string(),
                        opt_str(kv, "value").unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    match crate::domain::environment::check_names(env.keys()) {
        Some(problem) => Err(client(format!("{field}.environment: {problem}"))),
        None => Ok(env),
    }
}

/// A container's `logConfiguration`: the `awslogs` driver only (its output goes to
/// CloudWatch Logs), with `awslogs-group`, `awslogs-stream-prefix`,
/// `awslogs-create-group` and an `awslogs-region` that is the deployment's. Anything
/// else would be stored and not honoured, so it is refused, named under `field`.
pub(super) fn log_config(
    container: &Value,
    field: &str,
) -> Result<Option<crate::domain::logs::LogConfig>, ApiError> {
    let Some(lc) = container.get("logConfiguration").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let at = |what: &str| format!("{field}.logConfiguration.{what}");
    match opt_str(lc, "logDriver") {
        Some("awslogs") => {}
        other => {
            return Err(client(format!(
                "{}: {other:?} is not supported; Batchplane ships a task's output to CloudWatch Logs (awslogs) only",
                at("logDriver")
            )))
        }
    }
    if lc.get("secretOptions").is_some_and(|v| !v.is_null()) {
        return Err(client(format!("{}: not supported", at("secretOptions"))));
    }
    let mut config = crate::domain::logs::LogConfig::default();
    for (key, value) in lc["options"].as_object().into_iter().flatten() {
        let value = value.as_str().unwrap_or_default().to_string();
        match key.as_str() {
            "awslogs-group" => config.group = Some(value),
            "awslogs-stream-prefix" => config.stream_prefix = Some(value),
            // Groups are created when missing either way.
            "awslogs-create-group" => {}
            "awslogs-region" if value == super::arn::ArnContext::current().region => {}
            "awslogs-region" => {
                return Err(client(format!(
                    "{}: {value} is not this deployment's region; output is shipped in {}",
                    at("options.awslogs-region"),
                    super::arn::ArnContext::current().region
                )))
            }
            other => {
                return Err(client(format!(
                    "{}: the option {other:?} is not supported (awslogs-group, awslogs-stream-prefix, awslogs-create-group and awslogs-region are)",
                    at("options")
                )))
            }
        }
    }
    Ok(Some(config))
}

/// The container a job runs in: the submission's image and role, else the
/// definition's `containerProperties` `image` and `jobRoleArn`; `None` without an image
/// (the deployment's worker image). A role needs an image.
pub(super) fn container_from(
    image: Option<&str>,
    role: Option<&str>,
    container: &Value,
) -> Result<Option<Container>, ApiError> {
    let image = image.or_else(|| opt_str(container, "image"));
    let role = role.or_else(|| opt_str(container, "jobRoleArn"));
    match image {
        Some(i) => Container::checked(
            i,
            role,
            "containerProperties.image",
            "containerProperties.jobRoleArn",
        )
        .map(Some)
        .map_err(client),
        None if role.is_some() => Err(client(
            "containerProperties.jobRoleArn: a job role needs an image to run in",
        )),
        None => Ok(None),
    }
}

/// What of AWS Batch's container properties Batchplane cannot honour, and why: refused
/// at registration rather than stored and ignored. Each entry is the field and the
/// reason; a field is refused when present and not empty, false or null.
pub const REFUSED_CONTAINER_FIELDS: &[(&str, &str)] = &[
    ("volumes", "workers are shared, so tasks get no host volumes; read and write the task's working directory, or S3"),
    ("mountPoints", "workers are shared, so tasks get no host volumes; read and write the task's working directory, or S3"),
    ("privileged", "a task may not hold root on a worker other tasks share"),
    ("user", "each attempt runs as a uid of its own, chosen by the worker, so tasks cannot see each other"),
    ("linuxParameters", "devices, shared memory, tmpfs, swap and init settings are the worker pod's, not a task's"),
    ("ulimits", "a task's limits are its tier's vCPUs and memory"),
    ("secrets", "secrets are not injected; read them from Secrets Manager or SSM in the task with its job role"),
    ("repositoryCredentials", "images are pulled with the worker nodes' credentials (ECR or public registries)"),
    ("readonlyRootFilesystem", "the image's root file system is the worker pod's, which the taskhost writes to"),
    ("instanceType", "multi-node jobs are not supported"),
    ("executionRoleArn", "Fargate's execution role has no use on EKS worker pods: images are pulled with the nodes' credentials"),
    ("networkConfiguration", "a Fargate setting: jobs run on EKS worker pods"),
    ("fargatePlatformConfiguration", "a Fargate setting: jobs run on EKS worker pods"),
    ("ephemeralStorage", "a Fargate setting: jobs run on EKS worker pods"),
    ("runtimePlatform", "a Fargate setting: jobs run on EKS worker pods"),
    ("enableExecuteCommand", "ECS Exec is not available on worker pods"),
];

/// The first field of `containerProperties` (or `containerOverrides`) that Batchplane
/// refuses, as a `ClientException` naming it and why.
pub(super) fn refuse_unhonoured(container: &Value, field: &str) -> Result<(), ApiError> {
    for (name, why) in REFUSED_CONTAINER_FIELDS {
        let given = match container.get(*name) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if given {
            return Err(client(format!(
                "{field}.{name}: not supported by Batchplane: {why}"
            )));
        }
    }
    Ok(())
}

/// A submission's `containerOverrides` (`{}` when absent) and the resources it asks
/// for, with what cannot be honoured refused.
pub(super) fn container_overrides(input: &Value) -> Result<(Value, ContainerResources), ApiError> {
    let overrides = input
        .get("containerOverrides")
        .cloned()
        .unwrap_or(json!({}));
    let asked = resources(&overrides, "containerOverrides")?;
    refuse_unhonoured(&overrides, "containerOverrides")?;
    Ok((overrides, asked))
}

pub(super) fn command(container: &Value) -> Option<Vec<String>> {
    container.get("command").and_then(Value::as_array).map(|c| {
        c.iter()
            .map(|a| {
                a.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect()
    })
}

impl Service {
    // ---- job definitions ----

    /// A definition belongs to a team (its `batchplane:team` tag, else the caller's only
    /// team): only that team's members may add revisions or deregister it, and only
    /// those with a role there see it or submit with it.
    pub async fn register_job_definition(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let name = checked_name(input, "jobDefinitionName")?;
        check_size(input)?;
        match opt_str(input, "type") {
            Some("container") => {}
            Some(other) => {
                return Err(client(format!(
                    "type {other:?}: only container job definitions are supported (tasks run as processes on Batchplane workers)"
                )))
            }
            None => return Err(client("type is required")),
        }
        for other in [
            "nodeProperties",
            "eksProperties",
            "ecsProperties",
            "consumableResourceProperties",
        ] {
            if input.get(other).is_some_and(|v| !v.is_null()) {
                return Err(client(format!(
                    "{other}: not supported by Batchplane: give containerProperties (tasks run as processes on Batchplane's worker pods)"
                )));
            }
        }
        let container = input
            .get("containerProperties")
            .ok_or_else(|| client("containerProperties is required for type container"))?;
        resources(container, "containerProperties")?;
        environment(container, "containerProperties")?;
        log_config(container, "containerProperties")?;
        refuse_unhonoured(container, "containerProperties")?;
        if let Some(c) = container_from(None, None, container)? {
            self.check_job_role(c.job_role_arn.as_deref(), "containerProperties.jobRoleArn")?;
        }
        if let Some(p) = input.get("platformCapabilities").and_then(Value::as_array) {
            if p.iter().any(|c| c != "EC2") {
                return Err(client(format!(
                    "platformCapabilities {}: only EC2: Batchplane runs jobs on EKS worker pods, not Fargate",
                    Value::Array(p.clone())
                )));
            }
        }
        retry_from(input.get("retryStrategy"), "retryStrategy")?;
        definition_tiers(input)?;
        let named = input["tags"][TEAM_TAG].as_str();
        let team = Self::submission_team(who, named, &format!("tags.{TEAM_TAG}"))?;
        let earlier = self
            .store
            .list_resources(ResourceKind::JobDefinition, &format!("{name}#"))
            .await?;
        if let Some(owner) = earlier.last().map(definition_team) {
            if owner != team {
                return Err(client(format!(
                    "jobDefinitionName {name}: the name belongs to another team's definitions"
                )));
            }
        }
        let revision = self.store.next_revision(&name).await?;
        let definition_arn = arn("job-definition", &format!("{name}:{revision}"));
        let mut doc = input.clone();
        if let Some(m) = doc.as_object_mut() {
            m.insert("jobDefinitionArn".into(), json!(definition_arn));
            m.insert("revision".into(), json!(revision));
            m.insert("status".into(), json!("ACTIVE"));
            let tags = m.entry("tags").or_insert_with(|| json!({}));
            if let Some(t) = tags.as_object_mut() {
                t.insert(TEAM_TAG.into(), json!(team));
            }
        }
        self.store
            .put_resource(
                ResourceKind::JobDefinition,
                &revision_sk(&name, revision),
                &doc,
                true,
            )
            .await?;
        Ok(
            json!({"jobDefinitionName": name, "jobDefinitionArn": definition_arn, "revision": revision}),
        )
    }

    /// `name:revision`, an ARN, or a bare name (its latest ACTIVE revision).
    pub(super) async fn job_definition(&self, reference: &str) -> Result<Option<Value>, ApiError> {
        let r = name_of(reference);
        if let Some((name, rev)) = r.rsplit_once(':') {
            let rev: u32 = rev
                .parse()
                .map_err(|_| client(format!("jobDefinition {reference:?}: bad revision")))?;
            return Ok(self
                .store
                .get_resource(ResourceKind::JobDefinition, &revision_sk(name, rev))
                .await?);
        }
        let all = self
            .store
            .list_resources(ResourceKind::JobDefinition, &format!("{r}#"))
            .await?;
        Ok(all.into_iter().rev().find(|d| d["status"] == "ACTIVE"))
    }

    /// A definition by reference, if the caller may see it.
    pub(super) async fn job_definition_for(
        &self,
        who: &Access,
        reference: &str,
    ) -> Result<Option<Value>, ApiError> {
        Ok(self
            .job_definition(reference)
            .await?
            .filter(|d| who.can_view(definition_team(d))))
    }

    pub async fn describe_job_definitions(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let mut found = Vec::new();
        if let Some(list) = input.get("jobDefinitions").and_then(Value::as_array) {
            for r in list.iter().filter_map(Value::as_str) {
                if let Some(d) = self.job_definition_for(who, r).await? {
                    found.push(d);
                }
            }
        } else {
            let prefix = opt_str(input, "jobDefinitionName")
                .map(|n| format!("{n}#"))
                .unwrap_or_default();
            found = self
                .store
                .list_resources(ResourceKind::JobDefinition, &prefix)
                .await?;
        }
        found.retain(|d| who.can_view(definition_team(d)));
        if let Some(status) = opt_str(input, "status") {
            found.retain(|d| d["status"] == status);
        }
        let (page, next) = paginate(found, input)?;
        Ok(json!({"jobDefinitions": page, "nextToken": next}))
    }

    pub async fn deregister_job_definition(
        &self,
        who: &Access,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let reference = req_str(input, "jobDefinition")?;
        let r = name_of(reference);
        let Some((name, rev)) = r.rsplit_once(':') else {
            return Err(client(format!(
                "jobDefinition {reference:?}: give name:revision or an ARN"
            )));
        };
        let sk = revision_sk(name, rev.parse().unwrap_or(0));
        let missing = || client(format!("job definition {reference} does not exist"));
        let mut doc = self
            .store
            .get_resource(ResourceKind::JobDefinition, &sk)
            .await?
            .ok_or_else(missing)?;
        Self::require_on_team(who, definition_team(&doc), Need::Act, missing)?;
        doc["status"] = json!("INACTIVE");
        self.store
            .put_resource(ResourceKind::JobDefinition, &sk, &doc, false)
            .await?;
        Ok(json!({}))
    }
}

/// The tag by which a job definition lists resource tiers (AWS's RegisterJobDefinition
/// has no field for them): `CPU:MEMORY_MIB[:GPU]` per tier, comma-separated, small to
/// large, e.g. `1:1024,2:8192,8:32768:1`.
pub const TIERS_TAG: &str = "batchplane:tiers";

/// The tag naming the team a job definition belongs to.
pub const TEAM_TAG: &str = "batchplane:team";

/// The team a stored definition belongs to (`default` for one registered before
/// definitions had teams).
pub fn definition_team(def: &Value) -> &str {
    def["tags"][TEAM_TAG].as_str().unwrap_or(DEFAULT_TEAM)
}

/// The tiers a job definition's tags list (none without the tag).
pub fn definition_tiers(def: &Value) -> Result<Vec<Tier>, ApiError> {
    let Some(text) = def["tags"][TIERS_TAG].as_str() else {
        return Ok(Vec::new());
    };
    let tiers = text
        .split(',')
        .map(|t| Tier::parse_shape(t.trim()))
        .collect::<Result<Vec<Tier>, String>>()
        .map_err(|e| client(format!("tags.{TIERS_TAG}: {e}")))?;
    validate_tiers(&tiers).map_err(|e| client(format!("tags.{TIERS_TAG}: {e}")))?;
    Ok(tiers)
}
