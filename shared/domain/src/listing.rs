//! How a job is listed: its AWS Batch status, and the index keys ListJobs reads.
//!
//! Each of ListJobs' questions is answered by one index, so a queue with a long history
//! answers as fast as an empty one: jobs in a status (`status_key`, newest first), by
//! name (`name_key`: the name lower-cased, then newest first), by job definition name
//! (`definition_key`, likewise), by share identifier (`share_key`, newest first), and by
//! creation time (the queue's own index). The keys are plain strings built here, once;
//! the store writes them and queries them.

use super::records::JobRecord;
use super::state::JobState;

/// Every status AWS Batch gives a job.
pub const BATCH_STATUSES: [&str; 7] = [
    "SUBMITTED",
    "PENDING",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
];

/// Between the parts of a key. Below every printable character, so `abc` + SEP sorts
/// before `abcd` and a name's entries are one contiguous range.
pub const SEP: char = '\u{1}';

/// AWS's status of a job, from what is stored: a job is RUNNING once a task started;
/// an array's parent stays PENDING until its children have all ended, as AWS Batch's
/// does (ListJobs lists it under PENDING meanwhile).
pub fn aws_status(job: &JobRecord) -> &'static str {
    let array_parent = job.array.as_ref().is_some_and(|a| a.array_size.is_some());
    match job.state {
        JobState::Submitted => "SUBMITTED",
        JobState::Succeeded => "SUCCEEDED",
        JobState::Failed | JobState::Cancelled => "FAILED",
        _ if array_parent => "PENDING",
        JobState::Pending if job.array.is_some() => "PENDING",
        _ if job.started_at.is_some() => "RUNNING",
        _ => "RUNNABLE",
    }
}

/// The key of a queue's jobs in one status.
pub fn status_key(queue: &str, status: &str) -> String {
    format!("{queue}{SEP}{status}")
}

/// The key of a queue's jobs of one share identifier.
pub fn share_key(queue: &str, share: &str) -> String {
    format!("{queue}{SEP}{share}")
}

/// Newest first when sorted ascending: the creation time counted down from the
/// largest 13-digit millisecond time (the year 2286).
fn newest_first(created_at: i64) -> String {
    format!(
        "{:013}",
        9_999_999_999_999 - created_at.clamp(0, 9_999_999_999_999)
    )
}

/// A job's place among its queue's jobs by name: names in order, case-insensitively,
/// and one name's jobs newest first.
pub fn name_key(name: &str, created_at: i64) -> String {
    format!("{}{SEP}{}", name.to_lowercase(), newest_first(created_at))
}

/// A job's place among its queue's jobs by definition name, as [`name_key`] (the name
/// as it was registered: AWS matches definitions case-sensitively).
pub fn definition_key(definition_name: &str, created_at: i64) -> String {
    format!("{definition_name}{SEP}{}", newest_first(created_at))
}

/// What a name (or definition name) key must begin with: the name and the separator,
/// or, for a prefix (a value that ended in `*`), the prefix alone.
pub fn key_prefix(value: &str, prefix: bool) -> String {
    if prefix {
        value.to_string()
    } else {
        format!("{value}{SEP}")
    }
}

/// The name in a job definition's ARN (`arn:…:job-definition/<name>:<revision>`).
pub fn definition_name(arn: &str) -> Option<&str> {
    let (_, rest) = arn.rsplit_once("job-definition/")?;
    let (name, revision) = rest.rsplit_once(':')?;
    (!name.is_empty() && revision.parse::<u32>().is_ok()).then_some(name)
}

/// The keys a job is listed under, besides its queue and creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingKeys {
    pub status: String,
    pub name: String,
    /// The definition key and the definition's ARN, for a job run from a definition.
    pub definition: Option<(String, String)>,
    /// The share key and the share identifier.
    pub share: Option<(String, String)>,
}

pub fn listing_keys(job: &JobRecord) -> ListingKeys {
    let array = job.array.as_ref();
    ListingKeys {
        status: status_key(&job.queue, aws_status(job)),
        name: name_key(&job.name, job.created_at),
        definition: array
            .and_then(|a| a.job_definition.as_deref())
            .and_then(|arn| {
                definition_name(arn)
                    .map(|name| (definition_key(name, job.created_at), arn.to_string()))
            }),
        share: array
            .and_then(|a| a.share_identifier.as_deref())
            .map(|share| (share_key(&job.queue, share), share.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, at: i64) -> JobRecord {
        JobRecord {
            created_at: at,
            ..JobRecord::new("j-1", name, "t", "q")
        }
    }

    #[test]
    fn names_sort_in_order_and_each_names_jobs_newest_first() {
        let mut keys = [
            name_key("b", 5),
            name_key("A", 1),
            name_key("ab", 9),
            name_key("a", 7),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                name_key("a", 7),
                name_key("a", 1),
                name_key("ab", 9),
                name_key("b", 5)
            ]
        );
    }

    #[test]
    fn a_name_matches_itself_and_a_prefix_matches_longer_names() {
        let k = name_key("Test10", 1_700_000_000_000);
        assert!(k.starts_with(&key_prefix("test10", false)));
        assert!(!k.starts_with(&key_prefix("test1", false)));
        assert!(k.starts_with(&key_prefix("test1", true)));
        assert!(!k.starts_with(&key_prefix("test2", true)));
    }

    #[test]
    fn a_definition_arn_gives_its_name() {
        let arn = "arn:aws:batch:us-east-1:000000000000:job-definition/jd1A:3";
        assert_eq!(definition_name(arn), Some("jd1A"));
        assert_eq!(definition_name("jd1A"), None);
        assert_eq!(definition_name("arn:x:job-definition/jd:latest"), None);
    }

    #[test]
    fn a_job_is_listed_under_its_queue_and_status() {
        let mut j = job("n", 5);
        j.state = JobState::Pending;
        assert_eq!(listing_keys(&j).status, status_key("q", "RUNNABLE"));
        j.started_at = Some(6);
        assert_eq!(listing_keys(&j).status, status_key("q", "RUNNING"));
        j.state = JobState::Cancelled;
        assert_eq!(listing_keys(&j).status, status_key("q", "FAILED"));
        assert_eq!(listing_keys(&j).definition, None);
        assert_eq!(listing_keys(&j).share, None);
    }
}
