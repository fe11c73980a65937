//! What a plan costs before anything runs: per job its steps, the images it generates, its
//! sampler steps, floating-point operations and an estimated time; and warnings for settings
//! that cost a lot or mean little (what `spatiallock plan` prints and `plan --json` carries).
//!
//! # The cost model
//!
//! A job's work is counted in floating-point operations (FLOP; a multiply-add counts 2) from
//! its configuration alone:
//!
//! - one U-Net forward pass of one image at the job's resolution ([`unet_forward_flop`]): the
//!   convolutions of every ResNet block, up- and down-sampler, the spatial transformers
//!   (projections, self-attention, cross-attention over the caption's tokens, GEGLU
//!   feed-forward), and the grounding layers where PoI puts them (SD v1.4 at 512 px: 0.80
//!   TFLOP, the figure usually quoted for it);
//! - the PoG head on the U-Net's down-block features ([`pog_forward_flop`]), the built-in
//!   evaluation detector ([`detector_forward_flop`]) and the FID Inception
//!   ([`INCEPTION_FORWARD_FLOP`]);
//! - a training step costs [`TRAIN_PASSES`] forward passes per image of the global batch
//!   (backward ≈ 2 × forward; a frozen base skips its weight gradients, but the PoI + PoG step
//!   measured in the demo is no cheaper than this count, so no saving is assumed for it); an
//!   evaluation costs 2 U-Net passes per generated image and DDIM step (classifier-free
//!   guidance), grounding layers on for the first `grounding_fraction` of the steps, one
//!   detector pass per generated image, and FID features of every real and generated image.
//!
//! Seconds are those operations over a rate measured on **one CPU core** (one libtorch
//! thread) of the 2-core machines this project is developed on, with the tiny model:
//!
//! - training, [`TRAIN_FLOP_PER_CORE_SECOND`] = 70 GFLOP/s. The demo (`configs/demo.yaml`)
//!   takes 4 min 20 s with its training job on 2 ranks (README) and took 5 min 09 s and 5 min
//!   21 s on 1 rank (two measurements before data-parallel training, the second in the README
//!   of that time): the 49–61 s saved put tiny's PoI + PoG step (batch 16, 32 px; 40 GFLOP
//!   here) at 0.52–0.65 s, 62–77 GFLOP/s. `bench dp` measured bench-tiny's step at 1.98 s
//!   (README; 236 GFLOP here, 119 GFLOP/s): larger layers run closer to the core's peak, so
//!   larger models come out pessimistic on a CPU.
//! - sampling and scoring, [`INFER_FLOP_PER_CORE_SECOND`] = 30 GFLOP/s. The miniature
//!   (`configs/miniature.yaml`) generated at 1.04 s per image with 20 DDIM steps (README table;
//!   30 GFLOP here, 29 GFLOP/s); the FID Inception embedded 2 images in 0.7 s on one thread
//!   when it was brought in (33 GFLOP/s).
//!
//! A data-parallel training job splits its global batch over `world_size` ranks, a core each,
//! and pays [`DATA_PARALLEL_OVERHEAD`] for averaging gradients (`bench dp`: 5–6 % of a 2-rank
//! step).
//!
//! End to end, the model gives the demo's longest chain of jobs 4 min 29 s (measured: 4 min
//! 20 s) and the miniature's jobs 38 min one after another — measured, 41 min 48 s on 2 cores
//! with two jobs at a time: side by side on a 2-core machine the jobs slowed each other about
//! 2×. Read the figures as a guide to within about 2×, not as a promise.
//!
//! Not counted: process start-up and model loading, the frozen encoders' caches (filled once
//! per dataset, then read back), VAE encoding and decoding (a few per cent of SD v1.4
//! sampling), text encoding, checkpoint writes, and waiting for a free device.
//!
//! On another device time scales with the rate it sustains on these networks: a GPU that
//! trains at F TFLOP/s takes 0.07 / F of the training time shown (and one that samples at F
//! TFLOP/s 0.03 / F of the sampling time). No GPU rate has been measured here yet.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::expand::{DetectorSpec, EvalSpec, Job, JobKind, JobPayload, Plan, TrainSpec};
use crate::model_config::{DownBlockType, ModelConfig, PerceptionConfig, UpBlockType};
use crate::trial::{DatasetSpec, DetectorConfig, EvalConfig, FidMode, Placement, PoiKind};

/// Training throughput of one CPU core, FLOP per second (see the module documentation).
pub const TRAIN_FLOP_PER_CORE_SECOND: f64 = 70e9;

/// Sampling and scoring throughput of one CPU core, FLOP per second (see the module
/// documentation).
pub const INFER_FLOP_PER_CORE_SECOND: f64 = 30e9;

/// Extra time of a data-parallel step for averaging gradients, as a fraction of the step
/// (`bench dp`, README: 5–6 % of a 2-rank step on CPU ranks).
pub const DATA_PARALLEL_OVERHEAD: f64 = 0.06;

/// Forward-pass equivalents of one training step per image: the forward pass and a backward
/// pass of about twice its cost.
pub const TRAIN_PASSES: f64 = 3.0;

/// U-Net passes per generated image and DDIM step: the conditional and the unconditional
/// branch of classifier-free guidance (always both; `model/src/diffusion/sampler.rs`).
pub const GUIDANCE_PASSES: u64 = 2;

/// FLOP of the FID Inception (pytorch-fid's Inception-v3 up to pool3) on one 299 × 299 image:
/// 5.7 G multiply-adds (torchvision's figure for Inception-v3, whose layers it shares).
pub const INCEPTION_FORWARD_FLOP: f64 = 11.4e9;

/// Dimensions of the FID Inception's pool3 features, the Gaussians FID compares.
pub const FID_FEATURES: u64 = 2048;

