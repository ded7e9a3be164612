//! Retry strategy, AWS Batch's shape: up to 10 attempts, and up to 5 `evaluateOnExit`
//! rules matched in order against the attempt's exit code, reason and status reason; the
//! first rule that matches says RETRY or EXIT, and when none matches the task is retried
//! (while attempts remain), as AWS Batch does.

use super::error::FieldError;
use serde::{Deserialize, Serialize};

pub const MAX_ATTEMPTS: u32 = 10;
pub const MAX_RULES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryAction {
    Retry,
    Exit,
}

/// One `evaluateOnExit` rule. Each pattern is exact text or a prefix ending in `*`;
/// a rule with several patterns matches only if all of them do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRule {
    #[serde(default, alias = "onExitCode")]
    pub on_exit_code: Option<String>,
    #[serde(default, alias = "onReason")]
    pub on_reason: Option<String>,
    #[serde(default, alias = "onStatusReason")]
    pub on_status_reason: Option<String>,
    pub action: RetryAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryStrategy {
    /// Attempts in all, 1 to 10 (1: never retried).
    pub attempts: u32,
    #[serde(default, alias = "evaluateOnExit")]
    pub evaluate_on_exit: Vec<ExitRule>,
}

impl Default for RetryStrategy {
    fn default() -> Self {
        RetryStrategy {
            attempts: 1,
            evaluate_on_exit: Vec::new(),
        }
    }
}

/// How an attempt ended, as the rules see it.
#[derive(Debug, Clone, Default)]
pub struct AttemptEnd<'a> {
    pub exit_code: Option<i32>,
    /// Why the attempt ended when not by its own exit (e.g. `OutOfMemory`).
    pub reason: Option<&'a str>,
    /// The task's status reason for this attempt.
    pub status_reason: Option<&'a str>,
}

