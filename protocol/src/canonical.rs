//! Canonical JSON and content hashes.
//!
//! Two configurations that mean the same thing must hash the same, whoever wrote them and in
//! whichever format. The canonical form is compact JSON in which
//! - object keys are sorted (byte order), at every depth;
//! - a number whose value is a whole number in the `i64` range is written as an integer
//!   (`1`, `1.0` and `1e0` are all `1`); any other number is written as the shortest decimal
//!   that reads back as the same `f64` (`0.0001` and `1e-4` are both `0.0001`);
//! - strings, booleans, null and array order are kept as they are.
//!
//! Configurations are deserialised into typed structs before hashing, so defaults are filled in:
//! a key left out and the same key written with its default value hash the same.
//! A hash is the lower-case hex SHA-256 of the canonical form.

use serde::Serialize;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Rewrites every number so that equal values have one spelling (see the module doc).
pub fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // i64 range check: 2^63 is exactly representable, so `<` keeps the cast exact.
                if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) {
                    *n = Number::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// A copy of `value` with sorted keys and normalised numbers.
pub fn canonicalize(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(canonicalize).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), canonicalize(&map[k]));
            }
            Value::Object(out)
        }
        other => {
            let mut v = other.clone();
            normalize_numbers(&mut v);
            v
        }
    }
}

/// The canonical JSON text of `value`.
pub fn canonical_json(value: &Value) -> String {
    canonicalize(value).to_string()
}

/// The content hash of a JSON value.
pub fn hash_value(value: &Value) -> String {
    let digest = Sha256::digest(canonical_json(value).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The content hash of anything serialisable (through its JSON form).
pub fn hash_of<T: Serialize>(item: &T) -> String {
    // Serialising our own config structs to a Value cannot fail: they hold no non-string map keys.
    let value = serde_json::to_value(item).unwrap_or(Value::Null);
    hash_value(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"a": 1, "b": {"x": [1, 2], "y": "s"}});
        let b = json!({"b": {"y": "s", "x": [1, 2]}, "a": 1});
        assert_eq!(hash_value(&a), hash_value(&b));
    }

    #[test]
    fn number_spellings_do_not_change_the_hash() {
        let a: Value = serde_json::from_str(r#"{"lr": 1e-4, "steps": 1000.0, "w": [1, 0.5]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"lr": 0.0001, "steps": 1e3, "w": [1.0, 5e-1]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"lr":0.0001,"steps":1000,"w":[1,0.5]}"#);
    }

    #[test]
    fn different_values_hash_differently() {
        assert_ne!(hash_value(&json!({"a": 1})), hash_value(&json!({"a": 2})));
        assert_ne!(hash_value(&json!([1, 2])), hash_value(&json!([2, 1])));
    }

    #[test]
    fn hash_is_hex_sha256() {
        let h = hash_value(&json!({}));
        assert_eq!(h.len(), 64);
        // sha256("{}")
        assert_eq!(h, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    }
}