/// Dimensions of the built-in detector's pooled features, the space of `fd_detector` (its
/// widest backbone stage, [`BUILTIN_DETECTOR_WIDTHS`]).
pub const FD_DETECTOR_FEATURES: u64 = 128;

/// Categories of the synthetic shapes dataset: 4 colours × 3 shapes (`model/src/data/shapes.rs`
/// checks it).
pub const SHAPES_CATEGORIES: u64 = 12;

/// Categories of COCO 2017's instance annotations.
pub const COCO_CATEGORIES: u64 = 80;

/// Backbone stage widths of the built-in evaluation detector (`model/src/eval/detector.rs`
/// builds it from these).
pub const BUILTIN_DETECTOR_WIDTHS: [u32; 3] = [32, 64, 128];

/// The PoG head the built-in evaluation detector puts on its backbone (`model/src/eval/detector.rs`
/// builds it from this): FPN width 64, no Enh-Fusion, 2 convs per branch, 3 anchors.
pub fn builtin_detector_head() -> PerceptionConfig {
    PerceptionConfig {
        fpn_channels: 64,
        fusion_dim: 64,
        fusion_depth: 1,
        fusion_heads: 4,
        head_convs: 2,
        anchor_ratios: vec![0.5, 1.0, 2.0],
    }
}

/// Share of the plan's estimated time above which one kind of job is said to dominate it.
const DOMINANT_SHARE: f64 = 0.5;

/// Detector steps per training step from which the detector is said to train far longer.
const DETECTOR_STEPS_RATIO: u64 = 10;

/// FLOP of one U-Net forward pass for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UNetFlop {
    /// The base U-Net.
    pub base: f64,
    /// The grounding layers and the grounding tokenizer (0 without PoI).
    pub grounding: f64,
}

/// Multiply-adds of a diffusers `ResnetBlock2D` on a `side`² map: two 3×3 convolutions and a
/// 1×1 shortcut when the width changes.
fn resnet_macs(cin: f64, cout: f64, side: f64) -> f64 {
    let px = side * side;
    let shortcut = if cin == cout { 0.0 } else { cin * cout * px };
    9.0 * cin * cout * px + 9.0 * cout * cout * px + shortcut
}

/// Multiply-adds of SD's `Transformer2DModel` on `side`² tokens of width `c`: 1×1 projections
/// in and out (2c²), self-attention projections (4c²), cross-attention query and output (2c²),
/// GEGLU feed-forward (8c² + 4c²), attention products, and the cross-attention keys and values
/// of `context_len` caption tokens of width `context_dim`.
fn transformer_macs(c: f64, side: f64, context_len: f64, context_dim: f64) -> f64 {
    let n = side * side;
    20.0 * c * c * n + 2.0 * n * n * c + 2.0 * n * context_len * c + 2.0 * context_len * context_dim * c
}

/// Multiply-adds of one grounding layer on `side`² visual tokens of width `c`, with `objects`
/// grounding tokens of width `token_dim`.
fn grounding_layer_macs(kind: PoiKind, c: f64, side: f64, objects: f64, token_dim: f64) -> f64 {
    let n = side * side;
    match kind {
        // Query and output projections, keys and values of the grounding tokens, the
        // attention products, the gated GEGLU feed-forward.
        PoiKind::Spatiallock => 14.0 * c * c * n + 2.0 * token_dim * c * objects + 2.0 * n * objects * c,
        // The tokens' projection to the visual width, queries of the visual rows, keys and
        // values over [x; g], the output projection, the attention products, the feed-forward.
        PoiKind::Gligen => c * c * (16.0 * n + 2.0 * objects) + token_dim * c * objects + 2.0 * n * (n + objects) * c,
    }
}

