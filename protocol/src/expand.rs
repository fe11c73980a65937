//! Expansion of an [`ExperimentSpec`] into trials and a job DAG.
//!
//! Trials are the cartesian product of the grid axes (in the order written, first axis
//! slowest), then the case axes, then the seeds. Jobs are deduplicated by content hash:
//! - one `pretrain` job per distinct base-pretraining setup (tiny configs);
//! - one `train` job per distinct canonical training part ([`TrainSpec`]), so trials that
//!   differ only in evaluation (Table 4: train on COCO, evaluate on Flickr and nuScenes)
//!   share it; a trial with nothing to train (PoI and PoG off) evaluates its base directly;
//! - one `train-detector` job per distinct built-in evaluation detector;
//! - one `evaluate` job per (trial, validation dataset), depending on the job that produced
//!   the model and on the detector job.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{canonicalize, hash_of};
use crate::dotted;
use crate::error::{did_you_mean, SpecError, SpecErrors};
use crate::model_config::ModelConfig;
use crate::spec::{from_value_at, ExperimentSpec, Reference};
use crate::trial::{
    builtin_model, BaseWeights, BoxLoss, DatasetSpec, DetectorConfig, EvalConfig, LossConfig, NoopConfig, Placement,
    PogConfig, PoiConfig, PoiKind, PretrainConfig, TrainingConfig, TrialConfig, BUILTIN_MODELS,
};
use crate::validate::check_trial;

/// The kinds of job a grid produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Pretrain a tiny text-to-image base.
    Pretrain,
    /// Train SpatialLock (or GLIGEN) modules on a frozen base.
    Train,
    /// Train the built-in evaluation detector on real images.
    TrainDetector,
    /// Generate, detect, and score (mAP, FID).
    Evaluate,
    /// Detector augmentation (paper Table 5): generate a synthetic training set with a trained
    /// model, train the evaluation detector on real + synthetic images, and score it on real
    /// validation images beside the detector trained on real images alone.
    AugmentDetector,
    /// Sleep (and optionally fail or hang): orchestration tests and benchmarks.
    Noop,
}

impl JobKind {
    /// The kind's name as written in specs and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Pretrain => "pretrain",
            JobKind::Train => "train",
            JobKind::TrainDetector => "train-detector",
            JobKind::Evaluate => "evaluate",
            JobKind::AugmentDetector => "augment-detector",
            JobKind::Noop => "noop",
        }
    }

    /// Every kind, in dependency order.
    pub const ALL: [JobKind; 6] = [
        JobKind::Pretrain,
        JobKind::Train,
        JobKind::TrainDetector,
        JobKind::Evaluate,
        JobKind::AugmentDetector,
        JobKind::Noop,
    ];

    /// The kind of a plan job id (`<kind>-<hash>`, as [`Plan`] names jobs), with or without its
    /// experiment prefix (`<experiment>.<kind>-<hash>`); `None` for any other text.
    pub fn of_job_id(id: &str) -> Option<JobKind> {
        let local = id.rsplit_once('.').map_or(id, |(_, j)| j);
        let (kind, hash) = local.rsplit_once('-')?;
        let known = JobKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        (!hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit())).then_some(known)
    }
}

/// The canonical training part of a trial: everything that changes the trained weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Training seed.
    pub seed: u64,
    /// The architecture.
    pub arch: ModelConfig,
    /// The frozen base.
    pub base: BaseWeights,
    /// Training data.
    pub data: DatasetSpec,
    /// Image side.
    pub resolution: u32,
    /// Optimisation (with `trainable` reduced to the groups that exist).
    pub training: TrainingConfig,
    /// PoI with the placement resolved to block names.
    pub poi: PoiConfig,
    /// PoG.
    pub pog: PogConfig,
    /// Loss weighting.
    pub loss: LossConfig,
    /// Data-parallel ranks.
    pub world_size: u32,
}

/// Pretraining of a tiny base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSpec {
    /// The architecture.
    pub arch: ModelConfig,
    /// Pretraining settings.
    pub pretrain: PretrainConfig,
    /// Training data.
    pub data: DatasetSpec,
    /// Image side.
    pub resolution: u32,
}

