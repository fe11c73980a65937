//! Benchmarks of the training step and of sampling on any model architecture, device and
//! precision, with random weights and inputs: the step is ε-MSE (+ the PoG detection loss) with
//! AdamW on the grounding modules (+ the perception head); sampling is DDIM + CFG with scheduled
//! grounding, decoded by the VAE when the model has one. The CLI times diffusers on the same
//! configuration in the same run and prints ratios (`spatiallock bench`, `scripts/gpu-check.sh`).

use std::time::Instant;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use spatiallock_protocol::model_config::ModelConfig;
use spatiallock_protocol::trial::BoxLoss;

use crate::autocast::{autocast_bf16, to_f32};
use crate::diffusion::sampler::{denoise, Guidance, SampleSettings};
use crate::diffusion::schedule::NoiseSchedule;
use crate::dist::{average_gradients, broadcast_tensors, Collective, SingleRank, DEFAULT_BUCKET_BYTES};
use crate::error::ModelError;
use crate::nn::params::{count_params, is_grounding_param, set_trainable};
use crate::nn::perception::targets::detection_loss;
use crate::nn::perception::{ImageTargets, PerceptionHead};
use crate::nn::transformer::FuserKind;
use crate::nn::unet::{GroundingInput, GroundingSetup, UNet2DConditionModel};
use crate::nn::vae::AutoencoderKL;
use crate::optim::AdamW;
use crate::pipeline::down_output_sizes;
use crate::runtime::cuda_memory_in_use;

/// Which model a benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// GLIGEN: gated self-attention in every attention block.
    Gligen,
    /// SpatialLock's U-Net: Grounding-Attention in the last attention down and first attention
    /// up block (the paper's placement, §3.2).
    Spatiallock,
    /// SpatialLock with the PoG perception head (Enh-Fusion on) and its loss.
    SpatiallockPog,
}

/// What a benchmark runs on: the architecture, device, precision and input sizes.
#[derive(Debug, Clone)]
pub struct BenchSetup {
    /// The architecture (random weights); its text encoder's sizes set the context shape.
    pub arch: ModelConfig,
    /// Where to run.
    pub device: Device,
    /// Forward passes under bf16 autocast (losses and weights stay fp32).
    pub bf16: bool,
    /// Images per training step (sampling makes one image).
    pub batch: i64,
    /// Side of the U-Net input in cells (latent side with a VAE, pixels without).
    pub size: i64,
    /// Boxes per image, all valid.
    pub boxes: i64,
    /// DDIM steps when sampling.
    pub steps: i64,
    /// Fraction of the sampling steps with grounding on (GLIGEN's scheduled sampling β).
    pub grounding_fraction: f64,
}

impl BenchSetup {
    /// `arch` on `device` in fp32 with the defaults of `spatiallock bench`: batch 16, the
    /// model's sample size, 8 boxes, 50 DDIM steps, grounding on for the first 30% of them.
    pub fn new(arch: ModelConfig, device: Device) -> Self {
        let size = i64::from(arch.unet.sample_size);
        Self {
            arch,
            device,
            bf16: false,
            batch: 16,
            size,
            boxes: 8,
            steps: 50,
            grounding_fraction: 0.3,
        }
    }

    /// Pixels per U-Net cell: 2^(VAE levels − 1), or 1 in pixel space.
    fn vae_factor(&self) -> i64 {
        i64::from(self.arch.vae_factor())
    }

    /// Side of the generated image in pixels.
    pub fn image_side(&self) -> i64 {
        self.size * self.vae_factor()
    }

    /// Text context `[B, L, C]` shape pieces: L tokens of width C.
    fn context_dims(&self) -> (i64, i64) {
        (
            i64::from(self.arch.text_encoder.max_position_embeddings),
            i64::from(self.arch.unet.cross_attention_dim),
        )
    }

    fn phrase_dim(&self) -> i64 {
        i64::from(self.arch.text_encoder.hidden_size)
    }

