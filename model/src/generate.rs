//! Captions and layouts → images with a loaded model: noise from the seed, caption and phrase
//! embeddings, grounding packed by [`GroundingBatch`], the DDIM + CFG loop of
//! [`diffusion::sampler`](crate::diffusion::sampler), then the VAE decode.

use tch::{Device, Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::diffusion::sampler::{denoise, Guidance, SampleSettings};
use crate::error::ModelError;
use crate::nn::grounding::GroundingBatch;
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

impl Layout {
    /// The layout of an annotated image: its caption and each box (normalised xyxy) with its
    /// phrase, paired in order (extra boxes or phrases are dropped).
    pub fn from_boxes(caption: &str, boxes: &[[f32; 4]], phrases: &[String]) -> Self {
        Self {
            caption: caption.to_string(),
            objects: boxes
                .iter()
                .zip(phrases)
                .map(|(b, p)| LayoutObject {
                    bbox: *b,
                    phrase: p.clone(),
                })
                .collect(),
        }
    }
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

/// Generates one image per layout → `[B, 3, H, W]` in [-1, 1] on the CPU (H = W =
/// `s.resolution` pixels).
///
/// Errors: [`ModelError::Input`] for a layout with more objects than the model's slots; libtorch
/// errors of the forward passes.
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

    let mut batch = GroundingBatch::new(layouts.len(), max as usize);
    for (i, l) in layouts.iter().enumerate() {
        for (k, o) in l.objects.iter().enumerate() {
            batch.set(i, k, o.bbox, &o.phrase);
        }
    }
    let boxes = batch.boxes(device);
    let masks = batch.masks(device);
    let phrase_emb = model.text.grounding_phrases(&batch, &masks);
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

/// Pixels per U-Net input cell: the VAE's downsampling factor, or 1 in pixel space.
fn vae_factor(model: &SpatialLockModel) -> i64 {
    match &model.vae {
        Some((vae, _)) => 1 << vae.config().block_out_channels.len().saturating_sub(1).min(16),
        None => 1,
    }
}
