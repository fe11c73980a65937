//! How the diffusion loss L_g and the perception loss L_p combine: fixed `λg·L_g + λp·L_p`, or
//! learnable uncertainty weighting `exp(−s_g)·L_g + s_g + exp(−s_p)·L_p + s_p` (Kendall et al.),
//! with s initialised to 0 and kept in fp32 without weight decay; λ = exp(−s) is logged.

use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use spatiallock_protocol::trial::LossWeights;

/// The loss combination of one training run.
#[derive(Debug)]
pub enum LossWeighting {
    /// Fixed weights.
    Fixed {
        /// λg.
        g: f64,
        /// λp.
        p: f64,
    },
    /// Learnable log-variances (their own store, so they can be optimised without decay).
    Learnable {
        /// Holds `s_g` and `s_p`.
        vs: VarStore,
        /// s for the diffusion loss.
        s_g: Tensor,
        /// s for the perception loss.
        s_p: Tensor,
    },
}

impl LossWeighting {
    /// From a trial config.
    pub fn new(weights: LossWeights, device: Device) -> Self {
        match weights {
            LossWeights::Fixed([g, p]) => LossWeighting::Fixed { g, p },
            LossWeights::Learnable => {
                let vs = VarStore::new(device);
                let root = vs.root();
                let s_g = root.var("s_g", &[], nn::Init::Const(0.0));
                let s_p = root.var("s_p", &[], nn::Init::Const(0.0));
                LossWeighting::Learnable { vs, s_g, s_p }
            }
        }
    }

    /// The total loss; `perception` is `None` when PoG is off.
    pub fn combine(&self, diffusion: &Tensor, perception: Option<&Tensor>) -> Tensor {
        let diffusion = diffusion.to_kind(Kind::Float);
        match self {
            LossWeighting::Fixed { g, p } => match perception {
                Some(lp) => *g * diffusion + *p * lp.to_kind(Kind::Float),
                None => *g * diffusion,
            },
            LossWeighting::Learnable { s_g, s_p, .. } => {
                let mut total = (-s_g).exp() * diffusion + s_g;
                if let Some(lp) = perception {
                    total = total + (-s_p).exp() * lp.to_kind(Kind::Float) + s_p;
                }
                total
            }
        }
    }

    /// (λg, λp) as used this step.
    pub fn lambdas(&self) -> (f64, f64) {
        match self {
            LossWeighting::Fixed { g, p } => (*g, *p),
            LossWeighting::Learnable { s_g, s_p, .. } => {
                ((-s_g.double_value(&[])).exp(), (-s_p.double_value(&[])).exp())
            }
        }
    }

    /// The learnable parameters (none for fixed weights).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            LossWeighting::Fixed { .. } => Vec::new(),
            LossWeighting::Learnable { s_g, s_p, .. } => {
                vec![
                    ("loss_weights.s_g".into(), s_g.shallow_clone()),
                    ("loss_weights.s_p".into(), s_p.shallow_clone()),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learnable_weights_start_at_one_and_get_gradients() {
        let w = LossWeighting::new(LossWeights::Learnable, Device::Cpu);
        assert_eq!(w.lambdas(), (1.0, 1.0));
        let (lg, lp) = (Tensor::from(0.2f32), Tensor::from(3.0f32));
        let total = w.combine(&lg, Some(&lp));
        assert!((total.double_value(&[]) - 3.2).abs() < 1e-6);
        total.backward();
        // d/ds (exp(−s)·L + s) = 1 − L at s = 0.
        let grads: Vec<f64> = w.parameters().iter().map(|(_, t)| t.grad().double_value(&[])).collect();
        assert!(
            (grads[0] - 0.8).abs() < 1e-6 && (grads[1] + 2.0).abs() < 1e-6,
            "{grads:?}"
        );
    }

    #[test]
    fn fixed_weights_include_the_zero_one_case() {
        let w = LossWeighting::new(LossWeights::Fixed([0.0, 1.0]), Device::Cpu);
        let total = w.combine(&Tensor::from(5.0f32), Some(&Tensor::from(2.0f32)));
        assert_eq!(total.double_value(&[]), 2.0);
        assert!(w.parameters().is_empty());
    }
}
