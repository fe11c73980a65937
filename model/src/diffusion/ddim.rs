//! DDIM sampling (η = 0) as diffusers' `DDIMScheduler` configured like SD v1.x:
//! "leading" timestep spacing with `steps_offset` 1 (50 steps → 981, 961, …, 1), and the
//! final step going to ᾱ = ᾱ₀ (`set_alpha_to_one: false`).

use tch::{Kind, Tensor};

use super::schedule::NoiseSchedule;
use crate::error::ModelError;

/// A DDIM sampler over a training schedule.
#[derive(Debug)]
pub struct Ddim {
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<i64>,
    step_ratio: i64,
}

/// One DDIM update's results.
#[derive(Debug)]
pub struct DdimStep {
    /// x at the previous (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The model's estimate of the clean sample.
    pub pred_original_sample: Tensor,
}

impl Ddim {
    /// `steps` inference steps over `schedule` (clamped to [1, T]).
    ///
    /// Errors: libtorch errors reading ᾱ; [`ModelError::Input`] for an empty schedule.
    pub fn new(schedule: &NoiseSchedule, steps: i64) -> Result<Self, ModelError> {
        if schedule.is_empty() {
            return Err(ModelError::Input("DDIM over an empty noise schedule".into()));
        }
        let train = schedule.len();
        let steps = steps.clamp(1, train);
        let step_ratio = train / steps;
        let timesteps = (0..steps).rev().map(|i| i * step_ratio + 1).collect();
        Ok(Self {
            alphas_cumprod: Vec::<f64>::try_from(schedule.alphas_cumprod.to_kind(Kind::Double))?,
            timesteps,
            step_ratio,
        })
    }

    /// The timesteps, noisiest first.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn alpha(&self, t: i64) -> f64 {
        // Before the first training step the sampler lands on ᾱ₀ (set_alpha_to_one = false).
        let t = t.max(0) as usize;
        self.alphas_cumprod.get(t).copied().unwrap_or(1.0)
    }

    /// One deterministic update from `sample` at timestep `t` with predicted noise `eps`.
    pub fn step(&self, eps: &Tensor, t: i64, sample: &Tensor) -> DdimStep {
        let prev_t = t - self.step_ratio;
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let pred_original_sample = (sample - (1.0 - a_t).sqrt() * eps) / a_t.sqrt();
        let prev_sample = a_prev.sqrt() * &pred_original_sample + (1.0 - a_prev).sqrt() * eps;
        DdimStep {
            prev_sample,
            pred_original_sample,
        }
    }
}
