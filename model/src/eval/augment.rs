//! Detector augmentation (paper §4, "MSCOCO Expansion", Table 5): a trained model draws a
//! synthetic training set from real layouts; the evaluation detector trained on the real plus
//! the synthetic images is scored on real validation images against the same detector trained
//! on the real images alone. The paper reports the gain in mAP ("UP", 1.6–3.2 points for five
//! detectors on COCO).
//!
//! Both detectors train with the same [`DetectorTraining`] (steps, batch size, learning rate,
//! seed); only the pool the batches are drawn from differs. Scores are COCO bbox AP through
//! [`super::pipeline::score`] (pycocotools-exact), in percent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use spatiallock_protocol::trial::EvalConfig;

use super::detector::{train_detector, Detector, DetectorTraining, NmsSettings};
use super::pipeline::{score, LayoutBoxes};
use crate::data::rng::SplitMix64;
use crate::data::{Annotations, Dataset, Sample};
use crate::diffusion::sampler::SampleSettings;
use crate::error::{to_json, to_json_text, ModelError};
use crate::generate::{sample, Layout};
use crate::hooks::Hooks;
use crate::image_io::{from_rgb, read_rgb, save_cells, to_rgb, write_png, Cell, LabelledBox, INPUT_COLOUR};
use crate::layout::JobDir;
use crate::pipeline::SpatialLockModel;

/// Layouts generated per sampling call.
const GENERATION_BATCH: usize = 8;
/// Images per detection call when scoring a detector.
const SCORING_BATCH: usize = 16;
/// Synthetic images shown in `synthetic.png`.
const PREVIEW_IMAGES: usize = 16;

/// Images a model generated, each labelled with the layout it was asked for: a [`Dataset`] the
/// detector can train on. Each image is written as an 8-bit PNG as soon as it is generated (as a
/// generated dataset is saved) and read back when asked for, so a set of any size holds only its
/// labels in memory.
pub struct SyntheticSet {
    dir: PathBuf,
    files: Vec<PathBuf>,
    side: u32,
    annotations: Vec<Annotations>,
    categories: Vec<String>,
    fingerprint: String,
}

impl SyntheticSet {
    /// An empty set that writes its images under `dir` (created) as `000000.png`, `000001.png`, ….
    ///
    /// Errors: [`ModelError::Io`] creating `dir`.
    pub fn new(dir: &Path, categories: Vec<String>, fingerprint: String) -> Result<Self, ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            side: 0,
            annotations: Vec::new(),
            categories,
            fingerprint,
        })
    }

    /// Adds `images` (`[B, 3, S, S]` in [-1, 1], one side `S` for the whole set) with the layouts
    /// they were generated from, writing each as a PNG.
    ///
    /// Errors: [`ModelError::Input`] when the counts differ or an image's side is not the set's;
    /// [`ModelError::Shape`] unless `[B, 3, H, W]`; writing a file.
    pub fn push(&mut self, images: &Tensor, annotations: Vec<Annotations>) -> Result<(), ModelError> {
        let pictures = to_rgb(images)?;
        if pictures.len() != annotations.len() {
            return Err(ModelError::Input(format!(
                "{} synthetic images for {} layouts",
                pictures.len(),
                annotations.len()
            )));
        }
        for (picture, a) in pictures.iter().zip(annotations) {
            let (w, h) = picture.dimensions();
            if self.side == 0 {
                self.side = w;
            }
            if (w, h) != (self.side, self.side) {
                return Err(ModelError::Input(format!(
                    "synthetic image {} is {w}×{h} pixels, not {side}×{side} as the set",
                    self.files.len(),
                    side = self.side
                )));
            }
            let path = self.dir.join(format!("{:06}.png", self.files.len()));
            write_png(&path, picture)?;
            self.files.push(path);
            self.annotations.push(a);
        }
        Ok(())
    }
}

