//! The built-in evaluation detector: a small CNN backbone under PoG's FPN and RetinaNet head
//! (the same code, not a copy), trained on real images at the generation resolution; and a
//! plug-in path for any TorchScript detector.
//!
//! Built-in inference: sigmoid scores, candidates above `score_threshold` (top 1000), boxes
//! decoded from the anchors and clipped to the image, batched NMS per class at `nms_iou`, at
//! most `max_detections` per image.
//!
//! TorchScript contract: `forward(images)` with `images` `[B, 3, H, W]` f32 in [0, 1] returns
//! `[B, N, 6]` rows `(x0, y0, x1, y1, score, class)` in pixels, padded rows having score ≤ 0;
//! class indices follow the dataset's category order.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, VarStore};
use tch::{CModule, Device, Kind, Tensor};

use spatiallock_protocol::model_config::PerceptionConfig;
use spatiallock_protocol::trial::BoxLoss;

use crate::data::rng::SplitMix64;
use crate::data::Dataset;
use crate::error::{to_json_text, ModelError};
use crate::hooks::Hooks;
use crate::layout::JobDir;
use crate::nn::perception::targets::detection_loss;
use crate::nn::perception::{ImageTargets, PerceptionHead};
use crate::ops::boxes::{batched_nms, decode_boxes};
use crate::optim::AdamW;

/// One detection, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// xyxy pixels.
    pub bbox: [f32; 4],
    /// Confidence.
    pub score: f32,
    /// Category index.
    pub label: i64,
}

/// Post-processing settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NmsSettings {
    /// Candidates below this score are dropped.
    pub score_threshold: f64,
    /// NMS IoU threshold.
    pub nms_iou: f64,
    /// Detections kept per image.
    pub max_detections: usize,
}

impl Default for NmsSettings {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            nms_iou: 0.5,
            max_detections: 100,
        }
    }
}

/// What a saved detector records besides its weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorMeta {
    /// Category names, by label.
    pub categories: Vec<String>,
    /// Image side it was trained at.
    pub resolution: i64,
    /// Stride of the stem.
    pub stem_stride: i64,
}

/// Backbone stage widths, from the one definition the plan's cost model also reads.
const WIDTHS: [i64; 3] = {
    let w = spatiallock_protocol::cost::BUILTIN_DETECTOR_WIDTHS;
    [w[0] as i64, w[1] as i64, w[2] as i64]
};

/// The PoG head on the backbone: FPN width 64, no Enh-Fusion, 2 convs per branch, 3 anchors
/// (defined beside the cost model that counts it).
fn head_config() -> PerceptionConfig {
    spatiallock_protocol::cost::builtin_detector_head()
}

#[derive(Debug)]
struct Stage {
    down: nn::Conv2D,
    n1: nn::GroupNorm,
    conv: nn::Conv2D,
    n2: nn::GroupNorm,
}

/// The built-in detector.
#[derive(Debug)]
pub struct Detector {
    /// Its parameters.
    pub vs: VarStore,
    stem: nn::Conv2D,
    stages: Vec<Stage>,
    head: PerceptionHead,
    /// Names, resolution.
    pub meta: DetectorMeta,
}

