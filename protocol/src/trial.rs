//! One trial's full configuration: model, data, training, PoI, PoG, loss weighting,
//! evaluation and world size. Every field has a documented default except the model and data.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::model_config::ModelConfig;

fn default_one() -> u32 {
    1
}

/// The complete configuration of one trial: `model` and `data` are required, every other
/// section has defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrialConfig {
    /// Seed (a whole number) of initialisation, data order and training noise; a spec's `seeds`
    /// sets it per repeat. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The architecture and the frozen base weights. Required.
    pub model: ModelSection,
    /// The training set, the validation sets and the image resolution. Required.
    pub data: DataConfig,
    /// Optimisation settings of the training job. Every field has a default.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Position-Engaged Injection: grounding tokens and Grounding-Attention. Every field has a
    /// default.
    #[serde(default)]
    pub poi: PoiConfig,
    /// Position-Guided Learning: the perception head and its loss. Every field has a default.
    #[serde(default)]
    pub pog: PogConfig,
    /// How the diffusion and perception losses are combined. Default: learnable weights.
    #[serde(default)]
    pub loss: LossConfig,
    /// How the trained model is evaluated (sampling, FID, the mAP detector). Every field has a
    /// default.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Data-parallel ranks (devices, one process each) of the training job; `training.batch_size`
    /// is split over them. Default 1, at most 1024.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = crate::validate::MAX_WORLD_SIZE))]
    pub world_size: u32,
    /// For testing the orchestration without ML: when set, the trial runs `noop` jobs (sleep,
    /// fail or hang) instead of any model work. Default: not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noop: Option<NoopConfig>,
    /// Detector augmentation (paper Table 5): the trained model generates synthetic images from
    /// layouts of the evaluation detector's real training set; the detector trained on real +
    /// synthetic images is scored on the first validation set's real images beside the same
    /// detector trained on real images alone. Needs the built-in detector. Default: not set (no
    /// augmentation job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
}

/// The detector augmentation study of a trial (`augment`, paper Table 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Synthetic images to generate, one per layout of the detector's real training set taken
    /// evenly over it (past its size the layouts repeat with other seeds). Required, 1 to
    /// 1,000,000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub images: u32,
}

/// What a `noop` job does: sleep, then optionally fail or hang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NoopConfig {
    /// Milliseconds to sleep. Default 0.
    pub sleep_ms: u64,
    /// Fail after sleeping, with this failure class (`app` spends an attempt, `infra` does not).
    /// Default `null`: succeed.
    pub fail: Option<NoopFailure>,
    /// Fail only on attempts up to this number (`0`: every attempt). Default 0.
    pub fail_attempts: u32,
    /// Never finish (heartbeats keep going until cancelled or the lease is lost). Default false.
    pub hang: bool,
    /// Jobs per trial, each depending on the previous (a chain, for DAG tests). Default 1.
    pub stages: u32,
}

impl Default for NoopConfig {
    fn default() -> Self {
        Self {
            sleep_ms: 0,
            fail: None,
            fail_attempts: 0,
            hang: false,
            stages: 1,
        }
    }
}

/// How a `noop` job fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoopFailure {
    /// An application error (spends an attempt).
    App,
    /// An infrastructure error (retried without spending an attempt).
    Infra,
}

/// Which architecture, and where its base weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The architecture: a built-in name (`sd14`, `tiny`, `bench-tiny`), a `.yaml`/`.json` file
    /// relative to the spec, or the architecture written inline. Expansion always replaces a
    /// name or file with the inline architecture. Required.
    pub arch: ArchRef,
    /// The frozen base: `{path: DIR}` (a diffusers model folder on disk) or `{pretrain: {steps:
    /// N}}` (a pixel-space base pretrained here first, for tiny configs). Required.
    pub base: BaseWeights,
}

/// A model architecture, by name or inline.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchRef {
    /// A built-in architecture (see [`builtin_model`]).
    Named(String),
    /// A full architecture.
    Inline(Box<ModelConfig>),
}

impl Serialize for ArchRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ArchRef::Named(n) => s.serialize_str(n),
            ArchRef::Inline(m) => m.serialize(s),
        }
    }
}

