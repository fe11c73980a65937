//! The evaluation pipeline of one (model, validation set): generate an image per layout (or k),
//! detect objects in them, score the detections against the input layouts (COCO mAP, and per
//! object: grounding accuracy, mean IoU, category recall — [`super::grounding`]), measure
//! fidelity against the real validation images (FID with the Inception network when installed,
//! else the Fréchet distance in the evaluation detector's feature space, reported as
//! `fd_detector`, never as FID), time generation, and write `results.json`, `detections.json`
//! and the pictures: a `samples.png` grid and a `strip.png` row of the first layouts, each image
//! upscaled with its input boxes (green) and detections (red) named, and its caption.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Tensor};

use spatiallock_protocol::trial::{EvalConfig, FidMode};

use super::detector::{Detected, Detector, NmsSettings, ScriptedDetector};
use super::frechet::{frechet_distance, StatsAccumulator};
use super::grounding::{grounding_scores, MIN_SCORE};
use super::inception::FidInception;
use super::pipeline::{detections_to_coco, score, LayoutBoxes};
use crate::data::rng::SplitMix64;
use crate::data::{Dataset, Sample};
use crate::diffusion::sampler::SampleSettings;
use crate::error::{to_json, to_json_text, ModelError};
use crate::generate::{sample, Layout};
use crate::hooks::Hooks;
use crate::image_io::{save_cells, Cell, LabelledBox, DETECTED_COLOUR, INPUT_COLOUR};
use crate::layout::JobDir;
use crate::pipeline::SpatialLockModel;

/// The detector scoring generated images.
pub enum EvalDetector {
    /// The built-in detector.
    Builtin(Box<Detector>),
    /// A TorchScript detector.
    Scripted(ScriptedDetector),
}

impl EvalDetector {
    /// Detections for images in [-1, 1].
    pub fn detect(&self, images: &Tensor, s: NmsSettings) -> Result<Vec<Vec<Detected>>, ModelError> {
        match self {
            EvalDetector::Builtin(d) => d.detect(images, s),
            EvalDetector::Scripted(d) => d.detect(images, s),
        }
    }
}

/// What an evaluation reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EvalResults {
    /// COCO mAP@[.5:.95] in percent (the paper's unit).
    pub map: f64,
    /// AP50, percent.
    pub ap50: f64,
    /// AP75, percent.
    pub ap75: f64,
    /// Percent of input boxes matched by a detection (score ≥ 0.3) of their category at IoU ≥ 0.5,
    /// each image against its own layout ([`super::grounding`]); `None` without input boxes (and in results
    /// written before it existed).
    #[serde(default)]
    pub grounding_accuracy: Option<f64>,
    /// Mean IoU (fraction 0–1) of the matched pairs of `grounding_accuracy`; `None` when nothing
    /// matched.
    #[serde(default)]
    pub mean_iou: Option<f64>,
    /// Percent of input objects whose category is detected anywhere in their image (location
    /// ignored): the drawing quality apart from placement; `None` without input boxes.
    #[serde(default)]
    pub category_recall: Option<f64>,
    /// All 12 COCO statistics (fractions, −1 undefined).
    pub coco_stats: [f64; 12],
    /// FID with the Inception network, when it was used.
    pub fid: Option<f64>,
    /// Fréchet distance in the built-in detector's feature space, when FID was not available.
    pub fd_detector: Option<f64>,
    /// Mean generation seconds per image.
    pub inference_s: f64,
    /// Images generated.
    pub images: usize,
    /// Validation layouts used.
    pub layouts: usize,
}

/// Images in `samples.png` (the first ones generated).
const GRID_IMAGES: usize = 16;
/// Layouts in `strip.png` (the first ones of the validation set, one image each).
const STRIP_LAYOUTS: usize = 4;

