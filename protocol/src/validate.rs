//! Semantic checks of a trial configuration, beyond what its types enforce.

use crate::error::{did_you_mean, SpecError};
use crate::model_config::ModelConfig;
use crate::trial::{BaseWeights, DatasetSpec, DetectorConfig, LossWeights, Placement, Split, TrialConfig};

/// What validation found: errors reject the spec, warnings are shown and accepted.
#[derive(Debug, Default)]
pub struct Findings {
    /// Problems that make the trial unusable.
    pub errors: Vec<SpecError>,
    /// Settings that are legal but probably not what the user meant.
    pub warnings: Vec<SpecError>,
}

impl Findings {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push(SpecError::new(path, msg));
    }
    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        self.warnings.push(SpecError::new(path, msg));
    }
}

/// The most ranks one training job may ask for.
pub const MAX_WORLD_SIZE: u32 = 1024;

fn probability(f: &mut Findings, path: &str, p: f64) {
    if !(0.0..=1.0).contains(&p) {
        f.error(path, format!("must be a probability in [0, 1], got {p}"));
    }
}

fn positive(f: &mut Findings, path: &str, x: f64) {
    if !(x.is_finite() && x > 0.0) {
        f.error(path, format!("must be a positive number, got {x}"));
    }
}

/// An EMA decay, per optimiser step: strictly between 0 and 1.
fn ema_decay(f: &mut Findings, path: &str, d: Option<f64>) {
    if let Some(d) = d {
        if !(d > 0.0 && d < 1.0) {
            f.error(
                path,
                format!("must be between 0 and 1 exclusive (e.g. 0.999), or null for no average; got {d}"),
            );
        }
    }
}

/// A Min-SNR-γ: a positive, finite number.
fn snr_gamma(f: &mut Findings, path: &str, g: Option<f64>) {
    if let Some(g) = g {
        if !(g.is_finite() && g > 0.0) {
            f.error(
                path,
                format!("must be a positive number (e.g. 5), or null for no weighting; got {g}"),
            );
        }
    }
}

