//! The experiment-grid spec a user writes (YAML or JSON): a base trial configuration, grid
//! axes, named cases, seeds, scheduling settings and the paper's reference numbers.

use std::path::Path;

use indexmap::IndexMap;
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

/// An experiment: one base configuration crossed with grid axes, case axes and seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// A name for the experiment (reports, dashboards).
    pub name: String,
    /// Free text shown with the experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The full trial configuration every trial starts from (see [`crate::TrialConfig`]).
    pub base: Value,
    /// Dotted config paths → the values to try; trials take the cartesian product, in the
    /// order written (first axis slowest).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub grid: IndexMap<String, Vec<Value>>,
    /// Axis name → named cases, each a set of coupled overrides; crossed with the grid.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub cases: IndexMap<String, Vec<Case>>,
    /// Repeats: a count (`3` → seeds 0, 1, 2) or an explicit list of seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Seeds>,
    /// Scheduling priority: higher runs first, within [`PRIORITY_MIN`]..=[`PRIORITY_MAX`].
    #[serde(default)]
    pub priority: i32,
    /// Attempts a job gets before it is failed (application errors spend them).
    #[serde(default = "ExperimentSpec::default_max_attempts")]
    pub max_attempts: u32,
    /// Guards against accidentally huge grids.
    #[serde(default)]
    pub limits: Limits,
    /// The paper's numbers for grid points, selected by axis values; shown beside ours in reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<ReferenceRow>,
}

impl ExperimentSpec {
    fn default_max_attempts() -> u32 {
        3
    }
}

/// A named set of coupled overrides (one row of a case axis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The case's name, shown as the axis value.
    pub name: String,
    /// Dotted config paths → values, applied together.
    #[serde(default)]
    pub set: IndexMap<String, Value>,
    /// The paper's numbers for this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// Numbers reported by the paper for one configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
    /// Inference seconds per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_s: Option<f64>,
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
        })
    }
}

/// Reference numbers for the trials whose axis values match `when`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRow {
    /// Axis name → value (a grid value, or a case name for case axes).
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
    /// Inference seconds per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_s: Option<f64>,
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
        }
    }
}

/// Repeats of every grid point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Seeds {
    /// Seeds `0..n`.
    Count(u32),
    /// These seeds.
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Expansion fails when the grid has more trials than this.
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

/// Reads typed data out of a JSON tree; errors carry the dotted path under `prefix`.
pub fn from_value_at<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, SpecErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let inner = if inner == "." { String::new() } else { inner };
        let path = crate::error::join_path(prefix, &inner);
        from_serde(&path, &e.inner().to_string()).into()
    })
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
        from_value_at(value, "")
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
}
