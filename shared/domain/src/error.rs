//! The error every rule of the domain gives: the field that breaks it, as a path
//! (`tiers[1].memory_mib`, `retry_strategy.evaluate_on_exit[0].on_exit_code`), and what
//! is wrong with its value. Callers name the field in their own errors (a task's id, a
//! request's body) from these parts, never by parsing a message.

/// A field whose value breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Where: a field name, or a path into nested fields and lists.
    pub field: String,
    /// What is wrong with its value, and what would be right.
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_reads_as_its_path_and_problem() {
        let e = FieldError::new("tiers[1].memory_mib", "must be more than 96");
        assert_eq!(e.to_string(), "tiers[1].memory_mib: must be more than 96");
    }
}
