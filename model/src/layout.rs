//! The on-disk layout of a job's output folder: the one place that names its files. Every job
//! kind writes into one folder (an attempt's folder on a worker, `<out>/<experiment>/<job-id>`
//! for the CLI); the executor, the CLI, the worker and the loaders all go through [`JobDir`].
//!
//! ```text
//! base/                    pretrain: the base model, a diffusers folder (unet/, text_encoder/, tokenizer/)
//! checkpoints/step-N/      pretrain, train: checkpoint after step N (CHECKPOINT_STATE written last)
//! final                    train: text file holding the path of the last checkpoint
//! detector.json            train-detector: metadata …
//! detector.safetensors     … and weights of the evaluation detector
//! results.json             evaluate: mAP, AP50, AP75, FID / fd_detector, s/image
//! detections.json          evaluate: the detections, COCO results format
//! samples.png              evaluate: a grid of generated images with input and detected boxes
//! strip.png                evaluate: one row of the first 4 layouts' images (same seeds in every trial)
//! augmentation.json        augment-detector: both detectors' scores on real validation images
//! synthetic.png            augment-detector: the first synthetic images with their input boxes
//! detector/                augment-detector: the detector trained on real + synthetic images
//! synthetic/NNNNNN.png     augment-detector: every synthetic image (8-bit PNG, labelled by its layout)
//! encoder_cache.json       pretrain, train: where the frozen encoders' outputs came from
//! metrics.jsonl            `spatiallock train`: one JSON object per step
//! ```

use std::path::{Path, PathBuf};

use spatiallock_protocol::expand::JobKind;

use crate::error::ModelError;

/// The file a checkpoint folder's completeness is judged by (it is written last).
pub const CHECKPOINT_STATE: &str = "state.json";

/// The U-Net config inside a diffusers model folder. A base is written into a temporary folder
/// and renamed into place when complete (`save_base`), so a base folder that has it is whole.
pub const BASE_UNET_CONFIG: &str = "unet/config.json";

/// A job's output folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDir {
    root: PathBuf,
}

/// What a model job left for an evaluation to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOutput {
    /// A training job's last checkpoint.
    Checkpoint(PathBuf),
    /// A pretraining job's base model (a trial that trains nothing is evaluated on it).
    Base(PathBuf),
}

impl JobDir {
    /// The layout of the folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pretrained base model (a diffusers folder).
    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }

    /// Where checkpoints go.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The checkpoint taken after `step`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step-{step:08}"))
    }

    /// The newest complete checkpoint.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.checkpoints())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_complete_checkpoint(p))
            .filter_map(|p| checkpoint_step(&p).map(|step| (step, p)))
            .max_by_key(|(step, _)| *step)
            .map(|(_, p)| p)
    }

    /// The marker a finished training job leaves: a text file naming its last checkpoint.
    pub fn final_marker(&self) -> PathBuf {
        self.root.join("final")
    }

    /// Records `checkpoint` as the training job's result.
    ///
    /// Errors: [`ModelError::Io`] naming the marker.
    pub fn write_final(&self, checkpoint: &Path) -> Result<(), ModelError> {
        let marker = self.final_marker();
        std::fs::write(&marker, checkpoint.display().to_string())
            .map_err(|source| ModelError::Io { path: marker, source })
    }

    /// The last checkpoint of a finished training job.
    ///
    /// Errors: [`ModelError::Io`] when the job has not finished (no marker).
    pub fn final_checkpoint(&self) -> Result<PathBuf, ModelError> {
        let marker = self.final_marker();
        let text = std::fs::read_to_string(&marker).map_err(|source| ModelError::Io {
            path: marker.clone(),
            source,
        })?;
        Ok(PathBuf::from(text.trim()))
    }

    /// The trained model this folder holds, if any: a finished training job's checkpoint, or
    /// a finished pretraining job's base.
    pub fn model_output(&self) -> Option<ModelOutput> {
        if let Ok(ckpt) = self.final_checkpoint() {
            return Some(ModelOutput::Checkpoint(ckpt));
        }
        let base = self.base();
        base.join(BASE_UNET_CONFIG).is_file().then_some(ModelOutput::Base(base))
    }

    /// The evaluation detector's metadata.
    pub fn detector_meta(&self) -> PathBuf {
        self.root.join("detector.json")
    }

    /// The evaluation detector's weights.
    pub fn detector_weights(&self) -> PathBuf {
        self.root.join("detector.safetensors")
    }

    /// An evaluation's scores.
    pub fn results(&self) -> PathBuf {
        self.root.join("results.json")
    }

    /// An evaluation's detections (COCO results format).
    pub fn detections(&self) -> PathBuf {
        self.root.join("detections.json")
    }

    /// A detector augmentation's results (both detectors' scores and the gain), written last.
    pub fn augmentation(&self) -> PathBuf {
        self.root.join("augmentation.json")
    }

    /// An evaluation's sample grid.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples.png")
    }

    /// An evaluation's comparison strip: the first validation layouts in one row, generated
    /// with the same seeds in every trial of an experiment (`spatiallock figures` stacks them).
    pub fn strip(&self) -> PathBuf {
        self.root.join("strip.png")
    }

    /// Where the frozen encoders' outputs came from (`CacheReport`).
    pub fn encoder_cache_report(&self) -> PathBuf {
        self.root.join("encoder_cache.json")
    }

    /// One JSON object per training step (`spatiallock train`).
    pub fn metrics_log(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Whether a job of `kind` has finished writing this folder.
    pub fn is_complete(&self, kind: JobKind) -> bool {
        match kind {
            JobKind::Pretrain => self.base().join(BASE_UNET_CONFIG).is_file(),
            JobKind::Train => self.final_marker().is_file(),
            JobKind::TrainDetector => self.detector_meta().is_file(),
            JobKind::Evaluate => self.results().is_file(),
            JobKind::AugmentDetector => self.augmentation().is_file(),
            JobKind::Noop => false,
        }
    }
}

/// Whether a checkpoint folder was written completely.
pub fn is_complete_checkpoint(dir: &Path) -> bool {
    dir.join(CHECKPOINT_STATE).is_file()
}

/// The step a checkpoint folder holds (`step-00000120` → 120).
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_sort_by_step_and_only_complete_ones_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let job = JobDir::new(tmp.path());
        for step in [2u64, 10, 4] {
            std::fs::create_dir_all(job.checkpoint(step)).expect("mkdir");
            std::fs::write(job.checkpoint(step).join(CHECKPOINT_STATE), "{}").expect("write");
        }
        std::fs::create_dir_all(job.checkpoint(12)).expect("mkdir"); // torn: no state
        let latest = job.latest_checkpoint().expect("a checkpoint");
        assert_eq!(checkpoint_step(&latest), Some(10));
        assert!(!job.is_complete(JobKind::Train));
        assert_eq!(job.model_output(), None);
        job.write_final(&latest).expect("final");
        assert!(job.is_complete(JobKind::Train));
        assert_eq!(job.model_output(), Some(ModelOutput::Checkpoint(latest)));
    }
}
