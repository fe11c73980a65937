//! The architecture of a SpatialLock model: the SD v1.x U-Net (diffusers field names), the
//! optional VAE (absent = pixel space), the CLIP text encoder, and the sizes of the PoI
//! grounding and PoG perception modules. `configs/models/*.yaml` hold these.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A U-Net down block type, by its diffusers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DownBlockType {
    /// ResNet layers only.
    DownBlock2D,
    /// ResNet layers, each followed by a transformer (self-attn, text cross-attn, FF).
    CrossAttnDownBlock2D,
}

/// A U-Net up block type, by its diffusers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpBlockType {
    /// ResNet layers only.
    UpBlock2D,
    /// ResNet layers, each followed by a transformer.
    CrossAttnUpBlock2D,
}

/// The U-Net's mid block, by its diffusers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MidBlockType {
    /// ResNet, transformer, ResNet.
    UNetMidBlock2DCrossAttn,
}

/// `UNet2DConditionModel` hyper-parameters, named as in diffusers' `unet/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Side of the U-Net input in cells (latent cells, or pixels without a VAE).
    pub sample_size: u32,
    /// Input channels (4 for SD latents, 3 in pixel space).
    pub in_channels: u32,
    /// Output channels (ε has the input's shape).
    pub out_channels: u32,
    /// Channels of each resolution level, from the highest resolution down.
    pub block_out_channels: Vec<u32>,
    /// One entry per level, from the highest resolution down.
    pub down_block_types: Vec<DownBlockType>,
    /// The mid block; `null` for none.
    pub mid_block_type: Option<MidBlockType>,
    /// One entry per level, from the lowest resolution up.
    pub up_block_types: Vec<UpBlockType>,
    /// ResNet layers per down block (up blocks have one more).
    pub layers_per_block: u32,
    /// Width of the text context (CLIP hidden size).
    pub cross_attention_dim: u32,
    /// Number of attention heads (diffusers' historical name for it in SD v1.x).
    pub attention_head_dim: u32,
    /// GroupNorm groups.
    pub norm_num_groups: u32,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// Timestep embedding as `[cos, sin]` (SD v1.x) rather than `[sin, cos]`. Default true.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift. Default 0 (as in SD v1.x).
    #[serde(default)]
    pub freq_shift: f64,
}

fn default_true() -> bool {
    true
}

impl UNetConfig {
    /// Names of the blocks that hold transformers, in U-Net order: `down.i`, `mid`, `up.i`.
    pub fn attention_blocks(&self) -> Vec<String> {
        let down = self
            .down_block_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == DownBlockType::CrossAttnDownBlock2D)
            .map(|(i, _)| format!("down.{i}"));
        let mid = self.mid_block_type.iter().map(|_| "mid".to_string());
        let up = self
            .up_block_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == UpBlockType::CrossAttnUpBlock2D)
            .map(|(i, _)| format!("up.{i}"));
        down.chain(mid).chain(up).collect()
    }
}

/// `AutoencoderKL` hyper-parameters, named as in diffusers' `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    /// Image channels.
    pub in_channels: u32,
    /// Decoded image channels.
    pub out_channels: u32,
    /// Latent channels.
    pub latent_channels: u32,
    /// Channels of each level; the image is 2^(levels−1) times the latent's side.
    pub block_out_channels: Vec<u32>,
    /// ResNet layers per level.
    pub layers_per_block: u32,
    /// GroupNorm groups.
    pub norm_num_groups: u32,
    /// Latents are multiplied by this after encoding.
    pub scaling_factor: f64,
}

/// CLIP text transformer hyper-parameters, named as in transformers' `text_encoder/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// BPE vocabulary size.
    pub vocab_size: u32,
    /// Token width (channels).
    pub hidden_size: u32,
    /// MLP width (channels).
    pub intermediate_size: u32,
    /// Transformer layers.
    pub num_hidden_layers: u32,
    /// Attention heads.
    pub num_attention_heads: u32,
    /// Context length in tokens (77 for CLIP).
    pub max_position_embeddings: u32,
    /// MLP activation: `quick_gelu` (CLIP) or `gelu`. Default `quick_gelu`.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon. Default 0.00001.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// The end-of-text token id; the pooled output is taken there. The legacy value 2 (SD
    /// v1.x's config) means "the position of the largest id", as transformers does. Default
    /// 49407.
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
}

fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_eos() -> i64 {
    49407
}

/// PoI grounding-tokenizer sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroundingConfig {
    /// Most boxes per image; extra boxes are dropped smallest first (30 in the paper).
    pub max_objects: u32,
    /// Fourier frequencies per coordinate (box embedding width = 8·freqs).
    pub fourier_freqs: u32,
    /// Hidden width (channels) of the grounding MLP.
    pub mlp_hidden: u32,
}

/// PoG perception-head sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerceptionConfig {
    /// Common FPN width (channels).
    pub fpn_channels: u32,
    /// Enh-Fusion transformer width (channels).
    pub fusion_dim: u32,
    /// Enh-Fusion transformer layers.
    pub fusion_depth: u32,
    /// Enh-Fusion attention heads.
    pub fusion_heads: u32,
    /// Conv layers per RetinaNet branch.
    pub head_convs: u32,
    /// Anchor aspect ratios (one size per level).
    pub anchor_ratios: Vec<f64>,
}

