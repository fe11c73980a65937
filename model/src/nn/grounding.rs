//! PoI: grounding tokens from boxes and phrase embeddings, and the gated layers that inject them.
//!
//! - [`GroundingBatch`]: a batch's boxes, masks and phrases packed into fixed slots per image.
//! - [`fourier_embed`]: GLIGEN's Fourier box embedding (no parameters).
//! - [`PositionNet`]: the grounding tokenizer `MLP(phrase + fourier → hidden → hidden → out)` with
//!   learnable null embeddings for padded slots (diffusers' `GLIGENTextBoundingboxProjection`,
//!   key `position_net`).
//! - [`GroundingAttention`]: SpatialLock's gated cross-attention (visual tokens query the
//!   grounding tokens), key `grounding_attn`.
//! - [`GatedSelfAttention`]: the GLIGEN baseline's gated self-attention over `[x; g]`, key `fuser`.
//!
//! Both gated layers compute `x + s·tanh(α_attn)·Attn(…)` then `x + s·tanh(α_dense)·FF(LN(x))`
//! with α initialised to 0, so a fresh layer is an exact identity; `s` is the scheduled-grounding
//! scale (1 while grounding is on, 0 after).

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::attention::{Attention, FeedForward};

/// The grounding input of a batch before embedding: `slots` places per image, each a normalised
/// xyxy box, a mask (1 = a real object, 0 = a padded slot) and a phrase (empty when padded). The
/// one packer of training and sampling (GLIGEN's `boxes` / `masks` / phrases of `positive_embeddings`).
#[derive(Debug, Clone, PartialEq)]
pub struct GroundingBatch {
    images: usize,
    slots: usize,
    boxes: Vec<f32>,
    masks: Vec<f32>,
    phrases: Vec<String>,
}

impl GroundingBatch {
    /// `images` images of `slots` empty slots each.
    pub fn new(images: usize, slots: usize) -> Self {
        Self {
            images,
            slots,
            boxes: vec![0.0; images * slots * 4],
            masks: vec![0.0; images * slots],
            phrases: vec![String::new(); images * slots],
        }
    }

    /// Fills slot `k` of image `image` with `bbox` (normalised xyxy) and `phrase`. Objects past
    /// the last slot are dropped (callers sort by importance first).
    pub fn set(&mut self, image: usize, k: usize, bbox: [f32; 4], phrase: &str) {
        if image >= self.images || k >= self.slots {
            return;
        }
        let slot = image * self.slots + k;
        self.boxes[slot * 4..slot * 4 + 4].copy_from_slice(&bbox);
        self.masks[slot] = 1.0;
        self.phrases[slot] = phrase.to_string();
    }

    /// Boxes `[images, slots, 4]` on `device`.
    pub fn boxes(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.boxes)
            .view([self.images as i64, self.slots as i64, 4])
            .to_device(device)
    }

    /// Masks `[images, slots]` on `device`.
    pub fn masks(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.masks)
            .view([self.images as i64, self.slots as i64])
            .to_device(device)
    }

    /// The phrases, slot by slot (image-major).
    pub fn phrases(&self) -> Vec<&str> {
        self.phrases.iter().map(String::as_str).collect()
    }

    /// (images, slots).
    pub fn shape(&self) -> (usize, usize) {
        (self.images, self.slots)
    }
}

/// Fourier embedding of xyxy boxes `[B, N, 4]` → `[B, N, 8·freqs]` with frequencies
/// `100^(k/freqs)`, laid out as `[freq, (sin, cos), coord]` like GLIGEN and diffusers.
pub fn fourier_embed(boxes: &Tensor, freqs: i64) -> Tensor {
    let (b, n, _) = boxes.size3().unwrap_or((0, 0, 0));
    let k = Tensor::arange(freqs, (Kind::Float, boxes.device())) / freqs as f64;
    let bands = Tensor::full([1], 100.0, (Kind::Float, boxes.device())).pow(&k);
    let x = boxes.to_kind(Kind::Float).unsqueeze(-1) * bands.view([1, 1, 1, freqs]); // [B,N,4,F]
    let emb = Tensor::stack(&[x.sin(), x.cos()], -1); // [B,N,4,F,2]
    emb.permute([0, 1, 3, 4, 2]).reshape([b, n, freqs * 2 * 4])
}

/// The grounding tokenizer: boxes + phrase embeddings + masks → grounding tokens.
#[derive(Debug)]
pub struct PositionNet {
    l0: nn::Linear,
    l2: nn::Linear,
    l4: nn::Linear,
    null_positive: Tensor,
    null_position: Tensor,
    freqs: i64,
}

impl PositionNet {
    /// `phrase_dim` (CLIP width) + `8·freqs` → `hidden` → `hidden` → `out_dim`.
    pub fn new(p: nn::Path, phrase_dim: i64, out_dim: i64, hidden: i64, freqs: i64) -> Self {
        let position_dim = 8 * freqs;
        let lin = |name: i64, i, o| nn::linear(&p / "linears" / name, i, o, Default::default());
        Self {
            l0: lin(0, phrase_dim + position_dim, hidden),
            l2: lin(2, hidden, hidden),
            l4: lin(4, hidden, out_dim),
            null_positive: p.zeros("null_positive_feature", &[phrase_dim]),
            null_position: p.zeros("null_position_feature", &[position_dim]),
            freqs,
        }
    }

