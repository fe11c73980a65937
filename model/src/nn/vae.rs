//! `AutoencoderKL`: SD's VAE. `encode` gives the diagonal Gaussian's mean and log-variance,
//! `decode` maps latents back to images; the scaling factor comes from the config.

use tch::nn::{self, Module};
use tch::Tensor;

use spatiallock_protocol::model_config::VaeConfig;

use super::attention::Attention;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

const EPS: f64 = 1e-6;

/// Single-head self-attention over the pixels of a feature map, with its own GroupNorm and a
/// residual (the VAE's mid-block attention).
#[derive(Debug)]
struct SpatialAttention {
    group_norm: nn::GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    fn new(p: nn::Path, ch: i64, groups: i64) -> Self {
        Self {
            group_norm: nn::group_norm(
                &p / "group_norm",
                groups,
                ch,
                nn::GroupNormConfig {
                    eps: EPS,
                    ..Default::default()
                },
            ),
            attn: Attention::new(p, ch, ch, 1, ch, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let t = self.group_norm.forward(x).view([b, c, h * w]).transpose(1, 2);
        let t = self.attn.forward(&t, None);
        t.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

#[derive(Debug)]
struct Mid {
    resnet0: ResnetBlock2D,
    attention: SpatialAttention,
    resnet1: ResnetBlock2D,
}

impl Mid {
    fn new(p: nn::Path, ch: i64, groups: i64) -> Self {
        Self {
            resnet0: ResnetBlock2D::new(&p / "resnets" / 0, ch, ch, None, groups, EPS),
            attention: SpatialAttention::new(&p / "attentions" / 0, ch, groups),
            resnet1: ResnetBlock2D::new(&p / "resnets" / 1, ch, ch, None, groups, EPS),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.resnet0.forward(x, None);
        let h = self.attention.forward(&h);
        self.resnet1.forward(&h, None)
    }
}

#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

impl Level {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for r in &self.resnets {
            h = r.forward(&h, None);
        }
        if let Some(d) = &self.down {
            h = d.forward(&h);
        }
        if let Some(u) = &self.up {
            h = u.forward(&h, None);
        }
        h
    }
}

fn resnets(p: &nn::Path, layers: i64, in_ch: i64, out_ch: i64, groups: i64) -> Vec<ResnetBlock2D> {
    (0..layers)
        .map(|j| {
            ResnetBlock2D::new(
                p / "resnets" / j,
                if j == 0 { in_ch } else { out_ch },
                out_ch,
                None,
                groups,
                EPS,
            )
        })
        .collect()
}

/// The VAE (keys `encoder.*`, `quant_conv`, `post_quant_conv`, `decoder.*`).
#[derive(Debug)]
pub struct AutoencoderKL {
    config: VaeConfig,
    enc_conv_in: nn::Conv2D,
    enc_levels: Vec<Level>,
    enc_mid: Mid,
    enc_norm_out: nn::GroupNorm,
    enc_conv_out: nn::Conv2D,
    quant_conv: nn::Conv2D,
    post_quant_conv: nn::Conv2D,
    dec_conv_in: nn::Conv2D,
    dec_mid: Mid,
    dec_levels: Vec<Level>,
    dec_norm_out: nn::GroupNorm,
    dec_conv_out: nn::Conv2D,
}

impl AutoencoderKL {
    /// Builds the network from its config.
    pub fn new(p: &nn::Path, config: &VaeConfig) -> Self {
        let widths: Vec<i64> = config.block_out_channels.iter().map(|&w| i64::from(w)).collect();
        let n = widths.len();
        let groups = i64::from(config.norm_num_groups);
        let layers = i64::from(config.layers_per_block);
        let latent = i64::from(config.latent_channels);
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let gn = nn::GroupNormConfig {
            eps: EPS,
            ..Default::default()
        };
        let enc = p / "encoder";
        let dec = p / "decoder";

        let mut enc_levels = Vec::with_capacity(n);
        let mut prev = widths[0];
        for (i, &w) in widths.iter().enumerate() {
            let lp = &enc / "down_blocks" / i as i64;
            enc_levels.push(Level {
                resnets: resnets(&lp, layers, prev, w, groups),
                down: (i + 1 < n).then(|| Downsample2D::new(&lp / "downsamplers" / 0, w, 0)),
                up: None,
            });
            prev = w;
        }
        let top = widths[n - 1];
        let reversed: Vec<i64> = widths.iter().rev().copied().collect();
        let mut dec_levels = Vec::with_capacity(n);
        let mut prev = reversed[0];
        for (i, &w) in reversed.iter().enumerate() {
            let lp = &dec / "up_blocks" / i as i64;
            dec_levels.push(Level {
                resnets: resnets(&lp, layers + 1, prev, w, groups),
                down: None,
                up: (i + 1 < n).then(|| Upsample2D::new(&lp / "upsamplers" / 0, w)),
            });
            prev = w;
        }
        Self {
            config: config.clone(),
            enc_conv_in: nn::conv2d(&enc / "conv_in", i64::from(config.in_channels), widths[0], 3, conv3),
            enc_levels,
            enc_mid: Mid::new(&enc / "mid_block", top, groups),
            enc_norm_out: nn::group_norm(&enc / "conv_norm_out", groups, top, gn),
            enc_conv_out: nn::conv2d(&enc / "conv_out", top, 2 * latent, 3, conv3),
            quant_conv: nn::conv2d(p / "quant_conv", 2 * latent, 2 * latent, 1, Default::default()),
            post_quant_conv: nn::conv2d(p / "post_quant_conv", latent, latent, 1, Default::default()),
            dec_conv_in: nn::conv2d(&dec / "conv_in", latent, top, 3, conv3),
            dec_mid: Mid::new(&dec / "mid_block", top, groups),
            dec_levels,
            dec_norm_out: nn::group_norm(&dec / "conv_norm_out", groups, widths[0], gn),
            dec_conv_out: nn::conv2d(&dec / "conv_out", widths[0], i64::from(config.out_channels), 3, conv3),
        }
    }

    /// The config.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Images in [-1, 1] `[B, 3, H, W]` → (mean, log-variance) of the latent Gaussian, unscaled.
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = self.enc_conv_in.forward(x);
        for level in &self.enc_levels {
            h = level.forward(&h);
        }
        let h = self.enc_mid.forward(&h);
        let h = self.enc_conv_out.forward(&self.enc_norm_out.forward(&h).silu());
        let moments = self.quant_conv.forward(&h).chunk(2, 1);
        (moments[0].shallow_clone(), moments[1].clamp(-30.0, 20.0))
    }

    /// Unscaled latents → images in (about) [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let h = self.dec_conv_in.forward(&self.post_quant_conv.forward(z));
        let mut h = self.dec_mid.forward(&h);
        for level in &self.dec_levels {
            h = level.forward(&h);
        }
        self.dec_conv_out.forward(&self.dec_norm_out.forward(&h).silu())
    }

    /// Diffusion latents: the Gaussian's mean times the scaling factor (frozen VAE, no sampling).
    pub fn encode_latents(&self, x: &Tensor) -> Tensor {
        self.encode(x).0 * self.config.scaling_factor
    }

    /// Images from diffusion latents.
    pub fn decode_latents(&self, z: &Tensor) -> Tensor {
        self.decode(&(z / self.config.scaling_factor))
    }
}
