//! An exponential moving average of a run's trainable tensors, for sampling (diffusers'
//! `EMAModel` as the training scripts' `--use_ema` use it: no `update_after_step`, no
//! inverse-gamma warm-up).
//!
//! After optimiser step `n` (1-based), every shadow tensor becomes
//! `ema ← d·ema + (1 − d)·param` with `d = min(decay, (1 + s)/(10 + s))`, `s = n − 1`, and `d = 0`
//! at `s = 0` (diffusers' `get_decay`: the first update copies the weights). The decay is per
//! optimiser step; the shadow is f32 on the parameters' device.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::error::ModelError;
use crate::optim::ParamState;

/// The averaged copies of a run's trainable tensors, named and ordered as the optimiser's.
#[derive(Debug)]
pub struct Ema {
    /// The decay per optimiser step, in (0, 1).
    pub decay: f64,
    /// `(name, shadow)` per trainable parameter.
    pub shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// A shadow equal to the current values of `params`.
    pub fn new(decay: f64, params: &[ParamState]) -> Self {
        let mut ema = Self {
            decay,
            shadow: Vec::new(),
        };
        ema.reset(params);
        ema
    }

    /// Restarts the shadow from the current values of `params`.
    pub fn reset(&mut self, params: &[ParamState]) {
        self.shadow = params
            .iter()
            .map(|p| (p.name.clone(), p.param.detach().to_kind(Kind::Float).copy()))
            .collect();
    }

    /// The decay applied by the update after optimiser step `n` (1-based).
    pub fn decay_at(&self, n: u64) -> f64 {
        let s = n.saturating_sub(1);
        if s == 0 {
            return 0.0;
        }
        self.decay.min((1 + s) as f64 / (10 + s) as f64)
    }

    /// Folds `params` (the same list the shadow was made from) into the shadow after optimiser
    /// step `n` (1-based).
    pub fn update(&mut self, params: &[ParamState], n: u64) {
        let one_minus = 1.0 - self.decay_at(n);
        tch::no_grad(|| {
            for ((_, shadow), p) in self.shadow.iter_mut().zip(params) {
                // diffusers: s ← s − (1 − d)·(s − p)
                let delta = (&*shadow - p.param.detach().to_kind(Kind::Float)) * one_minus;
                let _ = shadow.g_sub_(&delta);
            }
        });
    }

    /// Replaces the shadow by `saved` (a checkpoint's, by name). Every tensor must be present
    /// with its shape.
    ///
    /// Errors: [`ModelError::Weights`] naming `source` and the missing or mis-shaped tensor, or
    /// what libtorch reports copying it.
    pub fn load(&mut self, saved: &HashMap<String, Tensor>, source: &std::path::Path) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Weights {
            path: source.to_path_buf(),
            message,
        };
        tch::no_grad(|| {
            for (name, shadow) in &mut self.shadow {
                let src = saved
                    .get(name)
                    .ok_or_else(|| bad(format!("the averaged weights have no `{name}`")))?;
                let size = src.size();
                if size != shadow.size() {
                    return Err(bad(format!(
                        "averaged `{name}`: checkpoint has {size:?}, model expects {:?}",
                        shadow.size()
                    )));
                }
                let src = src
                    .f_to_kind(Kind::Float)
                    .and_then(|t| t.f_to_device(shadow.device()))
                    .map_err(|e| bad(format!("averaged `{name}`: {e}")))?;
                shadow
                    .f_copy_(&src)
                    .map_err(|e| bad(format!("averaged `{name}`: {e}")))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamW;
    use crate::persist::checkpoint;
    use tch::Device;

    #[test]
    fn warm_up_follows_diffusers_over_three_steps() {
        tch::set_num_threads(1);
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let opt = AdamW::new(vec![("w".into(), p.shallow_clone(), 0.0)]);
        let mut ema = Ema::new(0.9, &opt.params);
        let set = |v: [f32; 2]| {
            tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&v)));
        };
        // Step 1: d = 0, the shadow copies the weights.
        assert_eq!(ema.decay_at(1), 0.0);
        set([3.0, 0.0]);
        ema.update(&opt.params, 1);
        let mut expected = [3.0f64, 0.0];
        // Step 2: s = 1, d = 2/11; step 3: s = 2, d = 3/12 (both below 0.9).
        for (n, d, v) in [(2u64, 2.0 / 11.0, [5.0f32, 1.0]), (3, 3.0 / 12.0, [-1.0, 4.0])] {
            assert!((ema.decay_at(n) - d).abs() < 1e-15);
            set(v);
            ema.update(&opt.params, n);
            for i in 0..2 {
                expected[i] = d * expected[i] + (1.0 - d) * f64::from(v[i]);
            }
        }
        for (i, e) in expected.iter().enumerate() {
            let got = ema.shadow[0].1.double_value(&[i as i64]);
            assert!((got - e).abs() < 1e-5, "{i}: {got} vs {e}");
        }
        // The cap: late steps use the configured decay.
        assert_eq!(ema.decay_at(1_000_000), 0.9);
        // The shadow is its own storage, not the parameter's.
        assert_ne!(ema.shadow[0].1.double_value(&[0]), p.double_value(&[0]));

        // Loading checks names and shapes.
        let mut saved = HashMap::new();
        saved.insert("w".to_string(), Tensor::from_slice(&[7.0f32, 8.0]));
        ema.load(&saved, std::path::Path::new("ema.safetensors")).unwrap();
        assert_eq!(ema.shadow[0].1.double_value(&[1]), 8.0);
        saved.insert("w".to_string(), Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        let err = ema.load(&saved, std::path::Path::new("ema.safetensors")).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
        assert!(ema
            .load(&HashMap::new(), std::path::Path::new("ema.safetensors"))
            .is_err());
    }

    #[test]
    fn a_checkpoint_round_trip_keeps_the_moving_average() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("step-00000003");
        let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let opt = AdamW::new(vec![("unet.w".into(), p.shallow_clone(), 0.0)]);
        let mut ema = Ema::new(0.99, &opt.params);
        tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&[4.0f32, 5.0, 6.0])));
        for n in 1..=3 {
            ema.update(&opt.params, n);
        }
        let state = checkpoint::CheckpointState {
            step: 3,
            optimizer_step: 3,
            spec: serde_json::json!({}),
            base: None,
            precision: None,
        };
        checkpoint::save(&ckpt, &opt, Some(&ema.shadow), &state).unwrap();

        // Resume: a fresh average (started from other weights) continues the saved one exactly.
        let q = Tensor::from_slice(&[0.0f32, 0.0, 0.0]);
        let mut opt2 = AdamW::new(vec![("unet.w".into(), q.shallow_clone(), 0.0)]);
        let mut resumed = Ema::new(0.99, &opt2.params);
        let restored = checkpoint::restore(&ckpt, &mut opt2, true).unwrap();
        assert_eq!(restored.step, 3);
        assert!(q.equal(&p), "trainables restored");
        resumed
            .load(
                &checkpoint::read_ema(&ckpt).unwrap().unwrap(),
                &ckpt.join(checkpoint::EMA_FILE),
            )
            .unwrap();
        assert!(resumed.shadow[0].1.equal(&ema.shadow[0].1));
        ema.update(&opt.params, 4);
        resumed.update(&opt2.params, 4);
        assert!(resumed.shadow[0].1.equal(&ema.shadow[0].1));

        // Saved again without averaging, the folder holds no stale average.
        checkpoint::save(&ckpt, &opt, None, &state).unwrap();
        assert!(checkpoint::read_ema(&ckpt).unwrap().is_none());
    }
}