/// Exact text, or a prefix when the pattern ends in `*`.
fn glob(pattern: &str, value: Option<&str>) -> bool {
    let Some(value) = value else {
        return false;
    };
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

impl ExitRule {
    fn matches(&self, end: &AttemptEnd<'_>) -> bool {
        let code = end.exit_code.map(|c| c.to_string());
        self.on_exit_code
            .as_deref()
            .is_none_or(|p| glob(p, code.as_deref()))
            && self
                .on_reason
                .as_deref()
                .is_none_or(|p| glob(p, end.reason))
            && self
                .on_status_reason
                .as_deref()
                .is_none_or(|p| glob(p, end.status_reason))
    }
}

impl RetryStrategy {
    /// Whether a failed attempt number `attempt` (1-based) is tried again.
    pub fn decide(&self, attempt: u32, end: &AttemptEnd<'_>) -> RetryAction {
        if attempt >= self.attempts {
            return RetryAction::Exit;
        }
        self.evaluate_on_exit
            .iter()
            .find(|r| r.matches(end))
            .map(|r| r.action)
            .unwrap_or(RetryAction::Retry)
    }

    /// Check the limits; the error says which field is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=MAX_ATTEMPTS).contains(&self.attempts) {
            return Err(FieldError::new(
                "retry_strategy.attempts",
                format!("{} must be 1 to {MAX_ATTEMPTS}", self.attempts),
            ));
        }
        if self.evaluate_on_exit.len() > MAX_RULES {
            return Err(FieldError::new(
                "retry_strategy.evaluate_on_exit",
                format!("{} rules; at most {MAX_RULES}", self.evaluate_on_exit.len()),
            ));
        }
        for (i, r) in self.evaluate_on_exit.iter().enumerate() {
            if r.on_exit_code.is_none() && r.on_reason.is_none() && r.on_status_reason.is_none() {
                return Err(FieldError::new(
                    format!("retry_strategy.evaluate_on_exit[{i}]"),
                    "give on_exit_code, on_reason or on_status_reason",
                ));
            }
            for (name, text) in [
                ("on_reason", &r.on_reason),
                ("on_status_reason", &r.on_status_reason),
            ] {
                if text.as_ref().is_some_and(|t| t.len() > 512) {
                    return Err(FieldError::new(
                        format!("retry_strategy.evaluate_on_exit[{i}].{name}"),
                        "at most 512 characters (as AWS Batch)",
                    ));
                }
            }
            if let Some(code) = &r.on_exit_code {
                let digits = code.strip_suffix('*').unwrap_or(code);
                if digits.len() > 512 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FieldError::new(
                        format!("retry_strategy.evaluate_on_exit[{i}].on_exit_code"),
                        format!("{code:?} must be digits, optionally ending in *"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(code: Option<&str>, status: Option<&str>, action: RetryAction) -> ExitRule {
        ExitRule {
            on_exit_code: code.map(str::to_string),
            on_reason: None,
            on_status_reason: status.map(str::to_string),
            action,
        }
    }

    fn end(code: i32) -> AttemptEnd<'static> {
        AttemptEnd {
            exit_code: Some(code),
            ..Default::default()
        }
    }

    #[test]
    fn no_rule_matching_means_retry_while_attempts_remain() {
        let s = RetryStrategy {
            attempts: 3,
            evaluate_on_exit: vec![rule(Some("2"), None, RetryAction::Exit)],
        };
        assert_eq!(s.decide(1, &end(1)), RetryAction::Retry);
        assert_eq!(s.decide(2, &end(1)), RetryAction::Retry);
        assert_eq!(s.decide(3, &end(1)), RetryAction::Exit, "no attempts left");
        assert_eq!(
            s.decide(1, &end(2)),
            RetryAction::Exit,
            "the rule says EXIT"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_globs_match_prefixes() {
        let s = RetryStrategy {
            attempts: 5,
            evaluate_on_exit: vec![
                rule(None, Some("Host EC2*"), RetryAction::Retry),
                rule(Some("1*"), None, RetryAction::Exit),
                rule(Some("*"), None, RetryAction::Retry),
            ],
        };
        assert_eq!(s.decide(1, &end(137)), RetryAction::Exit);
        assert_eq!(s.decide(1, &end(3)), RetryAction::Retry);
        let host = AttemptEnd {
            exit_code: Some(137),
            status_reason: Some("Host EC2 (instance i-0abc) terminated."),
            ..Default::default()
        };
        assert_eq!(s.decide(1, &host), RetryAction::Retry);
    }

    #[test]
    fn a_rule_on_reason_does_not_match_an_attempt_without_one() {
        let s = RetryStrategy {
            attempts: 2,
            evaluate_on_exit: vec![ExitRule {
                on_exit_code: None,
                on_reason: Some("OutOfMemory*".into()),
                on_status_reason: None,
                action: RetryAction::Exit,
            }],
        };
        assert_eq!(s.decide(1, &end(1)), RetryAction::Retry);
        let oom = AttemptEnd {
            exit_code: None,
            reason: Some("OutOfMemory"),
            status_reason: None,
        };
        assert_eq!(s.decide(1, &oom), RetryAction::Exit);
    }

    #[test]
    fn limits_are_checked_with_the_field_named() {
        let mut s = RetryStrategy {
            attempts: 11,
            evaluate_on_exit: vec![],
        };
        assert!(s.validate().unwrap_err().to_string().contains("attempts"));
        s.attempts = 2;
        s.evaluate_on_exit = vec![rule(Some("x1"), None, RetryAction::Exit)];
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("on_exit_code"));
        s.evaluate_on_exit = vec![rule(None, None, RetryAction::Exit)];
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("evaluate_on_exit[0]"));
        s.evaluate_on_exit = (0..6)
            .map(|_| rule(Some("1"), None, RetryAction::Exit))
            .collect();
        assert!(s.validate().unwrap_err().to_string().contains("at most 5"));
        s.evaluate_on_exit.truncate(5);
        s.validate().unwrap();
    }

    #[test]
    fn aws_spelling_is_accepted() {
        let s: RetryStrategy = serde_json::from_str(
            r#"{"attempts": 3, "evaluateOnExit": [{"onExitCode": "1*", "action": "EXIT"}]}"#,
        )
        .unwrap();
        assert_eq!(s.evaluate_on_exit[0].on_exit_code.as_deref(), Some("1*"));
    }
}
