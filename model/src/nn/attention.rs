//! Multi-head attention and the GEGLU feed-forward of SD's transformer blocks (diffusers
//! `Attention` and `FeedForward`), through `scaled_dot_product_attention`.

use tch::nn::{self, Module};
use tch::Tensor;

fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}

/// Attention with `heads` heads; keys/values come from `context` (cross) or the query (self).
#[derive(Debug)]
pub struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl Attention {
    /// `query_dim` → `heads × head_dim`; keys and values project from `context_dim`.
    /// `qkv_bias` is false in SD's transformer blocks and true in the VAE's mid attention.
    pub fn new(p: nn::Path, query_dim: i64, context_dim: i64, heads: i64, head_dim: i64, qkv_bias: bool) -> Self {
        let inner = heads * head_dim;
        Self {
            to_q: linear(&p / "to_q", query_dim, inner, qkv_bias),
            to_k: linear(&p / "to_k", context_dim, inner, qkv_bias),
            to_v: linear(&p / "to_v", context_dim, inner, qkv_bias),
            to_out: linear(&p / "to_out" / 0, inner, query_dim, true),
            heads,
        }
    }

    fn split_heads(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().unwrap_or((0, 0, 0));
        x.view([b, n, self.heads, c / self.heads]).transpose(1, 2)
    }

    /// `x` `[B, N, query_dim]`, `context` `[B, M, context_dim]` (or `None` for self-attention).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x));
        let k = self.split_heads(&self.to_k.forward(context));
        let v = self.split_heads(&self.to_v.forward(context));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let (b, h, n, d) = out.size4().unwrap_or((0, 0, 0, 0));
        self.to_out.forward(&out.transpose(1, 2).reshape([b, n, h * d]))
    }
}

/// GEGLU feed-forward: `Linear(dim, 2·4·dim)` split into value and gate, `value·gelu(gate)`,
/// then `Linear(4·dim, dim)` (keys `net.0.proj`, `net.2`).
#[derive(Debug)]
pub struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    /// A feed-forward block of width `dim` with a 4× hidden layer.
    pub fn new(p: nn::Path, dim: i64) -> Self {
        let inner = 4 * dim;
        Self {
            proj: linear(&p / "net" / 0 / "proj", dim, 2 * inner, true),
            out: linear(&p / "net" / 2, inner, dim, true),
        }
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj.forward(x);
        let parts = h.chunk(2, -1);
        self.out.forward(&(&parts[0] * parts[1].gelu("none")))
    }
}
