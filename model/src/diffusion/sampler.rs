//! The denoising loop: DDIM (η = 0) with classifier-free guidance, where the unconditional
//! branch gets the empty caption and the null grounding input, and scheduled grounding (the
//! grounding layers are on for the first `grounding_fraction` of the steps, then off).
//! `generate::sample` builds its inputs from captions and layouts.

use tch::Tensor;

use super::ddim::Ddim;
use super::schedule::NoiseSchedule;
use crate::error::ModelError;
use crate::nn::unet::GroundingInput;
use crate::nn::unet::UNet2DConditionModel;

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
    let ddim = Ddim::new(schedule, s.steps)?;
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
