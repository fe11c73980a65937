//! The experiment-grid spec a user writes (YAML or JSON): a base trial configuration, grid
//! axes, named cases, seeds, scheduling settings and the paper's reference numbers.

use std::path::Path;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::canonical::normalize_numbers;
use crate::error::{from_serde, SpecErrors};

/// The lowest scheduling priority, the same in grids, the API and the dispatcher.
pub const PRIORITY_MIN: i64 = -1000;
/// The highest scheduling priority.
pub const PRIORITY_MAX: i64 = 1000;

/// Whether `priority` is within [`PRIORITY_MIN`]..=[`PRIORITY_MAX`]; the error names the range.
pub fn check_priority(priority: i64) -> Result<(), String> {
    if (PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        Ok(())
    } else {
        Err(format!("must be in {PRIORITY_MIN}..={PRIORITY_MAX}, got {priority}"))
    }
}

/// An experiment grid: a base trial configuration crossed with grid axes, case axes and seeds.
/// Documents are YAML or JSON; `spatiallock plan FILE` shows what one expands to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "SpatialLock experiment grid")]
pub struct ExperimentSpec {
    /// A name for the experiment (reports, dashboards). Required.
    pub name: String,
    /// Free text shown with the experiment. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The trial configuration every trial starts from: `model` and `data` are required, every
    /// other section has defaults. Required.
    #[schemars(with = "crate::trial::TrialConfig")]
    pub base: Value,
    /// Grid axes: a dotted config path (`training.lr`, `loss.weights`) → the list of values to
    /// try there. Trials take the cartesian product, in the order written (first axis slowest).
    /// Default: none.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub grid: IndexMap<String, Vec<Value>>,
    /// Case axes: an axis name → a list of cases, each `{name, set: {dotted.path: value, ...}}`
    /// setting its paths together (e.g. one row of an ablation table); crossed with the grid.
    /// Default: none.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub cases: IndexMap<String, Vec<Case>>,
    /// Repeats of every grid point: a count (`3` → seeds 0, 1, 2) or a list of seeds (`[0, 7]`);
    /// each sets the trial's `seed`. Default: once, with the base's `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Seeds>,
    /// Scheduling priority, from -1000 to 1000: higher runs first. Default 0.
    #[serde(default)]
    #[schemars(range(min = PRIORITY_MIN, max = PRIORITY_MAX))]
    pub priority: i32,
    /// Attempts a job gets before it is failed; application errors (NaN loss, bad data) spend
    /// them, infrastructure errors (a lost worker) do not. Default 3.
    #[serde(default = "ExperimentSpec::default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Guards against accidentally huge grids. Default `{max_trials: 256}`.
    #[serde(default)]
    pub limits: Limits,
    /// The paper's numbers for grid points, selected by axis values; shown beside ours in
    /// reports. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<ReferenceRow>,
}

impl ExperimentSpec {
    fn default_max_attempts() -> u32 {
        3
    }
}

/// A named set of coupled overrides (one row of a case axis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The case's name, shown as the axis value. Required.
    pub name: String,
    /// Dotted config paths → values, applied together (`{pog.enabled: false, poi.kind:
    /// gligen}`). Default: none.
    #[serde(default)]
    pub set: IndexMap<String, Value>,
    /// The paper's numbers for this case. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// Numbers reported by the paper for one configuration; each is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// FID (lower is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// COCO mAP@[.5:.95], in percent as the paper prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<f64>,
    /// AP at IoU 0.5, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ap50: Option<f64>,
    /// AP at IoU 0.75, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ap75: Option<f64>,
    /// Inference time in seconds per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_s: Option<f64>,
    /// Detector augmentation gain in mAP, percentage points (Table 5's "UP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_gain: Option<f64>,
}

impl Reference {
    /// Combines two references; `None` when both give the same metric.
    pub fn merge(self, other: Reference) -> Option<Reference> {
        fn one(a: Option<f64>, b: Option<f64>) -> Result<Option<f64>, ()> {
            match (a, b) {
                (Some(_), Some(_)) => Err(()),
                (x, None) | (None, x) => Ok(x),
            }
        }
        Some(Reference {
            fid: one(self.fid, other.fid).ok()?,
            map: one(self.map, other.map).ok()?,
            ap50: one(self.ap50, other.ap50).ok()?,
            ap75: one(self.ap75, other.ap75).ok()?,
            infer_s: one(self.infer_s, other.infer_s).ok()?,
            map_gain: one(self.map_gain, other.map_gain).ok()?,
        })
    }
}

