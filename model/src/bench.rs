//! Benchmarks on the bench-tiny configuration (`configs/models/bench-tiny.yaml`): the training
//! step (random inputs, batch 16, 8 boxes, ε-MSE, AdamW on the grounding modules, optionally
//! with PoG) and 50-step DDIM + CFG sampling of one image. The CLI times diffusers on the same
//! configuration in the same run and prints ratios.

use std::time::Instant;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use spatiallock_protocol::trial::{builtin_model, BoxLoss};

use crate::diffusion::sampler::{denoise, Guidance, SampleSettings};
use crate::diffusion::schedule::NoiseSchedule;
use crate::error::ModelError;
use crate::nn::params::{is_grounding_param, set_trainable};
use crate::nn::perception::targets::detection_loss;
use crate::nn::perception::{ImageTargets, PerceptionHead};
use crate::nn::transformer::FuserKind;
use crate::nn::unet::{GroundingInput, GroundingSetup, UNet2DConditionModel};
use crate::pipeline::down_output_sizes;
use crate::train::adamw::AdamW;

/// Which model a benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// GLIGEN: gated self-attention in every attention block.
    Gligen,
    /// SpatialLock's U-Net: Grounding-Attention in the last attention down and first attention up block.
    Spatiallock,
    /// SpatialLock with the PoG perception head and its loss.
    SpatiallockPog,
}

/// One timing.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// What ran.
    pub variant: Variant,
    /// Seconds per unit.
    pub seconds: f64,
    /// `s/step` or `s/image`.
    pub unit: &'static str,
    /// Timed iterations (after one warm-up).
    pub iters: usize,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// libtorch intra-op threads.
    pub threads: i32,
}

const B: i64 = 16;
const N: i64 = 8;
const L: i64 = 16;

fn build(variant: Variant) -> Result<(UNet2DConditionModel, VarStore, GroundingSetup), ModelError> {
    let arch = builtin_model("bench-tiny").ok_or_else(|| ModelError::Input("bench-tiny config missing".into()))?;
    let blocks = arch.unet.attention_blocks();
    let (kind, blocks) = match variant {
        Variant::Gligen => (FuserKind::Gligen, blocks),
        _ => {
            let last_down = blocks.iter().rev().find(|b| b.starts_with("down.")).cloned();
            let first_up = blocks.iter().find(|b| b.starts_with("up.")).cloned();
            (FuserKind::SpatialLock, last_down.into_iter().chain(first_up).collect())
        }
    };
    let mut setup = GroundingSetup::from_model(&arch, kind, blocks);
    // diffusers' GLIGEN projection is 512 wide whatever the model; match it for both.
    setup.mlp_hidden = 512;
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet2DConditionModel::new(&vs.root(), &arch.unet, setup.clone());
    Ok((unet, vs, setup))
}

fn random_grounding(b: i64) -> (Tensor, Tensor, Tensor) {
    let xy = Tensor::rand([b, N, 2], (Kind::Float, Device::Cpu)) * 0.5;
    let boxes = Tensor::cat(&[&xy, &(&xy + 0.3)], -1);
    (
        boxes,
        Tensor::randn([b, N, 128], (Kind::Float, Device::Cpu)),
        Tensor::ones([b, N], (Kind::Float, Device::Cpu)),
    )
}

