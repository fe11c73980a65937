//! SD's spatial transformer (diffusers `Transformer2DModel` with one `BasicTransformerBlock`):
//! GroupNorm → 1×1 conv in → [self-attn → grounding (optional) → text cross-attn → GEGLU FF]
//! → 1×1 conv out → residual.

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{Attention, FeedForward};
use super::grounding::{Fuser, GatedSelfAttention, GroundingAttention};

/// Which grounding layer a transformer block gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuserKind {
    /// None.
    Off,
    /// SpatialLock's Grounding-Attention (key `grounding_attn`).
    SpatialLock,
    /// GLIGEN's gated self-attention (key `fuser`).
    Gligen,
}

/// Grounding tokens and the scheduled-grounding scale, passed down to every grounding layer.
#[derive(Debug, Clone, Copy)]
pub struct GroundingContext<'a> {
    /// `[B, N, token_dim]`.
    pub tokens: &'a Tensor,
    /// 1 while grounding is on, 0 after (scheduled sampling).
    pub scale: f64,
}

/// Self-attention, optional grounding, cross-attention, feed-forward, each with a residual.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    fuser: Option<Fuser>,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// A block of width `dim` attending to a text context of width `context_dim`; grounding
    /// tokens have width `token_dim`.
    pub fn new(p: nn::Path, dim: i64, heads: i64, context_dim: i64, token_dim: i64, fuser: FuserKind) -> Self {
        let head_dim = dim / heads;
        let fuser = match fuser {
            FuserKind::Off => None,
            FuserKind::SpatialLock => Some(Fuser::Cross(GroundingAttention::new(
                &p / "grounding_attn",
                dim,
                token_dim,
                heads,
            ))),
            FuserKind::Gligen => Some(Fuser::SelfGated(GatedSelfAttention::new(
                &p / "fuser",
                dim,
                token_dim,
                heads,
            ))),
        };
        Self {
            norm1: nn::layer_norm(&p / "norm1", vec![dim], Default::default()),
            attn1: Attention::new(&p / "attn1", dim, dim, heads, head_dim, false),
            fuser,
            norm2: nn::layer_norm(&p / "norm2", vec![dim], Default::default()),
            attn2: Attention::new(&p / "attn2", dim, context_dim, heads, head_dim, false),
            norm3: nn::layer_norm(&p / "norm3", vec![dim], Default::default()),
            ff: FeedForward::new(&p / "ff", dim),
        }
    }

    /// `x` `[B, HW, dim]`, `context` `[B, L, context_dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, grounding: Option<GroundingContext>) -> Tensor {
        let mut x = x + self.attn1.forward(&self.norm1.forward(x), None);
        if let (Some(fuser), Some(g)) = (&self.fuser, grounding) {
            x = fuser.forward(&x, g.tokens, g.scale);
        }
        let x = &x + self.attn2.forward(&self.norm2.forward(&x), Some(context));
        &x + self.ff.forward(&self.norm3.forward(&x))
    }
}

/// The spatial transformer around one [`BasicTransformerBlock`].
#[derive(Debug)]
pub struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: nn::Conv2D,
    block: BasicTransformerBlock,
    proj_out: nn::Conv2D,
}

impl Transformer2D {
    /// Over `channels` feature maps with `heads` heads.
    pub fn new(
        p: nn::Path,
        channels: i64,
        heads: i64,
        groups: i64,
        context_dim: i64,
        token_dim: i64,
        fuser: FuserKind,
    ) -> Self {
        let gn = nn::GroupNormConfig {
            eps: 1e-6,
            ..Default::default()
        };
        Self {
            norm: nn::group_norm(&p / "norm", groups, channels, gn),
            proj_in: nn::conv2d(&p / "proj_in", channels, channels, 1, Default::default()),
            block: BasicTransformerBlock::new(
                &p / "transformer_blocks" / 0,
                channels,
                heads,
                context_dim,
                token_dim,
                fuser,
            ),
            proj_out: nn::conv2d(&p / "proj_out", channels, channels, 1, Default::default()),
        }
    }

    /// `x` `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, grounding: Option<GroundingContext>) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let t = self.proj_in.forward(&self.norm.forward(x));
        let t = t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let t = self.block.forward(&t, context, grounding);
        let t = t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        self.proj_out.forward(&t) + x
    }
}