    /// Checks the sizes the model can take; `sampling` also checks the DDIM steps and the
    /// grounding fraction, which only sampling uses.
    ///
    /// Errors: [`ModelError::Input`] naming the value at fault.
    pub fn check(&self, sampling: bool) -> Result<(), ModelError> {
        let multiple = i64::from(self.arch.resolution_multiple() / self.arch.vae_factor().max(1));
        for (name, value) in [("batch", self.batch), ("boxes", self.boxes), ("size", self.size)] {
            if value < 1 {
                return Err(ModelError::Input(format!(
                    "bench: {name} must be at least 1, got {value}"
                )));
            }
        }
        if sampling && self.steps < 1 {
            return Err(ModelError::Input(format!(
                "bench: steps must be at least 1, got {}",
                self.steps
            )));
        }
        if self.size % multiple.max(1) != 0 {
            return Err(ModelError::Input(format!(
                "bench: size {} is not a multiple of {multiple}, which the U-Net's downsampling needs",
                self.size
            )));
        }
        if sampling && !(0.0..=1.0).contains(&self.grounding_fraction) {
            return Err(ModelError::Input(format!(
                "bench: grounding fraction {} is outside [0, 1]",
                self.grounding_fraction
            )));
        }
        Ok(())
    }
}

/// One timing.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// What ran.
    pub variant: Variant,
    /// Seconds per unit (wall clock, the device synchronised after each unit).
    pub seconds: f64,
    /// `s/step` or `s/image`.
    pub unit: &'static str,
    /// Timed iterations (after one warm-up).
    pub iters: usize,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// On CUDA: device memory in use after the timed iterations, in bytes (see
    /// [`cuda_memory_in_use`]: the caching allocator's peak reservation plus the CUDA context).
    pub cuda_memory_bytes: Option<u64>,
}

fn build(setup: &BenchSetup, variant: Variant) -> (UNet2DConditionModel, VarStore) {
    let arch = &setup.arch;
    let blocks = arch.unet.attention_blocks();
    let (kind, blocks) = match variant {
        Variant::Gligen => (FuserKind::Gligen, blocks),
        _ => {
            let last_down = blocks.iter().rev().find(|b| b.starts_with("down.")).cloned();
            let first_up = blocks.iter().find(|b| b.starts_with("up.")).cloned();
            (FuserKind::SpatialLock, last_down.into_iter().chain(first_up).collect())
        }
    };
    let mut grounding = GroundingSetup::from_model(arch, kind, blocks);
    // diffusers' GLIGEN projection is 512 wide whatever the model; match it for both.
    grounding.mlp_hidden = 512;
    tch::manual_seed(0);
    let vs = VarStore::new(setup.device);
    let unet = UNet2DConditionModel::new(&vs.root(), &arch.unet, grounding);
    (unet, vs)
}

fn synchronize(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Random boxes `[b, N, 4]` (normalised xyxy), phrase embeddings `[b, N, P]` and masks `[b, N]`.
fn random_grounding(setup: &BenchSetup, b: i64) -> (Tensor, Tensor, Tensor) {
    let opts = (Kind::Float, setup.device);
    let xy = Tensor::rand([b, setup.boxes, 2], opts) * 0.5;
    let boxes = Tensor::cat(&[&xy, &(&xy + 0.3)], -1);
    (
        boxes,
        Tensor::randn([b, setup.boxes, setup.phrase_dim()], opts),
        Tensor::ones([b, setup.boxes], opts),
    )
}

/// Runs `unit` once to warm up, then `iters` times, and returns seconds per unit.
fn time(device: Device, iters: usize, mut unit: impl FnMut() -> Result<(), ModelError>) -> Result<f64, ModelError> {
    unit()?;
    synchronize(device);
    let start = Instant::now();
    for _ in 0..iters {
        unit()?;
        synchronize(device);
    }
    Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
}

fn cuda_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(n) => cuda_memory_in_use(n),
        _ => None,
    }
}

