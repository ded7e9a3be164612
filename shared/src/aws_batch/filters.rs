//! ListJobs' `filters`, as AWS Batch's model documents them: one filter at a time;
//! `JOB_NAME` case-insensitive, a trailing `*` a prefix; `JOB_DEFINITION` a name (any
//! revision; a trailing `*` a prefix of the name) or an ARN (that revision only);
//! `BEFORE_CREATED_AT` / `AFTER_CREATED_AT` in epoch milliseconds; `SHARE_IDENTIFIER`
//! the fair-share identifier, the one filter `jobStatus` still applies with.

use super::wire::{client, opt_str};
use crate::api::ApiError;
use crate::domain::JobRecord;
use serde_json::Value;

/// One ListJobs filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFilter {
    /// Lower-cased; `prefix` when the value ended in `*`.
    Name {
        value: String,
        prefix: bool,
    },
    /// A definition's name, any revision (`prefix` when the value ended in `*`).
    DefinitionName {
        name: String,
        prefix: bool,
    },
    /// A definition's ARN with its revision: that revision only.
    DefinitionArn(String),
    CreatedBefore(i64),
    CreatedAfter(i64),
    Share(String),
}

impl JobFilter {
    /// The request's filter, if it has one; more than one, or one AWS does not have,
    /// is refused naming it.
    pub fn parse(filters: &[Value]) -> Result<Option<JobFilter>, ApiError> {
        let Some(f) = filters.first() else {
            return Ok(None);
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
        Ok(Some(match opt_str(f, "name") {
            Some("JOB_NAME") => {
                let (value, prefix) = starred(&value.to_lowercase());
                JobFilter::Name { value, prefix }
            }
            Some("JOB_DEFINITION") if value.starts_with("arn:") => {
                if value.contains('*') {
                    return Err(client(
                        "filters[0].values[0]: an asterisk (*) is not supported with a job definition ARN",
                    ));
                }
                JobFilter::DefinitionArn(value.to_string())
            }
            Some("JOB_DEFINITION") => {
                let (name, prefix) = starred(value);
                JobFilter::DefinitionName { name, prefix }
            }
            Some("BEFORE_CREATED_AT") => JobFilter::CreatedBefore(time(value)?),
            Some("AFTER_CREATED_AT") => JobFilter::CreatedAfter(time(value)?),
            Some("SHARE_IDENTIFIER") => JobFilter::Share(value.to_string()),
            other => {
                return Err(client(format!(
                    "filters[0].name {other:?} must be JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT, AFTER_CREATED_AT or SHARE_IDENTIFIER"
                )))
            }
        }))
    }

    /// Whether `jobStatus` still applies beside this filter.
    pub fn keeps_status(&self) -> bool {
        matches!(self, JobFilter::Share(_))
    }

    pub fn matches(&self, job: &JobRecord) -> bool {
        let definition = job.array.as_ref().and_then(|a| a.job_definition.as_deref());
        match self {
            JobFilter::Name { value, prefix } => {
                let name = job.name.to_lowercase();
                if *prefix {
                    name.starts_with(value.as_str())
                } else {
                    name == *value
                }
            }
            JobFilter::DefinitionArn(arn) => definition == Some(arn.as_str()),
            JobFilter::DefinitionName { name, prefix } => {
                // `arn:…:job-definition/<name>:<revision>`
                let stored = definition
                    .and_then(|d| d.rsplit_once("job-definition/"))
                    .and_then(|(_, rest)| rest.rsplit_once(':'))
                    .map(|(n, _)| n);
                stored.is_some_and(|n| {
                    if *prefix {
                        n.starts_with(name.as_str())
                    } else {
                        n == name
                    }
                })
            }
            JobFilter::CreatedBefore(t) => job.created_at < *t,
            JobFilter::CreatedAfter(t) => job.created_at > *t,
            JobFilter::Share(s) => {
                job.array
                    .as_ref()
                    .and_then(|a| a.share_identifier.as_deref())
                    == Some(s.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(name: &str, value: &str) -> JobFilter {
        JobFilter::parse(&[json!({"name": name, "values": [value]})])
            .unwrap_or_else(|e| panic!("{name} {value}: {e:?}"))
            .unwrap_or_else(|| panic!("{name} {value}: no filter"))
    }

    fn job(name: &str, definition: Option<&str>, share: Option<&str>, at: i64) -> JobRecord {
        let array: crate::domain::batch::ArrayJob = serde_json::from_value(json!({
            "template": {"command": ["true"], "cpu_milli": 1000, "memory_mib": 64},
            "window": 1,
            "job_definition": definition,
            "share_identifier": share,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        JobRecord {
            created_at: at,
            array: Some(array),
            ..JobRecord::new("j-1-a", name, "t", "q")
        }
    }

    #[test]
    fn each_filter_matches_as_aws_documents_it() {
        let arn = "arn:aws:batch:us-east-1:000000000000:job-definition/jd1A:3";
        let j = job("Test10", Some(arn), Some("teamA"), 1000);
        assert!(filter("JOB_NAME", "test10").matches(&j));
        assert!(filter("JOB_NAME", "test1*").matches(&j));
        assert!(!filter("JOB_NAME", "test1").matches(&j));
        assert!(filter("JOB_DEFINITION", "jd1A").matches(&j));
        assert!(!filter("JOB_DEFINITION", "jd1").matches(&j));
        assert!(filter("JOB_DEFINITION", "jd1*").matches(&j));
        assert!(
            !filter("JOB_DEFINITION", "JD1A").matches(&j),
            "case-sensitive"
        );
        assert!(filter("JOB_DEFINITION", arn).matches(&j));
        assert!(!filter("JOB_DEFINITION", &arn.replace(":3", ":2")).matches(&j));
        assert!(filter("BEFORE_CREATED_AT", "1001").matches(&j));
        assert!(!filter("AFTER_CREATED_AT", "1000").matches(&j));
        assert!(filter("SHARE_IDENTIFIER", "teamA").matches(&j));
        assert!(!filter("SHARE_IDENTIFIER", "teamB").matches(&j));
        assert!(filter("SHARE_IDENTIFIER", "teamA").keeps_status());
        assert!(!filter("JOB_NAME", "x").keeps_status());
    }

    #[test]
    fn bad_filters_are_refused_naming_what_is_wrong() {
        let refused = |filters: Value, says: &str| {
            let list = filters.as_array().cloned().unwrap_or_default();
            match JobFilter::parse(&list) {
                Err(e) => assert!(e.message.contains(says), "{}: {says}", e.message),
                Ok(f) => panic!("{filters} was taken: {f:?}"),
            }
        };
        refused(
            json!([{"name": "JOB_NAME", "values": ["a"]}, {"name": "JOB_NAME", "values": ["b"]}]),
            "one filter",
        );
        refused(
            json!([{"name": "STATUS", "values": ["a"]}]),
            "filters[0].name",
        );
        refused(
            json!([{"name": "AFTER_CREATED_AT", "values": ["yesterday"]}]),
            "milliseconds",
        );
        refused(
            json!([{"name": "JOB_DEFINITION", "values": ["arn:aws:batch:x:y:job-definition/a*"]}]),
            "asterisk",
        );
        refused(
            json!([{"name": "JOB_NAME", "values": []}]),
            "exactly one value",
        );
    }
}