/// Training of the built-in evaluation detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSpec {
    /// Training steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: u32,
    /// Learning rate.
    pub lr: f64,
    /// Real training images.
    pub data: DatasetSpec,
    /// Generation resolution (the detector sees images at this size).
    pub resolution: u32,
}

/// One evaluation of a trained model on one validation dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    /// The model being evaluated.
    pub model: TrainSpec,
    /// The job whose output is the model (train, or pretrain for base-only trials); `null`
    /// when the model is a base on disk with nothing trained.
    pub model_job: Option<String>,
    /// The job that trains the detector; `null` for a TorchScript detector.
    pub detector_job: Option<String>,
    /// Validation data.
    pub val: DatasetSpec,
    /// Sampling and scoring settings.
    pub eval: EvalConfig,
}

/// Detector augmentation of one trial (paper Table 5): its model generates `images` synthetic
/// images from layouts of the detector's real training set (`detector.data`); a detector trained
/// as `detector` says on real + synthetic images is scored on `val`'s real images beside the
/// `detector_job`'s, trained on real images alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentSpec {
    /// The model that generates.
    pub model: TrainSpec,
    /// The job whose output is the model (train, or pretrain for base-only trials); `null` when
    /// the model is a base on disk with nothing trained.
    pub model_job: Option<String>,
    /// How the real-only detector was trained; the augmented one trains the same way.
    pub detector: DetectorSpec,
    /// The job that trained the real-only detector.
    pub detector_job: String,
    /// The real validation images both detectors are scored on.
    pub val: DatasetSpec,
    /// Sampler, detection and seed settings (the trial's evaluation's).
    pub eval: EvalConfig,
    /// Synthetic images to generate.
    pub images: u32,
}

/// Optional settings that a serialised configuration leaves out while unset (so that
/// configurations written before they existed keep their hashes), as dotted paths.
const OPTIONAL_KEYS: [&str; 5] = [
    "augment",
    "training.ema_decay",
    "loss.min_snr_gamma",
    "model.base.pretrain.min_snr_gamma",
    "model.base.pretrain.ema_decay",
];

/// The serialised base with every unset [`OPTIONAL_KEYS`] entry back as `null` (and a shapes
/// training set's `variant` as `standard`), so that axes and cases can set it like any other key
/// (`grid: {training.ema_decay: [null, 0.999]}`, `grid: {data.train.variant: [standard, simple]}`). Trials are
/// hashed from their parsed configuration, where `null` and a missing key are the same.
fn with_optional_keys(mut base: Value) -> Value {
    for path in OPTIONAL_KEYS {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        let pointer = if parent.is_empty() {
            String::new()
        } else {
            format!("/{}", parent.replace('.', "/"))
        };
        if let Some(Value::Object(map)) = base.pointer_mut(&pointer) {
            map.entry(key).or_insert(Value::Null);
        }
    }
    // A shapes training set's variant, left out while `standard`: back, so it can be swept.
    if let Some(Value::Object(train)) = base.pointer_mut("/data/train") {
        if train.get("kind").and_then(Value::as_str) == Some("shapes") {
            train.entry("variant").or_insert(Value::from("standard"));
        }
    }
    base
}

/// What a job runs.
// One payload per job, built once and serialised: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JobPayload {
    /// See [`PretrainSpec`].
    Pretrain(PretrainSpec),
    /// See [`TrainSpec`].
    Train(TrainSpec),
    /// See [`DetectorSpec`].
    TrainDetector(DetectorSpec),
    /// See [`EvalSpec`].
    Evaluate(Box<EvalSpec>),
    /// See [`AugmentSpec`].
    AugmentDetector(Box<AugmentSpec>),
    /// See [`NoopSpec`].
    Noop(NoopSpec),
}

impl JobPayload {
    /// How many ranks (devices, one process each) the job runs on: a training job's
    /// `world_size`, one for every other kind.
    pub fn ranks(&self) -> u32 {
        match self {
            JobPayload::Train(t) => t.world_size.max(1),
            _ => 1,
        }
    }
}

/// One stage of a trial's `noop` chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoopSpec {
    /// What to do.
    #[serde(flatten)]
    pub noop: NoopConfig,
    /// The trial's content hash (keeps every trial's jobs distinct).
    pub trial: String,
    /// Position in the chain, from 0.
    pub stage: u32,
}

