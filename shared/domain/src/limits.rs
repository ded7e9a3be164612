//! Bounds on what one request may make: the size of every item it stores (DynamoDB's
//! items stop at 400 KB), and how far a YAML document may grow through its aliases.

use crate::error::FieldError;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde_json::Value;
use std::cell::Cell;

/// The most bytes a stored document (an array job's template, a job definition, a job
/// template) may take as JSON: well inside DynamoDB's 400 KB item, with room for the
/// attributes stored beside it.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The most tasks one addition to a running job may bring: they are written in one
/// DynamoDB transaction (100 items, 4 MB at most), so an addition is all or nothing.
pub const MAX_TASKS_PER_ADDITION: usize = 100;

/// The most bytes one addition's task items may take together (DynamoDB's 4 MB per
/// transaction, less room for the keys and conditions).
pub const MAX_ADDITION_BYTES: usize = 3_500_000;

/// The most tasks one page of an open job may hold. A page is written with
/// BatchWriteItem, not in one transaction, so only the request's size bounds it; this
/// keeps each page's check and write well inside an API request's 29 s.
pub const MAX_TASKS_PER_PAGE: usize = 20_000;

/// The most distinct worker pools (tier shapes) one submission may bring into being.
pub const MAX_POOLS_PER_SUBMISSION: usize = 16;

/// Refuse `doc` if it is larger than `max` bytes as JSON, naming its largest field
/// (`prefix.field`), where what is too big is likely to be.
pub fn check_document_size(prefix: &str, doc: &Value, max: usize) -> Result<(), FieldError> {
    let size = json_len(doc);
    if size <= max {
        return Ok(());
    }
    let largest = doc.as_object().and_then(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), json_len(v)))
            .max_by_key(|(_, n)| *n)
    });
    let at = |field: &str| {
        if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        }
    };
    Err(match largest {
        Some((field, n)) => FieldError::new(
            at(&field),
            format!("{n} bytes of a {size}-byte document; the whole may be at most {max} bytes (a stored item stops at 400 KB): pass large inputs as files"),
        ),
        None => FieldError::new(
            if prefix.is_empty() { "body" } else { prefix },
            format!("{size} bytes; at most {max}"),
        ),
    })
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Parse YAML whose aliases may not expand it past twice its own size (plus a little):
/// a small body cannot become a large document (a "billion laughs"). The expansion is
/// counted before the document is built, and counting stops at the cap.
pub fn yaml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    let budget = text.len().saturating_mul(2) + 4096;
    let spent = Cell::new(0usize);
    for doc in serde_yaml::Deserializer::from_str(text) {
        Count {
            spent: &spent,
            budget,
        }
        .deserialize(doc)?;
    }
    serde_yaml::from_str(text)
}

/// Counts the bytes and nodes a document expands to, failing once past the budget.
#[derive(Clone, Copy)]
struct Count<'a> {
    spent: &'a Cell<usize>,
    budget: usize,
}

impl Count<'_> {
    fn add<E: de::Error>(self, n: usize) -> Result<(), E> {
        let total = self.spent.get().saturating_add(n + 1);
        self.spent.set(total);
        if total > self.budget {
            Err(E::custom(format!(
                "aliases expand this document past {} bytes, more than twice its size: write it out in full",
                self.budget
            )))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.add(4)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.add(8)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.add(s.len())
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<(), E> {
        self.add(b.len())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.add(0)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.add(0)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.add(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.add(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine levels of nine aliases each: 88 bytes that would expand to 9^9 strings.
    fn laughs() -> String {
        let mut doc = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let refs: Vec<String> = (0..9).map(|_| format!("*a{}", i - 1)).collect();
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", refs.join(", ")));
        }
        doc
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let e = yaml_from_str::<Value>(&laughs()).unwrap_err();
        assert!(e.to_string().contains("aliases expand"), "{e}");
    }

    #[test]
    fn plain_documents_and_modest_aliases_parse() {
        let v: Value = yaml_from_str("name: x\ntasks: [{id: a, command: [echo, hi]}]\n")
            .unwrap_or_else(|e| panic!("a plain document: {e}"));
        assert_eq!(v["tasks"][0]["id"], "a");
        let v: Value = yaml_from_str("env: &e {A: '1'}\ncopy: *e\n")
            .unwrap_or_else(|e| panic!("one alias: {e}"));
        assert_eq!(v["copy"]["A"], "1");
    }

    #[test]
    fn an_oversized_document_names_its_largest_field() {
        let doc = serde_json::json!({"name": "x", "command": ["x".repeat(300)]});
        let e = check_document_size("containerProperties", &doc, 200).unwrap_err();
        assert_eq!(e.field, "containerProperties.command");
        assert!(check_document_size("", &doc, 1000).is_ok());
    }
}