/// Reference numbers for the trials whose axis values match `when`; each number is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRow {
    /// Axis name → value (a grid value, or a case name for case axes); the row applies to the
    /// trials that match every entry. Required.
    pub when: IndexMap<String, Value>,
    /// FID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// mAP (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<f64>,
    /// AP50 (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ap50: Option<f64>,
    /// AP75 (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ap75: Option<f64>,
    /// Inference time in seconds per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_s: Option<f64>,
    /// Detector augmentation gain in mAP, percentage points (Table 5's "UP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_gain: Option<f64>,
}

impl ReferenceRow {
    /// The numbers of this row.
    pub fn numbers(&self) -> Reference {
        Reference {
            fid: self.fid,
            map: self.map,
            ap50: self.ap50,
            ap75: self.ap75,
            infer_s: self.infer_s,
            map_gain: self.map_gain,
        }
    }
}

/// Repeats of every grid point.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Seeds {
    /// A count n: seeds 0, 1, …, n − 1.
    Count(u32),
    /// These seeds (whole numbers ≥ 0), each once.
    List(Vec<u64>),
}

impl Seeds {
    /// The seeds, in order.
    pub fn values(&self) -> Vec<u64> {
        match self {
            Seeds::Count(n) => (0..u64::from(*n)).collect(),
            Seeds::List(l) => l.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Seeds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if let Some(n) = v.as_u64() {
            return u32::try_from(n)
                .map(Seeds::Count)
                .map_err(|_| D::Error::custom(format!("{n} repeats is too many")));
        }
        if let Some(items) = v.as_array() {
            if let Some(list) = items.iter().map(Value::as_u64).collect::<Option<Vec<_>>>() {
                return Ok(Seeds::List(list));
            }
        }
        Err(D::Error::custom(format!(
            "expected a number of repeats (e.g. 3) or a list of non-negative seeds (e.g. [0, 7]), found {v}"
        )))
    }
}

/// Size guards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Expansion fails when the grid has more trials than this. Required when `limits` is
    /// written (256 when `limits` is left out).
    #[schemars(range(min = 1))]
    pub max_trials: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_trials: 256 }
    }
}

/// The text format of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    /// YAML (a superset of JSON, so JSON parses too).
    Yaml,
    /// JSON.
    Json,
}

impl SpecFormat {
    /// The format a file name suggests (`.json` → JSON, anything else → YAML).
    pub fn from_path(path: &Path) -> SpecFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => SpecFormat::Json,
            _ => SpecFormat::Yaml,
        }
    }
}

/// How YAML is read: YAML 1.2's core schema (only `true`/`false` are booleans, so `name: n`
/// is the string "n"; `0755` and `1_000` stay strings), with serde-saphyr's default budget.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    }
}

/// Parses text into a JSON tree with normalised numbers; syntax errors name line and column.
///
/// The work any text can cause is bounded: JSON nests at most 128 deep (serde_json's limit);
/// YAML is read by serde-saphyr under its budget (at most 64 levels of nesting, 250 000 nodes,
/// 1 000 000 parser events, no alias bombs), so a hostile document fails fast, in time linear in
/// its size.
pub fn parse_document(text: &str, format: SpecFormat) -> Result<Value, SpecErrors> {
    let mut value: Value = match format {
        SpecFormat::Json => {
            serde_json::from_str(text).map_err(|e| SpecErrors::one("", format!("invalid JSON: {e}")))?
        }
        SpecFormat::Yaml => serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| SpecErrors::one("", format!("invalid YAML: {e}")))?,
    };
    normalize_numbers(&mut value);
    crate::storable::check_storable(&value, "")?;
    Ok(value)
}

/// At most this many problems are collected from one document: a hostile one could hold
/// thousands, and a person fixes the first ones first anyway.
pub const MAX_REPORTED_PROBLEMS: usize = 50;

/// Reads typed data out of a JSON tree. When it does not fit, every problem is reported (up to
/// [`MAX_REPORTED_PROBLEMS`]), not only the first one serde meets: each error carries its dotted
/// path under `prefix`.
///
/// serde stops at the first error, so problems are found by deserializing `T` again from
/// pruned copies of `value` that keep one mapping entry at a time, at every depth, and required
/// fields missing beside them are read from `T`'s JSON Schema. Lists and scalars are not
/// pruned: within one list only its first problem shows.
pub fn from_value_at<T: serde::de::DeserializeOwned + JsonSchema>(value: Value, prefix: &str) -> Result<T, SpecErrors> {
    let first = match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(typed) => return Ok(typed),
        Err(e) => ProbeError::from(&e),
    };
    let schema = schemars::SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value();
    let mut found = Vec::new();
    probe::<T>(&mut Vec::new(), &value, &schema, &mut found);
    if found.is_empty() {
        // Not expected (the whole value failed above), but never lose the error serde gave.
        found.push(first);
    }
    let mut errors: Vec<crate::SpecError> = found
        .iter()
        .map(|e| from_serde(&crate::error::join_path(prefix, &e.path), &e.message))
        .collect();
    if found.len() >= MAX_REPORTED_PROBLEMS {
        errors.push(crate::SpecError::new(
            prefix,
            format!("there may be more problems: at most {MAX_REPORTED_PROBLEMS} are listed"),
        ));
    }
    Err(SpecErrors(errors))
}

