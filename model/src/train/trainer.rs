//! The training loop of one job: base pretraining (whole U-Net, text-to-image) or SpatialLock
//! training (frozen base; grounding, perception and loss weights trainable per the config).
//!
//! Every random choice of step `s` (data order, flips, timesteps, noise, caption and grounding
//! dropout) is derived from (seed, s), so a run resumed from a checkpoint at step `s` continues
//! exactly like the uninterrupted run.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use spatiallock_protocol::expand::TrainSpec;
use spatiallock_protocol::trial::{BoxLoss, Precision, Trainable};

use super::ema::Ema;
use super::encoder_cache::{latent_record, CacheReport, EncoderCache};
use super::min_snr::{min_snr_weights, weighted_mse};
use crate::autocast::{autocast_bf16, to_f32};
use crate::data::rng::SplitMix64;
use crate::data::{Annotations, Dataset};
use crate::dist::{
    any_rank, average_gradients, broadcast_tensors, mean_over_ranks, shard, Collective, SingleRank,
    DEFAULT_BUCKET_BYTES,
};
use crate::error::ModelError;
use crate::hooks::StepMetrics;
use crate::nn::grounding::GroundingBatch;
use crate::nn::params::{set_trainable, unet_trainable};
use crate::nn::perception::targets::detection_loss;
use crate::nn::perception::ImageTargets;
use crate::nn::unet::GroundingInput;
use crate::optim::AdamW;
use crate::persist::record_store::{encoder_fingerprint, StoreKey};
use crate::pipeline::SpatialLockModel;

/// What is being trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole U-Net, text-to-image, no grounding (tiny bases).
    Pretrain,
    /// SpatialLock/GLIGEN modules on a frozen base.
    Train,
}

/// Optimisation settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Global batch per optimiser step.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay (never on the loss weights).
    pub weight_decay: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// Per-sample empty-caption probability.
    pub caption_dropout: f64,
    /// Whole-batch null-grounding probability.
    pub grounding_dropout: f64,
    /// Seed of all randomness.
    pub seed: u64,
    /// Image side in pixels.
    pub resolution: i64,
    /// Box regression loss of PoG.
    pub box_loss: BoxLoss,
    /// Module groups to train (Train mode).
    pub trainable: Vec<Trainable>,
    /// Numerical precision of the forward pass.
    pub precision: Precision,
    /// Min-SNR-γ weighting of the diffusion loss ([`super::min_snr`]); `None`: unweighted.
    pub min_snr_gamma: Option<f64>,
    /// Decay per optimiser step of the EMA of the trainable tensors ([`super::ema`]); `None`:
    /// no average.
    pub ema_decay: Option<f64>,
}

impl RunConfig {
    /// The settings of a SpatialLock training job.
    pub fn from_spec(spec: &TrainSpec) -> Self {
        let t = &spec.training;
        Self {
            steps: t.steps,
            batch_size: t.batch_size as usize,
            grad_accum: t.grad_accum.max(1) as usize,
            lr: t.lr,
            weight_decay: t.weight_decay,
            warmup_steps: t.warmup_steps,
            grad_clip: t.grad_clip,
            caption_dropout: t.caption_dropout,
            grounding_dropout: t.grounding_dropout,
            seed: spec.seed,
            resolution: i64::from(spec.resolution),
            box_loss: spec.pog.box_loss,
            trainable: t.trainable.clone(),
            precision: t.precision,
            min_snr_gamma: spec.loss.min_snr_gamma,
            ema_decay: t.ema_decay,
        }
    }

    /// Whether the forward pass runs under bf16 autocast on `device` (`auto`: on CUDA only;
    /// autocast is wired for the CPU and CUDA, other devices always run fp32).
    pub fn bf16_on(&self, device: tch::Device) -> bool {
        match self.precision {
            Precision::Auto => device.is_cuda(),
            Precision::Fp32 => false,
            Precision::Bf16 => matches!(device, tch::Device::Cpu | tch::Device::Cuda(_)),
        }
    }

    /// What [`RunConfig::bf16_on`] means for the record: `bf16-autocast` or `fp32`.
    pub fn precision_name(&self, device: tch::Device) -> &'static str {
        if self.bf16_on(device) {
            "bf16-autocast"
        } else {
            "fp32"
        }
    }

    fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

