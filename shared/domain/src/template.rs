//! Job templates: a job spec with references into an event, rendered when the event
//! arrives (an EventBridge rule or schedule triggers a job).
//!
//! A reference is `{{ PATH }}` inside a string, where PATH is JSONPath-like: `$` is the
//! event, `.name` or `['name']` a field, `[n]` an element (`$.detail.object.key`,
//! `$.resources[0]`, `$['detail-type']`). A string that is exactly one reference takes
//! the referenced value as it is (a number stays a number, a list a list); references
//! inside longer strings are interpolated as text. A reference to something the event
//! does not have is an error naming the reference and where in the template it is.

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
}

/// What is wrong with a template or its rendering; `at` is where in the template
/// (`tasks[0].command[2]`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct TemplateError {
    pub at: String,
    pub problem: String,
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("reference {path:?} must start with $ (the event)"))?;
    let mut steps = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                if j == start {
                    return Err(format!("reference {path:?}: empty field name after '.'"));
                }
                steps.push(Step::Field(rest[start..j].to_string()));
                i = j;
            }
            b'[' => {
                let end = rest[i..]
                    .find(']')
                    .map(|k| i + k)
                    .ok_or_else(|| format!("reference {path:?}: '[' without ']'"))?;
                let inner = rest[i + 1..end].trim();
                if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    steps.push(Step::Field(q.to_string()));
                } else {
                    let n = inner.parse::<usize>().map_err(|_| {
                        format!(
                            "reference {path:?}: [{inner}] is neither an index nor a quoted field"
                        )
                    })?;
                    steps.push(Step::Index(n));
                }
                i = end + 1;
            }
            c => {
                return Err(format!(
                    "reference {path:?}: unexpected {:?}; use .field, ['field'] or [index]",
                    c as char
                ))
            }
        }
    }
    Ok(steps)
}

fn lookup<'a>(event: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut v = event;
    for s in steps {
        v = match s {
            Step::Field(f) => v.get(f.as_str())?,
            Step::Index(n) => v.get(*n)?,
        };
    }
    Some(v)
}

/// The pieces of a string: text and references.
enum Piece<'a> {
    Text(&'a str),
    Ref(&'a str),
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "'{{' without '}}'".to_string())?;
        out.push(Piece::Ref(after[..close].trim()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn walk(
    t: &Value,
    at: &str,
    f: &mut dyn FnMut(&str, &str) -> Result<Value, TemplateError>,
) -> Result<Value, TemplateError> {
    Ok(match t {
        Value::String(s) => {
            let ps = pieces(s).map_err(|problem| TemplateError {
                at: at.to_string(),
                problem,
            })?;
            match ps.as_slice() {
                [Piece::Ref(r)] => f(at, r)?,
                _ if ps.iter().all(|p| matches!(p, Piece::Text(_))) => t.clone(),
                _ => {
                    let mut s = String::new();
                    for p in &ps {
                        match p {
                            Piece::Text(x) => s.push_str(x),
                            Piece::Ref(r) => s.push_str(&as_text(&f(at, r)?)),
                        }
                    }
                    Value::String(s)
                }
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| walk(v, &format!("{at}[{i}]"), f))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.insert(k.clone(), walk(v, &here, f)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Check a template's references (syntax only; the event decides the rest).
pub fn check(template: &Value) -> Result<(), TemplateError> {
    walk(template, "", &mut |at, r| {
        parse_path(r).map_err(|problem| TemplateError {
            at: at.to_string(),
            problem,
        })?;
        Ok(Value::Null)
    })
    .map(|_| ())
}

/// Render a template against an event.
pub fn render(template: &Value, event: &Value) -> Result<Value, TemplateError> {
    walk(template, "", &mut |at, r| {
        let steps = parse_path(r).map_err(|problem| TemplateError {
            at: at.to_string(),
            problem,
        })?;
        lookup(event, &steps).cloned().ok_or_else(|| TemplateError {
            at: at.to_string(),
            problem: format!("the event has nothing at {r}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3_event() -> Value {
        json!({"id": "e-1", "detail-type": "Object Created", "source": "aws.s3",
               "resources": ["arn:aws:s3:::raw"],
               "detail": {"bucket": {"name": "raw"}, "object": {"key": "in/2026/11/22.csv", "size": 1024}}})
    }

    #[test]
    fn whole_references_keep_their_type_and_inner_ones_become_text() {
        let t = json!({"name": "ingest", "tasks": [{"id": "load",
            "command": ["load", "s3://{{ $.detail.bucket.name }}/{{$.detail.object.key}}"],
            "env": {"SIZE": "{{ $.detail.object.size }}", "KIND": "{{ $['detail-type'] }}", "ARN": "{{ $.resources[0] }}"},
            "memory_mib": "{{ $.detail.object.size }}"}]});
        let r = render(&t, &s3_event()).expect("renders");
        let task = &r["tasks"][0];
        assert_eq!(task["command"][1], "s3://raw/in/2026/11/22.csv");
        assert_eq!(task["memory_mib"], 1024);
        assert_eq!(task["env"]["KIND"], "Object Created");
        assert_eq!(task["env"]["ARN"], "arn:aws:s3:::raw");
        assert_eq!(r["name"], "ingest");
    }

    #[test]
    fn a_missing_or_malformed_reference_names_where_it_is() {
        let t = json!({"name": "x", "tasks": [{"id": "a", "command": ["echo", "{{ $.detail.missing }}"]}]});
        let e = render(&t, &s3_event()).unwrap_err();
        assert_eq!(e.at, "tasks[0].command[1]");
        assert!(e.problem.contains("$.detail.missing"), "{e}");
        let bad = json!({"name": "{{ detail.key }}"});
        let e = check(&bad).unwrap_err();
        assert_eq!(e.at, "name");
        assert!(e.problem.contains("must start with $"), "{e}");
        let open = json!({"tasks": [{"id": "{{ $.id"}]});
        assert!(check(&open).unwrap_err().problem.contains("without '}}'"));
        assert!(check(&json!({"a": "{{ $.x[y] }}"})).is_err());
        assert!(check(&json!({"a": "plain text"})).is_ok());
    }
}