/// A whole model architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A short name for logs and reports.
    pub name: String,
    /// The denoising U-Net.
    pub unet: UNetConfig,
    /// The autoencoder; `null` means the U-Net works in pixel space.
    pub vae: Option<VaeConfig>,
    /// The CLIP text encoder.
    pub text_encoder: TextEncoderConfig,
    /// PoI sizes.
    pub grounding: GroundingConfig,
    /// PoG sizes.
    pub perception: PerceptionConfig,
}

impl ModelConfig {
    /// Names of the blocks that hold transformers, in U-Net order: `down.i`, `mid`, `up.i`.
    /// These are the places where Grounding-Attention can go.
    pub fn attention_blocks(&self) -> Vec<String> {
        self.unet.attention_blocks()
    }

    /// Pixels per U-Net input cell: the VAE's downsampling factor, or 1 in pixel space.
    pub fn vae_factor(&self) -> u32 {
        self.vae
            .as_ref()
            .map(|v| 1u32 << v.block_out_channels.len().saturating_sub(1).min(16))
            .unwrap_or(1)
    }

    /// The image side must be a multiple of this so every U-Net level divides evenly.
    pub fn resolution_multiple(&self) -> u32 {
        let levels = self.unet.down_block_types.len().saturating_sub(1).min(16);
        self.vae_factor() * (1u32 << levels)
    }

    /// Structural problems: mismatched list lengths, widths GroupNorm cannot split, zero sizes.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let u = &self.unet;
        let mut bad = |path: &str, msg: String| out.push((path.to_string(), msg));
        let levels = u.block_out_channels.len();
        if levels == 0 {
            bad("unet.block_out_channels", "must list at least one width".into());
        }
        if u.down_block_types.len() != levels {
            bad(
                "unet.down_block_types",
                format!(
                    "has {} entries but block_out_channels has {levels}",
                    u.down_block_types.len()
                ),
            );
        }
        if u.up_block_types.len() != levels {
            bad(
                "unet.up_block_types",
                format!(
                    "has {} entries but block_out_channels has {levels}",
                    u.up_block_types.len()
                ),
            );
        }
        for (i, w) in u.block_out_channels.iter().enumerate() {
            if u.norm_num_groups == 0 || w % u.norm_num_groups != 0 {
                bad(
                    &format!("unet.block_out_channels[{i}]"),
                    format!("width {w} is not divisible by norm_num_groups {}", u.norm_num_groups),
                );
            }
            if u.attention_head_dim == 0 || w % u.attention_head_dim != 0 {
                bad(
                    &format!("unet.block_out_channels[{i}]"),
                    format!(
                        "width {w} is not divisible by attention_head_dim {}",
                        u.attention_head_dim
                    ),
                );
            }
        }
        if u.layers_per_block == 0 {
            bad("unet.layers_per_block", "must be at least 1".into());
        }
        if u.cross_attention_dim != self.text_encoder.hidden_size {
            bad(
                "unet.cross_attention_dim",
                format!(
                    "is {} but the text encoder's hidden_size is {}; they must match",
                    u.cross_attention_dim, self.text_encoder.hidden_size
                ),
            );
        }
        if let Some(v) = &self.vae {
            if v.latent_channels != u.in_channels {
                bad(
                    "vae.latent_channels",
                    format!("is {} but unet.in_channels is {}", v.latent_channels, u.in_channels),
                );
            }
        }
        let t = &self.text_encoder;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            bad(
                "text_encoder.hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    t.hidden_size, t.num_attention_heads
                ),
            );
        }
        let g = &self.grounding;
        if g.max_objects == 0 || g.fourier_freqs == 0 || g.mlp_hidden == 0 {
            bad(
                "grounding",
                "max_objects, fourier_freqs and mlp_hidden must be positive".into(),
            );
        }
        let p = &self.perception;
        if p.fusion_heads == 0 || !p.fusion_dim.is_multiple_of(p.fusion_heads) {
            bad(
                "perception.fusion_dim",
                format!("{} is not divisible by fusion_heads {}", p.fusion_dim, p.fusion_heads),
            );
        }
        if p.anchor_ratios.is_empty() || p.anchor_ratios.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            bad(
                "perception.anchor_ratios",
                "must be a non-empty list of positive numbers".into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd14() -> ModelConfig {
        let text = include_str!("../../configs/models/sd14.yaml");
        serde_saphyr::from_str_with_options(text, crate::spec::yaml_options()).expect("sd14.yaml parses")
    }

    #[test]
    fn sd14_attention_blocks_follow_diffusers_indices() {
        let m = sd14();
        assert_eq!(
            m.attention_blocks(),
            ["down.0", "down.1", "down.2", "mid", "up.1", "up.2", "up.3"]
        );
        assert!(m.check().is_empty(), "{:?}", m.check());
        assert_eq!(m.vae_factor(), 8);
        assert_eq!(m.resolution_multiple(), 64);
    }

    #[test]
    fn check_names_mismatched_lists() {
        let mut m = sd14();
        m.unet.up_block_types.pop();
        m.unet.block_out_channels[1] = 100;
        let problems = m.check();
        assert!(problems.iter().any(|(p, _)| p == "unet.up_block_types"), "{problems:?}");
        assert!(
            problems.iter().any(|(p, _)| p == "unet.block_out_channels[1]"),
            "{problems:?}"
        );
    }
}