impl JsonSchema for ArchRef {
    fn schema_name() -> Cow<'static, str> {
        "ArchRef".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = BUILTIN_MODELS.iter().map(|(n, _)| *n).collect();
        let by_name = format!(
            "A built-in architecture ({}) or a .yaml/.json file holding one, relative to the spec",
            names.join(", ")
        );
        let inline = generator.subschema_for::<ModelConfig>();
        json_schema!({
            "anyOf": [
                {"type": "string", "description": by_name, "examples": names},
                inline,
            ]
        })
    }
}

impl<'de> Deserialize<'de> for ArchRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(name) => Ok(ArchRef::Named(name)),
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(|m| ArchRef::Inline(Box::new(m)))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "expected a built-in architecture name ({}) or an inline architecture, found {other}",
                BUILTIN_MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// Architectures shipped in `configs/models/`, compiled in so a spec can name them anywhere.
pub const BUILTIN_MODELS: &[(&str, &str)] = &[
    ("sd14", include_str!("../../configs/models/sd14.yaml")),
    ("tiny", include_str!("../../configs/models/tiny.yaml")),
    ("bench-tiny", include_str!("../../configs/models/bench-tiny.yaml")),
];

/// The built-in architecture called `name`.
pub fn builtin_model(name: &str) -> Option<ModelConfig> {
    let (_, text) = BUILTIN_MODELS.iter().find(|(n, _)| *n == name)?;
    serde_saphyr::from_str_with_options(text, crate::spec::yaml_options()).ok()
}

/// A model architecture by built-in name (`sd14`) or from a YAML/JSON file.
pub fn load_model_config(name_or_path: &str) -> Result<ModelConfig, crate::SpecErrors> {
    if let Some(m) = builtin_model(name_or_path) {
        return Ok(m);
    }
    let path = std::path::Path::new(name_or_path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        let names: Vec<&str> = BUILTIN_MODELS.iter().map(|(n, _)| *n).collect();
        crate::SpecErrors::one(
            "",
            format!(
                "`{name_or_path}` is neither a built-in architecture ({}) nor a readable file: {e}",
                names.join(", ")
            ),
        )
    })?;
    let value = crate::spec::parse_document(&text, crate::spec::SpecFormat::from_path(path))?;
    let model: ModelConfig = crate::spec::from_value_at(value, "")?;
    let problems = model.check();
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(crate::SpecErrors(
            problems.into_iter().map(|(p, m)| crate::SpecError::new(p, m)).collect(),
        ))
    }
}

/// Where the frozen base weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BaseWeights {
    /// A diffusers model directory (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`), read by
    /// the worker under its data root.
    Path(String),
    /// Pretrain a text-to-image base on the training data first (no downloadable base exists
    /// for tiny configs); the pretraining job is shared by every trial with the same settings.
    Pretrain(PretrainConfig),
}

/// Full-U-Net text-to-image pretraining of a tiny base. It runs at precision `auto` (bf16
/// autocast on CUDA, fp32 on the CPU); there is no setting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Optimiser steps of the pretraining. Required.
    #[schemars(range(min = 1))]
    pub steps: u64,
    /// Global batch size, in images per optimiser step. Default 32.
    #[serde(default = "PretrainConfig::default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: u32,
    /// AdamW learning rate. Default 0.0002.
    #[serde(default = "PretrainConfig::default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// Seed of the pretraining run (independent of the trial seeds, so repeats share one base).
    /// Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Min-SNR-γ weighting of the diffusion loss (Hang et al., ICCV 2023): each sample's
    /// ε-prediction loss is scaled by min(SNR(t), γ) / SNR(t), SNR(t) = ᾱ_t / (1 − ᾱ_t), which
    /// stops the many easy low-noise timesteps from dominating; the reported diffusion loss is
    /// the weighted one. A positive number (5 is the paper's choice). Default `null`: unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub min_snr_gamma: Option<f64>,
    /// Decay per optimiser step, between 0 and 1 exclusive, of an exponential moving average of
    /// the U-Net weights, with diffusers' warm-up min(decay, (1 + s)/(10 + s)); the saved base is
    /// the averaged weights. The warm-up keeps the decay below d until step ≈ (10d − 1)/(1 − d):
    /// about 1,000 steps for 0.99 and 9,000 for 0.999, so a shorter run averages over fewer than
    /// 1/(1 − d) steps. Default
    /// `null`: no average, the base is the last step's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))]
    pub ema_decay: Option<f64>,
}