impl Dataset for SyntheticSet {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample, ModelError> {
        let (Some(file), Some(a)) = (self.files.get(index), self.annotations.get(index)) else {
            return Err(ModelError::Input(format!(
                "synthetic image {index} asked for, the set holds {}",
                self.files.len()
            )));
        };
        Ok(Sample {
            image: from_rgb(&read_rgb(file)?)?,
            boxes: a.boxes.clone(),
            labels: a.labels.clone(),
            phrases: a.phrases.clone(),
            caption: a.caption.clone(),
        })
    }

    fn categories(&self) -> &[String] {
        &self.categories
    }

    fn image_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn annotation_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// Two datasets with the same categories, the second's samples after the first's.
pub struct Concatenated<'a> {
    first: &'a dyn Dataset,
    second: &'a dyn Dataset,
}

impl<'a> Concatenated<'a> {
    /// Errors: [`ModelError::Input`] when the category lists differ (labels would mean
    /// different things).
    pub fn new(first: &'a dyn Dataset, second: &'a dyn Dataset) -> Result<Self, ModelError> {
        if first.categories() != second.categories() {
            return Err(ModelError::Input(format!(
                "cannot train one detector on datasets with different categories ({} and {})",
                first.categories().join(", "),
                second.categories().join(", ")
            )));
        }
        Ok(Self { first, second })
    }
}

impl Dataset for Concatenated<'_> {
    fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    fn get(&self, index: usize) -> Result<Sample, ModelError> {
        match index.checked_sub(self.first.len()) {
            None => self.first.get(index),
            Some(i) => self.second.get(i),
        }
    }

    fn categories(&self) -> &[String] {
        self.first.categories()
    }

    fn annotations(&self, index: usize) -> Result<Annotations, ModelError> {
        match index.checked_sub(self.first.len()) {
            None => self.first.annotations(index),
            Some(i) => self.second.annotations(i),
        }
    }

    fn image_fingerprint(&self) -> String {
        format!("{}+{}", self.first.image_fingerprint(), self.second.image_fingerprint())
    }

    fn annotation_fingerprint(&self) -> String {
        format!(
            "{}+{}",
            self.first.annotation_fingerprint(),
            self.second.annotation_fingerprint()
        )
    }
}

/// The layouts a synthetic set of `count` images is drawn from: `count` indices of a dataset
/// of `len` samples, evenly spaced (every layout once, in order, when `count == len`); past
/// `len` they wrap around, and the pass number tells the generator to use other seeds.
/// Returns (index, pass) pairs; empty when `len` is 0.
pub fn layout_indices(len: usize, count: usize) -> Vec<(usize, u64)> {
    if len == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let pass = i / len;
            let within = i % len;
            let in_pass = count.saturating_sub(pass * len).min(len);
            // Evenly spaced within a pass that does not cover the whole set.
            let index = within * len / in_pass.max(1);
            (index.min(len - 1), pass as u64)
        })
        .collect()
}