/// Checks `cfg` (whose architecture is already resolved to `arch`).
pub fn check_trial(cfg: &TrialConfig, arch: &ModelConfig) -> Findings {
    let mut f = Findings::default();
    for (path, msg) in arch.check() {
        f.error(&format!("model.arch.{path}"), msg);
    }

    // Model base.
    match &cfg.model.base {
        BaseWeights::Path(p) if p.trim().is_empty() => f.error("model.base.path", "must not be empty"),
        BaseWeights::Pretrain(p) => {
            if arch.vae.is_some() {
                f.error(
                    "model.base.pretrain",
                    format!(
                        "`{}` works in latent space and no VAE can be trained here: pretrain a pixel-space \
                         architecture (vae: null) or give base weights with `path`",
                        arch.name
                    ),
                );
            }
            if p.steps == 0 {
                f.error("model.base.pretrain.steps", "must be at least 1");
            }
            if p.batch_size == 0 {
                f.error("model.base.pretrain.batch_size", "must be at least 1");
            }
            positive(&mut f, "model.base.pretrain.lr", p.lr);
            snr_gamma(&mut f, "model.base.pretrain.min_snr_gamma", p.min_snr_gamma);
            ema_decay(&mut f, "model.base.pretrain.ema_decay", p.ema_decay);
        }
        BaseWeights::Path(_) => {}
    }

    // Data.
    let d = &cfg.data;
    let multiple = arch.resolution_multiple();
    if d.resolution == 0 || !d.resolution.is_multiple_of(multiple) {
        f.error(
            "data.resolution",
            format!(
                "{} is not a positive multiple of {multiple} (the architecture's VAE factor × U-Net downsampling)",
                d.resolution
            ),
        );
    }
    check_dataset(&mut f, "data.train", &d.train);
    if let DatasetSpec::Shapes { split: Split::Val, .. } = d.train {
        f.warn("data.train.split", "the training set reads the `val` stream");
    }
    if d.val.is_empty() {
        f.error("data.val", "must list at least one validation dataset");
    }
    for (i, v) in d.val.iter().enumerate() {
        check_dataset(&mut f, &format!("data.val[{i}]"), v);
    }
    for i in 0..d.val.len() {
        if d.val[..i].contains(&d.val[i]) {
            f.error(&format!("data.val[{i}]"), "lists the same validation dataset twice");
        }
    }

    // Training.
    let t = &cfg.training;
    if t.steps == 0 {
        f.error("training.steps", "must be at least 1");
    }
    positive(&mut f, "training.lr", t.lr);
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        f.error("training.weight_decay", format!("must be ≥ 0, got {}", t.weight_decay));
    }
    if let Some(c) = t.grad_clip {
        positive(&mut f, "training.grad_clip", c);
    }
    probability(&mut f, "training.caption_dropout", t.caption_dropout);
    probability(&mut f, "training.grounding_dropout", t.grounding_dropout);
    if t.grad_accum == 0 {
        f.error("training.grad_accum", "must be at least 1");
    }
    if cfg.world_size == 0 {
        f.error("world_size", "must be at least 1");
    } else if cfg.world_size > MAX_WORLD_SIZE {
        f.error(
            "world_size",
            format!(
                "{} is above the largest group we run ({MAX_WORLD_SIZE} ranks)",
                cfg.world_size
            ),
        );
    }
    let shards = u64::from(cfg.world_size.max(1)) * u64::from(t.grad_accum.max(1));
    if t.batch_size == 0 || u64::from(t.batch_size) % shards != 0 {
        f.error(
            "training.batch_size",
            format!(
                "{} must be a positive multiple of world_size × grad_accum = {shards} (it is the global batch)",
                t.batch_size
            ),
        );
    }
    if t.checkpoint_every == 0 {
        f.error("training.checkpoint_every", "must be at least 1");
    }
    ema_decay(&mut f, "training.ema_decay", t.ema_decay);
    if t.warmup_steps > t.steps {
        f.warn(
            "training.warmup_steps",
            format!("{} exceeds training.steps {}", t.warmup_steps, t.steps),
        );
    }

    // PoI.
    if cfg.poi.enabled {
        let blocks = arch.attention_blocks();
        if let Some(Placement::Blocks(list)) = &cfg.poi.placement {
            if list.is_empty() {
                f.error(
                    "poi.placement",
                    "must name at least one attention block (or set poi.enabled: false)",
                );
            }
            for (i, b) in list.iter().enumerate() {
                if !blocks.contains(b) {
                    let hint = did_you_mean(b, blocks.iter().map(String::as_str))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    f.error(
                        &format!("poi.placement[{i}]"),
                        format!(
                            "`{b}` is not an attention block of `{}`{hint}; blocks: {}",
                            arch.name,
                            blocks.join(", ")
                        ),
                    );
                }
                if list[..i].contains(b) {
                    f.error(&format!("poi.placement[{i}]"), format!("`{b}` is listed twice"));
                }
            }
        }
        if cfg.resolved_placement(arch).is_empty() {
            f.error(
                "poi.placement",
                format!("`{}` has no attention blocks to place grounding in", arch.name),
            );
        }
    }

    // PoG.
    if cfg.pog.enh_fusion && !cfg.pog.enabled {
        f.error(
            "pog.enh_fusion",
            "Enh-Fusion is part of PoG: set it to false when pog.enabled is false",
        );
    }
    if cfg.pog.reinject {
        f.error(
            "pog.reinject",
            "feeding fused features back into the U-Net is not implemented (the paper's PoG only \
             supervises); set it to false",
        );
    }

    // Loss weights.
    match cfg.loss.weights {
        LossWeights::Fixed([g, p]) => {
            if !(g.is_finite() && p.is_finite() && g >= 0.0 && p >= 0.0) || g + p == 0.0 {
                f.error(
                    "loss.weights",
                    format!("[{g}, {p}] must be two non-negative numbers, not both zero"),
                );
            } else if cfg.pog.enabled && p == 0.0 {
                f.warn(
                    "loss.weights",
                    "λp is 0: the perception head trains but nothing flows back into the generator",
                );
            } else if !cfg.pog.enabled && g == 0.0 {
                f.error(
                    "loss.weights",
                    "λg is 0 and PoG is off: there is no loss left to train on",
                );
            }
        }
        LossWeights::Learnable if !cfg.pog.enabled => f.warn(
            "loss.weights",
            "learnable weights with PoG off reduce to the diffusion loss alone",
        ),
        LossWeights::Learnable => {}
    }

    snr_gamma(&mut f, "loss.min_snr_gamma", cfg.loss.min_snr_gamma);

    // Evaluation.
    let e = &cfg.eval;
    if e.ddim_steps == 0 {
        f.error("eval.ddim_steps", "must be at least 1");
    }
    if !(e.guidance_scale.is_finite() && e.guidance_scale >= 0.0) {
        f.error("eval.guidance_scale", format!("must be ≥ 0, got {}", e.guidance_scale));
    }
    probability(&mut f, "eval.grounding_fraction", e.grounding_fraction);
    if e.images_per_layout == 0 {
        f.error("eval.images_per_layout", "must be at least 1");
    }
    probability(&mut f, "eval.detections.score_threshold", e.detections.score_threshold);
    probability(&mut f, "eval.detections.nms_iou", e.detections.nms_iou);
    if e.detections.max_detections == 0 {
        f.error("eval.detections.max_detections", "must be at least 1");
    }
    if e.max_layouts == Some(0) {
        f.error("eval.max_layouts", "must be at least 1 (or null for all)");
    }
    match &e.detector {
        DetectorConfig::Builtin {
            steps,
            batch_size,
            lr,
            data,
        } => {
            if *steps == 0 {
                f.error("eval.detector.steps", "must be at least 1");
            }
            if *batch_size == 0 {
                f.error("eval.detector.batch_size", "must be at least 1");
            }
            positive(&mut f, "eval.detector.lr", *lr);
            match data {
                Some(d) => check_dataset(&mut f, "eval.detector.data", d),
                None => {
                    for (i, v) in cfg
                        .data
                        .val
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.train_counterpart().is_none())
                    {
                        f.error(
                            "eval.detector.data",
                            format!(
                                "must name the real training images the detector learns from: validation set {} \
                                 (data.val[{i}]) is file-based, so its training split cannot be derived",
                                v.label()
                            ),
                        );
                    }
                }
            }
        }
        DetectorConfig::Torchscript { path } if path.trim().is_empty() => {
            f.error("eval.detector.path", "must not be empty")
        }
        DetectorConfig::Torchscript { .. } => {}
    }

    // Detector augmentation.
    if let Some(a) = &cfg.augment {
        if !(1..=MAX_AUGMENT_IMAGES).contains(&a.images) {
            f.error(
                "augment.images",
                format!("{} is not between 1 and {MAX_AUGMENT_IMAGES}", a.images),
            );
        }
        if matches!(cfg.eval.detector, DetectorConfig::Torchscript { .. }) {
            f.error(
                "augment",
                "needs the built-in evaluation detector (eval.detector.kind: builtin): a TorchScript detector \
                 cannot be retrained on synthetic images",
            );
        }
    }
    f
}