impl PretrainConfig {
    fn default_batch() -> u32 {
        32
    }
    fn default_lr() -> f64 {
        2e-4
    }
}

/// A dataset and the split of it to use: a mapping with `kind` and that kind's fields. Paths
/// are read by the worker under its data root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetSpec {
    /// Deterministic synthetic coloured shapes with boxes, categories and captions.
    Shapes {
        /// `train` or `val`: which of the generator's two image streams. Required.
        split: Split,
        /// Number of images. Required.
        #[schemars(range(min = 1))]
        count: u32,
        /// Seed of the generator (each split derives its own stream from it). Default 0.
        #[serde(default)]
        seed: u64,
        /// `standard` (1–6 objects on plain or striped backgrounds) or `simple` (1–3 larger,
        /// barely overlapping objects on plain backgrounds: an easier target for tiny bases).
        /// Default `standard`.
        #[serde(default, skip_serializing_if = "ShapesVariant::is_standard")]
        variant: ShapesVariant,
    },
    /// COCO 2017: `instances_*.json` and (optional) `captions_*.json`; the files are the split.
    Coco {
        /// The image folder (e.g. `data/coco/val2017`). Required.
        images: String,
        /// The instances JSON (boxes and categories). Required.
        instances: String,
        /// The captions JSON; left out, captions are built from category names. Default `null`.
        #[serde(default)]
        captions: Option<String>,
    },
    /// Flickr30k Entities (Annotations XML + Sentences); the ids file is the split.
    Flickr30k {
        /// The image folder. Required.
        images: String,
        /// The `Annotations/` folder. Required.
        annotations: String,
        /// The `Sentences/` folder. Required.
        sentences: String,
        /// A file listing the image ids of this split. Required.
        ids: String,
    },
    /// Any COCO-format detection JSON (nuImages exports and the like); the files are the split.
    CocoFormat {
        /// The image folder. Required.
        images: String,
        /// The annotation JSON. Required.
        annotations: String,
    },
}

impl DatasetSpec {
    /// For synthetic data, the same generator on its `train` stream: the default training set
    /// of the evaluation detector. File-based datasets have no derivable training split.
    pub fn train_counterpart(&self) -> Option<DatasetSpec> {
        match self {
            DatasetSpec::Shapes {
                count, seed, variant, ..
            } => Some(DatasetSpec::Shapes {
                split: Split::Train,
                count: *count,
                seed: *seed,
                variant: *variant,
            }),
            _ => None,
        }
    }

    /// A short human label, e.g. `shapes/val`, `shapes-simple/val` or `coco:val2017`.
    pub fn label(&self) -> String {
        let last = |p: &str| {
            let trimmed = p.trim_end_matches('/');
            trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
        };
        match self {
            DatasetSpec::Shapes {
                split,
                variant: ShapesVariant::Standard,
                ..
            } => format!("shapes/{split}"),
            DatasetSpec::Shapes {
                split,
                variant: ShapesVariant::Simple,
                ..
            } => format!("shapes-simple/{split}"),
            DatasetSpec::Coco { images, .. } => format!("coco:{}", last(images)),
            DatasetSpec::Flickr30k { ids, .. } => format!("flickr30k:{}", last(ids)),
            DatasetSpec::CocoFormat { annotations, .. } => format!("coco-format:{}", last(annotations)),
        }
    }
}

/// Which drawing rules the synthetic shapes generator follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShapesVariant {
    /// 1–6 objects (0.18–0.45 of the side, pairwise IoU below 0.15) on plain or striped
    /// backgrounds.
    #[default]
    Standard,
    /// 1–3 objects (0.30–0.55 of the side, pairwise IoU at most 0.05) on plain backgrounds.
    Simple,
}