/// A training run over one dataset.
pub struct Trainer {
    /// The model.
    pub model: SpatialLockModel,
    data: Box<dyn Dataset>,
    /// The optimiser (its parameters are the trainable tensors).
    pub opt: AdamW,
    /// Settings.
    pub cfg: RunConfig,
    mode: Mode,
    /// Optimiser steps completed.
    pub step: u64,
    latents: EncoderCache,
    captions: EncoderCache,
    orders: HashMap<u64, Vec<usize>>,
    collective: Box<dyn Collective>,
    bucket_bytes: usize,
    /// The moving average of the trainable tensors, when `cfg.ema_decay` is set.
    pub ema: Option<Ema>,
}

impl Trainer {
    /// Prepares a run: marks trainable parameters and builds the optimiser over them.
    pub fn new(
        model: SpatialLockModel,
        data: Box<dyn Dataset>,
        cfg: RunConfig,
        mode: Mode,
    ) -> Result<Self, ModelError> {
        if data.is_empty() {
            return Err(ModelError::Input("the training dataset is empty".into()));
        }
        if cfg.batch_size == 0 || !cfg.batch_size.is_multiple_of(cfg.grad_accum) {
            return Err(ModelError::Input(format!(
                "batch_size {} must be a positive multiple of grad_accum {}",
                cfg.batch_size, cfg.grad_accum
            )));
        }
        let _ = set_trainable(&model.text.vs, |_| false);
        let mut params: Vec<(String, Tensor, f64)> = Vec::new();
        let groups = cfg.trainable.clone();
        let unet_rule: Box<dyn Fn(&str) -> bool + '_> = match mode {
            Mode::Pretrain => Box::new(|_| true),
            Mode::Train => Box::new(unet_trainable(&groups)),
        };
        set_trainable(&model.unet_vs, &unet_rule);
        let mut named: Vec<(String, Tensor)> = model
            .unet_vs
            .variables()
            .into_iter()
            .filter(|(n, _)| unet_rule(n))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        params.extend(
            named
                .into_iter()
                .map(|(n, t)| (format!("unet.{n}"), t, cfg.weight_decay)),
        );
        if let Some((_, vs)) = &model.perception {
            let on = mode == Mode::Train && cfg.trainable.contains(&Trainable::Perception);
            set_trainable(vs, |_| on);
            if on {
                let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                params.extend(
                    named
                        .into_iter()
                        .map(|(n, t)| (format!("perception.{n}"), t, cfg.weight_decay)),
                );
            }
        }
        if cfg.trainable.contains(&Trainable::LossWeights) && mode == Mode::Train {
            params.extend(model.weighting.parameters().into_iter().map(|(n, t)| (n, t, 0.0)));
        }
        drop(unet_rule);
        if params.is_empty() {
            return Err(ModelError::Input(
                "nothing to train: no trainable parameters in this configuration".into(),
            ));
        }
        let opt = AdamW::new(params);
        let ema = cfg.ema_decay.map(|d| Ema::new(d, &opt.params));
        Ok(Self {
            model,
            data,
            opt,
            ema,
            cfg,
            mode,
            step: 0,
            latents: EncoderCache::in_memory(),
            captions: EncoderCache::in_memory(),
            orders: HashMap::new(),
            collective: Box::new(SingleRank),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// Trains as one rank of a data-parallel group: each step trains on this rank's shard of
    /// the global batch and averages gradients in flat buckets of at most `bucket_bytes`. Call
    /// [`Trainer::broadcast_trainables`] before the first step (and after a resume).
    pub fn with_collective(mut self, collective: Box<dyn Collective>, bucket_bytes: usize) -> Self {
        self.collective = collective;
        self.bucket_bytes = bucket_bytes.max(1);
        self
    }

    /// This process's rank in its data-parallel group (0 with one rank): rank 0 alone writes
    /// checkpoints and reports.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Copies rank 0's trainable parameters (the learnable loss weights included) to every rank.
    ///
    /// Errors: [`ModelError::Collective`] when a rank is gone or stalled.
    pub fn broadcast_trainables(&mut self) -> Result<(), ModelError> {
        let mut params: Vec<Tensor> = self.opt.params.iter().map(|p| p.param.shallow_clone()).collect();
        broadcast_tensors(self.collective.as_mut(), &mut params, 0, self.bucket_bytes)
    }

    /// Restarts the EMA shadow (if any) from the current trainable parameters: call it after
    /// [`Trainer::broadcast_trainables`] so every rank averages the same weights.
    pub fn reset_ema(&mut self) {
        if let Some(ema) = &mut self.ema {
            ema.reset(&self.opt.params);
        }
    }

    /// The EMA tensors `(name, shadow)` in the optimiser's order, when averaging is on.
    pub fn ema_tensors(&self) -> Option<&[(String, Tensor)]> {
        self.ema.as_ref().map(|e| e.shadow.as_slice())
    }

    /// Runs `f` with the averaged weights in the model (when averaging is on; else the raw
    /// ones), then puts the raw weights back.
    pub fn with_ema_weights<T>(&self, f: impl FnOnce(&Self) -> T) -> T {
        let Some(ema) = &self.ema else {
            return f(self);
        };
        let raw: Vec<Tensor> = tch::no_grad(|| {
            self.opt
                .params
                .iter()
                .zip(&ema.shadow)
                .map(|(p, (_, shadow))| {
                    let raw = p.param.detach().copy();
                    p.param.shallow_clone().copy_(shadow);
                    raw
                })
                .collect()
        });
        let out = f(self);
        tch::no_grad(|| {
            for (p, raw) in self.opt.params.iter().zip(&raw) {
                p.param.shallow_clone().copy_(raw);
            }
        });
        out
    }

    /// Whether any rank asks to stop (every rank gets the same answer, so all stop at the same
    /// step).
    ///
    /// Errors: [`ModelError::Collective`].
    pub fn any_rank(&mut self, flag: bool) -> Result<bool, ModelError> {
        any_rank(self.collective.as_mut(), flag, self.model.device)
    }

    /// Keeps the VAE latents and caption embeddings in stores under `root`, shared with other
    /// runs on the same data, encoders and device type (pixel-space models keep their images in
    /// memory: there is nothing to encode).
    pub fn with_cache_dir(mut self, root: &std::path::Path) -> Result<Self, ModelError> {
        let device = self.model.device;
        if let Some((vae, vae_vs)) = &self.model.vae {
            let vae = encoder_fingerprint(vae.config(), vae_vs)?;
            let key = StoreKey::new("latents", self.data.image_fingerprint(), vae, device);
            self.latents = EncoderCache::on_disk(root, key)?;
        }
        let text = self.model.text.fingerprint()?;
        let key = StoreKey::new("captions", self.data.annotation_fingerprint(), text, device);
        self.captions = EncoderCache::on_disk(root, key)?;
        Ok(self)
    }

    /// What the encoder caches have done so far (for `encoder_cache.json`): where the inputs
    /// and caption embeddings came from, and the folders of the stores on disk.
    pub fn cache_report(&self) -> CacheReport {
        CacheReport {
            latents: self.latents.stats,
            captions: self.captions.stats,
            stores: [self.latents.store_dir(), self.captions.store_dir()]
                .into_iter()
                .flatten()
                .map(std::path::Path::to_path_buf)
                .collect(),
        }
    }

    /// The precision this run's forward pass uses on its device (recorded in checkpoints).
    pub fn precision_used(&self) -> &'static str {
        self.cfg.precision_name(self.model.device)
    }

    /// The dataset being trained on.
    pub fn data(&self) -> &dyn Dataset {
        self.data.as_ref()
    }

    /// The dataset index at global position `g` of the sample stream (a fresh permutation
    /// per epoch).
    fn index_at(&mut self, g: u64) -> usize {
        let n = self.data.len() as u64;
        let epoch = g / n;
        let seed = self.cfg.seed;
        let order = self.orders.entry(epoch).or_insert_with(|| {
            let mut rng = SplitMix64::from_parts(&[seed, 0xDA7A, epoch]);
            let mut idx: Vec<usize> = (0..n as usize).collect();
            for i in (1..idx.len()).rev() {
                idx.swap(i, rng.below(i + 1));
            }
            idx
        });
        let index = order[(g % n) as usize];
        if self.orders.len() > 2 {
            let keep = epoch.saturating_sub(1);
            self.orders.retain(|e, _| *e >= keep);
        }
        index
    }

    /// The U-Net input of a sample (latents through the frozen VAE, or pixels), cached, with
    /// the sample's annotations; a cached input spares decoding the image.
    fn input(&mut self, index: usize, flip: bool) -> Result<(Tensor, Annotations), ModelError> {
        let device = self.model.device;
        if let Some(x) = self.latents.get(latent_record(index, flip))? {
            return Ok((x.to_device(device), self.data.annotations(index)?));
        }
        let sample = self.data.get(index)?;
        let image = if flip {
            sample.image.flip([2])
        } else {
            sample.image.shallow_clone()
        };
        let image = image.unsqueeze(0).to_device(device);
        let x = match &self.model.vae {
            Some((vae, _)) => tch::no_grad(|| vae.encode_latents(&image)),
            None => image,
        };
        let x = x.squeeze_dim(0);
        self.latents.put(latent_record(index, flip), &x)?;
        Ok((x, sample.annotations()))
    }

    /// One optimiser step; returns its metrics.
    pub fn train_step(&mut self) -> Result<StepMetrics, ModelError> {
        let started = std::time::Instant::now();
        let step = self.step;
        let micro = self.cfg.batch_size / self.cfg.grad_accum;
        let mut sums = (0.0, 0.0, 0.0, false);
        for m in 0..self.cfg.grad_accum {
            let global: Vec<u64> = (0..micro)
                .map(|j| step * self.cfg.batch_size as u64 + (m * micro + j) as u64)
                .collect();
            let (loss, lg, lp) = self.micro_step(step, m as u64, &global)?;
            sums.0 += loss / self.cfg.grad_accum as f64;
            sums.1 += lg / self.cfg.grad_accum as f64;
            sums.2 += lp.unwrap_or(0.0) / self.cfg.grad_accum as f64;
            sums.3 |= lp.is_some();
        }
        // The global batch's losses (each rank's shard is the same size, so their mean): every
        // rank sees the same values, and a NaN on one rank stops them all at this step.
        let means = mean_over_ranks(self.collective.as_mut(), &[sums.0, sums.1, sums.2], self.model.device)?;
        (sums.0, sums.1, sums.2) = (means[0], means[1], means[2]);
        for (what, v) in [
            ("loss", sums.0),
            ("diffusion loss", sums.1),
            ("perception loss", sums.2),
        ] {
            if !v.is_finite() {
                return Err(ModelError::NonFinite {
                    step: step + 1,
                    what: what.into(),
                    value: v,
                });
            }
        }
        let mut params: Vec<Tensor> = self.opt.params.iter().map(|p| p.param.shallow_clone()).collect();
        let reduce_started = std::time::Instant::now();
        let allreduce_bytes = average_gradients(self.collective.as_mut(), &mut params, self.bucket_bytes)?;
        if let (true, tch::Device::Cuda(index)) = (allreduce_bytes > 0, self.model.device) {
            // NCCL returns once the all-reduce is queued: wait for it, so that its time is its own.
            tch::Cuda::synchronize(index as i64);
        }
        let allreduce_seconds = if allreduce_bytes > 0 {
            reduce_started.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let grad_norm = match self.cfg.grad_clip {
            Some(c) => self.opt.clip_grad_norm(c),
            None => self.opt.grad_norm(),
        };
        if !grad_norm.is_finite() {
            return Err(ModelError::NonFinite {
                step: step + 1,
                what: "gradient norm".into(),
                value: grad_norm,
            });
        }
        let lr = self.cfg.lr_at(step);
        self.opt.step(lr);
        self.opt.zero_grad();
        self.step += 1;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.opt.params, self.step);
        }
        let (lambda_g, lambda_p) = self.model.weighting.lambdas();
        let gates = self.gates();
        let gate_mean = if gates.is_empty() {
            0.0
        } else {
            gates.iter().map(|(_, g)| g.abs()).sum::<f64>() / gates.len() as f64
        };
        Ok(StepMetrics {
            step: self.step,
            loss: sums.0,
            loss_diffusion: sums.1,
            loss_perception: sums.3.then_some(sums.2),
            lambda_g,
            lambda_p,
            gate_mean,
            gates,
            lr,
            grad_norm,
            images_per_second: 0.0, // the run measures it (train::run)
            step_seconds: started.elapsed().as_secs_f64(),
            allreduce_seconds,
            allreduce_bytes,
        })
    }