/// Times the training step of `variant`.
pub fn train_step(variant: Variant, iters: usize) -> Result<BenchResult, ModelError> {
    let (unet, vs, _) = build(variant)?;
    let trainable = set_trainable(&vs, is_grounding_param);
    let mut params: Vec<(String, Tensor, f64)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| is_grounding_param(n))
        .map(|(n, t)| (n, t, 0.0))
        .collect();
    let head = if variant == Variant::SpatiallockPog {
        let arch = builtin_model("bench-tiny").ok_or_else(|| ModelError::Input("bench-tiny config missing".into()))?;
        let pvs = VarStore::new(Device::Cpu);
        let channels: Vec<i64> = arch.unet.block_out_channels.iter().map(|&c| i64::from(c)).collect();
        let head = PerceptionHead::new(
            &pvs.root(),
            &arch.perception,
            &channels,
            &down_output_sizes(&arch, 32),
            12,
            true,
        );
        params.extend(
            pvs.variables()
                .into_iter()
                .map(|(n, t)| (format!("perception.{n}"), t, 0.0)),
        );
        Some((head, pvs))
    } else {
        None
    };
    let extra: i64 = head
        .as_ref()
        .map(|(_, v)| crate::nn::params::count_params(v, |_| true))
        .unwrap_or(0);
    let mut opt = AdamW::new(params);
    let schedule = NoiseSchedule::stable_diffusion();
    let x0 = Tensor::randn([B, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ctx = Tensor::randn([B, L, 128], (Kind::Float, Device::Cpu));
    let (boxes, phrases, masks) = random_grounding(B);
    let targets: Vec<ImageTargets> = (0..B)
        .map(|i| ImageTargets {
            boxes: boxes.get(i) * 32.0,
            labels: Tensor::zeros([N], (Kind::Int64, Device::Cpu)),
        })
        .collect();
    let mut step = || -> Result<(), ModelError> {
        let t = Tensor::randint(1000, [B], (Kind::Int64, Device::Cpu));
        let noise = x0.randn_like();
        let a = schedule.alphas_cumprod.index_select(0, &t).view([B, 1, 1, 1]);
        let one_minus: Tensor = 1.0 - &a;
        let noisy = a.sqrt() * &x0 + one_minus.sqrt() * &noise;
        let g = GroundingInput {
            boxes: &boxes,
            phrases: &phrases,
            masks: &masks,
            scale: 1.0,
        };
        let out = unet.forward(&noisy, &t, &ctx, Some(g))?;
        let diffusion = (&out.eps - &noise).square().mean(Kind::Float);
        let loss = match &head {
            Some((head, _)) => {
                let pred = head.forward(&out.down, (32, 32));
                diffusion + detection_loss(&pred, &targets, BoxLoss::Giou).total()
            }
            None => diffusion,
        };
        loss.backward();
        opt.step(1e-4);
        opt.zero_grad();
        Ok(())
    };
    step()?;
    let start = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    Ok(BenchResult {
        variant,
        seconds: start.elapsed().as_secs_f64() / iters.max(1) as f64,
        unit: "s/step",
        iters,
        trainable_params: trainable + extra,
        threads: tch::get_num_threads(),
    })
}

/// Times 50-step DDIM + CFG sampling of one image with `variant`.
pub fn sample(variant: Variant, iters: usize) -> Result<BenchResult, ModelError> {
    let (unet, vs, _) = build(variant)?;
    let trainable = crate::nn::params::count_params(&vs, is_grounding_param);
    let schedule = NoiseSchedule::stable_diffusion();
    let ctx = Tensor::randn([2, L, 128], (Kind::Float, Device::Cpu));
    let (boxes, phrases, masks) = random_grounding(1);
    let boxes2 = Tensor::cat(&[&boxes, &boxes], 0);
    let phrases2 = Tensor::cat(&[phrases.zeros_like(), phrases.shallow_clone()], 0);
    let masks2 = Tensor::cat(&[masks.zeros_like(), masks.shallow_clone()], 0);
    // Grounding on for every step, like the reference loop (scheduled grounding does not change the cost).
    let settings = SampleSettings {
        steps: 50,
        guidance: 7.5,
        grounding_fraction: 1.0,
        seed: 0,
        resolution: 32,
    };
    let image = || {
        let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        denoise(
            &unet,
            &schedule,
            x,
            &ctx,
            Guidance {
                boxes: &boxes2,
                phrases: &phrases2,
                masks: &masks2,
            },
            settings,
        )
    };
    let _ = image()?;
    let start = Instant::now();
    for _ in 0..iters {
        let _ = image()?;
    }
    Ok(BenchResult {
        variant,
        seconds: start.elapsed().as_secs_f64() / iters.max(1) as f64,
        unit: "s/image",
        iters,
        trainable_params: trainable,
        threads: tch::get_num_threads(),
    })
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
