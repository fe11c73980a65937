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

/// Turns a serde error located at `path` into a [`SpecError`], adding a did-you-mean to
/// serde's "unknown field" and "unknown variant" messages.
pub fn from_serde(path: &str, err: &str) -> SpecError {
    let mut message = err.to_string();
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