impl ShapesVariant {
    /// True for [`ShapesVariant::Standard`], the default (left out when serialised, so that
    /// specs written before the variant existed keep their hashes).
    pub fn is_standard(&self) -> bool {
        *self == ShapesVariant::Standard
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images.
    Val,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
        })
    }
}

/// Datasets and the image resolution used for training and generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The training set: a mapping with `kind` (`shapes`, `coco`, `flickr30k`, `coco-format`).
    /// Required.
    pub train: DatasetSpec,
    /// Validation sets: a list with at least one; each gets its own evaluation job. Required.
    pub val: Vec<DatasetSpec>,
    /// Image side in pixels (square, after resize and centre crop): a multiple of the
    /// architecture's downsampling (4 for `tiny`, 64 for `sd14`). Required.
    #[schemars(range(min = 1))]
    pub resolution: u32,
}

/// Numerical precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on CPU.
    Auto,
    /// fp32 everywhere.
    Fp32,
    /// bf16 autocast on every device, the CPU included (for CPUs with bf16 units, and tests).
    Bf16,
}

/// Module groups that training can update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// PoI: grounding tokenizer and Grounding-Attention layers.
    Grounding,
    /// PoG: FPN, Enh-Fusion and the detection head.
    Perception,
    /// The learnable loss weights s_g, s_p.
    LossWeights,
    /// The whole base U-Net (normally frozen).
    Unet,
}

/// Optimisation hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Optimiser steps. Default 1000.
    #[schemars(range(min = 1))]
    pub steps: u64,
    /// Global batch size in images per optimiser step, split evenly over `world_size` ranks and
    /// `grad_accum` micro-batches. Default 16.
    #[schemars(range(min = 1))]
    pub batch_size: u32,
    /// AdamW learning rate after warm-up. Default 0.00005.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// AdamW weight decay (never applied to the loss weights). Default 0.
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    /// Steps of linear learning-rate warm-up. Default 0.
    pub warmup_steps: u64,
    /// Largest gradient norm before clipping; `null` disables clipping. Default 1.0.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub grad_clip: Option<f64>,
    /// Micro-batches accumulated per optimiser step. Default 1.
    #[schemars(range(min = 1))]
    pub grad_accum: u32,
    /// Probability (0 to 1) that a caption is replaced by the empty caption. Default 0.1.
    #[schemars(range(min = 0, max = 1))]
    pub caption_dropout: f64,
    /// Probability (0 to 1) that a whole batch gets the null grounding input. Default 0.1.
    #[schemars(range(min = 0, max = 1))]
    pub grounding_dropout: f64,
    /// Module groups that are updated; groups whose feature is off are ignored. Default
    /// `[grounding, perception, loss_weights]`.
    pub trainable: Vec<Trainable>,
    /// Save a checkpoint every this many steps (and at the end). Default 500.
    #[schemars(range(min = 1))]
    pub checkpoint_every: u64,
    /// Numerical precision. Default `auto`.
    pub precision: Precision,
    /// Decay per optimiser step, between 0 and 1 exclusive, of an exponential moving average of
    /// the trainable weights, with diffusers' warm-up min(decay, (1 + s)/(10 + s)). Checkpoints
    /// keep the average beside the raw weights, and sampling and evaluation use it. The warm-up
    /// keeps the decay below d until step ≈ (10d − 1)/(1 − d): about 1,000 steps for 0.99 and
    /// 9,000 for 0.999. Default `null`: no average.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1))]
    pub ema_decay: Option<f64>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            lr: 5e-5,
            weight_decay: 0.0,
            warmup_steps: 0,
            grad_clip: Some(1.0),
            grad_accum: 1,
            caption_dropout: 0.1,
            grounding_dropout: 0.1,
            trainable: vec![Trainable::Grounding, Trainable::Perception, Trainable::LossWeights],
            checkpoint_every: 500,
            precision: Precision::Auto,
            ema_decay: None,
        }
    }
}

/// How grounding enters the U-Net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoiKind {
    /// SpatialLock's Grounding-Attention: gated cross-attention, visual tokens query grounding tokens.
    Spatiallock,
    /// The GLIGEN baseline: gated self-attention over `[x; g]`.
    Gligen,
}