impl Detector {
    /// A fresh detector for `categories` at `resolution`² pixels.
    pub fn new(categories: Vec<String>, resolution: i64, device: Device) -> Self {
        let stem_stride = (resolution / 64).max(1);
        let vs = VarStore::new(device);
        let p = vs.root();
        let stem = nn::conv2d(
            &p / "stem",
            3,
            WIDTHS[0],
            3,
            nn::ConvConfig {
                stride: stem_stride,
                padding: 1,
                ..Default::default()
            },
        );
        let mut stages = Vec::new();
        let mut prev = WIDTHS[0];
        for (i, &w) in WIDTHS.iter().enumerate() {
            let s = &p / "stages" / i as i64;
            let down = nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            };
            let same = nn::ConvConfig {
                padding: 1,
                ..Default::default()
            };
            stages.push(Stage {
                down: nn::conv2d(&s / "down", prev, w, 3, down),
                n1: nn::group_norm(&s / "n1", 8, w, Default::default()),
                conv: nn::conv2d(&s / "conv", w, w, 3, same),
                n2: nn::group_norm(&s / "n2", 8, w, Default::default()),
            });
            prev = w;
        }
        let sizes: Vec<(i64, i64)> = (0..WIDTHS.len())
            .map(|i| {
                let s = resolution / stem_stride / (2 << i);
                (s, s)
            })
            .collect();
        let head = PerceptionHead::new(
            &(&p / "head"),
            &head_config(),
            &WIDTHS,
            &sizes,
            categories.len() as i64,
            false,
        );
        Self {
            vs,
            stem,
            stages,
            head,
            meta: DetectorMeta {
                categories,
                resolution,
                stem_stride,
            },
        }
    }

    /// Backbone features, highest resolution first. `images` in [-1, 1].
    pub fn features(&self, images: &Tensor) -> Vec<Tensor> {
        let mut h = self.stem.forward(images).relu();
        let mut out = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            h = s.n1.forward(&s.down.forward(&h)).relu();
            h = s.n2.forward(&s.conv.forward(&h)).relu();
            out.push(h.shallow_clone());
        }
        out
    }

    /// Globally pooled deepest features `[B, 128]`: the space of `fd_detector`.
    pub fn embed(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let f = self.features(images);
            f[f.len() - 1].mean_dim([2i64, 3].as_slice(), false, Kind::Float)
        })
    }

    /// Detections for `images` `[B, 3, H, W]` in [-1, 1]; boxes in pixels, xyxy.
    ///
    /// Errors: libtorch errors reading the predictions.
    pub fn detect(&self, images: &Tensor, s: NmsSettings) -> Result<Vec<Vec<Detected>>, ModelError> {
        let res = self.meta.resolution;
        let out = tch::no_grad(|| self.head.forward(&self.features(images), (res, res)));
        let b = out.cls.size()[0];
        let k = out.cls.size()[2];
        (0..b)
            .map(|i| {
                let scores = out.cls.get(i).sigmoid().view([-1]);
                let keep = scores.gt(s.score_threshold).nonzero().squeeze_dim(1);
                let n = keep.size()[0].min(1000);
                if n == 0 {
                    return Ok(Vec::new());
                }
                let (top, order) = scores.index_select(0, &keep).topk(n, 0, true, true);
                let flat = keep.index_select(0, &order);
                let anchor_idx = flat.divide_scalar_mode(k, "floor");
                let labels = flat.remainder(k);
                let deltas = out.reg.get(i).index_select(0, &anchor_idx);
                let anchors = out.anchors.index_select(0, &anchor_idx);
                let boxes = decode_boxes(&deltas, &anchors).clamp(0.0, res as f64);
                let kept = batched_nms(&boxes, &top, &labels, s.nms_iou)?;
                let bx = Vec::<f32>::try_from(boxes.contiguous().view([-1]))?;
                let sc = Vec::<f32>::try_from(&top)?;
                let lb = Vec::<i64>::try_from(&labels)?;
                Ok(kept
                    .into_iter()
                    .take(s.max_detections)
                    .map(|j| {
                        let j = j as usize;
                        Detected {
                            bbox: [bx[4 * j], bx[4 * j + 1], bx[4 * j + 2], bx[4 * j + 3]],
                            score: sc[j],
                            label: lb[j],
                        }
                    })
                    .collect())
            })
            .collect()
    }

    /// Writes the weights and metadata into the job folder `dir` ([`JobDir::detector_weights`],
    /// [`JobDir::detector_meta`]).
    ///
    /// Errors: [`ModelError::Io`] / [`ModelError::Weights`] naming the file.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let job = JobDir::new(dir);
        let path = job.detector_weights();
        self.vs.save(&path).map_err(|e| ModelError::Weights {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let meta = job.detector_meta();
        std::fs::write(&meta, to_json_text("the detector's metadata", &self.meta)?)
            .map_err(|source| ModelError::Io { path: meta, source })
    }

    /// Reads a detector written by [`Detector::save`].
    pub fn load(dir: &Path, device: Device) -> Result<Self, ModelError> {
        let job = JobDir::new(dir);
        let meta_path = job.detector_meta();
        let text = std::fs::read_to_string(&meta_path).map_err(|source| ModelError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let meta: DetectorMeta = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: meta_path,
            message: e.to_string(),
        })?;
        let mut d = crate::pipeline::seeded(0, || Detector::new(meta.categories, meta.resolution, device));
        let path = job.detector_weights();
        d.vs.load(&path).map_err(|e| ModelError::Weights {
            path,
            message: e.to_string(),
        })?;
        Ok(d)
    }
}

/// A detector given as TorchScript (see the module doc for its contract).
pub struct ScriptedDetector {
    module: CModule,
}

impl ScriptedDetector {
    /// Loads a `.pt` file.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let module = CModule::load_on_device(path, device).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            message: format!("not a loadable TorchScript module: {e}"),
        })?;
        Ok(Self { module })
    }

    /// Detections for `images` in [-1, 1].
    pub fn detect(&self, images: &Tensor, s: NmsSettings) -> Result<Vec<Vec<Detected>>, ModelError> {
        let x = (images + 1.0) / 2.0;
        let out = tch::no_grad(|| self.module.forward_ts(&[x]))?;
        let size = out.size();
        if size.len() != 3 || size[2] != 6 || size[0] != images.size()[0] {
            return Err(ModelError::shape(
                "TorchScript detector output",
                format!("[{}, N, 6]", images.size()[0]),
                &size,
            ));
        }
        let rows = Vec::<f32>::try_from(out.to_kind(Kind::Float).contiguous().view([-1]))?;
        let n = size[1] as usize;
        Ok((0..size[0] as usize)
            .map(|i| {
                let mut dets: Vec<Detected> = (0..n)
                    .map(|j| &rows[(i * n + j) * 6..(i * n + j + 1) * 6])
                    .filter(|r| f64::from(r[4]) > s.score_threshold.max(0.0))
                    .map(|r| Detected {
                        bbox: [r[0], r[1], r[2], r[3]],
                        score: r[4],
                        label: r[5] as i64,
                    })
                    .collect();
                dets.sort_by(|a, b| b.score.total_cmp(&a.score));
                dets.truncate(s.max_detections);
                dets
            })
            .collect())
    }
}