/// A deserialization error: its path (as segments and as text) and serde's message.
#[derive(Debug, PartialEq)]
struct ProbeError {
    segments: Vec<String>,
    path: String,
    message: String,
}

impl From<&serde_path_to_error::Error<serde_json::Error>> for ProbeError {
    fn from(e: &serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = e.path().to_string();
        Self {
            segments: e.path().iter().map(ToString::to_string).collect(),
            path: if path == "." { String::new() } else { path },
            message: e.inner().to_string(),
        }
    }
}

/// `value` wrapped in one single-entry mapping per key: `["a", "b"]`, `v` → `{a: {b: v}}`.
fn nest(keys: &[String], value: &Value) -> Value {
    keys.iter().rev().fold(value.clone(), |inner, key| {
        let mut map = serde_json::Map::new();
        map.insert(key.clone(), inner);
        Value::Object(map)
    })
}

/// Reads `T` from `value` placed at `keys` (see [`nest`]); the error, if any.
fn error_at<T: serde::de::DeserializeOwned>(keys: &[String], value: &Value) -> Option<ProbeError> {
    serde_path_to_error::deserialize::<_, T>(&nest(keys, value))
        .err()
        .map(|e| ProbeError::from(&e))
}

/// Adds to `out` the errors of reading `T` at and below `keys`, where `here` is the value the
/// document has at `keys`; returns whether a problem of the document was found there.
///
/// `T` is read from the document pruned to `here` alone (every sibling on the way to `keys`
/// dropped). When that fails inside `here` (a mapping), each of its entries is probed the same
/// way one level deeper, so that independent problems are all found; then the fields that
/// `schema` (`T`'s JSON Schema) requires of the mapping and that it lacks are named (serde
/// would name only the first, and only once every entry reads). An error that the pruning
/// itself causes — a field missing from a mapping above `keys` whose other entries were
/// dropped — is no problem of the document and is left out.
fn probe<T: serde::de::DeserializeOwned>(
    keys: &mut Vec<String>,
    here: &Value,
    schema: &Value,
    out: &mut Vec<ProbeError>,
) -> bool {
    let Some(error) = error_at::<T>(keys, here) else {
        return false;
    };
    let inside = error.segments.len() > keys.len() && error.segments.starts_with(keys.as_slice());
    let above = error.segments.len() < keys.len() && keys.starts_with(error.segments.as_slice());
    let caused_by_pruning = above && error.message.starts_with("missing field `");
    let mut failing: Vec<&str> = Vec::new();
    if let (Value::Object(entries), true) = (here, inside) {
        for (key, value) in entries {
            if out.len() >= MAX_REPORTED_PROBLEMS {
                break;
            }
            keys.push(key.clone());
            if probe::<T>(keys, value, schema, out) {
                failing.push(key.as_str());
            }
            keys.pop();
        }
    }
    if !caused_by_pruning && out.len() < MAX_REPORTED_PROBLEMS && !out.contains(&error) {
        out.push(error);
    }
    if let (Value::Object(entries), false) = (here, failing.is_empty()) {
        let readable: Vec<&str> = entries
            .keys()
            .map(String::as_str)
            .filter(|k| !failing.contains(k))
            .collect();
        let missing: Vec<ProbeError> = match required_at(schema, keys, &readable) {
            Some(required) => required
                .into_iter()
                .filter(|field| !entries.contains_key(field))
                .map(|field| ProbeError {
                    segments: keys.clone(),
                    path: keys.join("."),
                    message: format!("missing field `{field}`"),
                })
                .collect(),
            // The schema does not say: serde names the first field missing beside the entries
            // that read, unless it is one of those that failed.
            None => {
                let rest: serde_json::Map<String, Value> = entries
                    .iter()
                    .filter(|(k, _)| readable.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                error_at::<T>(keys, &Value::Object(rest))
                    .filter(|e| e.segments == *keys && e.message.starts_with("missing field `"))
                    .filter(|e| !failing.iter().any(|k| e.message == format!("missing field `{k}`")))
                    .into_iter()
                    .collect()
            }
        };
        for e in missing {
            if out.len() < MAX_REPORTED_PROBLEMS && !out.contains(&e) {
                out.push(e);
            }
        }
    }
    !caused_by_pruning
}

/// The fields that `schema` requires of the mapping at `keys` (whose entries that read are
/// `present`); `None` when the schema does not say unambiguously, e.g. for a choice between
/// mappings that `present` does not settle.
fn required_at(schema: &Value, keys: &[String], present: &[&str]) -> Option<Vec<String>> {
    let mut current = vec![schema];
    for key in keys {
        let mut next = Vec::new();
        for choice in current.iter().flat_map(|s| alternatives(schema, s)) {
            if let Some(property) = choice.get("properties").and_then(|p| p.get(key)) {
                next.push(property);
            } else if let Some(entry) = choice.get("additionalProperties").filter(|e| e.is_object()) {
                next.push(entry);
            }
        }
        if next.is_empty() {
            return None;
        }
        current = next;
    }
    let fitting: Vec<&Value> = current
        .iter()
        .flat_map(|s| alternatives(schema, s))
        .filter(|choice| {
            choice
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|properties| present.iter().all(|k| properties.contains_key(*k)))
        })
        .collect();
    let [only] = fitting.as_slice() else {
        return None;
    };
    let required = only.get("required").and_then(Value::as_array);
    Some(
        required
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
    )
}

