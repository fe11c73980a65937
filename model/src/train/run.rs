//! Running whole jobs: pretraining a tiny base, and training SpatialLock on a base, with
//! checkpoints, resume and a per-step callback (progress bars, JSONL metrics, heartbeats).

use std::path::Path;
use std::time::Instant;

use tch::Device;

use spatiallock_protocol::expand::{PretrainSpec, TrainSpec};

use super::trainer::{Mode, RunConfig, Trainer};
use crate::data::open::open_dataset;
use crate::dist::{DataParallel, ProcessGroup};
use crate::error::{to_json, ModelError};
use crate::hooks::Hooks;
use crate::layout::{is_complete_checkpoint, JobDir};
use crate::persist::checkpoint::{self, CheckpointState};
use crate::pipeline::{save_base, SpatialLockModel};

/// Options shared by both kinds of run.
pub struct RunOptions<'a> {
    /// Output folder, laid out by [`JobDir`].
    pub out: &'a Path,
    /// A checkpoint to resume from.
    pub resume: Option<&'a Path>,
    /// Checkpoint every this many steps (and always after the last one and on a stop).
    pub checkpoint_every: u64,
    /// The device.
    pub device: Device,
    /// Root folder of the stores of the frozen encoders' outputs (VAE latents, caption
    /// embeddings) shared between runs; `None` keeps them in memory for this run only.
    pub cache_dir: Option<&'a Path>,
    /// The data-parallel group this run is one rank of (training only); `None` is one rank.
    pub data_parallel: Option<&'a DataParallel>,
}

/// Steps until the end, reporting each to `hooks`; checkpoints at the interval, after the last
/// step and when `hooks` asks to stop, which ends the run with [`ModelError::Stopped`].
fn drive(
    trainer: &mut Trainer,
    spec_json: &serde_json::Value,
    base: Option<&Path>,
    opts: &RunOptions,
    hooks: &mut dyn Hooks,
) -> Result<(), ModelError> {
    let job = JobDir::new(opts.out);
    if let Some(dir) = opts.resume {
        let state = checkpoint::restore(dir, &mut trainer.opt, true)?;
        trainer.step = state.step;
        hooks.log(&format!("resumed from {} (step {})", dir.display(), state.step));
    }
    // Every rank starts from rank 0's trainables (DDP's start-up broadcast), at resume too.
    trainer.broadcast_trainables()?;
    let lead = trainer.rank() == 0;
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
        let dir = job.checkpoint(trainer.step);
        checkpoint::save(&dir, &trainer.opt, &state).map(|()| dir)
    };
    let (start, first_step) = (Instant::now(), trainer.step);
    while trainer.step < trainer.cfg.steps {
        let mut metrics = trainer.train_step()?;
        let images = (metrics.step - first_step) as f64 * trainer.cfg.batch_size as f64;
        metrics.images_per_second = images / start.elapsed().as_secs_f64().max(1e-9);
        if lead {
            hooks.train_step(&metrics);
        }
        // A stop asked of any rank stops every rank after this step (one checkpoint, by rank 0).
        let stop = trainer.any_rank(hooks.should_stop())? && trainer.step < trainer.cfg.steps;
        let at_interval = opts.checkpoint_every > 0 && trainer.step.is_multiple_of(opts.checkpoint_every);
        if lead && (at_interval || stop || trainer.step == trainer.cfg.steps) {
            let dir = save(trainer)?;
            hooks.checkpoint_committed(trainer.step, &dir);
        }
        if stop {
            // The checkpoint is committed: a report that cannot be written is not a failure.
            if let Err(e) = trainer.cache_report().write(opts.out) {
                hooks.log(&format!("encoder cache report not written: {e:#}"));
            }
            return Err(ModelError::Stopped(format!(
                "at step {} of {}, checkpoint written",
                trainer.step, trainer.cfg.steps
            )));
        }
    }
    if !lead {
        return Ok(());
    }
    // A retry that resumed from the last step's checkpoint (in an earlier attempt's folder) ran
    // no step: write that checkpoint into this folder too, so the result points inside it.
    if !is_complete_checkpoint(&job.checkpoint(trainer.step)) {
        let dir = save(trainer)?;
        hooks.checkpoint_committed(trainer.step, &dir);
    }
    let report = trainer.cache_report();
    report.write(opts.out)?;
    hooks.log(&report.summary());
    Ok(())
}

/// Pretrains a tiny base; on completion [`JobDir::base`] is a diffusers model folder.
///
/// Errors: [`ModelError::Stopped`] when `hooks` asked to stop (a checkpoint was written), or
/// what loading data, training or writing failed with.
pub fn pretrain(spec: &PretrainSpec, opts: &RunOptions, hooks: &mut dyn Hooks) -> Result<(), ModelError> {
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
    let spec_json = to_json("the pretraining spec", spec)?;
    drive(&mut trainer, &spec_json, None, opts, hooks)?;
    save_base(
        &JobDir::new(opts.out).base(),
        &spec.arch,
        &trainer.model.unet_vs,
        &trainer.model.text,
    )
}

/// Trains SpatialLock (or GLIGEN) modules on the base in `base_dir`; the final checkpoint is
/// `JobDir::checkpoint(steps)` and [`JobDir::final_marker`] points at it.
///
/// Errors: as [`pretrain`].
pub fn train(spec: &TrainSpec, base_dir: &Path, opts: &RunOptions, hooks: &mut dyn Hooks) -> Result<(), ModelError> {
    let data = open_dataset(&spec.data, spec.resolution)?;
    let classes = data.categories().len() as i64;
    let model = SpatialLockModel::load(spec, base_dir, classes, opts.device)?;
    let mut trainer = Trainer::new(model, data, RunConfig::from_spec(spec), Mode::Train)?;
    if let Some(root) = opts.cache_dir {
        trainer = trainer.with_cache_dir(root)?;
    }
    if let Some(dp) = opts.data_parallel {
        let shards = dp.env.world_size as u64 * u64::from(spec.training.grad_accum.max(1));
        if !u64::from(spec.training.batch_size).is_multiple_of(shards) {
            return Err(ModelError::Input(format!(
                "training.batch_size {} is not a multiple of world size {} × grad_accum {}",
                spec.training.batch_size, dp.env.world_size, spec.training.grad_accum
            )));
        }
        hooks.log(&format!(
            "rank {} of {} joining the group at {}:{}",
            dp.env.rank, dp.env.world_size, dp.env.master_addr, dp.env.master_port
        ));
        let group = ProcessGroup::join(&dp.env, opts.device, dp.timeout)?;
        trainer = trainer.with_collective(Box::new(group), dp.bucket_bytes);
    }
    let spec_json = to_json("the training spec", spec)?;
    drive(&mut trainer, &spec_json, Some(base_dir), opts, hooks)?;
    if trainer.rank() != 0 {
        return Ok(());
    }
    let job = JobDir::new(opts.out);
    job.write_final(&job.checkpoint(trainer.step))
}