/// The most synthetic images one augmentation job generates.
pub const MAX_AUGMENT_IMAGES: u32 = 1_000_000;

fn check_dataset(f: &mut Findings, path: &str, d: &DatasetSpec) {
    let nonempty = |f: &mut Findings, field: &str, v: &str| {
        if v.trim().is_empty() {
            f.error(&format!("{path}.{field}"), "must not be empty");
        }
    };
    match d {
        DatasetSpec::Shapes { count, .. } => {
            if *count == 0 {
                f.error(&format!("{path}.count"), "must be at least 1");
            }
        }
        DatasetSpec::Coco {
            images,
            instances,
            captions,
            ..
        } => {
            nonempty(f, "images", images);
            nonempty(f, "instances", instances);
            if let Some(c) = captions {
                nonempty(f, "captions", c);
            }
        }
        DatasetSpec::Flickr30k {
            images,
            annotations,
            sentences,
            ids,
            ..
        } => {
            nonempty(f, "images", images);
            nonempty(f, "annotations", annotations);
            nonempty(f, "sentences", sentences);
            nonempty(f, "ids", ids);
        }
        DatasetSpec::CocoFormat {
            images, annotations, ..
        } => {
            nonempty(f, "images", images);
            nonempty(f, "annotations", annotations);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::builtin_model;

    /// A valid trial on the tiny architecture with `patch` merged into its JSON form (one level
    /// of nesting), and the errors validation finds, as `path: message`.
    fn errors_with(patch: serde_json::Value) -> Vec<String> {
        let mut v = serde_json::json!({
            "model": {"arch": "tiny", "base": {"pretrain": {"steps": 10, "batch_size": 4}}},
            "data": {
                "train": {"kind": "shapes", "split": "train", "count": 8},
                "val": [{"kind": "shapes", "split": "val", "count": 4}],
                "resolution": 32
            },
            "training": {"steps": 5, "batch_size": 4}
        });
        for (section, fields) in patch.as_object().unwrap() {
            for (k, x) in fields.as_object().unwrap() {
                v[section.as_str()][k.as_str()] = x.clone();
            }
        }
        let cfg: TrialConfig = serde_json::from_value(v).unwrap();
        let arch = builtin_model("tiny").unwrap();
        check_trial(&cfg, &arch)
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn ema_decay_and_min_snr_gamma_are_checked_by_field() {
        use serde_json::json;
        assert!(errors_with(json!({})).is_empty());
        let good = errors_with(json!({
            "training": {"ema_decay": 0.999},
            "loss": {"min_snr_gamma": 5.0},
            "model": {"base": {"pretrain": {"steps": 10, "ema_decay": 0.99, "min_snr_gamma": 1.0}}}
        }));
        assert!(good.is_empty(), "{good:?}");
        for (patch, path) in [
            (json!({"training": {"ema_decay": 1.0}}), "training.ema_decay: "),
            (json!({"training": {"ema_decay": 0.0}}), "training.ema_decay: "),
            (json!({"loss": {"min_snr_gamma": 0.0}}), "loss.min_snr_gamma: "),
            (json!({"loss": {"min_snr_gamma": -5.0}}), "loss.min_snr_gamma: "),
            (
                json!({"model": {"base": {"pretrain": {"steps": 10, "ema_decay": 1.5}}}}),
                "model.base.pretrain.ema_decay: ",
            ),
            (
                json!({"model": {"base": {"pretrain": {"steps": 10, "min_snr_gamma": -1.0}}}}),
                "model.base.pretrain.min_snr_gamma: ",
            ),
        ] {
            let errors = errors_with(patch.clone());
            assert!(errors.len() == 1 && errors[0].starts_with(path), "{patch}: {errors:?}");
        }
        // Not finite (JSON cannot write it; YAML's `.inf` can).
        let mut f = Findings::default();
        snr_gamma(&mut f, "loss.min_snr_gamma", Some(f64::INFINITY));
        ema_decay(&mut f, "training.ema_decay", Some(f64::NAN));
        let paths: Vec<&str> = f.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["loss.min_snr_gamma", "training.ema_decay"]);
        assert!(f.errors[0].message.contains("positive"), "{}", f.errors[0].message);
        assert!(
            f.errors[1].message.contains("between 0 and 1"),
            "{}",
            f.errors[1].message
        );
    }
}
