//! diffusers `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use tch::nn::{self, Module};
use tch::Tensor;

/// GroupNorm → SiLU → conv → (+ time embedding) → GroupNorm → SiLU → conv, plus a (1×1) shortcut.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock2D {
    /// `temb_channels` is `None` in the VAE (no time embedding).
    pub fn new(p: nn::Path, in_ch: i64, out_ch: i64, temb_channels: Option<i64>, groups: i64, eps: f64) -> Self {
        let gn = nn::GroupNormConfig {
            eps,
            ..Default::default()
        };
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Self {
            norm1: nn::group_norm(&p / "norm1", groups, in_ch, gn),
            conv1: nn::conv2d(&p / "conv1", in_ch, out_ch, 3, conv3),
            time_emb_proj: temb_channels.map(|t| nn::linear(&p / "time_emb_proj", t, out_ch, Default::default())),
            norm2: nn::group_norm(&p / "norm2", groups, out_ch, gn),
            conv2: nn::conv2d(&p / "conv2", out_ch, out_ch, 3, conv3),
            conv_shortcut: (in_ch != out_ch)
                .then(|| nn::conv2d(&p / "conv_shortcut", in_ch, out_ch, 1, Default::default())),
        }
    }

    /// `x` `[B, C, H, W]`, `temb` `[B, T]`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h += proj.forward(&t.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// A stride-2 3×3 conv. The U-Net pads 1 on every side; the VAE pads right/bottom only.
#[derive(Debug)]
pub struct Downsample2D {
    conv: nn::Conv2D,
    asymmetric: bool,
}

impl Downsample2D {
    /// `padding` 1 (U-Net) or 0 with asymmetric padding (VAE).
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride: 2,
            padding,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&p / "conv", channels, channels, 3, cfg),
            asymmetric: padding == 0,
        }
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour ×2 (or to a given size) then a 3×3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: nn::Conv2D,
}

impl Upsample2D {
    /// Keeps the channel count.
    pub fn new(p: nn::Path, channels: i64) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&p / "conv", channels, channels, 3, cfg),
        }
    }

    /// Upsamples to `size` (the skip connection's size) or doubles.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (_, _, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d([oh, ow], None, None))
    }
}