/// Generates `count` images with `model` from the layouts of `layouts` ([`layout_indices`]),
/// with the evaluation's sampler settings (`cfg`: DDIM steps, guidance, grounding fraction) and
/// seeds derived from `cfg.seed`, each labelled with its input layout and written under `dir`
/// ([`SyntheticSet`]). Reports `synthetic_done` / `synthetic_total` to `hooks` after each batch.
///
/// Errors: an empty layout set or `count` 0 ([`ModelError::Input`]), sampling errors, writing
/// the images, a stop.
pub fn generate_set(
    model: &SpatialLockModel,
    resolution: i64,
    layouts: &dyn Dataset,
    count: usize,
    cfg: &EvalConfig,
    dir: &Path,
    hooks: &mut dyn Hooks,
) -> Result<SyntheticSet, ModelError> {
    let picks = layout_indices(layouts.len(), count);
    if picks.is_empty() {
        return Err(ModelError::Input(format!(
            "no synthetic images to generate ({count} asked for from {} layouts)",
            layouts.len()
        )));
    }
    let fingerprint = format!(
        "synthetic:{}:{}:seed{}",
        layouts.annotation_fingerprint(),
        picks.len(),
        cfg.seed
    );
    let mut set = SyntheticSet::new(dir, layouts.categories().to_vec(), fingerprint)?;
    for (batch_index, batch) in picks.chunks(GENERATION_BATCH).enumerate() {
        let batch_annotations: Vec<Annotations> = batch
            .iter()
            .map(|(i, _)| layouts.annotations(*i))
            .collect::<Result<_, _>>()?;
        let batch_layouts: Vec<Layout> = batch_annotations
            .iter()
            .map(|a| Layout::from_boxes(&a.caption, &a.boxes, &a.phrases))
            .collect();
        let pass = batch.first().map_or(0, |(_, p)| *p);
        let settings = SampleSettings {
            steps: i64::from(cfg.ddim_steps),
            guidance: cfg.guidance_scale,
            grounding_fraction: cfg.grounding_fraction,
            // Apart from the evaluation's seeds, which derive from (seed, start, copy).
            seed: SplitMix64::from_parts(&[cfg.seed, 0xA116, batch_index as u64, pass]).next_u64(),
            resolution,
        };
        set.push(&sample(model, &batch_layouts, settings)?, batch_annotations)?;
        hooks.metric("synthetic_done", 0, set.len() as f64);
        hooks.metric("synthetic_total", 0, picks.len() as f64);
        if set.len() < picks.len() && hooks.should_stop() {
            return Err(ModelError::Stopped(format!(
                "after {} of {} synthetic images",
                set.len(),
                picks.len()
            )));
        }
    }
    Ok(set)
}

/// A detector's COCO scores on a set of real images, in percent (−1 where undefined, as
/// pycocotools prints it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectorScores {
    /// mAP@[.5:.95], percent.
    pub map: f64,
    /// AP50, percent.
    pub ap50: f64,
    /// AP75, percent.
    pub ap75: f64,
}

/// Scores `detector` on every image of `val` (`[3, H, W]` in [-1, 1], side `resolution`
/// pixels) against the images' own boxes: COCO bbox AP through [`score`].
///
/// Errors: an empty set ([`ModelError::Input`]), reading a sample, detection errors.
pub fn detector_scores(
    detector: &Detector,
    val: &dyn Dataset,
    nms: NmsSettings,
    resolution: i64,
    device: Device,
) -> Result<DetectorScores, ModelError> {
    if val.is_empty() {
        return Err(ModelError::Input(
            "no validation images to score the detector on".into(),
        ));
    }
    let mut layouts = Vec::with_capacity(val.len());
    let mut detections = Vec::with_capacity(val.len());
    for start in (0..val.len()).step_by(SCORING_BATCH) {
        let samples: Vec<Sample> = (start..(start + SCORING_BATCH).min(val.len()))
            .map(|i| val.get(i))
            .collect::<Result<_, _>>()?;
        let images = Tensor::f_stack(&samples.iter().map(|s| s.image.shallow_clone()).collect::<Vec<_>>(), 0)?;
        detections.extend(detector.detect(&images.f_to_device(device)?, nms)?);
        layouts.extend(samples.into_iter().map(|s| LayoutBoxes {
            boxes: s.boxes,
            labels: s.labels,
        }));
    }
    let stats = score(&layouts, &detections, val.categories(), resolution as f64).stats;
    let pct = |v: f64| if v < 0.0 { v } else { 100.0 * v };
    Ok(DetectorScores {
        map: pct(stats[0]),
        ap50: pct(stats[1]),
        ap75: pct(stats[2]),
    })
}

/// What a detector augmentation run reports (`augmentation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentResults {
    /// The detector trained on real images alone, on the real validation images.
    pub real: DetectorScores,
    /// The same detector trained on real + synthetic images, on the same validation images.
    pub augmented: DetectorScores,
    /// `augmented.map − real.map`, percentage points (the paper's "UP"); `None` when either mAP
    /// is undefined (no validation box of any category).
    pub map_gain: Option<f64>,
    /// Real training images.
    pub real_images: usize,
    /// Synthetic training images.
    pub synthetic_images: usize,
    /// Real validation images both were scored on.
    pub val_images: usize,
}

