//! AWS Batch's wire conventions shared by every operation: `ClientException`s naming
//! the field, names and ARNs, required and optional fields, `nextToken` paging, tags.

use crate::api::{ApiError, ErrorKind, Service};
use crate::store::registry::ResourceKind;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const CLIENT: &str = "ClientException";

pub(super) fn client(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Invalid, CLIENT, message, Value::Null)
}

/// A name, or the name at the end of an ARN.
pub(super) fn name_of(name_or_arn: &str) -> &str {
    name_or_arn.rsplit('/').next().unwrap_or(name_or_arn)
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn req_str<'a>(input: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(client(format!("{field} is required")))
        }
        Some(_) => Err(client(format!("{field} must be a string"))),
    }
}

/// An optional whole number in `lo..=hi` at `input[field]` (named `path` in errors): a
/// fraction, a string or a number out of range is refused, never truncated.
pub(super) fn opt_int(
    input: &Value,
    field: &str,
    path: &str,
    lo: i64,
    hi: i64,
) -> Result<Option<i64>, ApiError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(client(format!(
                "{path} {v}: must be a whole number from {lo} to {hi}"
            ))),
        },
    }
}

/// A number of vCPUs written as text (`resourceRequirements` values) or as a number: finite,
/// above 0 and at most `hi`.
pub(super) fn positive_number(v: &Value, path: &str, hi: f64) -> Result<f64, ApiError> {
    let n = match v {
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    n.filter(|n| n.is_finite() && *n > 0.0 && *n <= hi)
        .ok_or_else(|| {
            client(format!(
                "{path} {v}: must be a number above 0 and at most {hi}"
            ))
        })
}

/// A whole number written as text or as a number, in `lo..=hi`.
pub(super) fn whole_number(v: &Value, path: &str, lo: u64, hi: u64) -> Result<u64, ApiError> {
    let n = match v {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.filter(|n| (lo..=hi).contains(n)).ok_or_else(|| {
        client(format!(
            "{path} {v}: must be a whole number from {lo} to {hi}"
        ))
    })
}

/// Refuse a request document that would make an item past DynamoDB's limit, naming its
/// largest field.
pub(super) fn check_size(input: &Value) -> Result<(), ApiError> {
    crate::domain::limits::check_document_size("", input, crate::domain::limits::MAX_DOCUMENT_BYTES)
        .map_err(|e| client(e.to_string()))
}

/// The most vCPUs, MiB and GPUs one job may ask for (what the largest instances have).
pub(super) const MAX_VCPUS: f64 = 4096.0;
pub(super) const MAX_MEMORY_MIB: u64 = 32 * 1024 * 1024;
pub(super) const MAX_GPUS: u64 = 64;

pub(super) fn opt_str<'a>(input: &'a Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(Value::as_str)
}

pub(super) fn checked_name(input: &Value, field: &str) -> Result<String, ApiError> {
    let name = req_str(input, field)?;
    if !valid_name(name) {
        return Err(client(format!(
            "{field} {name:?}: up to 128 letters, numbers, hyphens and underscores, starting with a letter or number"
        )));
    }
    Ok(name.to_string())
}

/// Offset pagination over a list already in order: `nextToken` is the offset.
pub(super) fn paginate(
    items: Vec<Value>,
    input: &Value,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let max = match input.get("maxResults").and_then(Value::as_u64) {
        Some(m) if (1..=1000).contains(&m) => m as usize,
        Some(m) => return Err(client(format!("maxResults {m} must be 1 to 1000"))),
        None => 100,
    };
    let start = match opt_str(input, "nextToken") {
        Some(t) => decode_offset(t)?,
        None => 0,
    };
    let end = (start + max).min(items.len());
    let next = (end < items.len()).then(|| encode_offset(end));
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

pub(super) fn encode_offset(n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{n}"))
}

pub(super) fn decode_offset(t: &str) -> Result<usize, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| client("nextToken is not a token this API gave out"))
}

pub(super) fn string_map(
    v: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(client(format!("{field}.{k} must be a string"))),
            })
            .collect(),
        Some(_) => Err(client(format!("{field} must be a map of strings"))),
    }
}

pub(super) fn env_list(env: &BTreeMap<String, String>) -> Value {
    Value::Array(
        env.iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect(),
    )
}

pub(super) fn merge_tags(doc: &mut Value, tags: &BTreeMap<String, String>) {
    let entry = doc
        .as_object_mut()
        .map(|m| m.entry("tags").or_insert_with(|| json!({})));
    if let Some(Value::Object(t)) = entry {
        for (k, v) in tags {
            t.insert(k.clone(), json!(v));
        }
    }
}

impl Service {
    /// Describe a shared resource kind: nothing to a caller with no role anywhere.
    pub(super) async fn describe(
        &self,
        who: &crate::domain::access::Access,
        kind: ResourceKind,
        input: &Value,
        names_field: &str,
        out_field: &str,
    ) -> Result<Value, ApiError> {
        if !Self::sees_shared(who) {
            return Ok(json!({ out_field: [] }));
        }
        let mut found = Vec::new();
        match input.get(names_field).and_then(Value::as_array) {
            Some(list) if !list.is_empty() => {
                for n in list.iter().filter_map(Value::as_str) {
                    if let Some(d) = self.store.get_resource(kind, name_of(n)).await? {
                        found.push(d);
                    }
                }
            }
            _ => found = self.store.list_resources(kind, "").await?,
        }
        let (page, next) = paginate(found, input)?;
        Ok(json!({ out_field: page, "nextToken": next }))
    }

    /// Store a new resource; a ClientException if one of that name exists.
    pub(super) async fn create_new(
        &self,
        kind: ResourceKind,
        name: &str,
        doc: &Value,
    ) -> Result<(), ApiError> {
        if self.store.put_resource(kind, name, doc, true).await? {
            return Ok(());
        }
        Err(client(format!(
            "Object already exists: {} {name}",
            kind.arn_type().replace('-', " ")
        )))
    }

    /// The resource `input[field]` names (a name or an ARN), which must exist: its name
    /// and document.
    pub(super) async fn existing<'a>(
        &self,
        kind: ResourceKind,
        input: &'a Value,
        field: &str,
    ) -> Result<(&'a str, Value), ApiError> {
        let reference = req_str(input, field)?;
        let name = name_of(reference);
        let doc = self.store.get_resource(kind, name).await?.ok_or_else(|| {
            client(format!(
                "{} {reference} does not exist",
                kind.arn_type().replace('-', " ")
            ))
        })?;
        Ok((name, doc))
    }
}
