//! The U-Net's down, mid and up blocks (diffusers `CrossAttnDownBlock2D`/`DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D`).

use tch::nn::{self, Module};
use tch::Tensor;

use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer::{FuserKind, GroundingContext, Transformer2D};

/// Widths and norms shared by every block of one U-Net.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    /// Time-embedding width.
    pub temb: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon of the ResNet layers.
    pub eps: f64,
    /// Attention heads.
    pub heads: i64,
    /// Text context width.
    pub context_dim: i64,
    /// Grounding token width.
    pub token_dim: i64,
}

fn transformer(p: nn::Path, ch: i64, d: BlockDims, fuser: FuserKind) -> Transformer2D {
    Transformer2D::new(p, ch, d.heads, d.groups, d.context_dim, d.token_dim, fuser)
}

/// `n` transformers (`attentions.0`, …) of one block.
fn transformers(p: &nn::Path, n: i64, ch: i64, d: BlockDims, fuser: FuserKind) -> Vec<Transformer2D> {
    (0..n)
        .map(|j| transformer(p / "attentions" / j, ch, d, fuser))
        .collect()
}

/// A down block: `layers` × (ResNet [+ transformer]), then an optional stride-2 downsample.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsample: Option<Downsample2D>,
}

impl DownBlock {
    /// `attention`: whether this is a `CrossAttnDownBlock2D`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        in_ch: i64,
        out_ch: i64,
        layers: i64,
        attention: bool,
        downsample: bool,
        d: BlockDims,
        fuser: FuserKind,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let i = if j == 0 { in_ch } else { out_ch };
                ResnetBlock2D::new(&p / "resnets" / j, i, out_ch, Some(d.temb), d.groups, d.eps)
            })
            .collect();
        let attentions = transformers(&p, if attention { layers } else { 0 }, out_ch, d, fuser);
        Self {
            resnets,
            attentions,
            downsample: downsample.then(|| Downsample2D::new(&p / "downsamplers" / 0, out_ch, 1)),
        }
    }

    /// Returns the block output and the states it hands to the up path's skip connections.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        grounding: Option<GroundingContext>,
    ) -> (Tensor, Vec<Tensor>) {
        let mut h = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, grounding);
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsample {
            h = down.forward(&h);
            skips.push(h.shallow_clone());
        }
        (h, skips)
    }
}

/// The mid block: ResNet, transformer, ResNet.
#[derive(Debug)]
pub struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Transformer2D,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    /// At width `ch`.
    pub fn new(p: nn::Path, ch: i64, d: BlockDims, fuser: FuserKind) -> Self {
        Self {
            resnet0: ResnetBlock2D::new(&p / "resnets" / 0, ch, ch, Some(d.temb), d.groups, d.eps),
            attention: transformer(&p / "attentions" / 0, ch, d, fuser),
            resnet1: ResnetBlock2D::new(&p / "resnets" / 1, ch, ch, Some(d.temb), d.groups, d.eps),
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, grounding: Option<GroundingContext>) -> Tensor {
        let h = self.resnet0.forward(x, Some(temb));
        let h = self.attention.forward(&h, context, grounding);
        self.resnet1.forward(&h, Some(temb))
    }
}

/// An up block: `layers` × (concat skip → ResNet [+ transformer]), then an optional upsample.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsample: Option<Upsample2D>,
}

impl UpBlock {
    /// `prev_ch`: width coming from below; `skip_in_ch`: width of the last skip this block
    /// consumes (the down block one level up); `out_ch`: this level's width.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        skip_in_ch: i64,
        out_ch: i64,
        prev_ch: i64,
        layers: i64,
        attention: bool,
        upsample: bool,
        d: BlockDims,
        fuser: FuserKind,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let skip = if j == layers - 1 { skip_in_ch } else { out_ch };
                let input = if j == 0 { prev_ch } else { out_ch };
                ResnetBlock2D::new(&p / "resnets" / j, input + skip, out_ch, Some(d.temb), d.groups, d.eps)
            })
            .collect();
        let attentions = transformers(&p, if attention { layers } else { 0 }, out_ch, d, fuser);
        Self {
            resnets,
            attentions,
            upsample: upsample.then(|| Upsample2D::new(&p / "upsamplers" / 0, out_ch)),
        }
    }

    /// Number of skip states this block consumes.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order the down path produced them (the last is consumed first);
    /// `upsample_to` is the size of the next level's skip, when there is one.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        grounding: Option<GroundingContext>,
        upsample_to: Option<(i64, i64)>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - j];
            h = resnet.forward(&Tensor::cat(&[&h, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, grounding);
            }
        }
        match &self.upsample {
            Some(up) => up.forward(&h, upsample_to),
            None => h,
        }
    }
}