/// The schemas `schema` may stand for: its `$ref` followed, its `anyOf`/`oneOf` choices listed
/// (recursively); `root` holds the `$defs`.
fn alternatives<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let mut schema = schema;
    // A bound on `$ref` chains (ours are one step); the generated schema has no cycles of refs alone.
    for _ in 0..16 {
        let target = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer));
        match target {
            Some(t) => schema = t,
            None => break,
        }
    }
    match schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        Some(choices) => choices.iter().flat_map(|c| alternatives(root, c)).collect(),
        None => vec![schema],
    }
}

impl ExperimentSpec {
    /// Parses a spec from text.
    pub fn parse(text: &str, format: SpecFormat) -> Result<ExperimentSpec, SpecErrors> {
        let value = parse_document(text, format)?;
        if !value.is_object() {
            return Err(SpecErrors::one(
                "",
                "a spec must be a mapping with at least `name` and `base`",
            ));
        }
        let base = value.get("base").filter(|b| b.is_object()).cloned();
        from_value_at(value, "").map_err(|mut errors| {
            // The base's own problems too, so that one run names those of the grid and of the
            // base together (expansion reads the base the same way).
            if let Some(mut base) = base {
                let arch = crate::expand::resolve_arch(&mut base, "base.model.arch").err();
                errors.0.extend(arch);
                if let Err(mut more) = from_value_at::<crate::TrialConfig>(base, "base") {
                    errors.0.append(&mut more.0);
                }
            }
            errors
        })
    }

    /// Reads a spec file. A `model.arch` in `base` that ends in `.yaml`/`.yml`/`.json` is read
    /// relative to the spec's folder and written inline, so the spec becomes self-contained
    /// (the coordinator never reads the submitter's files).
    pub fn load(path: &Path) -> Result<ExperimentSpec, SpecErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        let mut spec = ExperimentSpec::parse(&text, SpecFormat::from_path(path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        spec.inline_arch_files(dir)?;
        Ok(spec)
    }

    /// Reads a grid spec, or a single trial configuration (a file without `base`), which
    /// becomes a one-trial spec named after the file.
    pub fn load_grid_or_trial(path: &Path) -> Result<ExperimentSpec, SpecErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        let value = parse_document(&text, SpecFormat::from_path(path))?;
        if value.get("base").is_some() {
            return ExperimentSpec::load(path);
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("trial").to_string();
        let wrapped = serde_json::json!({"name": name, "base": value});
        let mut spec: ExperimentSpec = from_value_at(wrapped, "")?;
        spec.inline_arch_files(path.parent().unwrap_or(Path::new(".")))?;
        Ok(spec)
    }

    /// Replaces a `base.model.arch` file path with the file's contents.
    pub fn inline_arch_files(&mut self, dir: &Path) -> Result<(), SpecErrors> {
        let Some(arch) = self.base.pointer_mut("/model/arch") else {
            return Ok(());
        };
        let Some(name) = arch.as_str() else { return Ok(()) };
        let is_file = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
        if !is_file {
            return Ok(());
        }
        let file = dir.join(name);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| SpecErrors::one("base.model.arch", format!("cannot read {}: {e}", file.display())))?;
        let format = SpecFormat::from_path(&file);
        let value = parse_document(&text, format)
            .map_err(|e| SpecErrors::one("base.model.arch", format!("{}: {e}", file.display())))?;
        *arch = value;
        Ok(())
    }

