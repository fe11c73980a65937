//! Dotted paths (`training.lr`, `loss.weights`) into JSON configuration trees.

use serde_json::Value;

/// The value at `path`, if every segment names an existing object key.
pub fn get<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, key| node.as_object()?.get(key))
}

/// Replaces the value at `path`. Every segment must already exist: overrides change a
/// configuration, they never invent keys. On failure returns the longest prefix that exists.
pub fn set(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut node = root;
    for (i, key) in segments.iter().enumerate() {
        let existing = segments[..i].join(".");
        let Some(map) = node.as_object_mut() else {
            return Err(existing);
        };
        let Some(child) = map.get_mut(*key) else {
            return Err(existing);
        };
        node = child;
    }
    *node = value;
    Ok(())
}

/// The keys available at the deepest existing prefix of `path`, for did-you-mean hints.
pub fn keys_at<'a>(root: &'a Value, prefix: &str) -> Vec<&'a str> {
    let node = if prefix.is_empty() {
        Some(root)
    } else {
        get(root, prefix)
    };
    node.and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// True when one path is the other or lies inside it (`loss` and `loss.weights`).
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| long.starts_with(short) && long[short.len()..].starts_with('.');
    a == b || inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_and_set_follow_dots() {
        let mut v = json!({"a": {"b": {"c": 1}}, "x": 2});
        assert_eq!(get(&v, "a.b.c"), Some(&json!(1)));
        assert_eq!(get(&v, "a.z"), None);
        set(&mut v, "a.b.c", json!([1, 2])).unwrap();
        assert_eq!(v["a"]["b"]["c"], json!([1, 2]));
    }

    #[test]
    fn set_refuses_new_keys_and_reports_the_existing_prefix() {
        let mut v = json!({"a": {"b": 1}});
        assert_eq!(set(&mut v, "a.c", json!(1)), Err("a".to_string()));
        assert_eq!(set(&mut v, "q", json!(1)), Err(String::new()));
        assert_eq!(set(&mut v, "a.b.c", json!(1)), Err("a.b".to_string()));
        assert_eq!(v, json!({"a": {"b": 1}}));
    }

    #[test]
    fn overlap_is_by_whole_segments() {
        assert!(overlaps("loss", "loss.weights"));
        assert!(overlaps("loss.weights", "loss.weights"));
        assert!(!overlaps("loss", "losses"));
        assert!(!overlaps("poi.kind", "pog.kind"));
    }
}