/// What a picture shows on and under a generated image: the input boxes with their names, the
/// detections with category and score (boxes in pixels of a `resolution`-pixel image), the caption.
fn picture_cell(s: &Sample, dets: &[Detected], categories: &[String], resolution: f32) -> Cell {
    let mut boxes: Vec<LabelledBox> = s
        .boxes
        .iter()
        .enumerate()
        .map(|(j, b)| LabelledBox {
            bbox: *b,
            colour: INPUT_COLOUR,
            label: s.phrases.get(j).cloned().unwrap_or_default(),
        })
        .collect();
    boxes.extend(dets.iter().filter(|d| d.score >= MIN_SCORE).map(|d| {
        let name = usize::try_from(d.label)
            .ok()
            .and_then(|l| categories.get(l))
            .map_or_else(|| format!("#{}", d.label), Clone::clone);
        LabelledBox {
            bbox: d.bbox.map(|v| v / resolution),
            colour: DETECTED_COLOUR,
            label: format!("{name} {:.2}", d.score),
        }
    }));
    Cell {
        boxes,
        caption: s.caption.clone(),
    }
}

fn to01(x: &Tensor) -> Tensor {
    (x + 1.0) / 2.0
}

/// Runs the pipeline and writes its files into the job folder `out` ([`JobDir::results`],
/// [`JobDir::detections`], [`JobDir::samples`], [`JobDir::strip`]). After each batch of layouts
/// it reports `layouts_done` and `layouts_total` to `hooks`, and ends with
/// [`ModelError::Stopped`] when they ask to stop.
///
/// Errors: an empty validation set, sampling/detection/libtorch errors, writing the files, a stop.
pub fn evaluate_model(
    model: &SpatialLockModel,
    resolution: i64,
    val: &dyn Dataset,
    cfg: &EvalConfig,
    detector: &EvalDetector,
    out: &Path,
    hooks: &mut dyn Hooks,
) -> Result<EvalResults, ModelError> {
    std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let n = cfg.max_layouts.map_or(val.len(), |m| (m as usize).min(val.len()));
    if n == 0 {
        return Err(ModelError::Input("the validation set is empty".into()));
    }
    let k = cfg.images_per_layout.max(1) as usize;
    let inception = match cfg.fid {
        FidMode::Detector => None,
        FidMode::Auto => FidInception::load_installed(model.device)?,
        FidMode::Inception => Some(FidInception::load_installed(model.device)?.ok_or_else(|| {
            ModelError::Input(
                "eval.fid is `inception` but the FID Inception is not installed (run scripts/setup.sh)".into(),
            )
        })?),
    };
    let feature_dim = if inception.is_some() { 2048 } else { 128 };
    let embed = |images: &Tensor| -> Result<Option<Tensor>, ModelError> {
        match (&inception, detector) {
            (Some(net), _) => net.features(&to01(images)).map(Some),
            (None, EvalDetector::Builtin(d)) => Ok(Some(d.embed(images).to_device(Device::Cpu))),
            (None, EvalDetector::Scripted(_)) => Ok(None),
        }
    };
    let (mut real_stats, mut fake_stats) = (StatsAccumulator::new(feature_dim), StatsAccumulator::new(feature_dim));
    let mut layouts = Vec::with_capacity(n * k);
    let mut detections = Vec::with_capacity(n * k);
    let (mut grid_images, mut grid_cells) = (Vec::new(), Vec::new());
    let (mut strip_images, mut strip_cells) = (Vec::new(), Vec::new());
    let mut seconds = 0.0;
    let batch = 8usize;
    let mut done = 0;
    for start in (0..n).step_by(batch) {
        let samples: Vec<_> = (start..(start + batch).min(n))
            .map(|i| val.get(i))
            .collect::<Result<_, _>>()?;
        let real = Tensor::stack(&samples.iter().map(|s| s.image.shallow_clone()).collect::<Vec<_>>(), 0);
        if let Some(f) = embed(&real.to_device(model.device))? {
            real_stats.add(&f).map_err(|e| ModelError::Input(e.to_string()))?;
        }
        for copy in 0..k {
            let batch_layouts: Vec<Layout> = samples
                .iter()
                .map(|s| Layout::from_boxes(&s.caption, &s.boxes, &s.phrases))
                .collect();
            let seed = SplitMix64::from_parts(&[cfg.seed, start as u64, copy as u64]).next_u64();
            let settings = SampleSettings {
                steps: i64::from(cfg.ddim_steps),
                guidance: cfg.guidance_scale,
                grounding_fraction: cfg.grounding_fraction,
                seed,
                resolution,
            };
            let t0 = Instant::now();
            let images = sample(model, &batch_layouts, settings)?;
            seconds += t0.elapsed().as_secs_f64();
            let nms = NmsSettings {
                score_threshold: cfg.detections.score_threshold,
                nms_iou: cfg.detections.nms_iou,
                max_detections: cfg.detections.max_detections as usize,
            };
            let dets = detector.detect(&images.to_device(model.device), nms)?;
            if let Some(f) = embed(&images.to_device(model.device))? {
                fake_stats.add(&f).map_err(|e| ModelError::Input(e.to_string()))?;
            }
            for (i, s) in samples.iter().enumerate() {
                let in_grid = grid_images.len() < GRID_IMAGES;
                // The strip: the first layouts' first images, the same seeds in every trial.
                let in_strip = copy == 0 && start + i < STRIP_LAYOUTS;
                if in_grid || in_strip {
                    let cell = picture_cell(s, &dets[i], val.categories(), resolution as f32);
                    if in_strip {
                        strip_images.push(images.get(i as i64));
                        strip_cells.push(cell.clone());
                    }
                    if in_grid {
                        grid_images.push(images.get(i as i64));
                        grid_cells.push(cell);
                    }
                }
                layouts.push(LayoutBoxes {
                    boxes: s.boxes.clone(),
                    labels: s.labels.clone(),
                });
            }
            detections.extend(dets);
        }
        done += samples.len();
        hooks.metric("layouts_done", 0, done as f64);
        hooks.metric("layouts_total", 0, n as f64);
        if done < n && hooks.should_stop() {
            return Err(ModelError::Stopped(format!("after {done} of {n} layouts")));
        }
    }
    let coco = score(&layouts, &detections, val.categories(), resolution as f64);
    let grounding = grounding_scores(&layouts, &detections, resolution as f64);
    let distance = if real_stats.count() >= 2 && fake_stats.count() >= 2 {
        let (a, b) = (
            real_stats.finish().map_err(|e| ModelError::Input(e.to_string()))?,
            fake_stats.finish().map_err(|e| ModelError::Input(e.to_string()))?,
        );
        Some(frechet_distance(&a, &b).map_err(|e| ModelError::Input(e.to_string()))?)
    } else {
        None
    };
    let pct = |v: f64| if v < 0.0 { v } else { 100.0 * v };
    let results = EvalResults {
        map: pct(coco.stats[0]),
        ap50: pct(coco.stats[1]),
        ap75: pct(coco.stats[2]),
        grounding_accuracy: grounding.grounding_accuracy,
        mean_iou: grounding.mean_iou,
        category_recall: grounding.category_recall,
        coco_stats: coco.stats,
        fid: if inception.is_some() { distance } else { None },
        fd_detector: if inception.is_none() { distance } else { None },
        inference_s: seconds / (n * k) as f64,
        images: n * k,
        layouts: n,
    };
    let job = JobDir::new(out);
    let write = |path: std::path::PathBuf, what: &str, value: serde_json::Value| {
        std::fs::write(&path, to_json_text(what, &value)?).map_err(|source| ModelError::Io { path, source })
    };
    let coco_results: Vec<serde_json::Value> = detections_to_coco(&detections)
        .iter()
        .map(|d| serde_json::json!({"image_id": d.image_id, "category_id": d.category_id, "bbox": d.bbox, "score": d.score}))
        .collect();
    write(
        job.detections(),
        "the detections",
        serde_json::Value::from(coco_results),
    )?;
    if !grid_images.is_empty() {
        let cols = (grid_images.len() as f64).sqrt().ceil() as usize;
        save_cells(&job.samples(), &Tensor::stack(&grid_images, 0), &grid_cells, cols)?;
    }
    if !strip_images.is_empty() {
        save_cells(
            &job.strip(),
            &Tensor::stack(&strip_images, 0),
            &strip_cells,
            strip_images.len(),
        )?;
    }
    // Last: an evaluation is complete once its results exist (JobDir::is_complete).
    write(
        job.results(),
        "the evaluation results",
        to_json("the evaluation results", &results)?,
    )?;
    Ok(results)
}
