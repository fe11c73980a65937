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
    // The weight average starts from those trainables, or continues the checkpoint's.
    trainer.reset_ema();
    if let (Some(dir), Some(ema)) = (opts.resume, trainer.ema.as_mut()) {
        match checkpoint::read_ema(dir)? {
            Some(saved) => ema.load(&saved, &dir.join(checkpoint::EMA_FILE))?,
            None => hooks.log(&format!(
                "{} has no averaged weights: the EMA (decay {}) starts from its weights at step {}",
                dir.display(),
                ema.decay,
                trainer.step
            )),
        }
    }
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
        checkpoint::save(&dir, &trainer.opt, trainer.ema_tensors(), &state).map(|()| dir)
    };
    let (start, first_step) = (Instant::now(), trainer.step);
    while trainer.step < trainer.cfg.steps {
        let mut metrics = trainer.train_step()?;
        let images = (metrics.step - first_step) as f64 * trainer.cfg.batch_size as f64;
        metrics.images_per_second = images / start.elapsed().as_secs_f64().max(1e-9);
        hooks.rank_step(trainer.rank(), &metrics);
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

/// Pretrains a tiny base; on completion [`JobDir::base`] is a diffusers model folder (of the
/// EMA weights when `pretrain.ema_decay` is set).
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
        min_snr_gamma: p.min_snr_gamma,
        ema_decay: p.ema_decay,
    };
    let mut trainer = Trainer::new(model, data, cfg, Mode::Pretrain)?;
    if let Some(root) = opts.cache_dir {
        trainer = trainer.with_cache_dir(root)?;
    }
    let spec_json = to_json("the pretraining spec", spec)?;
    drive(&mut trainer, &spec_json, None, opts, hooks)?;
    // The base is the averaged U-Net when `pretrain.ema_decay` is set (every U-Net tensor is
    // trainable in pretraining, so the average covers the whole network).
    trainer.with_ema_weights(|t| {
        save_base(
            &JobDir::new(opts.out).base(),
            &spec.arch,
            &t.model.unet_vs,
            &t.model.text,
        )
    })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tch::Tensor;

    use super::*;
    use crate::hooks::StepMetrics;
    use crate::persist::checkpoint::{EMA_FILE, TRAINABLE_FILE};
    use spatiallock_protocol::expand::{train_spec, trial_from_value};
    use spatiallock_protocol::trial::builtin_model;

    #[derive(Default)]
    struct Record {
        steps: u64,
        stop_at: Option<u64>,
        logs: Vec<String>,
    }

    impl Hooks for Record {
        fn metric(&mut self, _: &str, _: u64, _: f64) {}
        fn train_step(&mut self, m: &StepMetrics) {
            self.steps = m.step;
        }
        fn checkpoint_committed(&mut self, _: u64, _: &Path) {}
        fn log(&mut self, line: &str) {
            self.logs.push(line.to_string());
        }
        fn should_stop(&mut self) -> bool {
            self.stop_at == Some(self.steps)
        }
    }

    fn tensors(path: &Path) -> HashMap<String, Tensor> {
        Tensor::read_safetensors(path).unwrap().into_iter().collect()
    }

    fn opts<'a>(out: &'a Path, resume: Option<&'a Path>, checkpoint_every: u64) -> RunOptions<'a> {
        RunOptions {
            out,
            resume,
            checkpoint_every,
            device: Device::Cpu,
            cache_dir: None,
            data_parallel: None,
        }
    }

    #[test]
    fn ema_and_min_snr_runs_save_the_average_and_resume_it_exactly() {
        tch::set_num_threads(1);
        let root = tempfile::tempdir().unwrap();
        let data = serde_json::json!({"kind": "shapes", "split": "train", "count": 8, "seed": 5, "variant": "simple"});

        // Pretraining with both levers: the base is the average, not the last weights.
        let spec = PretrainSpec {
            arch: builtin_model("tiny").unwrap(),
            pretrain: serde_json::from_value(serde_json::json!(
                {"steps": 4, "batch_size": 4, "lr": 2e-3, "ema_decay": 0.9, "min_snr_gamma": 5.0}
            ))
            .unwrap(),
            data: serde_json::from_value(data.clone()).unwrap(),
            resolution: 32,
        };
        let pre = root.path().join("pretrain");
        pretrain(&spec, &opts(&pre, None, 0), &mut Record::default()).unwrap();
        let job = JobDir::new(&pre);
        let base = tensors(&job.base().join("unet/diffusion_pytorch_model.safetensors"));
        let (ema, raw) = (
            tensors(&job.checkpoint(4).join(EMA_FILE)),
            tensors(&job.checkpoint(4).join(TRAINABLE_FILE)),
        );
        assert_eq!(base.len(), ema.len());
        let mut differs = false;
        for (name, t) in &base {
            assert!(t.equal(&ema[&format!("unet.{name}")]), "{name}");
            differs |= !t.equal(&raw[&format!("unet.{name}")]);
        }
        assert!(differs, "the averaged base differs from the last weights");

        // Training: stopped at step 3 and resumed, the average matches the uninterrupted run's.
        let trial = |ema_decay: Option<f64>| {
            let cfg = trial_from_value(serde_json::json!({
                "seed": 1,
                "model": {"arch": "tiny", "base": {"path": "unused"}},
                "data": {"train": data, "val": [{"kind": "shapes", "split": "val", "count": 4}], "resolution": 32},
                "training": {"steps": 6, "batch_size": 4, "lr": 3e-3, "ema_decay": ema_decay},
                "loss": {"min_snr_gamma": 5.0},
            }))
            .unwrap();
            train_spec(&cfg, cfg.arch().unwrap())
        };
        let with_ema = trial(Some(0.9));
        let full = root.path().join("full");
        train(&with_ema, &job.base(), &opts(&full, None, 3), &mut Record::default()).unwrap();
        let split = root.path().join("split");
        let mut first = Record {
            stop_at: Some(3),
            ..Record::default()
        };
        let stopped = train(&with_ema, &job.base(), &opts(&split, None, 3), &mut first);
        assert!(matches!(stopped, Err(ModelError::Stopped(_))), "{stopped:?}");
        let at3 = JobDir::new(&split).checkpoint(3);
        train(
            &with_ema,
            &job.base(),
            &opts(&split, Some(&at3), 3),
            &mut Record::default(),
        )
        .unwrap();
        let (a, b) = (JobDir::new(&full).checkpoint(6), JobDir::new(&split).checkpoint(6));
        for file in [EMA_FILE, TRAINABLE_FILE] {
            let (ta, tb) = (tensors(&a.join(file)), tensors(&b.join(file)));
            assert_eq!(ta.len(), tb.len());
            for (name, t) in &ta {
                assert!(t.equal(&tb[name]), "{file} {name}");
            }
        }

        // Sampling reads the average.
        assert_eq!(crate::pipeline::sampling_weights_file(&a), a.join(EMA_FILE));
        let (model, _) = crate::pipeline::load_for_sampling(&a, Device::Cpu).unwrap();
        let vars = model.unet_vs.variables();
        let averaged = tensors(&a.join(EMA_FILE));
        let raw = tensors(&a.join(TRAINABLE_FILE));
        let mut checked = 0;
        for (name, t) in &averaged {
            if let Some(key) = name.strip_prefix("unet.") {
                assert!(vars[key].equal(t), "{name}");
                checked += usize::from(!t.equal(&raw[name]));
            }
        }
        assert!(checked > 0, "some averaged U-Net tensor differs from the raw one");

        // A checkpoint without an average: the average starts from its weights, and says so.
        let plain = root.path().join("plain");
        let mut first = Record {
            stop_at: Some(3),
            ..Record::default()
        };
        let _ = train(&trial(None), &job.base(), &opts(&plain, None, 3), &mut first);
        let at3 = JobDir::new(&plain).checkpoint(3);
        assert!(!at3.join(EMA_FILE).exists());
        let mut resumed = Record::default();
        train(&with_ema, &job.base(), &opts(&plain, Some(&at3), 3), &mut resumed).unwrap();
        assert!(
            resumed.logs.iter().any(|l| l.contains("has no averaged weights")),
            "{:?}",
            resumed.logs
        );
        assert!(JobDir::new(&plain).checkpoint(6).join(EMA_FILE).is_file());
    }
}