/// Times the training step of `variant` on `setup`.
///
/// Errors: [`ModelError::Input`] for sizes that do not fit the model; libtorch errors of the forward.
pub fn train_step(setup: &BenchSetup, variant: Variant, iters: usize) -> Result<BenchResult, ModelError> {
    train_step_on(setup, variant, iters, &mut SingleRank, DEFAULT_BUCKET_BYTES).map(|(r, _)| r)
}

/// [`train_step`] as one rank of `collective`, DDP-style: rank 0's trainables are broadcast
/// first, each rank trains on `batch / world_size` images (the global batch is `setup.batch`)
/// and gradients are averaged in buckets of `bucket_bytes` after the backward pass. Returns the
/// result and the seconds per step spent averaging gradients.
///
/// Errors: as [`train_step`]; [`ModelError::Input`] when the batch does not split evenly;
/// [`ModelError::Collective`] when another rank fails.
pub fn train_step_on(
    setup: &BenchSetup,
    variant: Variant,
    iters: usize,
    collective: &mut dyn Collective,
    bucket_bytes: usize,
) -> Result<(BenchResult, f64), ModelError> {
    setup.check(false)?;
    let world = collective.world_size() as i64;
    if setup.batch % world != 0 {
        return Err(ModelError::Input(format!(
            "batch {} does not split over {world} ranks",
            setup.batch
        )));
    }
    let (unet, vs) = build(setup, variant);
    let trainable = set_trainable(&vs, is_grounding_param);
    let mut params: Vec<(String, Tensor, f64)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| is_grounding_param(n))
        .map(|(n, t)| (n, t, 0.0))
        .collect();
    let (b, side, image) = (setup.batch / world, setup.size, setup.image_side());
    let head = (variant == Variant::SpatiallockPog).then(|| {
        let arch = &setup.arch;
        let pvs = VarStore::new(setup.device);
        let channels: Vec<i64> = arch.unet.block_out_channels.iter().map(|&c| i64::from(c)).collect();
        let head = PerceptionHead::new(
            &pvs.root(),
            &arch.perception,
            &channels,
            &down_output_sizes(arch, side),
            12,
            true,
        );
        params.extend(
            pvs.variables()
                .into_iter()
                .map(|(n, t)| (format!("perception.{n}"), t, 0.0)),
        );
        (head, pvs)
    });
    let extra = head.as_ref().map_or(0, |(_, v)| count_params(v, |_| true));
    let mut opt = AdamW::new(params);
    let mut tensors: Vec<Tensor> = opt.params.iter().map(|p| p.param.shallow_clone()).collect();
    broadcast_tensors(collective, &mut tensors, 0, bucket_bytes)?;
    let mut averaging = 0.0f64;
    let schedule = NoiseSchedule::stable_diffusion();
    let opts = (Kind::Float, setup.device);
    let channels = i64::from(setup.arch.unet.in_channels);
    let (l, c) = setup.context_dims();
    let x0 = Tensor::randn([b, channels, side, side], opts);
    let ctx = Tensor::randn([b, l, c], opts);
    let (boxes, phrases, masks) = random_grounding(setup, b);
    let targets: Vec<ImageTargets> = (0..b)
        .map(|i| ImageTargets {
            boxes: boxes.get(i) * image as f64,
            labels: Tensor::zeros([setup.boxes], (Kind::Int64, setup.device)),
        })
        .collect();
    let step = || -> Result<(), ModelError> {
        let t = Tensor::randint(1000, [b], (Kind::Int64, setup.device));
        let noise = x0.randn_like();
        let noisy = schedule.add_noise(&x0, &noise, &t);
        let g = GroundingInput {
            boxes: &boxes,
            phrases: &phrases,
            masks: &masks,
            scale: 1.0,
        };
        let forward = || -> Result<_, ModelError> {
            let out = unet.forward(&noisy, &t, &ctx, Some(g))?;
            let pred = head.as_ref().map(|(head, _)| head.forward(&out.down, (image, image)));
            Ok((out.eps, pred))
        };
        let (eps, pred) = if setup.bf16 {
            autocast_bf16(setup.device, forward)?
        } else {
            forward()?
        };
        let diffusion = (to_f32(&eps) - &noise).square().mean(Kind::Float);
        let loss = match pred {
            Some(mut pred) => {
                pred.cls = to_f32(&pred.cls);
                pred.reg = to_f32(&pred.reg);
                diffusion + detection_loss(&pred, &targets, BoxLoss::Giou).total()
            }
            None => diffusion,
        };
        loss.backward();
        let started = Instant::now();
        average_gradients(collective, &mut tensors, bucket_bytes)?;
        synchronize(setup.device);
        averaging += started.elapsed().as_secs_f64();
        opt.step(1e-4);
        opt.zero_grad();
        Ok(())
    };
    let mut step = step;
    let seconds = time(setup.device, iters, &mut step)?;
    let result = BenchResult {
        variant,
        seconds,
        unit: "s/step",
        iters,
        trainable_params: trainable + extra,
        threads: tch::get_num_threads(),
        cuda_memory_bytes: cuda_memory(setup.device),
    };
    // The warm-up step's averaging is not counted.
    Ok((result, averaging / (iters + 1) as f64))
}

