//! Running whole jobs: pretraining a tiny base, and training SpatialLock on a base, with
//! checkpoints, resume and a per-step callback (progress bars, JSONL metrics, heartbeats).

use std::path::{Path, PathBuf};

use tch::Device;

use spatiallock_protocol::expand::{PretrainSpec, TrainSpec};

use super::checkpoint::{self, CheckpointState};
use super::trainer::{Mode, RunConfig, StepMetrics, Trainer};
use crate::data::open::open_dataset;
use crate::error::ModelError;
use crate::pipeline::{save_base, SpatialLockModel};

/// What the caller wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop (cancel, preemption): training checkpoints first; detector training and evaluation
    /// end at once and save nothing.
    Stop,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done; the output directory is complete.
    Finished,
    /// Stopped early at this step, after writing a checkpoint.
    Stopped(u64),
}

/// Options shared by both kinds of run.
pub struct RunOptions<'a> {
    /// Output directory (checkpoints under `checkpoints/step-N`, results at the top).
    pub out: &'a Path,
    /// A checkpoint to resume from.
    pub resume: Option<&'a Path>,
    /// Checkpoint every this many steps.
    pub checkpoint_every: u64,
    /// The device.
    pub device: Device,
    /// Root folder of the stores of the frozen encoders' outputs (VAE latents, caption
    /// embeddings) shared between runs; `None` keeps them in memory for this run only.
    pub cache_dir: Option<&'a Path>,
}

/// The directory of the checkpoint taken after `step`.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

/// The newest complete checkpoint (`state.json` is written last) of a run directory.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// The step a checkpoint directory holds (`step-00000120` → 120).
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

fn drive(
    trainer: &mut Trainer,
    spec_json: &serde_json::Value,
    base: Option<&Path>,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepMetrics) -> Control,
) -> Result<Outcome, ModelError> {
    if let Some(dir) = opts.resume {
        let state = checkpoint::restore(dir, &mut trainer.opt, true)?;
        trainer.step = state.step;
    }
    let save = |trainer: &Trainer| {
        let state = CheckpointState {
            step: trainer.step,
            optimizer_step: trainer.opt.step,
            spec: spec_json.clone(),
            base: base.map(|b| {
                b.canonicalize()
                    .unwrap_or_else(|_| b.to_path_buf())
                    .display()
                    .to_string()
            }),
            precision: Some(trainer.precision_used().into()),
        };
        checkpoint::save(&checkpoint_dir(opts.out, trainer.step), &trainer.opt, &state)
    };
    let mut outcome = Outcome::Finished;
    while trainer.step < trainer.cfg.steps {
        let metrics = trainer.train_step()?;
        let control = on_step(&metrics);
        let at_interval = opts.checkpoint_every > 0 && trainer.step.is_multiple_of(opts.checkpoint_every);
        if at_interval || control == Control::Stop || trainer.step == trainer.cfg.steps {
            save(trainer)?;
        }
        if control == Control::Stop && trainer.step < trainer.cfg.steps {
            outcome = Outcome::Stopped(trainer.step);
            break;
        }
    }
    trainer.cache_report().write(opts.out)?;
    Ok(outcome)
}

/// Pretrains a tiny base; on completion `out/base` is a diffusers model directory.
pub fn pretrain(
    spec: &PretrainSpec,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepMetrics) -> Control,
) -> Result<Outcome, ModelError> {
    let data = open_dataset(&spec.data, spec.resolution)?;
    let model = SpatialLockModel::for_pretraining(&spec.arch, spec.pretrain.seed, opts.device)?;
    let p = &spec.pretrain;
    let cfg = RunConfig {
        steps: p.steps,
        batch_size: p.batch_size as usize,
        grad_accum: 1,
        lr: p.lr,
        weight_decay: 0.0,
        warmup_steps: (p.steps / 20).min(500),
        grad_clip: Some(1.0),
        caption_dropout: 0.1,
        grounding_dropout: 0.0,
        seed: p.seed,
        resolution: i64::from(spec.resolution),
        box_loss: spatiallock_protocol::trial::BoxLoss::Giou,
        trainable: Vec::new(),
        precision: spatiallock_protocol::trial::Precision::Auto,
    };
    let mut trainer = Trainer::new(model, data, cfg, Mode::Pretrain)?;
    if let Some(root) = opts.cache_dir {
        trainer = trainer.with_cache_dir(root)?;
    }
    let spec_json = serde_json::to_value(spec).unwrap_or_default();
    let outcome = drive(&mut trainer, &spec_json, None, opts, on_step)?;
    if outcome == Outcome::Finished {
        save_base(
            &opts.out.join("base"),
            &spec.arch,
            &trainer.model.unet_vs,
            &trainer.model.text,
        )?;
    }
    Ok(outcome)
}

/// Trains SpatialLock (or GLIGEN) modules on the base in `base_dir`; the final checkpoint is
/// `out/checkpoints/step-<steps>` and `out/final` points at it.
pub fn train(
    spec: &TrainSpec,
    base_dir: &Path,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepMetrics) -> Control,
) -> Result<Outcome, ModelError> {
    let data = open_dataset(&spec.data, spec.resolution)?;
    let classes = data.categories().len() as i64;
    let model = SpatialLockModel::load(spec, base_dir, classes, opts.device)?;
    let mut trainer = Trainer::new(model, data, RunConfig::from_spec(spec), Mode::Train)?;
    if let Some(root) = opts.cache_dir {
        trainer = trainer.with_cache_dir(root)?;
    }
    let spec_json = serde_json::to_value(spec).unwrap_or_default();
    let outcome = drive(&mut trainer, &spec_json, Some(base_dir), opts, on_step)?;
    if outcome == Outcome::Finished {
        let last = checkpoint_dir(opts.out, trainer.step);
        let marker = opts.out.join("final");
        std::fs::write(&marker, last.display().to_string()).map_err(|source| ModelError::Io {
            path: marker.clone(),
            source,
        })?;
    }
    Ok(outcome)
}
