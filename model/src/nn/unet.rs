//! `UNet2DConditionModel`: SD v1.x's denoiser, with optional PoI grounding layers in the
//! configured attention blocks and feature taps for PoG.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use spatiallock_protocol::model_config::{DownBlockType, UNetConfig, UpBlockType};

use super::grounding::PositionNet;
use super::transformer::{FuserKind, GroundingContext};
use super::unet_blocks::{BlockDims, DownBlock, MidBlock, UpBlock};
use crate::error::ModelError;

/// How PoI is wired into a U-Net.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundingSetup {
    /// SpatialLock (gated cross-attention), GLIGEN (gated self-attention) or off.
    pub kind: FuserKind,
    /// Attention blocks that get a grounding layer (`down.2`, `mid`, `up.1`, ...).
    pub blocks: Vec<String>,
    /// Width of the phrase embeddings (CLIP hidden size).
    pub phrase_dim: i64,
    /// Hidden width of the grounding MLP.
    pub mlp_hidden: i64,
    /// Fourier frequencies per box coordinate.
    pub fourier_freqs: i64,
    /// Most objects per image.
    pub max_objects: i64,
}

impl GroundingSetup {
    /// No grounding at all.
    pub fn off() -> Self {
        Self {
            kind: FuserKind::Off,
            blocks: Vec::new(),
            phrase_dim: 0,
            mlp_hidden: 0,
            fourier_freqs: 8,
            max_objects: 30,
        }
    }

    /// The wiring a SpatialLock model config asks for: `kind` layers in `blocks`, tokenizer
    /// sizes from the config's `grounding` section, phrases of the text encoder's width.
    pub fn from_model(model: &spatiallock_protocol::ModelConfig, kind: FuserKind, blocks: Vec<String>) -> Self {
        Self {
            kind,
            blocks,
            phrase_dim: i64::from(model.text_encoder.hidden_size),
            mlp_hidden: i64::from(model.grounding.mlp_hidden),
            fourier_freqs: i64::from(model.grounding.fourier_freqs),
            max_objects: i64::from(model.grounding.max_objects),
        }
    }

    fn kind_for(&self, block: &str) -> FuserKind {
        if self.blocks.iter().any(|b| b == block) {
            self.kind
        } else {
            FuserKind::Off
        }
    }
}

/// Layout conditioning for one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct GroundingInput<'a> {
    /// `[B, N, 4]` normalised xyxy boxes.
    pub boxes: &'a Tensor,
    /// `[B, N, phrase_dim]` phrase embeddings (CLIP pooled EOS states).
    pub phrases: &'a Tensor,
    /// `[B, N]`: 1 for a real object, 0 for a padded slot (all 0 = the null grounding input).
    pub masks: &'a Tensor,
    /// Scheduled-grounding scale: 1 while grounding is on, 0 after.
    pub scale: f64,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct UNetOutput {
    /// The predicted noise ε, shaped like the input.
    pub eps: Tensor,
    /// The output of every down block (after its downsampling), highest resolution first,
    /// with grounding already applied: the perception head reads these.
    pub down: Vec<Tensor>,
    /// The mid block's output.
    pub mid: Tensor,
}

/// SD's U-Net.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    position_net: Option<PositionNet>,
    grounding: GroundingSetup,
}

/// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`).
pub fn timestep_embedding(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let dev = timesteps.device();
    let exponent = Tensor::arange(half, (Kind::Float, dev)) * (-(10000f64.ln())) / (half as f64 - freq_shift);
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[args.cos(), args.sin()], -1)
    } else {
        Tensor::cat(&[args.sin(), args.cos()], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

impl UNet2DConditionModel {
    /// Builds the network (parameters under `p`) from a diffusers-style config.
    pub fn new(p: &nn::Path, config: &UNetConfig, grounding: GroundingSetup) -> Self {
        let widths: Vec<i64> = config.block_out_channels.iter().map(|&w| i64::from(w)).collect();
        let levels = widths.len();
        let temb = widths[0] * 4;
        let dims = BlockDims {
            temb,
            groups: i64::from(config.norm_num_groups),
            eps: config.norm_eps,
            heads: i64::from(config.attention_head_dim),
            context_dim: i64::from(config.cross_attention_dim),
            token_dim: i64::from(config.cross_attention_dim),
        };
        let layers = i64::from(config.layers_per_block);
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };

        let mut down = Vec::with_capacity(levels);
        let mut prev = widths[0];
        for (i, t) in config.down_block_types.iter().enumerate() {
            let attention = *t == DownBlockType::CrossAttnDownBlock2D;
            let fuser = grounding.kind_for(&format!("down.{i}"));
            let block_p = p / "down_blocks" / i as i64;
            down.push(DownBlock::new(
                block_p,
                prev,
                widths[i],
                layers,
                attention,
                i + 1 < levels,
                dims,
                fuser,
            ));
            prev = widths[i];
        }
        let top = widths[levels - 1];
        let mid = config
            .mid_block_type
            .map(|_| MidBlock::new(p / "mid_block", top, dims, grounding.kind_for("mid")));

        let reversed: Vec<i64> = widths.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(levels);
        let mut prev_out = reversed[0];
        for (i, t) in config.up_block_types.iter().enumerate() {
            let out = reversed[i];
            let skip_in = reversed[(i + 1).min(levels - 1)];
            let attention = *t == UpBlockType::CrossAttnUpBlock2D;
            let fuser = grounding.kind_for(&format!("up.{i}"));
            let block_p = p / "up_blocks" / i as i64;
            up.push(UpBlock::new(
                block_p,
                skip_in,
                out,
                prev_out,
                layers + 1,
                attention,
                i + 1 < levels,
                dims,
                fuser,
            ));
            prev_out = out;
        }

        let position_net = (grounding.kind != FuserKind::Off).then(|| {
            PositionNet::new(
                p / "position_net",
                grounding.phrase_dim,
                dims.token_dim,
                grounding.mlp_hidden,
                grounding.fourier_freqs,
            )
        });
        Self {
            config: config.clone(),
            conv_in: nn::conv2d(p / "conv_in", i64::from(config.in_channels), widths[0], 3, conv3),
            time_linear_1: nn::linear(p / "time_embedding" / "linear_1", widths[0], temb, Default::default()),
            time_linear_2: nn::linear(p / "time_embedding" / "linear_2", temb, temb, Default::default()),
            down,
            mid,
            up,
            norm_out: nn::group_norm(
                p / "conv_norm_out",
                dims.groups,
                widths[0],
                nn::GroupNormConfig {
                    eps: config.norm_eps,
                    ..Default::default()
                },
            ),
            conv_out: nn::conv2d(p / "conv_out", widths[0], i64::from(config.out_channels), 3, conv3),
            position_net,
            grounding,
        }
    }

    /// The architecture.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The grounding wiring.
    pub fn grounding(&self) -> &GroundingSetup {
        &self.grounding
    }

    /// Grounding tokens `[B, N, token_dim]` from boxes, phrases and masks (the PoI tokenizer).
    pub fn grounding_tokens(&self, input: &GroundingInput) -> Result<Option<Tensor>, ModelError> {
        let Some(net) = &self.position_net else { return Ok(None) };
        Ok(Some(net.forward(input.boxes, input.phrases, input.masks)))
    }

    /// Predicts ε. `timesteps` is `[B]` (one per sample) or a scalar; `context` is the text
    /// encoder's `[B, L, cross_attention_dim]`; `grounding` is ignored by a U-Net without PoI.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        grounding: Option<GroundingInput>,
    ) -> Result<UNetOutput, ModelError> {
        let batch = self.check_inputs(sample, timesteps, context, grounding.as_ref())?;
        let timesteps = if timesteps.dim() == 0 {
            timesteps.expand([batch], false)
        } else {
            timesteps.shallow_clone()
        };
        let widths0 = i64::from(self.config.block_out_channels[0]);
        let t = timestep_embedding(&timesteps, widths0, self.config.flip_sin_to_cos, self.config.freq_shift)
            .to_kind(sample.kind());
        let temb = self.time_linear_2.forward(&self.time_linear_1.forward(&t).silu());

        let tokens = match &grounding {
            Some(g) => self.grounding_tokens(g)?,
            None => None,
        };
        let ctx = match (&tokens, &grounding) {
            (Some(tokens), Some(g)) => Some(GroundingContext { tokens, scale: g.scale }),
            _ => None,
        };

        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.shallow_clone()];
        let mut taps = Vec::with_capacity(self.down.len());
        for block in &self.down {
            let (out, states) = block.forward(&h, &temb, context, ctx);
            skips.extend(states);
            taps.push(out.shallow_clone());
            h = out;
        }
        if let Some(mid) = &self.mid {
            h = mid.forward(&h, &temb, context, ctx);
        }
        let mid_out = h.shallow_clone();
        for block in &self.up {
            let n = block.layers();
            let split = skips.len() - n;
            // Upsample to the size of the next skip, so odd sizes round-trip like diffusers.
            let upsample_to = split.checked_sub(1).map(|k| {
                let size = skips[k].size();
                (size[2], size[3])
            });
            h = block.forward(&h, &skips[split..], &temb, context, ctx, upsample_to);
            skips.truncate(split);
        }
        let eps = self.conv_out.forward(&self.norm_out.forward(&h).silu());
        Ok(UNetOutput {
            eps,
            down: taps,
            mid: mid_out,
        })
    }

    fn check_inputs(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        grounding: Option<&GroundingInput>,
    ) -> Result<i64, ModelError> {
        let c = &self.config;
        let shape = sample.size();
        if shape.len() != 4 || shape[1] != i64::from(c.in_channels) {
            return Err(ModelError::shape(
                "sample",
                format!("[B, {}, H, W]", c.in_channels),
                &shape,
            ));
        }
        let batch = shape[0];
        let multiple = 1i64 << (c.block_out_channels.len() - 1);
        if shape[2] % multiple != 0 || shape[3] % multiple != 0 {
            return Err(ModelError::shape(
                "sample",
                format!("[B, C, H, W] with H and W multiples of {multiple}"),
                &shape,
            ));
        }
        let ts = timesteps.size();
        if !(ts.is_empty() || ts == [batch]) {
            return Err(ModelError::shape("timestep", format!("[{batch}] or a scalar"), &ts));
        }
        let cs = context.size();
        if cs.len() != 3 || cs[0] != batch || cs[2] != i64::from(c.cross_attention_dim) {
            return Err(ModelError::shape(
                "encoder_hidden_states",
                format!("[{batch}, L, {}]", c.cross_attention_dim),
                &cs,
            ));
        }
        if let (Some(g), Some(_)) = (grounding, &self.position_net) {
            let bs = g.boxes.size();
            if bs.len() != 3 || bs[0] != batch || bs[2] != 4 {
                return Err(ModelError::shape("boxes", format!("[{batch}, N, 4]"), &bs));
            }
            let n = bs[1];
            let max = self.grounding.max_objects;
            if n > max {
                return Err(ModelError::Input(format!(
                    "boxes: {n} objects per image, more than the maximum of {max}"
                )));
            }
            let ps = g.phrases.size();
            if ps != [batch, n, self.grounding.phrase_dim] {
                return Err(ModelError::shape(
                    "phrase_embeddings",
                    format!("[{batch}, {n}, {}]", self.grounding.phrase_dim),
                    &ps,
                ));
            }
            let ms = g.masks.size();
            if ms != [batch, n] {
                return Err(ModelError::shape("masks", format!("[{batch}, {n}]"), &ms));
            }
            check_boxes(g.boxes, g.masks)?;
        }
        Ok(batch)
    }
}

/// Boxes of real objects must be normalised xyxy: every coordinate in [0, 1] (with 1e-4 of
/// slack for rounding). Padded slots (mask 0) are not checked. Out-of-range boxes are
/// rejected rather than clamped: they almost always mean pixel coordinates were passed.
fn check_boxes(boxes: &Tensor, masks: &Tensor) -> Result<(), ModelError> {
    let valid = masks.gt(0.0).unsqueeze(-1).expand_as(boxes);
    let bad = (boxes.lt(-1e-4).logical_or(&boxes.gt(1.0 + 1e-4))).logical_and(&valid);
    if bad.any().int64_value(&[]) == 0 {
        return Ok(());
    }
    let at = bad.nonzero();
    let idx: Vec<i64> = (0..3).map(|k| at.int64_value(&[0, k])).collect();
    let value = boxes.double_value(&idx);
    Err(ModelError::Input(format!(
        "boxes: value {value} at [{}, {}, {}] is outside [0, 1]; boxes must be normalised xyxy",
        idx[0], idx[1], idx[2]
    )))
}