    /// `boxes` `[B,N,4]` xyxy in [0,1], `phrases` `[B,N,phrase_dim]`, `masks` `[B,N]` (1 = real
    /// object). Padded slots get the learned null embeddings.
    pub fn forward(&self, boxes: &Tensor, phrases: &Tensor, masks: &Tensor) -> Tensor {
        let m = masks.to_kind(phrases.kind()).unsqueeze(-1);
        let inv = 1.0 - &m;
        let pos = fourier_embed(boxes, self.freqs).to_kind(phrases.kind());
        let pos = &pos * &m + &inv * self.null_position.view([1, 1, -1]);
        let phr = phrases * &m + &inv * self.null_positive.view([1, 1, -1]);
        let h = self.l0.forward(&Tensor::cat(&[phr, pos], -1)).silu();
        let h = self.l2.forward(&h).silu();
        self.l4.forward(&h)
    }
}

/// The two tanh gates of a gated layer.
#[derive(Debug)]
struct Gates {
    attn: Tensor,
    dense: Tensor,
}

impl Gates {
    fn new(p: &nn::Path) -> Self {
        Self {
            attn: p.zeros("alpha_attn", &[]),
            dense: p.zeros("alpha_dense", &[]),
        }
    }
}

/// SpatialLock's Grounding-Attention: gated cross-attention from visual tokens to grounding tokens.
#[derive(Debug)]
pub struct GroundingAttention {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    ff: FeedForward,
    gates: Gates,
}

impl GroundingAttention {
    /// For visual tokens of width `dim` and grounding tokens of width `token_dim`.
    pub fn new(p: nn::Path, dim: i64, token_dim: i64, heads: i64) -> Self {
        Self {
            norm1: nn::layer_norm(&p / "norm1", vec![dim], Default::default()),
            attn: Attention::new(&p / "attn", dim, token_dim, heads, dim / heads, false),
            norm2: nn::layer_norm(&p / "norm2", vec![dim], Default::default()),
            ff: FeedForward::new(&p / "ff", dim),
            gates: Gates::new(&p),
        }
    }

    /// `x` `[B, HW, dim]`, `tokens` `[B, N, token_dim]`, `scale` 0 or 1.
    pub fn forward(&self, x: &Tensor, tokens: &Tensor, scale: f64) -> Tensor {
        let x = x + scale * self.gates.attn.tanh() * self.attn.forward(&self.norm1.forward(x), Some(tokens));
        &x + scale * self.gates.dense.tanh() * self.ff.forward(&self.norm2.forward(&x))
    }
}

/// GLIGEN's gated self-attention over the concatenation of visual and grounding tokens.
#[derive(Debug)]
pub struct GatedSelfAttention {
    linear: nn::Linear,
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    ff: FeedForward,
    gates: Gates,
}

impl GatedSelfAttention {
    /// For visual tokens of width `dim` and grounding tokens of width `token_dim`.
    pub fn new(p: nn::Path, dim: i64, token_dim: i64, heads: i64) -> Self {
        Self {
            linear: nn::linear(&p / "linear", token_dim, dim, Default::default()),
            norm1: nn::layer_norm(&p / "norm1", vec![dim], Default::default()),
            attn: Attention::new(&p / "attn", dim, dim, heads, dim / heads, false),
            norm2: nn::layer_norm(&p / "norm2", vec![dim], Default::default()),
            ff: FeedForward::new(&p / "ff", dim),
            gates: Gates::new(&p),
        }
    }

    /// `x` `[B, HW, dim]`, `tokens` `[B, N, token_dim]`, `scale` 0 or 1.
    pub fn forward(&self, x: &Tensor, tokens: &Tensor, scale: f64) -> Tensor {
        let n_visual = x.size()[1];
        let objs = self.linear.forward(tokens);
        let joint = self.norm1.forward(&Tensor::cat(&[x, &objs], 1));
        // Only the visual rows of the self-attention are kept, so only they are queried
        // (identical result; saves the grounding tokens' query and output projections).
        let attended = self.attn.forward(&joint.narrow(1, 0, n_visual), Some(&joint));
        let x = x + scale * self.gates.attn.tanh() * attended;
        &x + scale * self.gates.dense.tanh() * self.ff.forward(&self.norm2.forward(&x))
    }
}

/// A grounding layer of either kind.
#[derive(Debug)]
pub enum Fuser {
    /// SpatialLock.
    Cross(GroundingAttention),
    /// GLIGEN.
    SelfGated(GatedSelfAttention),
}

impl Fuser {
    /// Applies the layer. With `scale` 0 (scheduled grounding switched off) the layer is the
    /// identity and is skipped.
    pub fn forward(&self, x: &Tensor, tokens: &Tensor, scale: f64) -> Tensor {
        if scale == 0.0 {
            return x.shallow_clone();
        }
        match self {
            Fuser::Cross(f) => f.forward(x, tokens, scale),
            Fuser::SelfGated(f) => f.forward(x, tokens, scale),
        }
    }
}