/// FLOP of one U-Net forward pass for one image whose U-Net input is `side`² cells (latent
/// cells, or pixels in pixel space), with grounding layers of `grounding.0` in the attention
/// blocks `grounding.1` (`down.2`, `mid`, `up.1`, ...). Layer shapes follow diffusers'
/// `UNet2DConditionModel`; norms, activations and the timestep embedding are left out.
pub fn unet_forward_flop(arch: &ModelConfig, side: u32, grounding: Option<(PoiKind, &[String])>) -> UNetFlop {
    let u = &arch.unet;
    let widths: Vec<f64> = u.block_out_channels.iter().map(|&c| f64::from(c)).collect();
    let levels = widths.len();
    if levels == 0 {
        return UNetFlop {
            base: 0.0,
            grounding: 0.0,
        };
    }
    let context_len = f64::from(arch.text_encoder.max_position_embeddings);
    let context_dim = f64::from(u.cross_attention_dim);
    let objects = f64::from(arch.grounding.max_objects);
    // Closed forms over the layers of a block (no loop over them: a submitted architecture may
    // ask for any number, and this runs when a grid is submitted).
    let layers = f64::from(u.layers_per_block);
    let side_at = |level: usize| f64::from(side >> level.min(31));
    let layer_kind = |block: String| grounding.and_then(|(kind, blocks)| blocks.contains(&block).then_some(kind));

    let mut base = 9.0 * f64::from(u.in_channels) * widths[0] * side_at(0).powi(2);
    let mut ground = 0.0;
    let mut previous = widths[0];
    for (i, block) in u.down_block_types.iter().enumerate().take(levels) {
        let (c, s) = (widths[i], side_at(i));
        let fuser = layer_kind(format!("down.{i}"));
        // The first ResNet changes the width, the others keep it; a transformer after each.
        if u.layers_per_block > 0 {
            base += resnet_macs(previous, c, s) + (layers - 1.0) * resnet_macs(c, c, s);
        }
        if *block == DownBlockType::CrossAttnDownBlock2D {
            base += layers * transformer_macs(c, s, context_len, context_dim);
            if let Some(kind) = fuser {
                ground += layers * grounding_layer_macs(kind, c, s, objects, context_dim);
            }
        }
        previous = c;
        if i + 1 < levels {
            base += 9.0 * c * c * side_at(i + 1).powi(2);
        }
    }
    if u.mid_block_type.is_some() {
        let (c, s) = (widths[levels - 1], side_at(levels - 1));
        base += 2.0 * resnet_macs(c, c, s) + transformer_macs(c, s, context_len, context_dim);
        if let Some(kind) = layer_kind("mid".to_string()) {
            ground += grounding_layer_macs(kind, c, s, objects, context_dim);
        }
    }
    let mut previous_out = widths[levels - 1];
    for (j, block) in u.up_block_types.iter().enumerate().take(levels) {
        let level = levels - 1 - j;
        let (out, s) = (widths[level], side_at(level));
        // The skip connection of the block's last layer comes from the level above.
        let input = widths[level.saturating_sub(1)];
        let fuser = layer_kind(format!("up.{j}"));
        // layers + 1 ResNets, each on the previous output concatenated with a skip connection:
        // the first takes the block below's output, the last the skip from the level above.
        if u.layers_per_block == 0 {
            base += resnet_macs(previous_out + input, out, s);
        } else {
            base += resnet_macs(previous_out + out, out, s)
                + (layers - 1.0) * resnet_macs(out + out, out, s)
                + resnet_macs(out + input, out, s);
        }
        if *block == UpBlockType::CrossAttnUpBlock2D {
            base += (layers + 1.0) * transformer_macs(out, s, context_len, context_dim);
            if let Some(kind) = fuser {
                ground += (layers + 1.0) * grounding_layer_macs(kind, out, s, objects, context_dim);
            }
        }
        previous_out = out;
        if j + 1 < levels {
            base += 9.0 * out * out * (2.0 * s).powi(2);
        }
    }
    base += 9.0 * widths[0] * f64::from(u.out_channels) * side_at(0).powi(2);
    if grounding.is_some() {
        // The grounding tokenizer: (phrase + Fourier box embedding) → hidden → hidden → tokens.
        let g = &arch.grounding;
        let (hidden, phrase) = (f64::from(g.mlp_hidden), f64::from(arch.text_encoder.hidden_size));
        let position = 8.0 * f64::from(g.fourier_freqs);
        ground += objects * ((phrase + position) * hidden + hidden * hidden + hidden * context_dim);
    }
    UNetFlop {
        base: 2.0 * base,
        grounding: 2.0 * ground,
    }
}

/// Multiply-adds of a PoG head over feature maps of `channels[i]` channels and `sides[i]`²
/// cells: FPN laterals and output convs, Enh-Fusion (projections and a pre-LN transformer over
/// every cell of every level), and the classification and regression branches shared by the
/// levels.
fn perception_head_macs(pc: &PerceptionConfig, channels: &[f64], sides: &[f64], classes: f64, enh_fusion: bool) -> f64 {
    let width = f64::from(pc.fpn_channels);
    let anchors = pc.anchor_ratios.len() as f64;
    let cells: f64 = sides.iter().map(|s| s * s).sum();
    let mut macs: f64 = channels.iter().zip(sides).map(|(c, s)| c * width * s * s).sum::<f64>()
        + sides.iter().map(|s| 9.0 * width * width * s * s).sum::<f64>();
    if enh_fusion {
        let dim = f64::from(pc.fusion_dim);
        macs += 2.0 * cells * width * dim
            + f64::from(pc.fusion_depth) * (12.0 * dim * dim * cells + 2.0 * cells * cells * dim);
    }
    macs += 2.0 * f64::from(pc.head_convs) * 9.0 * width * width * cells;
    macs += 9.0 * width * anchors * (classes + 4.0) * cells;
    macs
}

/// FLOP of the PoG head for one image whose U-Net input is `side`² cells, predicting `classes`
/// categories (its input: the U-Net's down-block outputs, as `model/src/pipeline.rs` wires it).
pub fn pog_forward_flop(arch: &ModelConfig, side: u32, classes: u64, enh_fusion: bool) -> f64 {
    let levels = arch.unet.block_out_channels.len();
    let channels: Vec<f64> = arch.unet.block_out_channels.iter().map(|&c| f64::from(c)).collect();
    let sides: Vec<f64> = (0..levels)
        .map(|i| f64::from(side >> (i + 1).min(levels.saturating_sub(1)).min(31)))
        .collect();
    2.0 * perception_head_macs(&arch.perception, &channels, &sides, classes as f64, enh_fusion)
}

/// FLOP of the built-in evaluation detector on one `resolution`² image with `classes`
/// categories: a stem (stride `resolution / 64`, at least 1), three stride-2 stages of
/// [`BUILTIN_DETECTOR_WIDTHS`], and [`builtin_detector_head`] on them.
pub fn detector_forward_flop(resolution: u32, classes: u64) -> f64 {
    let stride = (resolution / 64).max(1);
    let mut side = f64::from(resolution / stride);
    let mut macs = 9.0 * 3.0 * f64::from(BUILTIN_DETECTOR_WIDTHS[0]) * side * side;
    let mut previous = f64::from(BUILTIN_DETECTOR_WIDTHS[0]);
    let mut sides = Vec::new();
    for &w in &BUILTIN_DETECTOR_WIDTHS {
        let w = f64::from(w);
        side = (side / 2.0).floor();
        macs += 9.0 * previous * w * side * side + 9.0 * w * w * side * side;
        previous = w;
        sides.push(side);
    }
    let channels: Vec<f64> = BUILTIN_DETECTOR_WIDTHS.iter().map(|&w| f64::from(w)).collect();
    2.0 * (macs + perception_head_macs(&builtin_detector_head(), &channels, &sides, classes as f64, false))
}

