//! ListJobs' `filters`, as AWS Batch's model documents them: one filter at a time;
//! `JOB_NAME` case-insensitive, a trailing `*` a prefix; `JOB_DEFINITION` a name (any
//! revision; a trailing `*` a prefix of the name) or an ARN (that revision only);
//! `BEFORE_CREATED_AT` / `AFTER_CREATED_AT` in epoch milliseconds; `SHARE_IDENTIFIER`
//! the fair-share identifier, the one filter `jobStatus` still applies with. Without a
//! filter, `jobStatus` (RUNNING when not given). Each becomes a [`JobQuery`], which the
//! store answers from an index of its own.

use super::wire::{client, opt_str};
use crate::api::ApiError;
use crate::domain::listing::BATCH_STATUSES;
use crate::store::JobQuery;
use serde_json::Value;

/// The listing a ListJobs request asks for: by its filter, if it has one (more than
/// one, or one AWS does not have, is refused naming it), else by its status.
pub fn job_query(filters: &[Value], status: Option<&str>) -> Result<JobQuery, ApiError> {
    if let Some(s) = status {
        if !BATCH_STATUSES.contains(&s) {
            return Err(client(format!("jobStatus {s:?} is not a job status")));
        }
    }
    let Some(f) = filters.first() else {
        return Ok(JobQuery::Status(status.unwrap_or("RUNNING").to_string()));
    };
    if filters.len() > 1 {
        return Err(client(format!(
            "filters: {} filters given; only one filter can be used at a time",
            filters.len()
        )));
    }
    let values = f["values"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let value = match values {
        [v] => v.as_str().unwrap_or_default(),
        _ => {
            return Err(client(format!(
                "filters[0].values: give exactly one value ({} given)",
                values.len()
            )))
        }
    };
    if value.is_empty() {
        return Err(client("filters[0].values[0] is empty"));
    }
    let time = |v: &str| {
        v.parse::<i64>().map_err(|_| {
            client(format!(
                "filters[0].values[0] {v:?} is not a time in milliseconds since 1970"
            ))
        })
    };
    let starred = |v: &str| match v.strip_suffix('*') {
        Some(p) => (p.to_string(), true),
        None => (v.to_string(), false),
    };
    // As AWS: with a filter, the status is not used, except beside SHARE_IDENTIFIER.
    Ok(match opt_str(f, "name") {
        Some("JOB_NAME") => {
            let (value, prefix) = starred(&value.to_lowercase());
            JobQuery::Name { value, prefix }
        }
        Some("JOB_DEFINITION") if value.starts_with("arn:") => {
            if value.contains('*') {
                return Err(client(
                    "filters[0].values[0]: an asterisk (*) is not supported with a job definition ARN",
                ));
            }
            if crate::domain::listing::definition_name(value).is_none() {
                return Err(client(format!(
                    "filters[0].values[0] {value:?} is not a job definition ARN (arn:…:job-definition/<name>:<revision>)"
                )));
            }
            JobQuery::DefinitionArn(value.to_string())
        }
        Some("JOB_DEFINITION") => {
            let (name, prefix) = starred(value);
            JobQuery::Definition { name, prefix }
        }
        Some("BEFORE_CREATED_AT") => JobQuery::Created {
            at: time(value)?,
            after: false,
        },
        Some("AFTER_CREATED_AT") => JobQuery::Created {
            at: time(value)?,
            after: true,
        },
        Some("SHARE_IDENTIFIER") => JobQuery::Share {
            share: value.to_string(),
            status: status.map(str::to_string),
        },
        other => {
            return Err(client(format!(
                "filters[0].name {other:?} must be JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT, AFTER_CREATED_AT or SHARE_IDENTIFIER"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(name: &str, value: &str, status: Option<&str>) -> JobQuery {
        job_query(&[json!({"name": name, "values": [value]})], status)
            .unwrap_or_else(|e| panic!("{name} {value}: {e:?}"))
    }

    #[test]
    fn each_filter_asks_what_aws_documents() {
        let arn = "arn:aws:batch:us-east-1:000000000000:job-definition/jd1A:3";
        assert_eq!(
            query("JOB_NAME", "Test1*", Some("RUNNING")),
            JobQuery::Name {
                value: "test1".into(),
                prefix: true
            },
            "case-insensitive, and the status is not used"
        );
        assert_eq!(
            query("JOB_DEFINITION", "jd1A", None),
            JobQuery::Definition {
                name: "jd1A".into(),
                prefix: false
            },
            "case-sensitive"
        );
        assert_eq!(
            query("JOB_DEFINITION", arn, None),
            JobQuery::DefinitionArn(arn.into())
        );
        assert_eq!(
            query("AFTER_CREATED_AT", "1000", None),
            JobQuery::Created {
                at: 1000,
                after: true
            }
        );
        assert_eq!(
            query("SHARE_IDENTIFIER", "teamA", Some("RUNNABLE")),
            JobQuery::Share {
                share: "teamA".into(),
                status: Some("RUNNABLE".into())
            },
            "the one filter the status applies with"
        );
        assert_eq!(
            job_query(&[], None).ok(),
            Some(JobQuery::Status("RUNNING".into())),
            "RUNNING when nothing is asked"
        );
    }

    #[test]
    fn bad_filters_are_refused_naming_what_is_wrong() {
        let refused = |filters: Value, status: Option<&str>, says: &str| {
            let list = filters.as_array().cloned().unwrap_or_default();
            match job_query(&list, status) {
                Err(e) => assert!(e.message.contains(says), "{}: {says}", e.message),
                Ok(f) => panic!("{filters} was taken: {f:?}"),
            }
        };
        refused(
            json!([{"name": "JOB_NAME", "values": ["a"]}, {"name": "JOB_NAME", "values": ["b"]}]),
            None,
            "one filter",
        );
        refused(
            json!([{"name": "STATUS", "values": ["a"]}]),
            None,
            "filters[0].name",
        );
        refused(
            json!([{"name": "AFTER_CREATED_AT", "values": ["yesterday"]}]),
            None,
            "milliseconds",
        );
        refused(
            json!([{"name": "JOB_DEFINITION", "values": ["arn:aws:batch:x:y:job-definition/a*"]}]),
            None,
            "asterisk",
        );
        refused(
            json!([{"name": "JOB_DEFINITION", "values": ["arn:aws:batch:x:y:job-definition/a"]}]),
            None,
            "not a job definition ARN",
        );
        refused(
            json!([{"name": "JOB_NAME", "values": []}]),
            None,
            "exactly one value",
        );
        refused(json!([]), Some("DONE"), "jobStatus");
    }
}