/// Position-Engaged Injection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoiConfig {
    /// Whether grounding tokens reach the U-Net (false: no PoI). Default true.
    pub enabled: bool,
    /// The kind of gated attention. Default `spatiallock`.
    pub kind: PoiKind,
    /// Attention blocks that get a grounding layer (`[down.2, up.1]`, ...), or `all`.
    /// Default `null`: the last attention down block and the first attention up block for
    /// SpatialLock (`[down.2, up.1]` in SD v1.x), every attention block for GLIGEN.
    pub placement: Option<Placement>,
}

impl Default for PoiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kind: PoiKind::Spatiallock,
            placement: None,
        }
    }
}

/// Where grounding layers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Every attention block of the architecture.
    All,
    /// The listed blocks.
    Blocks(Vec<String>),
}

impl Serialize for Placement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Placement::All => s.serialize_str("all"),
            Placement::Blocks(b) => b.serialize(s),
        }
    }
}

impl JsonSchema for Placement {
    fn schema_name() -> Cow<'static, str> {
        "Placement".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string", "const": "all", "description": "Every attention block of the architecture"},
                {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "These attention blocks: `down.i`, `mid`, `up.i` (diffusers indices)",
                    "examples": [["down.2", "up.1"]],
                },
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Placement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "all" => Ok(Placement::All),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "expected a block name such as `down.2`, found {other}"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Placement::Blocks),
            other => Err(D::Error::custom(format!(
                "expected `all` or a list of attention blocks such as [down.2, up.1], found {other}"
            ))),
        }
    }
}

/// Box regression loss of the perception head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BoxLoss {
    /// Smooth-L1 on encoded (dx, dy, log dw, log dh) deltas.
    SmoothL1,
    /// Generalised IoU on decoded boxes.
    Giou,
}

/// Position-Guided Learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PogConfig {
    /// Whether the perception head trains and its loss counts (false: no PoG). Default true.
    pub enabled: bool,
    /// The Enh-Fusion transformer between the FPN and the head (Table 2 ablation); must be
    /// false when `enabled` is. Default true.
    pub enh_fusion: bool,
    /// Box regression loss. Default `giou`.
    pub box_loss: BoxLoss,
    /// Feed fused features back into the U-Net: not implemented, must be false. Default false.
    pub reinject: bool,
}

impl Default for PogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            enh_fusion: true,
            box_loss: BoxLoss::Giou,
            reinject: false,
        }
    }
}

/// How the diffusion loss L_g and the perception loss L_p are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossWeights {
    /// `λg·L_g + λp·L_p` with fixed `[λg, λp]`.
    Fixed([f64; 2]),
    /// `Σ exp(−s_i)·L_i + s_i` with learnable `s_i`, initialised to 0.
    Learnable,
}

impl Serialize for LossWeights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LossWeights::Fixed(w) => w.serialize(s),
            LossWeights::Learnable => s.serialize_str("learnable"),
        }
    }
}

impl JsonSchema for LossWeights {
    fn schema_name() -> Cow<'static, str> {
        "LossWeights".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {
                    "type": "string",
                    "const": "learnable",
                    "description": "Σ exp(−s_i)·L_i + s_i with learnable s_i, initialised to 0",
                },
                {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "Fixed weights [λg, λp]: λg·L_g + λp·L_p",
                    "examples": [[0.5, 0.5]],
                },
            ]
        })
    }
}

impl<'de> Deserialize<'de> for LossWeights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::String(s) if s == "learnable" => return Ok(LossWeights::Learnable),
            Value::Array(items) if items.len() == 2 => {
                if let (Some(g), Some(p)) = (items[0].as_f64(), items[1].as_f64()) {
                    return Ok(LossWeights::Fixed([g, p]));
                }
            }
            _ => {}
        }
        Err(D::Error::custom(format!(
            "expected `learnable` or a pair of numbers [λg, λp] such as [0.5, 0.5], found {v}"
        )))
    }
}