/// Images a dataset holds, when the spec says (synthetic data); file-based datasets are
/// counted only when their files are read.
pub fn dataset_size(d: &DatasetSpec) -> Option<u64> {
    match d {
        DatasetSpec::Shapes { count, .. } => Some(u64::from(*count)),
        _ => None,
    }
}

/// Categories a dataset has, when known without reading it.
pub fn dataset_categories(d: &DatasetSpec) -> Option<u64> {
    match d {
        DatasetSpec::Shapes { .. } => Some(SHAPES_CATEGORIES),
        DatasetSpec::Coco { .. } => Some(COCO_CATEGORIES),
        _ => None,
    }
}

/// Layouts an evaluation samples: the validation set's size capped by `eval.max_layouts`, and
/// whether that is exact (`false`: a file-based set capped by `max_layouts`, an upper bound).
/// `None` when neither is known before the files are read.
pub fn evaluation_layouts(val: &DatasetSpec, eval: &EvalConfig) -> Option<(u64, bool)> {
    let cap = eval.max_layouts.map(u64::from);
    match (dataset_size(val), cap) {
        (Some(n), Some(m)) => Some((n.min(m), true)),
        (Some(n), None) => Some((n, true)),
        (None, Some(m)) => Some((m, false)),
        (None, None) => None,
    }
}

/// What one job costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCost {
    /// The job's id.
    pub job: String,
    /// Its kind.
    pub kind: JobKind,
    /// Ranks (devices) it runs on.
    pub ranks: u32,
    /// Optimiser steps (pretrain, train, train-detector; augment-detector: the augmented
    /// detector's); 0 for other kinds.
    pub steps: u64,
    /// Global batch size of a training step (images); 0 for other kinds.
    pub batch_size: u32,
    /// Validation layouts an evaluation samples (`null`: unknown before the dataset's files are
    /// read; for a file-based set capped by `eval.max_layouts`, that cap, an upper bound).
    pub layouts: Option<u64>,
    /// Images an evaluation generates: layouts × `eval.images_per_layout`; an augmentation's
    /// synthetic images.
    pub images_generated: Option<u64>,
    /// DDIM steps per generated image (evaluations; 0 for other kinds).
    pub sampler_steps: u32,
    /// U-Net passes over one image: steps × batch for training (each a forward and a backward
    /// pass), images × sampler steps × 2 (guidance) for evaluations; 0 for detector and noop
    /// jobs.
    pub unet_image_passes: Option<u64>,
    /// Floating-point operations, in TFLOP (10¹² FLOP).
    pub tflop: Option<f64>,
    /// Estimated wall-clock seconds on its ranks, one CPU core each (module documentation).
    pub seconds: Option<f64>,
}

fn train_grounding(t: &TrainSpec) -> Option<(PoiKind, Vec<String>)> {
    if !t.poi.enabled {
        return None;
    }
    let blocks = match &t.poi.placement {
        Some(Placement::Blocks(b)) => b.clone(),
        _ => t.arch.attention_blocks(),
    };
    Some((t.poi.kind, blocks))
}

/// The U-Net input side for `resolution`-pixel images.
fn unet_side(arch: &ModelConfig, resolution: u32) -> u32 {
    resolution / arch.vae_factor().max(1)
}

fn train_cost(t: &TrainSpec) -> (u64, f64, f64) {
    let side = unet_side(&t.arch, t.resolution);
    let grounding = train_grounding(t);
    let unet = unet_forward_flop(&t.arch, side, grounding.as_ref().map(|(k, b)| (*k, b.as_slice())));
    let classes = dataset_categories(&t.data).unwrap_or(COCO_CATEGORIES);
    let pog = if t.pog.enabled {
        pog_forward_flop(&t.arch, side, classes, t.pog.enh_fusion)
    } else {
        0.0
    };
    let passes = t.training.steps.saturating_mul(u64::from(t.training.batch_size));
    let flop = passes as f64 * TRAIN_PASSES * (unet.base + unet.grounding + pog);
    let ranks = f64::from(t.world_size.max(1));
    let overhead = if t.world_size > 1 {
        1.0 + DATA_PARALLEL_OVERHEAD
    } else {
        1.0
    };
    (passes, flop, flop / TRAIN_FLOP_PER_CORE_SECOND / ranks * overhead)
}

/// (U-Net passes, FLOP) of generating `images` images with model `t` under `eval`'s sampler.
fn sampling_cost(t: &TrainSpec, eval: &EvalConfig, images: u64) -> (u64, f64) {
    let passes = images
        .saturating_mul(u64::from(eval.ddim_steps))
        .saturating_mul(GUIDANCE_PASSES);
    let grounding = train_grounding(t);
    let unet = unet_forward_flop(
        &t.arch,
        unet_side(&t.arch, t.resolution),
        grounding.as_ref().map(|(k, b)| (*k, b.as_slice())),
    );
    let fraction = eval.grounding_fraction.clamp(0.0, 1.0);
    (passes, passes as f64 * (unet.base + fraction * unet.grounding))
}

/// FLOP of training the built-in detector as `d` says.
fn detector_training_flop(d: &DetectorSpec) -> f64 {
    let classes = dataset_categories(&d.data).unwrap_or(COCO_CATEGORIES);
    let images = d.steps.saturating_mul(u64::from(d.batch_size));
    images as f64 * TRAIN_PASSES * detector_forward_flop(d.resolution, classes)
}

