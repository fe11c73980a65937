//! Values every database we store in can hold: PostgreSQL's `TEXT` and `JSONB` refuse the NUL
//! character, and its `BIGINT` (like SQLite's `INTEGER`) is a signed 64-bit integer. A document
//! is checked here, at the edge, so that such a value is refused naming its field instead of
//! failing deep in a query (or, for an integer, being stored wrapped to a negative number).

use serde_json::Value;

use crate::error::{join_path, SpecError, SpecErrors};

/// The largest integer a `BIGINT` column holds.
pub const MAX_STORABLE_INT: u64 = i64::MAX as u64;

/// Every problem of `value` that no store can hold: strings or keys containing NUL (`\u0000`)
/// and integers above 2^63 − 1. Paths are dotted, under `prefix` (`metrics[3].step`).
///
/// Errors: every problem found, each with its path; `Ok` when there is none.
pub fn check_storable(value: &Value, prefix: &str) -> Result<(), SpecErrors> {
    let mut problems = Vec::new();
    walk(value, prefix, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(problems))
    }
}

const MAX_PROBLEMS: usize = 20;

fn walk(value: &Value, path: &str, out: &mut Vec<SpecError>) {
    if out.len() >= MAX_PROBLEMS {
        return;
    }
    match value {
        Value::String(s) if s.contains('\0') => out.push(SpecError::new(
            path,
            "contains a NUL character (\\u0000), which cannot be stored",
        )),
        Value::Number(n) if n.as_u64().is_some_and(|u| u > MAX_STORABLE_INT) => out.push(SpecError::new(
            path,
            format!("{n} is too large: integers are stored as signed 64-bit, at most {MAX_STORABLE_INT}"),
        )),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let child = join_path(path, key);
                if key.contains('\0') {
                    out.push(SpecError::new(
                        child.replace('\0', "\\u0000"),
                        "the key contains a NUL character (\\u0000), which cannot be stored",
                    ));
                    continue;
                }
                walk(item, &child, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_strings_and_keys_and_huge_integers_are_named() {
        let v: Value =
            serde_json::from_str(r#"{"name": "a\u0000b", "metrics": [{"step": 18446744073709551615}], "x\u0000": 1}"#)
                .unwrap();
        let errs = check_storable(&v, "").unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["name", "metrics[0].step", "x\\u0000"], "{errs:?}");
        assert!(errs[1].message.contains("at most 9223372036854775807"));
    }

    #[test]
    fn ordinary_values_pass() {
        let v = json!({"name": "ok", "step": i64::MAX, "neg": i64::MIN, "f": 1e300, "list": ["a", 1]});
        assert!(check_storable(&v, "body").is_ok());
        let over = json!({"step": (i64::MAX as u64) + 1});
        assert_eq!(check_storable(&over, "body").unwrap_err().0[0].path, "body.step");
    }
}