/// What [`augment_detector`] works with.
pub struct Augmentation<'a> {
    /// The trained generator.
    pub model: &'a SpatialLockModel,
    /// Image side, pixels (generation and detection).
    pub resolution: i64,
    /// The real training set: the detectors' real images and the synthetic set's layouts.
    pub real: &'a dyn Dataset,
    /// Real validation images with their boxes.
    pub val: &'a dyn Dataset,
    /// Synthetic images to generate.
    pub synthetic_images: usize,
    /// Sampler, detection and seed settings (the evaluation's).
    pub eval: &'a EvalConfig,
    /// The detector trained on `real` alone (the train-detector job's).
    pub real_only: &'a Detector,
    /// How the augmented detector trains: as `real_only` did.
    pub training: DetectorTraining,
    /// Where tensors live.
    pub device: Device,
}

/// Runs the study into `out`: generates the synthetic set, writes a preview
/// (`synthetic.png`: the first images with their input boxes and captions), trains the
/// augmented detector on real + synthetic (saved under `out/detector`), scores both detectors on
/// the real validation images, and writes `augmentation.json` last (the job is complete once it
/// exists).
///
/// Errors: as [`generate_set`], [`train_detector`] and [`detector_scores`]; writing the files.
pub fn augment_detector(a: &Augmentation<'_>, out: &Path, hooks: &mut dyn Hooks) -> Result<AugmentResults, ModelError> {
    std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let synthetic = generate_set(
        a.model,
        a.resolution,
        a.real,
        a.synthetic_images,
        a.eval,
        &out.join("synthetic"),
        hooks,
    )?;
    write_preview(&synthetic, &out.join("synthetic.png"))?;
    hooks.log(&format!(
        "generated {} synthetic images; training the detector on {} real + {} synthetic",
        synthetic.len(),
        a.real.len(),
        synthetic.len()
    ));
    let pool = Concatenated::new(a.real, &synthetic)?;
    let augmented = train_detector(&pool, a.training, a.device, hooks)?;
    augmented.save(&out.join("detector"))?;
    let nms = NmsSettings {
        score_threshold: a.eval.detections.score_threshold,
        nms_iou: a.eval.detections.nms_iou,
        max_detections: a.eval.detections.max_detections as usize,
    };
    let real = detector_scores(a.real_only, a.val, nms, a.resolution, a.device)?;
    let augmented = detector_scores(&augmented, a.val, nms, a.resolution, a.device)?;
    let results = AugmentResults {
        real,
        augmented,
        map_gain: (real.map >= 0.0 && augmented.map >= 0.0).then_some(augmented.map - real.map),
        real_images: a.real.len(),
        synthetic_images: synthetic.len(),
        val_images: a.val.len(),
    };
    let path = JobDir::new(out).augmentation();
    let text = to_json_text(
        "the augmentation results",
        &to_json("the augmentation results", &results)?,
    )?;
    std::fs::write(&path, text).map_err(|source| ModelError::Io { path, source })?;
    Ok(results)
}

