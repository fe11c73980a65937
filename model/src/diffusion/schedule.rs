//! The scaled-linear β schedule of Stable Diffusion (diffusers' `scaled_linear`, LDM's `linear`):
//! `β_t = (√β_start + t/(T−1)·(√β_end − √β_start))²`, `ᾱ_t = Π_{s≤t} (1 − β_s)`.

use tch::{Device, Kind, Tensor};

/// β and ᾱ for every training timestep.
#[derive(Debug)]
pub struct NoiseSchedule {
    /// β_t, `[T]`, f32.
    pub betas: Tensor,
    /// ᾱ_t (cumulative product of 1 − β), `[T]`, f32.
    pub alphas_cumprod: Tensor,
}

impl NoiseSchedule {
    /// SD v1.x: β from 0.00085 to 0.012 over 1000 steps.
    pub fn stable_diffusion() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000)
    }

    /// A scaled-linear schedule with `steps` timesteps, computed in f32 exactly as diffusers
    /// does (`torch.linspace(β0**0.5, β1**0.5, T, dtype=float32) ** 2`, cumprod in f32).
    pub fn scaled_linear(beta_start: f64, beta_end: f64, steps: i64) -> Self {
        let opts = (Kind::Float, Device::Cpu);
        let betas = Tensor::linspace(beta_start.sqrt(), beta_end.sqrt(), steps, opts).square();
        let alphas_cumprod = (Tensor::ones([steps], opts) - &betas).cumprod(0, Kind::Float);
        Self { betas, alphas_cumprod }
    }

    /// Number of timesteps.
    pub fn len(&self) -> i64 {
        self.betas.size()[0]
    }

    /// True for a schedule with no steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The forward process q(x_t | x_0): `√ᾱ_t·x0 + √(1 − ᾱ_t)·noise` (diffusers'
    /// `DDPMScheduler.add_noise`). `x0` and `noise` are `[B, …]` on any device, `t` is `[B]` int64
    /// timesteps in `[0, T)` on any device; the result is on `x0`'s device.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &Tensor) -> Tensor {
        let mut shape = vec![1i64; x0.dim().max(1)];
        shape[0] = -1;
        let a = self
            .alphas_cumprod
            .index_select(0, &t.to_device(self.alphas_cumprod.device()))
            .to_device(x0.device())
            .view(shape.as_slice());
        let one_minus_a: Tensor = 1.0 - &a;
        a.sqrt() * x0 + one_minus_a.sqrt() * noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_diffusion_schedule_matches_diffusers() {
        tch::set_num_threads(1);
        let s = NoiseSchedule::stable_diffusion();
        assert_eq!(s.len(), 1000);
        // diffusers DDPMScheduler(beta_schedule="scaled_linear", 0.00085, 0.012).alphas_cumprod,
        // diffusers' float32 values (torch 2.13): [0] = 0.99914998, [499] = 0.27766943,
        // [999] = 0.0046600951; the DDIM parity test checks all 1000 against the fixture.
        let at = |i: i64| s.alphas_cumprod.double_value(&[i]);
        assert!((at(0) - 0.999_149_978).abs() < 1e-8, "{}", at(0));
        assert!((at(499) - 0.277_669_43).abs() < 1e-7, "{}", at(499));
        assert!((at(999) - 0.004_660_095).abs() < 1e-8, "{}", at(999));
        assert!((s.betas.double_value(&[999]) - 0.012).abs() < 1e-8);
    }
}