    /// tanh(α) of every grounding gate.
    pub fn gates(&self) -> Vec<(String, f64)> {
        let mut g: Vec<(String, f64)> = self
            .model
            .unet_vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with("alpha_attn") || n.ends_with("alpha_dense"))
            .map(|(n, t)| (n, t.double_value(&[]).tanh()))
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        g
    }

    /// The text context `[B, L, C]` of a micro-batch's captions: a dropped caption gets the
    /// empty caption's; the others come from the caption cache. A missing caption is encoded on
    /// its own, so its embedding does not depend on which batch first needed it (batched
    /// matmuls can differ in the last bits with the batch's size).
    fn caption_context(&mut self, captions: &[(usize, Option<String>)]) -> Result<Tensor, ModelError> {
        let mut context: Vec<Option<Tensor>> = Vec::with_capacity(captions.len());
        let mut missing: Vec<(usize, usize, &str)> = Vec::new();
        for (slot, (index, caption)) in captions.iter().enumerate() {
            let found = match caption {
                None => Some(self.model.text.embed(&[""]).0.get(0)),
                Some(text) => {
                    let found = self.captions.get(*index as u64)?;
                    if found.is_none() {
                        missing.push((slot, *index, text));
                    }
                    found
                }
            };
            context.push(found);
        }
        for (slot, index, text) in missing {
            let c = self.model.text.encode(&[text]).0.get(0);
            self.captions.put(index as u64, &c)?;
            context[slot] = Some(c);
        }
        let device = self.model.device;
        let context: Vec<Tensor> = context.into_iter().flatten().map(|c| c.to_device(device)).collect();
        Ok(Tensor::stack(&context, 0))
    }

    /// One micro-batch: this rank's shard of the global micro-batch `global` (positions in the
    /// sample stream).
    fn micro_step(&mut self, step: u64, micro: u64, global: &[u64]) -> Result<(f64, f64, Option<f64>), ModelError> {
        let seed = self.cfg.seed;
        let mut rng = SplitMix64::from_parts(&[seed, 0x57E9, step, micro]);
        // Noise and timesteps come from our own generator, not libtorch's global one, so runs
        // in parallel threads stay reproducible.
        let mut noise_rng = SplitMix64::from_parts(&[seed, 0x70C4, step, micro]);
        // Every rank draws for the whole global micro-batch, in the order one rank does, and
        // keeps its shard's draws: data-parallel ranks see exactly what one rank would.
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let mine = shard(global.len(), rank, world);
        let positions: Vec<u64> = mine.iter().map(|&i| global[i]).collect();
        let draws: Vec<(bool, bool)> = global
            .iter()
            .map(|_| (rng.unit() < 0.5, rng.unit() < self.cfg.caption_dropout))
            .collect();
        let device = self.model.device;
        let res = self.cfg.resolution as f32;
        let max_objects = self.model.unet.grounding().max_objects.max(1) as usize;

        let mut inputs = Vec::with_capacity(positions.len());
        // (dataset index, caption); `None` for a dropped caption.
        let mut captions: Vec<(usize, Option<String>)> = Vec::with_capacity(positions.len());
        let mut grounding_batch = GroundingBatch::new(positions.len(), max_objects);
        let mut targets = Vec::with_capacity(positions.len());
        for (b, (&g, &i)) in positions.iter().zip(&mine).enumerate() {
            let index = self.index_at(g);
            let (flip, drop_caption) = draws[i];
            let (x, sample) = self.input(index, flip)?;
            inputs.push(x);
            captions.push((index, (!drop_caption).then(|| sample.caption.clone())));
            let mut pixel_boxes = Vec::new();
            let mut labels = Vec::new();
            for (k, (bx, phrase)) in sample.boxes.iter().zip(&sample.phrases).enumerate().take(max_objects) {
                let bx = if flip {
                    [1.0 - bx[2], bx[1], 1.0 - bx[0], bx[3]]
                } else {
                    *bx
                };
                grounding_batch.set(b, k, bx, phrase);
                pixel_boxes.extend(bx.iter().map(|v| v * res));
                labels.push(sample.labels[k]);
            }
            let g_count = labels.len() as i64;
            targets.push(ImageTargets {
                boxes: Tensor::from_slice(&pixel_boxes).view([g_count, 4]).to_device(device),
                labels: Tensor::from_slice(&labels).to_device(device),
            });
        }
        let b = positions.len() as i64;
        let x0 = Tensor::stack(&inputs, 0);
        let context = self.caption_context(&captions)?;
        let train_steps = self.model.schedule.len() as usize;
        let t_all: Vec<i64> = global.iter().map(|_| noise_rng.below(train_steps) as i64).collect();
        let per_sample = x0.numel() / positions.len().max(1);
        let noise_all = noise_rng.normals(per_sample * global.len());
        let t: Vec<i64> = mine.iter().map(|&i| t_all[i]).collect();
        let t = Tensor::from_slice(&t);
        let noise: Vec<f32> = mine
            .iter()
            .flat_map(|&i| noise_all[i * per_sample..(i + 1) * per_sample].iter().copied())
            .collect();
        let noise = Tensor::from_slice(&noise).view(x0.size().as_slice()).to_device(device);
        let noisy = self.model.schedule.add_noise(&x0, &noise, &t);
        let t = t.to_device(device);

        let grounded =
            self.mode == Mode::Train && self.model.unet.grounding().kind != crate::nn::transformer::FuserKind::Off;
        let null_grounding = rng.unit() < self.cfg.grounding_dropout;
        let boxes_t = grounding_batch.boxes(device);
        let masks_t = grounding_batch.masks(device);
        let masks_t = if null_grounding { masks_t.zeros_like() } else { masks_t };
        let phrase_emb = if grounded {
            self.model.text.grounding_phrases(&grounding_batch, &masks_t)
        } else {
            Tensor::zeros([b, max_objects as i64, 1], (Kind::Float, device))
        };
        let grounding = grounded.then_some(GroundingInput {
            boxes: &boxes_t,
            phrases: &phrase_emb,
            masks: &masks_t,
            scale: 1.0,
        });
        let context = context.to_device(device);
        let want_perception = self.mode == Mode::Train && self.model.perception.is_some();
        let resolution = (self.cfg.resolution, self.cfg.resolution);
        let forward = || -> Result<_, ModelError> {
            let out = self.model.unet.forward(&noisy, &t, &context, grounding)?;
            let pred = match &self.model.perception {
                Some((head, _)) if want_perception => Some(head.forward(&out.down, resolution)),
                _ => None,
            };
            Ok((out.eps, pred))
        };
        let (eps, pred) = if self.cfg.bf16_on(device) {
            autocast_bf16(device, forward)?
        } else {
            forward()?
        };
        // Losses in fp32 whatever precision the forward ran in.
        let loss_g = match self.cfg.min_snr_gamma {
            Some(gamma) => weighted_mse(
                &to_f32(&eps),
                &noise,
                &min_snr_weights(&self.model.schedule, &t, gamma, device),
            ),
            None => (to_f32(&eps) - &noise).square().mean(Kind::Float),
        };
        let loss_p = pred.map(|mut pred| {
            pred.cls = to_f32(&pred.cls);
            pred.reg = to_f32(&pred.reg);
            detection_loss(&pred, &targets, self.cfg.box_loss).total()
        });
        let total = match self.mode {
            Mode::Pretrain => loss_g.shallow_clone(),
            Mode::Train => self.model.weighting.combine(&loss_g, loss_p.as_ref()),
        };
        (&total / self.cfg.grad_accum as f64).backward();
        Ok((
            total.double_value(&[]),
            loss_g.double_value(&[]),
            loss_p.map(|l| l.double_value(&[])),
        ))
    }
}
