//! The CLIP text transformer (transformers `CLIPTextModel`): token + position embeddings,
//! causal pre-LN transformer layers, final LayerNorm; returns `last_hidden_state` and the
//! pooled state at the end-of-text token.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use spatiallock_protocol::model_config::TextEncoderConfig;

#[derive(Debug)]
struct Layer {
    ln1: nn::LayerNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// CLIP's text tower.
#[derive(Debug)]
pub struct ClipTextModel {
    config: TextEncoderConfig,
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<Layer>,
    final_layer_norm: nn::LayerNorm,
    quick_gelu: bool,
}

/// Outputs of the text encoder.
#[derive(Debug)]
pub struct ClipOutput {
    /// `[B, L, hidden]` after the final LayerNorm (the U-Net's text context).
    pub last_hidden_state: Tensor,
    /// `[B, hidden]`: the final-LayerNorm state at the end-of-text token (before any
    /// projection): GLIGEN's phrase embedding.
    pub pooled: Tensor,
}

impl ClipTextModel {
    /// Builds the network under `p` (diffusers checkpoints put it under `text_model`).
    pub fn new(p: &nn::Path, config: &TextEncoderConfig) -> Self {
        let d = i64::from(config.hidden_size);
        let ln = nn::LayerNormConfig {
            eps: config.layer_norm_eps,
            ..Default::default()
        };
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let emb = p / "embeddings";
        let layers = (0..i64::from(config.num_hidden_layers))
            .map(|i| {
                let l = p / "encoder" / "layers" / i;
                let a = &l / "self_attn";
                Layer {
                    ln1: nn::layer_norm(&l / "layer_norm1", vec![d], ln),
                    q: lin(&a / "q_proj", d, d),
                    k: lin(&a / "k_proj", d, d),
                    v: lin(&a / "v_proj", d, d),
                    out: lin(&a / "out_proj", d, d),
                    ln2: nn::layer_norm(&l / "layer_norm2", vec![d], ln),
                    fc1: lin(&l / "mlp" / "fc1", d, i64::from(config.intermediate_size)),
                    fc2: lin(&l / "mlp" / "fc2", i64::from(config.intermediate_size), d),
                }
            })
            .collect();
        Self {
            config: config.clone(),
            token_embedding: nn::embedding(
                &emb / "token_embedding",
                i64::from(config.vocab_size),
                d,
                Default::default(),
            ),
            position_embedding: nn::embedding(
                &emb / "position_embedding",
                i64::from(config.max_position_embeddings),
                d,
                Default::default(),
            ),
            layers,
            final_layer_norm: nn::layer_norm(p / "final_layer_norm", vec![d], ln),
            quick_gelu: config.hidden_act == "quick_gelu",
        }
    }

    /// The config.
    pub fn config(&self) -> &TextEncoderConfig {
        &self.config
    }

    /// `input_ids` `[B, L]` (int64, L ≤ max_position_embeddings).
    // `x = x + …` on purpose: `+=` would be in place and corrupt tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, input_ids: &Tensor) -> ClipOutput {
        let (b, l) = input_ids.size2().unwrap_or((0, 0));
        let d = i64::from(self.config.hidden_size);
        let heads = i64::from(self.config.num_attention_heads);
        let positions = Tensor::arange(l, (Kind::Int64, input_ids.device()));
        let mut x = self.token_embedding.forward(input_ids) + self.position_embedding.forward(&positions).unsqueeze(0);
        let split = |t: Tensor| t.view([b, l, heads, d / heads]).transpose(1, 2);
        for layer in &self.layers {
            let h = layer.ln1.forward(&x);
            let (q, k, v) = (
                split(layer.q.forward(&h)),
                split(layer.k.forward(&h)),
                split(layer.v.forward(&h)),
            );
            let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false);
            x = x + layer.out.forward(&a.transpose(1, 2).reshape([b, l, d]));
            let h = layer.fc1.forward(&layer.ln2.forward(&x));
            let h = if self.quick_gelu {
                &h * (&h * 1.702).sigmoid()
            } else {
                h.gelu("none")
            };
            x = x + layer.fc2.forward(&h);
        }
        let last = self.final_layer_norm.forward(&x);
        let eos = self.eos_positions(input_ids);
        let pooled = last
            .gather(1, &eos.view([b, 1, 1]).expand([b, 1, d], false), false)
            .squeeze_dim(1);
        ClipOutput {
            last_hidden_state: last,
            pooled,
        }
    }

    /// Where each row's pooled state is read: the first end-of-text token, or (legacy
    /// `eos_token_id` 2) the position of the largest id, as transformers does.
    fn eos_positions(&self, ids: &Tensor) -> Tensor {
        if self.config.eos_token_id == 2 {
            ids.argmax(-1, false)
        } else {
            ids.eq(self.config.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        }
    }
}
