//! Text+layout → images: DDIM (η = 0) with classifier-free guidance, where the unconditional
//! branch gets the empty caption and the null grounding input, and scheduled grounding (the
//! grounding layers are on for the first `grounding_fraction` of the steps, then off).

use tch::{Device, Kind, Tensor};

use super::ddim::Ddim;
use super::schedule::NoiseSchedule;
use crate::data::rng::SplitMix64;
use crate::error::ModelError;
use crate::nn::unet::GroundingInput;
use crate::nn::unet::UNet2DConditionModel;
use crate::pipeline::SpatialLockModel;

/// One image's layout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// The caption.
    pub caption: String,
    /// Objects: normalised xyxy boxes and their phrases.
    #[serde(default)]
    pub objects: Vec<LayoutObject>,
}

/// A box and its phrase.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayoutObject {
    /// Normalised xyxy.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// What it is ("red circle").
    pub phrase: String,
}

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct SampleSettings {
    /// DDIM steps.
    pub steps: i64,
    /// Guidance scale (1 = no guidance).
    pub guidance: f64,
    /// Fraction of steps with grounding on.
    pub grounding_fraction: f64,
    /// Noise seed.
    pub seed: u64,
    /// Image side in pixels.
    pub resolution: i64,
}

/// Generates one image per layout → `[B, 3, H, W]` in [-1, 1].
pub fn sample(model: &SpatialLockModel, layouts: &[Layout], s: SampleSettings) -> Result<Tensor, ModelError> {
    let device = model.device;
    let b = layouts.len() as i64;
    let max = model.unet.grounding().max_objects.max(1);
    for (i, l) in layouts.iter().enumerate() {
        if l.objects.len() as i64 > max {
            return Err(ModelError::Input(format!(
                "layout {i}: {} objects, more than the maximum of {max}",
                l.objects.len()
            )));
        }
    }
    let cfg = model.unet.config();
    let size = s.resolution / vae_factor(model);
    let channels = i64::from(cfg.in_channels);
    let mut rng = SplitMix64::from_parts(&[s.seed, 0x5A3]);
    let shape = [b, channels, size, size];
    let x = Tensor::from_slice(&rng.normals((b * channels * size * size) as usize))
        .view(shape)
        .to_device(device);

    let captions: Vec<&str> = layouts.iter().map(|l| l.caption.as_str()).collect();
    let (cond_ctx, _) = model.text.embed(&captions);
    let (null_ctx, _) = model.text.embed(&vec![""; layouts.len()]);
    let context = Tensor::cat(&[null_ctx, cond_ctx], 0).to_device(device);

    let n = max as usize;
    let mut boxes = vec![0f32; layouts.len() * n * 4];
    let mut masks = vec![0f32; layouts.len() * n];
    let mut phrases = vec![String::new(); layouts.len() * n];
    for (i, l) in layouts.iter().enumerate() {
        for (k, o) in l.objects.iter().enumerate() {
            let slot = i * n + k;
            boxes[slot * 4..slot * 4 + 4].copy_from_slice(&o.bbox);
            masks[slot] = 1.0;
            phrases[slot] = o.phrase.clone();
        }
    }
    let boxes = Tensor::from_slice(&boxes).view([b, max, 4]).to_device(device);
    let masks = Tensor::from_slice(&masks).view([b, max]).to_device(device);
    let refs: Vec<&str> = phrases.iter().map(String::as_str).collect();
    let pooled = model.text.phrase_embeddings(&refs);
    let phrase_emb = pooled.to_device(device).view([b, max, -1]) * masks.unsqueeze(-1);
    // The unconditional half gets the null grounding input (all masks 0).
    let boxes2 = Tensor::cat(&[&boxes, &boxes], 0);
    let masks2 = Tensor::cat(&[masks.zeros_like(), masks.shallow_clone()], 0);
    let phrases2 = Tensor::cat(&[phrase_emb.zeros_like(), phrase_emb.shallow_clone()], 0);

    let grounding = Guidance {
        boxes: &boxes2,
        phrases: &phrases2,
        masks: &masks2,
    };
    let x = denoise(&model.unet, &model.schedule, x, &context, grounding, s)?;
    let images = match &model.vae {
        Some((vae, _)) => tch::no_grad(|| vae.decode_latents(&x)),
        None => x,
    };
    Ok(images.clamp(-1.0, 1.0).to_device(Device::Cpu).to_kind(Kind::Float))
}

/// The grounding inputs of both CFG halves (`[2B, …]`: unconditional first).
#[derive(Debug, Clone, Copy)]
pub struct Guidance<'a> {
    /// Boxes `[2B, N, 4]`.
    pub boxes: &'a Tensor,
    /// Phrase embeddings `[2B, N, P]`.
    pub phrases: &'a Tensor,
    /// Masks `[2B, N]` (all 0 in the unconditional half).
    pub masks: &'a Tensor,
}

/// The DDIM + CFG loop from noise `x` (`[B, C, h, w]`) with text context `[2B, L, C]`
/// (unconditional first); grounding is on for the first `grounding_fraction` of the steps.
pub fn denoise(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    mut x: Tensor,
    context: &Tensor,
    g: Guidance,
    s: SampleSettings,
) -> Result<Tensor, ModelError> {
    let b = x.size()[0];
    let ddim = Ddim::new(schedule, s.steps);
    let on_steps = (s.grounding_fraction * ddim.timesteps().len() as f64).round() as usize;
    for (k, &t) in ddim.timesteps().iter().enumerate() {
        let scale = if k < on_steps { 1.0 } else { 0.0 };
        let grounding = Some(GroundingInput {
            boxes: g.boxes,
            phrases: g.phrases,
            masks: g.masks,
            scale,
        });
        let input = Tensor::cat(&[&x, &x], 0);
        let ts = Tensor::from_slice(&[t]).expand([2 * b], false).to_device(x.device());
        let out = tch::no_grad(|| unet.forward(&input, &ts, context, grounding))?;
        let eps = out.eps.chunk(2, 0);
        let guided = &eps[0] + s.guidance * (&eps[1] - &eps[0]);
        x = ddim.step(&guided, t, &x).prev_sample;
    }
    Ok(x)
}

/// Pixels per U-Net input cell: the VAE's downsampling factor, or 1 in pixel space.
fn vae_factor(model: &SpatialLockModel) -> i64 {
    match &model.vae {
        Some((vae, _)) => 1 << vae.config().block_out_channels.len().saturating_sub(1).min(16),
        None => 1,
    }
}