/// Seconds per all-reduce (sum) of a float32 tensor of `bytes` bytes over `collective`, after
/// one warm-up, on `device`.
///
/// Errors: [`ModelError::Collective`], [`ModelError::Torch`].
pub fn all_reduce_seconds(
    collective: &mut dyn Collective,
    bytes: usize,
    iters: usize,
    device: Device,
) -> Result<f64, ModelError> {
    let mut t = Tensor::f_ones([(bytes / 4).max(1) as i64], (Kind::Float, device))?;
    time(device, iters, || collective.all_reduce_sum(&mut t))
}

/// Times DDIM + CFG sampling of one image with `variant` on `setup` (plus the VAE decode to
/// pixels when the model has a VAE).
///
/// Errors: [`ModelError::Input`] for sizes that do not fit the model; libtorch errors of the forward.
pub fn sample(setup: &BenchSetup, variant: Variant, iters: usize) -> Result<BenchResult, ModelError> {
    setup.check(true)?;
    let (unet, vs) = build(setup, variant);
    let trainable = count_params(&vs, is_grounding_param);
    let vae = setup.arch.vae.as_ref().map(|config| {
        let vvs = VarStore::new(setup.device);
        (AutoencoderKL::new(&vvs.root(), config), vvs)
    });
    let schedule = NoiseSchedule::stable_diffusion();
    let (l, c) = setup.context_dims();
    let ctx = Tensor::randn([2, l, c], (Kind::Float, setup.device));
    let (boxes, phrases, masks) = random_grounding(setup, 1);
    let boxes2 = Tensor::cat(&[&boxes, &boxes], 0);
    let phrases2 = Tensor::cat(&[phrases.zeros_like(), phrases.shallow_clone()], 0);
    let masks2 = Tensor::cat(&[masks.zeros_like(), masks.shallow_clone()], 0);
    let settings = SampleSettings {
        steps: setup.steps,
        guidance: 7.5,
        grounding_fraction: setup.grounding_fraction,
        seed: 0,
        resolution: setup.image_side(),
    };
    let channels = i64::from(setup.arch.unet.in_channels);
    let image = || -> Result<(), ModelError> {
        let x = Tensor::randn([1, channels, setup.size, setup.size], (Kind::Float, setup.device));
        let guidance = Guidance {
            boxes: &boxes2,
            phrases: &phrases2,
            masks: &masks2,
        };
        let run = || -> Result<(), ModelError> {
            let latents = denoise(&unet, &schedule, x, &ctx, guidance, settings)?;
            if let Some((vae, _)) = &vae {
                let _ = tch::no_grad(|| vae.decode_latents(&latents));
            }
            Ok(())
        };
        if setup.bf16 {
            autocast_bf16(setup.device, run)
        } else {
            run()
        }
    };
    let seconds = time(setup.device, iters, image)?;
    Ok(BenchResult {
        variant,
        seconds,
        unit: "s/image",
        iters,
        trainable_params: trainable,
        threads: tch::get_num_threads(),
        cuda_memory_bytes: cuda_memory(setup.device),
    })
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