/// (images generated, U-Net passes, FLOP) of an evaluation of `layouts` layouts.
fn evaluation_cost(e: &EvalSpec, layouts: u64) -> (u64, u64, f64) {
    let t = &e.model;
    let images = layouts.saturating_mul(u64::from(e.eval.images_per_layout.max(1)));
    let (passes, sampling) = sampling_cost(t, &e.eval, images);
    let classes = dataset_categories(&e.val).unwrap_or(COCO_CATEGORIES);
    let detector = detector_forward_flop(t.resolution, classes);
    let per_feature = match e.eval.fid {
        FidMode::Detector => detector,
        FidMode::Auto | FidMode::Inception => INCEPTION_FORWARD_FLOP,
    };
    let scoring = images as f64 * detector + (layouts as f64 + images as f64) * per_feature;
    (images, passes, sampling + scoring)
}

/// The cost of one job (module documentation).
pub fn job_cost(job: &Job) -> JobCost {
    let mut cost = JobCost {
        job: job.id.clone(),
        kind: job.kind,
        ranks: job.payload.ranks(),
        steps: 0,
        batch_size: 0,
        layouts: None,
        images_generated: None,
        sampler_steps: 0,
        unet_image_passes: Some(0),
        tflop: Some(0.0),
        seconds: Some(0.0),
    };
    match &job.payload {
        JobPayload::Pretrain(p) => {
            let side = unet_side(&p.arch, p.resolution);
            let unet = unet_forward_flop(&p.arch, side, None);
            let passes = p.pretrain.steps.saturating_mul(u64::from(p.pretrain.batch_size));
            let flop = passes as f64 * TRAIN_PASSES * unet.base;
            cost.steps = p.pretrain.steps;
            cost.batch_size = p.pretrain.batch_size;
            cost.unet_image_passes = Some(passes);
            cost.tflop = Some(flop / 1e12);
            cost.seconds = Some(flop / TRAIN_FLOP_PER_CORE_SECOND);
        }
        JobPayload::Train(t) => {
            let (passes, flop, seconds) = train_cost(t);
            cost.steps = t.training.steps;
            cost.batch_size = t.training.batch_size;
            cost.unet_image_passes = Some(passes);
            cost.tflop = Some(flop / 1e12);
            cost.seconds = Some(seconds);
        }
        JobPayload::TrainDetector(d) => {
            let flop = detector_training_flop(d);
            cost.steps = d.steps;
            cost.batch_size = d.batch_size;
            cost.tflop = Some(flop / 1e12);
            cost.seconds = Some(flop / TRAIN_FLOP_PER_CORE_SECOND);
        }
        JobPayload::Evaluate(e) => {
            cost.sampler_steps = e.eval.ddim_steps;
            match evaluation_layouts(&e.val, &e.eval) {
                Some((layouts, _)) => {
                    let (images, passes, flop) = evaluation_cost(e, layouts);
                    cost.layouts = Some(layouts);
                    cost.images_generated = Some(images);
                    cost.unet_image_passes = Some(passes);
                    cost.tflop = Some(flop / 1e12);
                    cost.seconds = Some(flop / INFER_FLOP_PER_CORE_SECOND);
                }
                None => {
                    cost.unet_image_passes = None;
                    cost.tflop = None;
                    cost.seconds = None;
                }
            }
        }
        JobPayload::AugmentDetector(a) => {
            let images = u64::from(a.images);
            let (passes, sampling) = sampling_cost(&a.model, &a.eval, images);
            let training = detector_training_flop(&a.detector);
            // Both detectors look at every validation image once.
            let classes = dataset_categories(&a.val).unwrap_or(COCO_CATEGORIES);
            let scoring = dataset_size(&a.val)
                .map(|n| 2.0 * n as f64 * detector_forward_flop(a.model.resolution, classes))
                .unwrap_or(0.0);
            cost.steps = a.detector.steps;
            cost.batch_size = a.detector.batch_size;
            cost.sampler_steps = a.eval.ddim_steps;
            cost.images_generated = Some(images);
            cost.unet_image_passes = Some(passes);
            cost.tflop = Some((sampling + training + scoring) / 1e12);
            cost.seconds =
                Some((sampling + scoring) / INFER_FLOP_PER_CORE_SECOND + training / TRAIN_FLOP_PER_CORE_SECOND);
        }
        JobPayload::Noop(n) => {
            cost.seconds = (!n.noop.hang).then_some(n.noop.sleep_ms as f64 / 1000.0);
        }
    }
    cost
}

/// The rates and exclusions an estimate rests on, for readers of `plan --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostBasis {
    /// What the seconds are measured in.
    pub device: String,
    /// Training throughput assumed, GFLOP/s per core.
    pub train_gflop_per_second: f64,
    /// Sampling and scoring throughput assumed, GFLOP/s per core.
    pub infer_gflop_per_second: f64,
    /// Extra time of a data-parallel step, fraction.
    pub data_parallel_overhead: f64,
    /// Where the rates come from.
    pub calibration: String,
    /// How the figures scale to other devices.
    pub scaling: String,
    /// What the estimate leaves out.
    pub not_counted: String,
}

impl CostBasis {
    /// The model of this module.
    pub fn current() -> Self {
        Self {
            device: "one CPU core (one libtorch thread) per rank".into(),
            train_gflop_per_second: TRAIN_FLOP_PER_CORE_SECOND / 1e9,
            infer_gflop_per_second: INFER_FLOP_PER_CORE_SECOND / 1e9,
            data_parallel_overhead: DATA_PARALLEL_OVERHEAD,
            calibration: "rates measured with the tiny model on a 2-core machine: the demo's time with its \
                          training job on 1 rank (5 min 09 s to 5 min 21 s) and on 2 (4 min 20 s), the \
                          miniature's 1.04 s per image at 20 DDIM steps; the demo's estimate is within 4 % of \
                          its measured time, the miniature ran about 2× its estimate with two jobs side by side \
                          on 2 cores"
                .into(),
            scaling: "time scales with each job's FLOP: a device sustaining F TFLOP/s takes about 0.07/F of the \
                      training time and 0.03/F of the sampling time shown (no GPU rate measured here yet); \
                      larger models run closer to a core's peak, so CPU figures for them are pessimistic"
                .into(),
            not_counted: "start-up and model loading, encoder caches filled on first use, VAE encoding and \
                          decoding, text encoding, checkpoint writes, waiting for a device"
                .into(),
        }
    }
}

