//! Validation errors that name the path at fault and, for misspelt keys, suggest the intended one.

use std::fmt;

/// One problem with a spec, located by a dotted path such as `base.training.lr`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpecError {
    /// Where the problem is (`grid.loss.weights[2]`, `cases.components[1].set`, ...); empty for the whole document.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl SpecError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a spec; a spec is accepted only when this is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// A single error.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![SpecError::new(path, message)])
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "invalid spec"),
            [one] => write!(f, "invalid spec: {one}"),
            many => {
                writeln!(f, "invalid spec ({} problems):", many.len())?;
                for (i, e) in many.iter().enumerate() {
                    if i + 1 == many.len() {
                        write!(f, "  - {e}")?;
                    } else {
                        writeln!(f, "  - {e}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        Self(vec![e])
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely misspelling.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Turns a serde error located at `path` into a [`SpecError`] in the grid's own words: a
/// did-you-mean for serde's "unknown field" and "unknown variant" messages, "missing field `x`"
/// located at the missing field itself, and Rust type names replaced by [`plain_words`].
pub fn from_serde(path: &str, err: &str) -> SpecError {
    if let Some(field) = err.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        return SpecError::new(join_path(path, field), "is required (it has no default)");
    }
    let mut message = plain_words(err);
    for (marker, what) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        if let Some(rest) = err.strip_prefix(marker) {
            let Some((word, tail)) = rest.split_once('`') else {
                continue;
            };
            let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            message = format!("unknown {what} `{word}`");
            if let Some(best) = did_you_mean(word, candidates.iter().copied()) {
                message.push_str(&format!(" (did you mean `{best}`?)"));
            }
            if !candidates.is_empty() {
                message.push_str(&format!("; expected one of: {}", candidates.join(", ")));
            }
        }
    }
    SpecError::new(path, message)
}

/// Rewrites serde's type words in an "invalid type", "invalid value" or "invalid length" message
/// into words a grid author knows: `u64` is "a whole number ≥ 0", `f64` "a number", "a
/// sequence" "a list", "a map" "a mapping", `struct TrainingConfig` "a mapping", and so on.
/// Any other message is returned unchanged.
pub fn plain_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message.strip_prefix(prefix).and_then(|r| r.rsplit_once(", expected ")) {
            return format!("{prefix}{}, expected {}", plain_found(found), plain_expected(expected));
        }
    }
    if let Some((length, expected)) = message
        .strip_prefix("invalid length ")
        .and_then(|r| r.split_once(", expected "))
    {
        return format!("invalid length {length}, expected {}", plain_expected(expected));
    }
    message.to_string()
}

/// serde's description of the value that was found (`serde::de::Unexpected`), in plain words.
fn plain_found(found: &str) -> String {
    if let Some(rest) = found.strip_prefix("floating point ") {
        return format!("number {rest}");
    }
    match found {
        "unit value" => "null".into(),
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        other => other.into(),
    }
}

/// serde's description of what was expected (a visitor's `expecting`), in plain words.
fn plain_expected(expected: &str) -> String {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number ≥ 0",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a mapping",
        "string or map" => "a name or a mapping",
        "option" => "a value or null",
        "unit" => "null",
        other if other.starts_with("internally tagged enum ") => "a mapping with a `kind`",
        other if other.starts_with("struct ") => "a mapping",
        other if other.starts_with("an array of length ") => {
            return other.replacen("an array of length ", "a list of length ", 1);
        }
        other => other,
    };
    words.to_string()
}

/// Joins a path prefix and a suffix with a dot, leaving out empty parts.
pub fn join_path(prefix: &str, suffix: &str) -> String {
    match (prefix.is_empty(), suffix.is_empty()) {
        (true, _) => suffix.to_string(),
        (_, true) => prefix.to_string(),
        _ if suffix.starts_with('[') => format!("{prefix}{suffix}"),
        _ => format!("{prefix}.{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_gets_a_suggestion() {
        let e = from_serde(
            "base.training",
            "unknown field `learning_rat`, expected one of `steps`, `learning_rate`, `batch_size`",
        );
        assert_eq!(e.path, "base.training");
        assert!(e.message.contains("unknown field `learning_rat`"), "{}", e.message);
        assert!(e.message.contains("did you mean `learning_rate`?"), "{}", e.message);
    }

    #[test]
    fn rust_type_names_become_plain_words() {
        let e = from_serde("base.data.resolution", "invalid type: string \"big\", expected u32");
        assert_eq!(
            e.message,
            "invalid type: string \"big\", expected a whole number from 0 to 4294967295"
        );
        let e = from_serde(
            "base.training.steps",
            "invalid type: floating point `1.5`, expected u64",
        );
        assert_eq!(e.message, "invalid type: number `1.5`, expected a whole number ≥ 0");
        let e = from_serde("seed", "invalid value: integer `-1`, expected u64");
        assert_eq!(e.message, "invalid value: integer `-1`, expected a whole number ≥ 0");
        let e = from_serde("base.training.lr", "invalid type: unit value, expected f64");
        assert_eq!(e.message, "invalid type: null, expected a number");
        let e = from_serde("base.data.val", "invalid type: map, expected a sequence");
        assert_eq!(e.message, "invalid type: a mapping, expected a list");
        let e = from_serde("grid", "invalid type: sequence, expected a map");
        assert_eq!(e.message, "invalid type: a list, expected a mapping");
        let e = from_serde("base.pog.enabled", "invalid type: string \"yes\", expected a boolean");
        assert_eq!(e.message, "invalid type: string \"yes\", expected true or false");
        let e = from_serde(
            "base.training",
            "invalid type: integer `5`, expected struct TrainingConfig",
        );
        assert_eq!(e.message, "invalid type: integer `5`, expected a mapping");
        let e = from_serde(
            "base.data.train",
            "invalid type: string \"x\", expected internally tagged enum DatasetSpec",
        );
        assert_eq!(
            e.message,
            "invalid type: string \"x\", expected a mapping with a `kind`"
        );
        // Our own messages are kept as they are.
        let own = "expected `learnable` or a pair of numbers [λg, λp] such as [0.5, 0.5], found 3";
        assert_eq!(from_serde("loss.weights", own).message, own);
    }

    #[test]
    fn a_missing_field_is_named_by_its_own_path() {
        let e = from_serde("base.data", "missing field `resolution`");
        assert_eq!(e.path, "base.data.resolution");
        assert_eq!(e.message, "is required (it has no default)");
        let e = from_serde("", "missing field `base`");
        assert_eq!(e.path, "base");
    }

    #[test]
    fn far_words_get_no_suggestion() {
        assert_eq!(did_you_mean("zzz", ["steps", "lr"]), None);
        assert_eq!(did_you_mean("stpes", ["steps", "lr"]), Some("steps"));
    }

    #[test]
    fn paths_join_without_stray_dots() {
        assert_eq!(join_path("", "a"), "a");
        assert_eq!(join_path("a", ""), "a");
        assert_eq!(join_path("a", "b"), "a.b");
        assert_eq!(join_path("a", "[2]"), "a[2]");
    }
}