/// A node of the job DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<kind>-<first 16 hex digits of the content hash>`.
    pub id: String,
    /// The full content hash of the payload.
    pub hash: String,
    /// The job's kind.
    pub kind: JobKind,
    /// Jobs that must complete first.
    pub depends_on: Vec<String>,
    /// Indices of the trials this job serves.
    pub trials: Vec<usize>,
    /// A short description (dataset, kind).
    pub label: String,
    /// What to run.
    pub payload: JobPayload,
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Position in expansion order.
    pub index: usize,
    /// Content hash of the full configuration.
    pub hash: String,
    /// Axis name → value (grid value, or case name).
    pub axes: IndexMap<String, Value>,
    /// The full configuration (architecture inline).
    pub config: TrialConfig,
    /// The paper's numbers for this point, when the spec gives them.
    pub reference: Option<Reference>,
    /// The job whose output is this trial's model (`null`: an untouched base on disk).
    pub model_job: Option<String>,
    /// One evaluation job per validation dataset.
    pub eval_jobs: Vec<String>,
    /// The detector augmentation job, when the trial asks for one (`augment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_job: Option<String>,
}

/// An axis of the grid, as the plan shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    /// The dotted path (grid) or the case axis name.
    pub name: String,
    /// `grid` or `cases`.
    pub source: String,
    /// The values (for case axes, the case names).
    pub values: Vec<Value>,
}

/// The expansion of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The experiment's name.
    pub name: String,
    /// Scheduling priority.
    pub priority: i32,
    /// Attempts per job.
    pub max_attempts: u32,
    /// The axes, in product order.
    pub axes: Vec<Axis>,
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Every job, dependencies before dependants.
    pub jobs: Vec<Job>,
    /// Accepted but suspicious settings.
    pub warnings: Vec<SpecError>,
}

impl Plan {
    /// The job with this id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// Number of jobs of a kind.
    pub fn count(&self, kind: JobKind) -> usize {
        self.jobs.iter().filter(|j| j.kind == kind).count()
    }
}

enum AxisSource<'a> {
    Grid(&'a str, &'a [Value]),
    Cases(&'a [crate::spec::Case]),
}

struct AxisDef<'a> {
    name: &'a str,
    source: AxisSource<'a>,
}

impl AxisDef<'_> {
    fn len(&self) -> usize {
        match &self.source {
            AxisSource::Grid(_, v) => v.len(),
            AxisSource::Cases(c) => c.len(),
        }
    }
    fn value(&self, i: usize) -> Value {
        match &self.source {
            AxisSource::Grid(_, v) => v[i].clone(),
            AxisSource::Cases(c) => Value::String(c[i].name.clone()),
        }
    }
}