/// What a whole plan costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCost {
    /// Every job, in the plan's order.
    pub jobs: Vec<JobCost>,
    /// Seconds if the jobs ran one after another (Σ of the jobs' estimates that are known).
    pub sequential_seconds: f64,
    /// CPU-core seconds of work (Σ seconds × ranks).
    pub core_seconds: f64,
    /// The longest chain of dependent jobs: the least wall-clock time, with every job on cores
    /// of its own.
    pub critical_path_seconds: f64,
    /// Floating-point operations of the jobs whose cost is known, TFLOP.
    pub tflop: f64,
    /// Jobs whose cost is not known before they run (evaluations of file-based datasets
    /// without `eval.max_layouts`), left out of the sums.
    pub unknown: Vec<String>,
    /// The rates and exclusions behind the figures.
    pub basis: CostBasis,
}

/// The costs of every job of `plan` and their sums.
pub fn plan_cost(plan: &Plan) -> PlanCost {
    let jobs: Vec<JobCost> = plan.jobs.iter().map(job_cost).collect();
    let mut finish: HashMap<&str, f64> = HashMap::new();
    for (job, cost) in plan.jobs.iter().zip(&jobs) {
        let start = job
            .depends_on
            .iter()
            .filter_map(|d| finish.get(d.as_str()).copied())
            .fold(0.0, f64::max);
        finish.insert(job.id.as_str(), start + cost.seconds.unwrap_or(0.0));
    }
    PlanCost {
        sequential_seconds: jobs.iter().filter_map(|c| c.seconds).sum(),
        core_seconds: jobs
            .iter()
            .filter_map(|c| c.seconds.map(|s| s * f64::from(c.ranks.max(1))))
            .sum(),
        critical_path_seconds: finish.values().copied().fold(0.0, f64::max),
        tflop: jobs.iter().filter_map(|c| c.tflop).sum(),
        unknown: jobs
            .iter()
            .filter(|c| c.seconds.is_none())
            .map(|c| c.job.clone())
            .collect(),
        basis: CostBasis::current(),
        jobs,
    }
}

/// `42s`, `4m 05s`, `3h 12m`, `12.3 days`, `2.1 years`.
pub fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s < 48 * 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if seconds < 365.0 * 86400.0 {
        format!("{:.1} days", seconds / 86400.0)
    } else {
        format!("{:.1} years", seconds / (365.0 * 86400.0))
    }
}