/// Settings of a detector training run.
#[derive(Debug, Clone, Copy)]
pub struct DetectorTraining {
    /// Image side in pixels.
    pub resolution: i64,
    /// Optimiser steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (50 warm-up steps).
    pub lr: f64,
    /// Seed of initialisation and data order.
    pub seed: u64,
}

/// Datasets of up to this many samples are kept in memory once read while the detector trains
/// (it draws each many times); larger ones (COCO train: 118k images) are read at every draw.
const SAMPLE_CACHE_LIMIT: usize = 4096;

/// Trains the built-in detector on `data`, reporting `step` and `loss` to `hooks` every
/// twentieth of the run; ends with [`ModelError::Stopped`] when `hooks` asks to stop (nothing
/// is saved: the detector is cheap to retrain).
///
/// Errors: an empty dataset, a non-finite loss, libtorch errors, a stop request.
pub fn train_detector(
    data: &dyn Dataset,
    run: DetectorTraining,
    device: Device,
    hooks: &mut dyn Hooks,
) -> Result<Detector, ModelError> {
    let DetectorTraining {
        resolution,
        steps,
        batch_size,
        lr,
        seed,
    } = run;
    if data.is_empty() {
        return Err(ModelError::Input("the detector's training dataset is empty".into()));
    }
    let det = crate::pipeline::seeded(seed, || Detector::new(data.categories().to_vec(), resolution, device));
    let params: Vec<(String, Tensor, f64)> = det.vs.variables().into_iter().map(|(n, t)| (n, t, 1e-4)).collect();
    let mut opt = AdamW::new(params);
    let mut cache: std::collections::HashMap<usize, crate::data::Sample> = Default::default();
    let report_every = (steps / 20).max(1);
    for step in 0..steps {
        let mut rng = SplitMix64::from_parts(&[seed, 0xDE7, step]);
        let mut images = Vec::with_capacity(batch_size);
        let mut targets = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let index = rng.below(data.len());
            let uncached;
            let sample = if data.len() <= SAMPLE_CACHE_LIMIT {
                if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(index) {
                    slot.insert(data.get(index)?);
                }
                &cache[&index]
            } else {
                uncached = data.get(index)?;
                &uncached
            };
            let (image, boxes, labels) = (&sample.image, &sample.boxes, &sample.labels);
            let flip = rng.unit() < 0.5;
            images.push(if flip { image.flip([2]) } else { image.shallow_clone() });
            let r = resolution as f32;
            let px: Vec<f32> = boxes
                .iter()
                .flat_map(|b| if flip { [1.0 - b[2], b[1], 1.0 - b[0], b[3]] } else { *b })
                .map(|v| v * r)
                .collect();
            targets.push(ImageTargets {
                boxes: Tensor::from_slice(&px).view([labels.len() as i64, 4]).to_device(device),
                labels: Tensor::from_slice(labels).to_device(device),
            });
        }
        let x = Tensor::stack(&images, 0).to_device(device);
        let out = det.head.forward(&det.features(&x), (resolution, resolution));
        let loss = detection_loss(&out, &targets, BoxLoss::Giou).total();
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(ModelError::NonFinite {
                step: step + 1,
                what: "detector loss".into(),
                value,
            });
        }
        loss.backward();
        opt.clip_grad_norm(10.0);
        let warm = ((step + 1) as f64 / 50.0).min(1.0);
        opt.step(lr * warm);
        opt.zero_grad();
        let done = step + 1;
        if done.is_multiple_of(report_every) || done == steps {
            hooks.metric("step", done, done as f64);
            hooks.metric("loss", done, value);
        }
        if done < steps && hooks.should_stop() {
            return Err(ModelError::Stopped(format!("at detector step {done} of {steps}")));
        }
    }
    Ok(det)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's warnings speak of `fd_detector` over the pooled features of the last stage.
    #[test]
    fn the_cost_model_describes_this_detector() {
        assert_eq!(
            WIDTHS[WIDTHS.len() - 1] as u64,
            spatiallock_protocol::cost::FD_DETECTOR_FEATURES
        );
    }
}