/// Replaces a built-in architecture name at `model.arch` with its definition.
pub(crate) fn resolve_arch(config: &mut Value, path: &str) -> Result<(), SpecError> {
    let Some(arch) = config.pointer_mut("/model/arch") else {
        return Ok(()); // the typed read reports the missing field
    };
    let Some(name) = arch.as_str() else { return Ok(()) };
    let names = || BUILTIN_MODELS.iter().map(|(n, _)| *n);
    match builtin_model(name) {
        Some(m) => {
            *arch = serde_json::to_value(m).map_err(|e| SpecError::new(path, e.to_string()))?;
            Ok(())
        }
        None => {
            let hint = did_you_mean(name, names())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            Err(SpecError::new(
                path,
                format!(
                    "unknown architecture `{name}`{hint}; built-in: {}, or a .yaml/.json file, or an inline mapping",
                    names().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
}

fn canonical_eq(a: &Value, b: &Value) -> bool {
    canonicalize(a) == canonicalize(b)
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `axis=value, axis=value` for messages.
fn describe(axes: &IndexMap<String, Value>) -> String {
    if axes.is_empty() {
        return "the base configuration".into();
    }
    axes.iter()
        .map(|(k, v)| format!("{k}={}", short(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a spec and expands it; every problem found is reported at once, and nothing is
/// returned unless the whole spec is valid.
pub fn expand(spec: &ExperimentSpec) -> Result<Plan, SpecErrors> {
    let mut errors: Vec<SpecError> = Vec::new();
    let mut warnings: Vec<SpecError> = Vec::new();

    if spec.name.trim().is_empty() {
        errors.push(SpecError::new("name", "must not be empty"));
    }
    if let Err(m) = crate::spec::check_priority(i64::from(spec.priority)) {
        errors.push(SpecError::new("priority", m));
    }
    if spec.max_attempts == 0 {
        errors.push(SpecError::new("max_attempts", "must be at least 1"));
    }
    if spec.limits.max_trials == 0 {
        errors.push(SpecError::new("limits.max_trials", "must be at least 1"));
    }
    let seeds = spec.seeds.as_ref().map(|s| s.values());
    if let Some(s) = &seeds {
        if s.is_empty() {
            errors.push(SpecError::new("seeds", "must give at least one seed (or be left out)"));
        }
        for i in 0..s.len() {
            if s[..i].contains(&s[i]) {
                errors.push(SpecError::new(
                    format!("seeds[{i}]"),
                    format!("seed {} is listed twice", s[i]),
                ));
            }
        }
    }

    // The base, typed, with defaults filled in: overrides must name paths that exist in it.
    let mut base_value = spec.base.clone();
    if !base_value.is_object() {
        return Err(SpecErrors::one(
            "base",
            "must be a mapping (a full trial configuration)",
        ));
    }
    // Every problem of the base is reported together: an unknown architecture name and all
    // that its typed read finds.
    let arch_error = resolve_arch(&mut base_value, "base.model.arch").err();
    let base: TrialConfig = match from_value_at(base_value, "base") {
        Ok(b) => b,
        Err(mut e) => {
            errors.extend(arch_error);
            errors.append(&mut e.0);
            return Err(SpecErrors(errors));
        }
    };
    if let Some(e) = arch_error {
        errors.push(e);
        return Err(SpecErrors(errors));
    }
    let full_base = serde_json::to_value(&base)
        .map(with_optional_keys)
        .map_err(|e| SpecErrors::one("base", e.to_string()))?;

    let check_path = |errors: &mut Vec<SpecError>, at: String, path: &str| {
        if dotted::get(&full_base, path).is_some() {
            return;
        }
        let segments: Vec<&str> = path.split('.').collect();
        let mut prefix = String::new();
        for seg in &segments {
            let next = if prefix.is_empty() {
                seg.to_string()
            } else {
                format!("{prefix}.{seg}")
            };
            if dotted::get(&full_base, &next).is_none() {
                let keys = dotted::keys_at(&full_base, &prefix);
                let hint = did_you_mean(seg, keys.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                let place = if prefix.is_empty() {
                    "the trial configuration".to_string()
                } else {
                    format!("`{prefix}`")
                };
                errors.push(SpecError::new(
                    at,
                    format!("override path `{path}` does not exist: {place} has no key `{seg}`{hint}"),
                ));
                return;
            }
            prefix = next;
        }
    };

    // Axes.
    let mut axes: Vec<AxisDef> = Vec::new();
    let mut set_paths: Vec<(String, String)> = Vec::new(); // (path, axis that sets it)
    for (path, values) in &spec.grid {
        let at = format!("grid.{path}");
        check_path(&mut errors, at.clone(), path);
        if values.is_empty() {
            errors.push(SpecError::new(at.clone(), "axis has no values"));
        }
        for i in 0..values.len() {
            if values[..i].iter().any(|v| canonical_eq(v, &values[i])) {
                errors.push(SpecError::new(
                    format!("{at}[{i}]"),
                    format!("value {} is listed twice", values[i]),
                ));
            }
        }
        set_paths.push((path.clone(), format!("grid axis `{path}`")));
        axes.push(AxisDef {
            name: path,
            source: AxisSource::Grid(path, values),
        });
    }
    for (name, cases) in &spec.cases {
        let at = format!("cases.{name}");
        if spec.grid.contains_key(name) {
            errors.push(SpecError::new(
                at.clone(),
                "a case axis cannot have the name of a grid axis",
            ));
        }
        if cases.is_empty() {
            errors.push(SpecError::new(at.clone(), "axis has no cases"));
        }
        let mut paths_here: Vec<&str> = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            if case.name.trim().is_empty() {
                errors.push(SpecError::new(format!("{at}[{i}].name"), "must not be empty"));
            }
            if cases[..i].iter().any(|c| c.name == case.name) {
                errors.push(SpecError::new(
                    format!("{at}[{i}].name"),
                    format!("case `{}` is defined twice", case.name),
                ));
            }
            for p in case.set.keys() {
                check_path(&mut errors, format!("{at}[{i}].set.{p}"), p);
                if !paths_here.contains(&p.as_str()) {
                    paths_here.push(p);
                }
            }
        }
        for p in paths_here {
            set_paths.push((p.to_string(), format!("case axis `{name}`")));
        }
        axes.push(AxisDef {
            name,
            source: AxisSource::Cases(cases),
        });
    }
    if seeds.is_some() {
        set_paths.push(("seed".into(), "`seeds`".into()));
    }
    for i in 0..set_paths.len() {
        for j in 0..i {
            let ((a, who_a), (b, who_b)) = (&set_paths[j], &set_paths[i]);
            if who_a != who_b && dotted::overlaps(a, b) {
                errors.push(SpecError::new(
                    "",
                    format!("{who_a} sets `{a}` and {who_b} sets `{b}`: two axes may not set the same config path"),
                ));
            }
        }
    }

    // References: `when` must name axes and their values.
    for (r, row) in spec.reference.iter().enumerate() {
        let at = format!("reference[{r}]");
        if row.when.is_empty() {
            errors.push(SpecError::new(
                format!("{at}.when"),
                "must select at least one axis value",
            ));
        }
        if row.numbers() == Reference::default() {
            errors.push(SpecError::new(
                at.clone(),
                "gives no numbers (fid, map, ap50, ap75, infer_s)",
            ));
        }
        for (axis, value) in &row.when {
            match axes.iter().find(|a| a.name == axis) {
                None => {
                    let hint = did_you_mean(axis, axes.iter().map(|a| a.name))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    errors.push(SpecError::new(
                        format!("{at}.when.{axis}"),
                        format!("`{axis}` is not an axis{hint}"),
                    ));
                }
                Some(a) => {
                    if !(0..a.len()).any(|i| canonical_eq(&a.value(i), value)) {
                        errors.push(SpecError::new(
                            format!("{at}.when.{axis}"),
                            format!("{} is not one of the axis values", short(value)),
                        ));
                    }
                }
            }
        }
    }

    // Size guard before any expansion work.
    let seed_list = seeds.clone().unwrap_or_else(|| vec![base.seed]);
    let total = axes
        .iter()
        .map(AxisDef::len)
        .chain(std::iter::once(seed_list.len()))
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .unwrap_or(usize::MAX);
    if total > spec.limits.max_trials as usize {
        errors.push(SpecError::new(
            "limits.max_trials",
            format!(
                "the grid expands to {total} trials, more than limits.max_trials = {} (raise the limit if you mean it)",
                spec.limits.max_trials
            ),
        ));
    }
    if !errors.is_empty() || total == 0 {
        return Err(SpecErrors(errors));
    }

    // Build every trial.
    let mut trials: Vec<Trial> = Vec::with_capacity(total);
    // (path, message) → labels of the trials it concerns, to report each problem once.
    let mut trial_errors: IndexMap<(String, String), Vec<String>> = IndexMap::new();
    let mut trial_warnings: IndexMap<(String, String), usize> = IndexMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let sizes: Vec<usize> = axes.iter().map(AxisDef::len).collect();
    for flat in 0..total {
        let mut rest = flat;
        let seed_idx = rest % seed_list.len();
        rest /= seed_list.len();
        let mut picks = vec![0usize; axes.len()];
        for (k, n) in sizes.iter().enumerate().rev() {
            picks[k] = rest % n;
            rest /= n;
        }
        let mut axis_values: IndexMap<String, Value> = IndexMap::new();
        let mut value = full_base.clone();
        let mut failed: Vec<SpecError> = Vec::new();
        let mut reference: Option<Reference> = None;
        for (axis, &i) in axes.iter().zip(&picks) {
            axis_values.insert(axis.name.to_string(), axis.value(i));
            let overrides: Vec<(&str, &Value)> = match &axis.source {
                AxisSource::Grid(path, values) => vec![(path, &values[i])],
                AxisSource::Cases(cases) => {
                    if let Some(r) = cases[i].reference {
                        reference = Some(r);
                    }
                    cases[i].set.iter().map(|(k, v)| (k.as_str(), v)).collect()
                }
            };
            for (path, v) in overrides {
                if let Err(prefix) = dotted::set(&mut value, path, v.clone()) {
                    failed.push(SpecError::new(
                        path,
                        format!("cannot be set here: `{prefix}` has no such key after the other overrides"),
                    ));
                }
            }
        }
        if seeds.is_some() {
            let _ = dotted::set(&mut value, "seed", Value::from(seed_list[seed_idx]));
        }
        let label = format!("trial {flat} ({})", describe(&axis_values));
        if let Err(e) = resolve_arch(&mut value, "model.arch") {
            failed.push(e);
        }
        let config: Option<TrialConfig> = if failed.is_empty() {
            match from_value_at(value, "") {
                Ok(c) => Some(c),
                Err(e) => {
                    failed.extend(e.0);
                    None
                }
            }
        } else {
            None
        };
        if let Some(cfg) = &config {
            if let Some(arch) = cfg.arch() {
                let found = check_trial(cfg, arch);
                failed.extend(found.errors);
                for w in found.warnings {
                    *trial_warnings.entry((w.path, w.message)).or_default() += 1;
                }
            }
        }
        for e in failed {
            trial_errors.entry((e.path, e.message)).or_default().push(label.clone());
        }
        let Some(config) = config else { continue };
        let hash = hash_of(&config);
        if let Some(first) = seen.get(&hash) {
            trial_errors
                .entry((
                    String::new(),
                    format!("{label} has exactly the configuration of {first}"),
                ))
                .or_default()
                .push(label.clone());
        }
        seen.insert(hash.clone(), label);
        trials.push(Trial {
            index: flat,
            hash,
            axes: axis_values,
            config,
            reference,
            model_job: None,
            eval_jobs: Vec::new(),
            augment_job: None,
        });
    }
    for ((path, message), labels) in trial_errors {
        let scope = if labels.len() == total {
            String::new()
        } else if labels.len() == 1 {
            format!(" (in {})", labels[0])
        } else {
            format!(" (in {} of {total} trials, first {})", labels.len(), labels[0])
        };
        errors.push(SpecError::new(path, format!("{message}{scope}")));
    }
    for ((path, message), n) in trial_warnings {
        let scope = if n == total {
            String::new()
        } else {
            format!(" (in {n} of {total} trials)")
        };
        warnings.push(SpecError::new(path, format!("{message}{scope}")));
    }

    // Reference rows onto trials.
    for trial in &mut trials {
        for (r, row) in spec.reference.iter().enumerate() {
            let matches = row
                .when
                .iter()
                .all(|(axis, v)| trial.axes.get(axis).is_some_and(|tv| canonical_eq(tv, v)));
            if !matches {
                continue;
            }
            trial.reference = match trial.reference {
                None => Some(row.numbers()),
                Some(prev) => match prev.merge(row.numbers()) {
                    Some(m) => Some(m),
                    None => {
                        errors.push(SpecError::new(
                            format!("reference[{r}]"),
                            format!(
                                "gives a number that another reference already gives for trial {}",
                                trial.index
                            ),
                        ));
                        Some(prev)
                    }
                },
            };
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }

    let jobs = build_jobs(&mut trials, &mut warnings);
    // Settings that cost a lot or mean little (an FID from a handful of images, a detector
    // trained far longer than the model, sampling dominating the plan).
    let costs: Vec<crate::cost::JobCost> = jobs.iter().map(crate::cost::job_cost).collect();
    warnings.extend(crate::cost::cost_warnings(&jobs, &costs));
    Ok(Plan {
        name: spec.name.clone(),
        priority: spec.priority,
        max_attempts: spec.max_attempts,
        axes: axes
            .iter()
            .map(|a| Axis {
                name: a.name.to_string(),
                source: match a.source {
                    AxisSource::Grid(..) => "grid".into(),
                    AxisSource::Cases(..) => "cases".into(),
                },
                values: (0..a.len()).map(|i| a.value(i)).collect(),
            })
            .collect(),
        trials,
        jobs,
        warnings,
    })
}

/// The training part of a trial, with settings that cannot matter normalised away so that
/// equivalent trainings hash the same.
pub fn train_spec(cfg: &TrialConfig, arch: &ModelConfig) -> TrainSpec {
    let mut training = cfg.training.clone();
    training.trainable = cfg.effective_trainable();
    let poi = if cfg.poi.enabled {
        PoiConfig {
            enabled: true,
            kind: cfg.poi.kind,
            placement: Some(Placement::Blocks(cfg.resolved_placement(arch))),
        }
    } else {
        PoiConfig {
            enabled: false,
            kind: PoiKind::Spatiallock,
            placement: Some(Placement::Blocks(Vec::new())),
        }
    };
    let pog = if cfg.pog.enabled {
        cfg.pog.clone()
    } else {
        PogConfig {
            enabled: false,
            enh_fusion: false,
            box_loss: BoxLoss::Giou,
            reinject: false,
        }
    };
    TrainSpec {
        seed: cfg.seed,
        arch: arch.clone(),
        base: cfg.model.base.clone(),
        data: cfg.data.train.clone(),
        resolution: cfg.data.resolution,
        training,
        poi,
        pog,
        loss: cfg.loss.clone(),
        world_size: cfg.world_size,
    }
}

struct JobTable {
    jobs: IndexMap<String, Job>,
}

impl JobTable {
    fn add(
        &mut self,
        kind: JobKind,
        label: String,
        payload: JobPayload,
        depends_on: Vec<String>,
        trial: usize,
    ) -> String {
        let hash = hash_of(&payload);
        let id = format!("{}-{}", kind.as_str(), &hash[..16]);
        let job = self.jobs.entry(id.clone()).or_insert_with(|| Job {
            id: id.clone(),
            hash,
            kind,
            depends_on,
            trials: Vec::new(),
            label,
            payload,
        });
        if !job.trials.contains(&trial) {
            job.trials.push(trial);
        }
        id
    }
}

fn build_jobs(trials: &mut [Trial], warnings: &mut Vec<SpecError>) -> Vec<Job> {
    let mut table = JobTable { jobs: IndexMap::new() };
    for trial in trials.iter_mut() {
        let cfg = &trial.config;
        let Some(arch) = cfg.arch() else { continue };
        let idx = trial.index;
        if let Some(noop) = &cfg.noop {
            let mut previous: Option<String> = None;
            for stage in 0..noop.stages.max(1) {
                let id = table.add(
                    JobKind::Noop,
                    format!("noop trial {idx} stage {stage}"),
                    JobPayload::Noop(NoopSpec {
                        noop: noop.clone(),
                        trial: trial.hash.clone(),
                        stage,
                    }),
                    previous.iter().cloned().collect(),
                    idx,
                );
                previous = Some(id);
            }
            trial.model_job = previous;
            continue;
        }
        let train = train_spec(cfg, arch);

        let pretrain_job = match &cfg.model.base {
            BaseWeights::Pretrain(p) => Some(table.add(
                JobKind::Pretrain,
                format!("pretrain {} on {}", arch.name, cfg.data.train.label()),
                JobPayload::Pretrain(PretrainSpec {
                    arch: arch.clone(),
                    pretrain: p.clone(),
                    data: cfg.data.train.clone(),
                    resolution: cfg.data.resolution,
                }),
                vec![],
                idx,
            )),
            BaseWeights::Path(_) => None,
        };
        let model_job = if cfg.effective_trainable().is_empty() {
            pretrain_job
        } else {
            let label = format!(
                "train {} (PoI {}, PoG {}) on {}",
                arch.name,
                if train.poi.enabled { "on" } else { "off" },
                if train.pog.enabled { "on" } else { "off" },
                cfg.data.train.label()
            );
            Some(table.add(
                JobKind::Train,
                label,
                JobPayload::Train(train.clone()),
                pretrain_job.into_iter().collect(),
                idx,
            ))
        };
        trial.model_job = model_job.clone();

        // The first validation set's real-only detector, for the augmentation job.
        let mut first_detector: Option<(String, DetectorSpec, DatasetSpec)> = None;
        for val in &cfg.data.val {
            let detector_job = match &cfg.eval.detector {
                DetectorConfig::Builtin {
                    steps,
                    batch_size,
                    lr,
                    data,
                } => {
                    // Validation guarantees one of the two exists.
                    let Some(data) = data.clone().or_else(|| val.train_counterpart()) else {
                        continue;
                    };
                    let spec = DetectorSpec {
                        steps: *steps,
                        batch_size: *batch_size,
                        lr: *lr,
                        data,
                        resolution: cfg.data.resolution,
                    };
                    let id = table.add(
                        JobKind::TrainDetector,
                        format!("detector on {} at {}px", spec.data.label(), cfg.data.resolution),
                        JobPayload::TrainDetector(spec.clone()),
                        vec![],
                        idx,
                    );
                    if first_detector.is_none() {
                        first_detector = Some((id.clone(), spec, val.clone()));
                    }
                    Some(id)
                }
                DetectorConfig::Torchscript { .. } => None,
            };
            let deps = model_job.iter().chain(detector_job.iter()).cloned().collect();
            let eval_id = table.add(
                JobKind::Evaluate,
                format!("evaluate trial {idx} on {}", val.label()),
                JobPayload::Evaluate(Box::new(EvalSpec {
                    model: train.clone(),
                    model_job: model_job.clone(),
                    detector_job,
                    val: val.clone(),
                    eval: cfg.eval.clone(),
                })),
                deps,
                idx,
            );
            if let Some(first) = table.jobs[&eval_id].trials.first().filter(|t| **t != idx) {
                warnings.push(SpecError::new(
                    "",
                    format!(
                        "trials {first} and {idx} train and evaluate the same model: they differ only in \
                         settings that have no effect (e.g. options of a disabled feature)"
                    ),
                ));
            }
            trial.eval_jobs.push(eval_id);
        }
        if let (Some(augment), Some((detector_job, detector, val))) = (&cfg.augment, first_detector) {
            let deps = model_job.iter().cloned().chain([detector_job.clone()]).collect();
            trial.augment_job = Some(table.add(
                JobKind::AugmentDetector,
                format!(
                    "augment the detector with {} images of trial {idx}, scored on {}",
                    augment.images,
                    val.label()
                ),
                JobPayload::AugmentDetector(Box::new(AugmentSpec {
                    model: train.clone(),
                    model_job: model_job.clone(),
                    detector,
                    detector_job,
                    val,
                    eval: cfg.eval.clone(),
                    images: augment.images,
                })),
                deps,
                idx,
            ));
        }
    }
    // A training job's description names the grid point it trains, so that trials differing
    // only in, say, `training.lr` read apart in `plan` and `status`; or the trials sharing it.
    for job in table.jobs.values_mut().filter(|j| j.kind == JobKind::Train) {
        match job.trials.as_slice() {
            [] => {}
            [one] => {
                if let Some(t) = trials.iter().find(|t| t.index == *one).filter(|t| !t.axes.is_empty()) {
                    job.label.push_str(&format!(" [{}]", describe(&t.axes)));
                }
            }
            many => {
                let listed: Vec<String> = many.iter().map(ToString::to_string).collect();
                job.label.push_str(&format!(" (trials {})", listed.join(", ")));
            }
        }
    }
    let mut jobs: Vec<Job> = table.jobs.into_values().collect();
    // Dependencies first: kinds are declared in dependency order; stable within a kind.
    jobs.sort_by_key(|j| j.kind);
    jobs
}

/// Reads a trial configuration on its own (no grid), resolving a built-in architecture name.
pub fn trial_from_value(mut value: Value) -> Result<TrialConfig, SpecErrors> {
    resolve_arch(&mut value, "model.arch")?;
    let cfg: TrialConfig = from_value_at(value, "")?;
    if let Some(arch) = cfg.arch() {
        let found = check_trial(&cfg, arch);
        if !found.errors.is_empty() {
            return Err(SpecErrors(found.errors));
        }
    }
    Ok(cfg)
}
