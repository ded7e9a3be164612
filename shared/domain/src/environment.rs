//! A task's environment: which names a job may set. AWS Batch reserves the
//! `AWS_BATCH_` prefix for the variables it sets in every container (the job's id,
//! attempt, queue, compute environment, array index and size); Batchplane sets the
//! same ones, so a job's own variable under it is refused.

/// The prefix of the variables AWS Batch (and so Batchplane) sets in a task's
/// environment.
pub const RESERVED_PREFIX: &str = "AWS_BATCH_";

/// The problem with the first of `names` a job may not set: one that is no variable
/// name at all, or one under [`RESERVED_PREFIX`].
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<String> {
    names.into_iter().find_map(|k| {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            Some(format!("variable name {k:?} is not valid"))
        } else if k.starts_with(RESERVED_PREFIX) {
            Some(format!(
                "variable {k:?}: the {RESERVED_PREFIX} prefix is reserved for the variables AWS Batch sets"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_may_not_set_a_reserved_or_malformed_name() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_names(&names(&["HOME", "AWS_REGION", "BATCH_X"])),
            None
        );
        let why = check_names(&names(&["OK", "AWS_BATCH_JOB_ID"])).unwrap_or_default();
        assert!(
            why.contains("\"AWS_BATCH_JOB_ID\"") && why.contains("reserved"),
            "{why}"
        );
        let why = check_names(&names(&["A=B"])).unwrap_or_default();
        assert!(why.contains("not valid"), "{why}");
    }
}