/// The first [`PREVIEW_IMAGES`] synthetic images with their input boxes and captions.
fn write_preview(set: &SyntheticSet, path: &Path) -> Result<(), ModelError> {
    let n = set.len().min(PREVIEW_IMAGES);
    let mut images = Vec::with_capacity(n);
    let mut cells = Vec::with_capacity(n);
    for i in 0..n {
        let s = set.get(i)?;
        cells.push(Cell {
            boxes: s
                .boxes
                .iter()
                .zip(&s.phrases)
                .map(|(b, p)| LabelledBox {
                    bbox: *b,
                    colour: INPUT_COLOUR,
                    label: p.clone(),
                })
                .collect(),
            caption: s.caption.clone(),
        });
        images.push(s.image);
    }
    let cols = (n as f64).sqrt().ceil() as usize;
    save_cells(path, &Tensor::f_stack(&images, 0)?, &cells, cols.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::Shapes;
    use spatiallock_protocol::trial::Split;
    use tch::Kind;

    #[test]
    fn layouts_are_spread_evenly_and_wrap_with_a_new_pass() {
        assert_eq!(layout_indices(8, 4), vec![(0, 0), (2, 0), (4, 0), (6, 0)]);
        assert_eq!(layout_indices(3, 3), vec![(0, 0), (1, 0), (2, 0)]);
        assert_eq!(layout_indices(2, 5), vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]);
        assert!(layout_indices(0, 4).is_empty());
        assert!(layout_indices(4, 0).is_empty());
    }

    #[test]
    fn a_concatenation_reads_both_parts_in_order_and_refuses_other_categories() {
        let a = Shapes::new(3, 1, Split::Train, 32);
        let b = Shapes::new(2, 1, Split::Val, 32);
        let both = Concatenated::new(&a, &b).expect("same categories");
        assert_eq!(both.len(), 5);
        assert_eq!(both.get(3).expect("sample").caption, b.get(0).expect("sample").caption);
        assert_eq!(both.get(1).expect("sample").caption, a.get(1).expect("sample").caption);
        assert!(both.get(5).is_err());

        let dir = tempfile::tempdir().expect("a temporary folder");
        let other = SyntheticSet::new(dir.path(), vec!["cat".into()], "x".into()).expect("empty set");
        let Err(ModelError::Input(message)) = Concatenated::new(&a, &other) else {
            panic!("datasets with different categories were joined");
        };
        assert!(message.contains("different categories"), "{message}");
    }

    #[test]
    fn a_synthetic_set_keeps_its_images_on_disk_and_hands_them_back_with_their_layouts() {
        let real = Shapes::new(2, 1, Split::Train, 32);
        let annotations: Vec<Annotations> = (0..2).map(|i| real.annotations(i).expect("annotations")).collect();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut set = SyntheticSet::new(dir.path(), real.categories().to_vec(), "x".into()).expect("set");
        let images = Tensor::linspace(-1.0, 1.0, 2 * 3 * 32 * 32, (Kind::Float, Device::Cpu)).view([2, 3, 32, 32]);
        assert!(
            set.push(&images, annotations[..1].to_vec()).is_err(),
            "2 images for 1 layout"
        );
        set.push(&images, annotations.clone()).expect("pushed");
        assert_eq!(set.len(), 2);
        assert!(dir.path().join("000001.png").is_file());
        let s = set.get(1).expect("sample");
        assert_eq!(
            (s.boxes, s.caption),
            (annotations[1].boxes.clone(), annotations[1].caption.clone())
        );
        assert_eq!(s.image.size(), vec![3, 32, 32]);
        // Back as written, up to 8-bit rounding.
        let error = (s.image - images.get(1)).abs().max().double_value(&[]);
        assert!(error <= 1.0 / 127.5, "{error}");
        assert!(set.get(2).is_err());
        let smaller = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        let Err(ModelError::Input(message)) = set.push(&smaller, annotations[..1].to_vec()) else {
            panic!("a 16-pixel image joined a 32-pixel set");
        };
        assert!(message.contains("16×16"), "{message}");
    }

    #[test]
    fn an_untrained_detector_scores_near_zero_and_an_empty_set_is_refused() {
        tch::set_num_threads(1);
        let val = Shapes::new(8, 1, Split::Val, 32);
        let det = Detector::new(val.categories().to_vec(), 32, Device::Cpu);
        let s = detector_scores(&det, &val, NmsSettings::default(), 32, Device::Cpu).expect("scores");
        assert!((0.0..5.0).contains(&s.map), "{s:?}");
        let empty = Shapes::new(0, 1, Split::Val, 32);
        assert!(detector_scores(&det, &empty, NmsSettings::default(), 32, Device::Cpu).is_err());
    }
}