/// Warnings for settings that cost a lot or mean little, one per distinct finding (with the
/// number of jobs it concerns when more than one): Fréchet distances from fewer images than
/// their feature dimensions, mAP from fewer layouts than categories, an evaluation detector
/// trained far longer than the model, and evaluations dominating the plan's time.
/// `costs` are [`job_cost`] of `jobs`, in the same order.
pub fn cost_warnings(jobs: &[Job], costs: &[JobCost]) -> Vec<SpecError> {
    let mut found: IndexMap<(String, String), usize> = IndexMap::new();
    let mut add = |path: &str, message: String| *found.entry((path.to_string(), message)).or_default() += 1;
    let total: f64 = costs.iter().filter_map(|c| c.seconds).sum();
    let share = |kind: JobKind| -> f64 {
        let of_kind: f64 = costs.iter().filter(|c| c.kind == kind).filter_map(|c| c.seconds).sum();
        if total > 0.0 {
            of_kind / total
        } else {
            0.0
        }
    };

    for job in jobs {
        let JobPayload::Evaluate(e) = &job.payload else {
            continue;
        };
        let Some((layouts, exact)) = evaluation_layouts(&e.val, &e.eval) else {
            continue;
        };
        let images = layouts.saturating_mul(u64::from(e.eval.images_per_layout.max(1)));
        let path = if e
            .eval
            .max_layouts
            .is_some_and(|m| dataset_size(&e.val).is_none_or(|n| u64::from(m) < n))
        {
            "eval.max_layouts"
        } else {
            "data.val"
        };
        let at_most = if exact { "" } else { "at most " };
        let label = e.val.label();
        let distance = match (e.eval.fid, &e.eval.detector) {
            (FidMode::Inception, _) => Some(("FID", FID_FEATURES, "Inception pool3 features")),
            (FidMode::Auto, _) => Some((
                "FID",
                FID_FEATURES,
                "Inception pool3 features (without the Inception weights installed, `fid: auto` computes \
                 fd_detector over 128 pooled detector features instead)",
            )),
            (FidMode::Detector, DetectorConfig::Builtin { .. }) => {
                Some(("fd_detector", FD_DETECTOR_FEATURES, "pooled detector features"))
            }
            (FidMode::Detector, DetectorConfig::Torchscript { .. }) => None,
        };
        if let Some((name, dims, what)) = distance {
            if layouts < dims {
                add(
                    path,
                    format!(
                        "{name} on {label} from {at_most}{layouts} real and {images} generated images, fewer than the \
                         {dims} dimensions of its {what}: the covariance estimates are singular (rank at most {}) \
                         and {name} is biased upward at this size, so it compares only with values over the same \
                         number of images (a full-rank estimate needs more than {dims} images per side)",
                        layouts.saturating_sub(1)
                    ),
                );
            }
        }
        if let Some(categories) = dataset_categories(&e.val).filter(|k| layouts < *k) {
            add(
                path,
                format!(
                    "mAP on {label} from {at_most}{layouts} layouts, fewer than its {categories} categories: each \
                     category's AP rests on a few objects or none, so mAP, their mean, says little at this size"
                ),
            );
        }
    }

    let default_detector_steps = match EvalConfig::default().detector {
        DetectorConfig::Builtin { steps, .. } => Some(steps),
        DetectorConfig::Torchscript { .. } => None,
    };
    for job in jobs {
        let JobPayload::TrainDetector(d) = &job.payload else {
            continue;
        };
        // The longest training among the trials this detector serves.
        let training = jobs
            .iter()
            .filter(|j| j.trials.iter().any(|t| job.trials.contains(t)))
            .filter_map(|j| match &j.payload {
                JobPayload::Train(t) => Some(t.training.steps),
                _ => None,
            })
            .max();
        let Some(training) = training.filter(|t| d.steps >= DETECTOR_STEPS_RATIO.saturating_mul((*t).max(1))) else {
            continue;
        };
        let default = if Some(d.steps) == default_detector_steps {
            " (the default of eval.detector.steps)"
        } else {
            ""
        };
        add(
            "eval.detector.steps",
            format!(
                "the evaluation detector trains for {} steps{default}, {}× the {training} training steps, \
                 {:.0} % of the plan's estimated time; fewer steps give a quicker look, but a detector trained \
                 less finds fewer objects, and mAP then measures the detector as much as the model",
                d.steps,
                d.steps / training.max(1),
                100.0 * share(JobKind::TrainDetector)
            ),
        );
    }

    let evaluation_share = share(JobKind::Evaluate);
    if evaluation_share > DOMINANT_SHARE {
        let evaluations: Vec<&JobCost> = costs
            .iter()
            .filter(|c| c.kind == JobKind::Evaluate && c.seconds.is_some())
            .collect();
        let images: u64 = evaluations.iter().filter_map(|c| c.images_generated).sum();
        let sampling: u64 = evaluations.iter().filter_map(|c| c.unet_image_passes).sum();
        let training: u64 = costs
            .iter()
            .filter(|c| matches!(c.kind, JobKind::Pretrain | JobKind::Train))
            .filter_map(|c| c.unet_image_passes)
            .sum();
        let steps_min = evaluations.iter().map(|c| c.sampler_steps).min().unwrap_or(0);
        let steps_max = evaluations.iter().map(|c| c.sampler_steps).max().unwrap_or(0);
        let steps = if steps_min == steps_max {
            format!("{steps_min}")
        } else {
            format!("{steps_min}–{steps_max}")
        };
        add(
            "eval.ddim_steps",
            format!(
                "sampling and scoring take {:.0} % of the plan's estimated time: {} evaluation job(s) generate \
                 {images} images with {steps} DDIM steps each, × {GUIDANCE_PASSES} for guidance = {sampling} U-Net \
                 passes, against {training} image passes in training; for a quicker look lower eval.ddim_steps \
                 or set eval.max_layouts",
                100.0 * evaluation_share,
                evaluations.len()
            ),
        );
    }

    found
        .into_iter()
        .map(|((path, message), n)| {
            if n > 1 {
                SpecError::new(path, format!("{message} (in {n} jobs)"))
            } else {
                SpecError::new(path, message)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expand::expand;
    use crate::spec::{ExperimentSpec, SpecFormat};
    use crate::trial::builtin_model;

    fn plan(extra_base: &str) -> Plan {
        let text = format!(
            r#"
name: t
base:
  model:
    arch: tiny
    base: {{pretrain: {{steps: 100, batch_size: 16}}}}
  data:
    train: {{kind: shapes, split: train, count: 64}}
    val: [{{kind: shapes, split: val, count: 32}}]
    resolution: 32
{extra_base}
"#
        );
        let spec = ExperimentSpec::parse(&text, SpecFormat::Yaml).expect("spec parses");
        expand(&spec).expect("spec expands")
    }

    fn cost_of(plan: &Plan, kind: JobKind) -> JobCost {
        let job = plan.jobs.iter().find(|j| j.kind == kind).expect("a job of that kind");
        job_cost(job)
    }

    #[test]
    fn sd14_forward_pass_is_the_usual_figure() {
        let sd14 = builtin_model("sd14").expect("sd14");
        let flop = unet_forward_flop(&sd14, 64, None);
        // SD v1.x's U-Net at 64×64 latents is quoted at about 0.8 TFLOP per pass.
        assert!((0.75e12..0.85e12).contains(&flop.base), "{flop:?}");
        assert_eq!(flop.grounding, 0.0);
        let blocks = ["down.2".to_string(), "up.1".to_string()];
        let poi = unet_forward_flop(&sd14, 64, Some((PoiKind::Spatiallock, blocks.as_slice())));
        assert_eq!(poi.base, flop.base);
        assert!(poi.grounding > 0.0 && poi.grounding < 0.1 * poi.base, "{poi:?}");
        // GLIGEN's layers in every attention block cost more than SpatialLock's two blocks.
        let all = sd14.attention_blocks();
        let gligen = unet_forward_flop(&sd14, 64, Some((PoiKind::Gligen, all.as_slice())));
        assert!(gligen.grounding > poi.grounding, "{gligen:?} vs {poi:?}");
    }

    #[test]
    fn training_time_is_steps_times_batch_over_the_rate_split_over_ranks() {
        let one = plan("  training: {steps: 10, batch_size: 16}\n");
        let c = cost_of(&one, JobKind::Train);
        assert_eq!((c.steps, c.batch_size, c.unet_image_passes), (10, 16, Some(160)));
        let (tflop, seconds) = (c.tflop.expect("known"), c.seconds.expect("known"));
        assert!((seconds - tflop * 1e12 / TRAIN_FLOP_PER_CORE_SECOND).abs() < 1e-9);
        let double = cost_of(&plan("  training: {steps: 20, batch_size: 16}\n"), JobKind::Train);
        assert!((double.seconds.expect("known") - 2.0 * seconds).abs() < 1e-9);
        let ranks = cost_of(
            &plan("  training: {steps: 10, batch_size: 16}\n  world_size: 2\n"),
            JobKind::Train,
        );
        assert_eq!(ranks.ranks, 2);
        let want = seconds / 2.0 * (1.0 + DATA_PARALLEL_OVERHEAD);
        assert!((ranks.seconds.expect("known") - want).abs() < 1e-9);
    }

    #[test]
    fn evaluations_count_layouts_images_and_sampler_steps() {
        let p = plan("  eval: {ddim_steps: 10, images_per_layout: 2, max_layouts: 8}\n");
        let c = cost_of(&p, JobKind::Evaluate);
        assert_eq!(c.layouts, Some(8), "capped by max_layouts");
        assert_eq!(c.images_generated, Some(16));
        assert_eq!(c.sampler_steps, 10);
        assert_eq!(c.unet_image_passes, Some(16 * 10 * GUIDANCE_PASSES));
        // A file-based validation set without max_layouts cannot be counted before it is read.
        let mut job = plan("")
            .jobs
            .into_iter()
            .find(|j| j.kind == JobKind::Evaluate)
            .expect("an evaluation");
        if let JobPayload::Evaluate(e) = &mut job.payload {
            e.val = DatasetSpec::Coco {
                images: "coco/val2017".into(),
                instances: "instances_val2017.json".into(),
                captions: None,
            };
        }
        let c = job_cost(&job);
        assert_eq!((c.layouts, c.seconds), (None, None));
    }

    #[test]
    fn the_critical_path_follows_dependencies() {
        let p = plan("  training: {steps: 10, batch_size: 16}\n");
        let cost = plan_cost(&p);
        let seconds = |kind: JobKind| cost_of(&p, kind).seconds.expect("known");
        // pretrain → train → evaluate, the detector beside them.
        let chain = seconds(JobKind::Pretrain) + seconds(JobKind::Train) + seconds(JobKind::Evaluate);
        let want = chain.max(seconds(JobKind::TrainDetector) + seconds(JobKind::Evaluate));
        assert!((cost.critical_path_seconds - want).abs() < 1e-9);
        let sum: f64 = cost.jobs.iter().filter_map(|c| c.seconds).sum();
        assert!((cost.sequential_seconds - sum).abs() < 1e-9);
        assert!(cost.critical_path_seconds < cost.sequential_seconds);
        assert!(cost.unknown.is_empty());
    }

    #[test]
    fn a_tiny_training_with_default_evaluation_is_warned_about() {
        // The issue's grid: 5 training steps, the default detector (2000 steps) and 50 DDIM steps.
        let p = plan("  training: {steps: 5, batch_size: 16}\n");
        let text: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        let has = |needle: &str| text.iter().any(|w| w.contains(needle));
        assert!(
            has("eval.detector.steps: the evaluation detector trains for 2000 steps (the default"),
            "{text:#?}"
        );
        assert!(has("400× the 5 training steps"), "{text:#?}");
        assert!(
            has("data.val: FID on shapes/val from 32 real and 32 generated images, fewer than the 2048 dimensions"),
            "{text:#?}"
        );
        // 32 layouts cover shapes' 12 categories.
        assert!(!has("categories"), "{text:#?}");
    }

    #[test]
    fn few_layouts_are_warned_about() {
        let p = plan("  eval: {max_layouts: 8, fid: detector}\n");
        let text: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        let has = |needle: &str| text.iter().any(|w| w.contains(needle));
        assert!(
            has("eval.max_layouts: mAP on shapes/val from 8 layouts, fewer than its 12 categories"),
            "{text:#?}"
        );
        assert!(
            has("eval.max_layouts: fd_detector on shapes/val from 8 real and 8 generated images, fewer than the 128"),
            "{text:#?}"
        );
    }

    #[test]
    fn dominant_sampling_is_warned_about() {
        let p = plan("  training: {steps: 2}\n  eval: {ddim_steps: 200, detector: {kind: builtin, steps: 1}}\n");
        let text: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        let has = |needle: &str| text.iter().any(|w| w.contains(needle));
        assert!(has("eval.ddim_steps: sampling and scoring take"), "{text:#?}");
        assert!(
            has("1 evaluation job(s) generate 32 images with 200 DDIM steps each"),
            "{text:#?}"
        );
        assert!(!has("evaluation detector trains"), "{text:#?}");
    }

    #[test]
    fn enough_images_raise_no_distance_warning() {
        let mut p = plan("  eval: {fid: detector}\n");
        let distance_warned = |p: &Plan| -> bool {
            let costs: Vec<JobCost> = p.jobs.iter().map(job_cost).collect();
            cost_warnings(&p.jobs, &costs)
                .iter()
                .any(|w| w.message.contains("fd_detector"))
        };
        assert!(distance_warned(&p), "32 layouts, 128 dimensions");
        for job in &mut p.jobs {
            if let JobPayload::Evaluate(e) = &mut job.payload {
                e.val = DatasetSpec::Shapes {
                    split: crate::trial::Split::Val,
                    count: 200,
                    seed: 0,
                    variant: Default::default(),
                };
            }
        }
        assert!(!distance_warned(&p), "200 layouts, 128 dimensions");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(245.0), "4m 05s");
        assert_eq!(format_duration(3.0 * 3600.0 + 12.0 * 60.0), "3h 12m");
        assert_eq!(format_duration(12.3 * 86400.0), "12.3 days");
        assert_eq!(format_duration(2.1 * 365.0 * 86400.0), "2.1 years");
        assert_eq!(format_duration(f64::NAN), "?");
    }
}