/// Loss combination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Fixed `[λg, λp]` (two numbers ≥ 0) or `learnable`. Default `learnable`.
    pub weights: LossWeights,
    /// Min-SNR-γ weighting of the diffusion loss L_g (Hang et al., ICCV 2023): each sample's
    /// ε-prediction loss is scaled by min(SNR(t), γ) / SNR(t), SNR(t) = ᾱ_t / (1 − ᾱ_t); the
    /// perception loss is not affected, and the reported diffusion loss is the weighted one. A
    /// positive number (5 is the paper's choice). Default `null`: unweighted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub min_snr_gamma: Option<f64>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            weights: LossWeights::Learnable,
            min_snr_gamma: None,
        }
    }
}

/// Which Fréchet distance an evaluation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FidMode {
    /// FID with the Inception network when its weights are installed, else `fd_detector`.
    Auto,
    /// FID with the Inception network; an error when its weights are missing.
    Inception,
    /// The Fréchet distance in the evaluation detector's feature space (`fd_detector`).
    Detector,
}

/// The detector that scores generated images: a mapping with `kind` (`builtin` or
/// `torchscript`); `kind` is needed even to change only some of the built-in's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorConfig {
    /// The built-in RetinaNet-style detector, trained on real images at generation resolution.
    Builtin {
        /// Training steps of the detector. Default 2000.
        #[serde(default = "DetectorConfig::default_steps")]
        #[schemars(range(min = 1))]
        steps: u64,
        /// Batch size, in images per step. Default 32.
        #[serde(default = "DetectorConfig::default_batch")]
        #[schemars(range(min = 1))]
        batch_size: u32,
        /// AdamW learning rate. Default 0.001.
        #[serde(default = "DetectorConfig::default_lr")]
        #[schemars(extend("exclusiveMinimum" = 0))]
        lr: f64,
        /// Real training images for the detector. Default `null`: synthetic validation data
        /// uses its own generator's `train` stream; file-based validation data needs this set.
        #[serde(default)]
        data: Option<DatasetSpec>,
    },
    /// A TorchScript detector following the documented input/output contract.
    Torchscript {
        /// The `.pt` file. Required.
        path: String,
    },
}

impl DetectorConfig {
    fn default_steps() -> u64 {
        2000
    }
    fn default_batch() -> u32 {
        32
    }
    fn default_lr() -> f64 {
        1e-3
    }
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// DDIM sampling steps per generated image. Default 50.
    #[schemars(range(min = 1))]
    pub ddim_steps: u32,
    /// Classifier-free guidance scale (≥ 0). Default 7.5.
    #[schemars(range(min = 0))]
    pub guidance_scale: f64,
    /// Scheduled grounding: the fraction (0 to 1) of the sampling steps, from the first, with the
    /// grounding layers on. Default 0.3.
    #[schemars(range(min = 0, max = 1))]
    pub grounding_fraction: f64,
    /// Images generated per validation layout. Default 1.
    #[schemars(range(min = 1))]
    pub images_per_layout: u32,
    /// Evaluate on at most this many validation layouts. Default `null`: all of them.
    #[schemars(range(min = 1))]
    pub max_layouts: Option<u32>,
    /// Which Fréchet distance is reported. Default `auto`.
    pub fid: FidMode,
    /// The detector that finds objects in the generated images for mAP. Default: the built-in
    /// detector with its defaults (2000 steps).
    pub detector: DetectorConfig,
    /// Post-processing of the detector's outputs.
    pub detections: DetectionConfig,
    /// Seed of the sampling noise. Default 0.
    pub seed: u64,
}

/// Detector post-processing: score threshold, per-class NMS, detections kept per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Candidates scoring below this (0 to 1) are dropped. Default 0.05.
    #[schemars(range(min = 0, max = 1))]
    pub score_threshold: f64,
    /// IoU (0 to 1) above which a lower-scoring box of the same class is suppressed. Default 0.5.
    #[schemars(range(min = 0, max = 1))]
    pub nms_iou: f64,
    /// Detections kept per image (COCO evaluates at most 100). Default 100.
    #[schemars(range(min = 1))]
    pub max_detections: u32,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            nms_iou: 0.5,
            max_detections: 100,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            ddim_steps: 50,
            guidance_scale: 7.5,
            grounding_fraction: 0.3,
            images_per_layout: 1,
            max_layouts: None,
            fid: FidMode::Auto,
            detector: DetectorConfig::Builtin {
                steps: DetectorConfig::default_steps(),
                batch_size: DetectorConfig::default_batch(),
                lr: DetectorConfig::default_lr(),
                data: None,
            },
            detections: DetectionConfig::default(),
            seed: 0,
        }
    }
}

