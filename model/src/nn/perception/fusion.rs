//! Enh-Fusion: every pyramid level flattened to tokens and concatenated, a linear projection,
//! a learnable positional embedding, a pre-LN multi-head transformer encoder, and a projection
//! back, split into levels and added to them (residual) — global context across scales.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::nn::attention::Attention;

#[derive(Debug)]
struct EncoderLayer {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// The Enh-Fusion transformer.
#[derive(Debug)]
pub struct EnhFusion {
    proj_in: nn::Linear,
    pos: Tensor,
    layers: Vec<EncoderLayer>,
    norm: nn::LayerNorm,
    proj_out: nn::Linear,
}

impl EnhFusion {
    /// Over `tokens` tokens of width `channels`, a `depth`-layer encoder of width `dim`.
    pub fn new(p: nn::Path, channels: i64, tokens: i64, dim: i64, depth: i64, heads: i64) -> Self {
        let layers = (0..depth)
            .map(|i| {
                let l = &p / "layers" / i;
                EncoderLayer {
                    norm1: nn::layer_norm(&l / "norm1", vec![dim], Default::default()),
                    attn: Attention::new(&l / "attn", dim, dim, heads, dim / heads, true),
                    norm2: nn::layer_norm(&l / "norm2", vec![dim], Default::default()),
                    fc1: nn::linear(&l / "fc1", dim, 4 * dim, Default::default()),
                    fc2: nn::linear(&l / "fc2", 4 * dim, dim, Default::default()),
                }
            })
            .collect();
        Self {
            proj_in: nn::linear(&p / "proj_in", channels, dim, Default::default()),
            pos: p.var(
                "pos_embed",
                &[1, tokens, dim],
                nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            layers,
            norm: nn::layer_norm(&p / "norm", vec![dim], Default::default()),
            proj_out: nn::linear(&p / "proj_out", dim, channels, Default::default()),
        }
    }

    /// Pyramid levels `[B, C, H_l, W_l]` → the same shapes, with cross-scale context added.
    pub fn forward(&self, levels: &[Tensor]) -> Vec<Tensor> {
        let flat: Vec<Tensor> = levels.iter().map(|l| l.flatten(2, 3).transpose(1, 2)).collect();
        let mut x = self.proj_in.forward(&Tensor::cat(&flat, 1)) + &self.pos;
        for layer in &self.layers {
            x = &x + layer.attn.forward(&layer.norm1.forward(&x), None);
            x = &x
                + layer
                    .fc2
                    .forward(&layer.fc1.forward(&layer.norm2.forward(&x)).gelu("none"));
        }
        let out = self.proj_out.forward(&self.norm.forward(&x));
        let mut start = 0;
        levels
            .iter()
            .map(|l| {
                let size = l.size();
                let n = size[2] * size[3];
                let part = out
                    .narrow(1, start, n)
                    .transpose(1, 2)
                    .reshape([size[0], size[1], size[2], size[3]]);
                start += n;
                l + part
            })
            .collect()
    }
}
