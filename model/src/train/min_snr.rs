//! Min-SNR-γ loss weighting (Hang et al., ICCV 2023, "Efficient Diffusion Training via Min-SNR
//! Weighting Strategy"; diffusers' `compute_snr` and `--snr_gamma` in
//! `examples/text_to_image/train_text_to_image.py`).
//!
//! For ε-prediction, sample `i` of a batch with timestep `t_i` gets the weight
//! `min(SNR(t_i), γ) / SNR(t_i)`, `SNR(t) = ᾱ_t / (1 − ᾱ_t)`, and the diffusion loss is
//! `mean_i(w_i · mean_{C,H,W}((ε̂_i − ε_i)²))`.

use tch::{Device, Kind, Tensor};

use crate::diffusion::schedule::NoiseSchedule;

/// The per-sample Min-SNR-γ weights `[B]` (f32, on `device`) of int64 timesteps `t` `[B]` (on
/// any device, each in `[0, T)`) under `schedule`. Computed in f64 from the schedule's f32 ᾱ.
/// A `gamma` at or above every timestep's SNR gives weight 1 everywhere.
pub fn min_snr_weights(schedule: &NoiseSchedule, t: &Tensor, gamma: f64, device: Device) -> Tensor {
    let a = schedule
        .alphas_cumprod
        .index_select(0, &t.to_device(schedule.alphas_cumprod.device()))
        .to_kind(Kind::Double);
    let snr: Tensor = &a / (1.0 - &a);
    (snr.clamp_max(gamma) / &snr).to_kind(Kind::Float).to_device(device)
}

/// The weighted ε-prediction loss (a scalar, f32): `mean_i(w_i · mean_{C,H,W}((eps_i −
/// noise_i)²))` for `eps` and `noise` `[B, C, H, W]` and weights `[B]` on their device.
pub fn weighted_mse(eps: &Tensor, noise: &Tensor, weights: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..eps.dim() as i64).collect();
    let per_sample = (eps - noise).square().mean_dim(dims.as_slice(), false, Kind::Float);
    (per_sample * weights).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_hand_computed_values() {
        tch::set_num_threads(1);
        let s = NoiseSchedule::stable_diffusion();
        let t = Tensor::from_slice(&[0i64, 499, 999]);
        // ᾱ from the schedule (its own test pins them to diffusers' values).
        let a: Vec<f64> = [0, 499, 999]
            .iter()
            .map(|&i| s.alphas_cumprod.double_value(&[i]))
            .collect();
        let snr: Vec<f64> = a.iter().map(|a| a / (1.0 - a)).collect();
        // ᾱ_0 = 0.99915 → SNR ≈ 1175.5; ᾱ_499 = 0.27767 → SNR ≈ 0.3844; ᾱ_999 → SNR ≈ 0.00468.
        assert!((snr[0] - 1175.5).abs() < 1.0, "{}", snr[0]);
        assert!((snr[1] - 0.384_41).abs() < 1e-4, "{}", snr[1]);
        let w = min_snr_weights(&s, &t, 5.0, Device::Cpu);
        assert_eq!(w.kind(), Kind::Float);
        let w: Vec<f64> = (0..3).map(|i| w.double_value(&[i])).collect();
        // γ = 5: a low-noise step is scaled down to γ/SNR; steps with SNR below γ keep weight 1.
        assert!((w[0] - 5.0 / snr[0]).abs() < 1e-7, "{}", w[0]);
        assert!((w[0] - 0.004_253_6).abs() < 1e-5, "{}", w[0]);
        assert_eq!(w[1], 1.0);
        assert_eq!(w[2], 1.0);
        // γ = 0.1: the middle step is scaled too.
        let w = min_snr_weights(&s, &t, 0.1, Device::Cpu);
        assert!((w.double_value(&[1]) - 0.1 / snr[1]).abs() < 1e-6);
        // A γ above every SNR is the unweighted loss.
        let all = Tensor::arange(1000, (Kind::Int64, Device::Cpu));
        let w = min_snr_weights(&s, &all, 1e12, Device::Cpu);
        assert_eq!(w.min().double_value(&[]), 1.0);
        assert_eq!(w.max().double_value(&[]), 1.0);
    }

    #[test]
    fn weighted_mse_is_the_mean_of_weighted_per_sample_means() {
        tch::set_num_threads(1);
        let eps = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0]).view([2, 1, 1, 2]);
        let noise = Tensor::zeros([2, 1, 1, 2], (Kind::Float, Device::Cpu));
        let w = Tensor::from_slice(&[0.5f32, 1.0]);
        // (0.5·1 + 1·4) / 2
        assert!((weighted_mse(&eps, &noise, &w).double_value(&[]) - 2.25).abs() < 1e-6);
        let ones = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let plain = (&eps - &noise).square().mean(Kind::Float);
        assert!(weighted_mse(&eps, &noise, &ones).allclose(&plain, 1e-6, 1e-7, false));
    }
}