impl TrialConfig {
    /// The resolved architecture (after expansion it is always inline).
    pub fn arch(&self) -> Option<&ModelConfig> {
        match &self.model.arch {
            ArchRef::Inline(m) => Some(m),
            ArchRef::Named(_) => None,
        }
    }

    /// The module groups that training actually updates, given which features are on.
    pub fn effective_trainable(&self) -> Vec<Trainable> {
        let mut out: Vec<Trainable> = self
            .training
            .trainable
            .iter()
            .copied()
            .filter(|t| match t {
                Trainable::Grounding => self.poi.enabled,
                Trainable::Perception => self.pog.enabled,
                Trainable::LossWeights => self.pog.enabled && self.loss.weights == LossWeights::Learnable,
                Trainable::Unet => true,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The grounding placement with the kind's default filled in and `all` expanded.
    pub fn resolved_placement(&self, arch: &ModelConfig) -> Vec<String> {
        match (&self.poi.placement, self.poi.kind) {
            (Some(Placement::Blocks(b)), _) => b.clone(),
            (Some(Placement::All), _) | (None, PoiKind::Gligen) => arch.attention_blocks(),
            (None, PoiKind::Spatiallock) => {
                // The paper's choice: the last attention down block and the first attention up
                // block (`down.2` and `up.1` in SD v1.x).
                let blocks = arch.attention_blocks();
                let last_down = blocks.iter().rev().find(|b| b.starts_with("down."));
                let first_up = blocks.iter().find(|b| b.starts_with("up."));
                last_down.into_iter().chain(first_up).cloned().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn new_options_left_at_their_defaults_serialize_as_before() {
        // Specs written before these options existed keep their serialized form, hence their
        // job ids and the image caches' keys.
        let shapes: DatasetSpec =
            serde_json::from_value(json!({"kind": "shapes", "split": "val", "count": 4})).unwrap();
        assert_eq!(
            serde_json::to_value(&shapes).unwrap(),
            json!({"kind": "shapes", "split": "val", "count": 4, "seed": 0})
        );
        assert_eq!(shapes.label(), "shapes/val");
        let training = serde_json::to_value(TrainingConfig::default()).unwrap();
        assert!(training.get("ema_decay").is_none(), "{training}");
        assert_eq!(
            serde_json::to_value(LossConfig::default()).unwrap(),
            json!({"weights": "learnable"})
        );
        let pretrain: PretrainConfig = serde_json::from_value(json!({"steps": 3})).unwrap();
        assert_eq!(
            serde_json::to_value(&pretrain).unwrap(),
            json!({"steps": 3, "batch_size": 32, "lr": 2e-4, "seed": 0})
        );

        // Set, they are written and read back.
        let simple: DatasetSpec =
            serde_json::from_value(json!({"kind": "shapes", "split": "val", "count": 4, "variant": "simple"})).unwrap();
        assert_eq!(serde_json::to_value(&simple).unwrap()["variant"], "simple");
        assert_eq!(simple.label(), "shapes-simple/val");
        let DatasetSpec::Shapes { variant, split, .. } = simple.train_counterpart().unwrap() else {
            panic!("shapes")
        };
        assert_eq!((variant, split), (ShapesVariant::Simple, Split::Train));
        let pretrain: PretrainConfig =
            serde_json::from_value(json!({"steps": 3, "ema_decay": 0.999, "min_snr_gamma": 5})).unwrap();
        assert_eq!((pretrain.ema_decay, pretrain.min_snr_gamma), (Some(0.999), Some(5.0)));
        let back: PretrainConfig = serde_json::from_value(serde_json::to_value(&pretrain).unwrap()).unwrap();
        assert_eq!(back, pretrain);
    }
}