    /// The spec as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// The spec as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_follows_the_core_schema_and_refuses_deep_nesting() {
        let v = parse_document(
            "name: n\nflag: yes\nmode: 0755\nbig: 1_000\nok: true\nx: 3\n",
            SpecFormat::Yaml,
        )
        .unwrap();
        assert_eq!(v["name"], "n");
        assert_eq!(v["flag"], "yes");
        assert_eq!(v["mode"], "0755");
        assert_eq!(v["big"], "1_000");
        assert_eq!(v["ok"], true);
        assert_eq!(v["x"], 3);
        let deep = format!("base: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_document(&deep, SpecFormat::Yaml).unwrap_err().to_string();
        assert!(e.contains("invalid YAML"), "{e}");
        let nul = parse_document("name: \"a\\0b\"\n", SpecFormat::Yaml).unwrap_err();
        assert_eq!(nul.0[0].path, "name");
    }

    fn listed(errors: &SpecErrors) -> Vec<String> {
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_problem_of_a_trial_configuration_is_reported_at_once() {
        let base = serde_json::json!({
            "model": {"arch": "tiny", "base": {"pretrain": {"steps": "ten"}}},
            "data": {"train": {"kind": "shapes", "split": "train", "count": 8},
                     "val": [{"kind": "shapes", "split": "val", "count": 4}]},
            "training": {"steps": "five", "lr": "fast", "stpes": 3},
            "poi": {"enabled": "yes"},
            "world_size": -1,
        });
        let errors = from_value_at::<crate::TrialConfig>(base, "base").unwrap_err();
        let shown = listed(&errors);
        for expected in [
            "base.model.base.pretrain.steps: invalid type: string \"ten\", expected a whole number ≥ 0",
            "base.data.resolution: is required (it has no default)",
            "base.training.steps: invalid type: string \"five\", expected a whole number ≥ 0",
            "base.training.lr: invalid type: string \"fast\", expected a number",
            "base.poi.enabled: invalid type: string \"yes\", expected true or false",
            "base.world_size: invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
        ] {
            assert!(shown.iter().any(|s| s == expected), "no `{expected}` in {shown:#?}");
        }
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("base.training.stpes: unknown field `stpes` (did you mean `steps`?)")),
            "{shown:#?}"
        );
        assert_eq!(shown.len(), 7, "each problem once: {shown:#?}");
    }

    #[test]
    fn a_missing_field_is_named_beside_a_wrong_one_in_the_same_mapping() {
        // `val` must be a list and `resolution` is required: both at once, whatever their order.
        let base = serde_json::json!({
            "model": {"arch": "tiny", "base": {"pretrain": {"steps": 10}}},
            "data": {"train": {"kind": "shapes", "split": "train", "count": 8},
                     "val": {"kind": "shapes", "split": "val", "count": 4}},
        });
        let shown = listed(&from_value_at::<crate::TrialConfig>(base, "base").unwrap_err());
        assert_eq!(
            shown,
            [
                "base.data.val: invalid type: a mapping, expected a list",
                "base.data.resolution: is required (it has no default)",
            ],
        );
        // At the top of a grid file too, with the base's own problems: a wrong `priority`, no
        // `name`, and a base without `model`.
        let shown = listed(&ExperimentSpec::parse("base: {}\npriority: high\n", SpecFormat::Yaml).unwrap_err());
        assert_eq!(
            shown,
            [
                "priority: invalid type: string \"high\", expected a whole number",
                "name: is required (it has no default)",
                "base.model: is required (it has no default)",
            ],
        );
    }

    #[test]
    fn a_document_full_of_problems_lists_a_bounded_number() {
        let keys: serde_json::Map<String, Value> = (0..500).map(|i| (format!("k{i}"), Value::from(i))).collect();
        let value = serde_json::json!({"training": keys});
        let errors = from_value_at::<crate::TrialConfig>(value, "").unwrap_err();
        assert_eq!(errors.0.len(), MAX_REPORTED_PROBLEMS + 1);
        assert!(
            errors.0[0].to_string().starts_with("training.k0: unknown field `k0`"),
            "{}",
            errors.0[0]
        );
        let last = errors.0.last().map(ToString::to_string).unwrap_or_default();
        assert!(last.contains("at most 50 are listed"), "{last}");
    }
}
