//! Reading diffusers/transformers `config.json` files into our architecture structs. Fields that
//! change the network in ways we do not implement are rejected by name, never silently ignored.

use std::path::Path;

use serde_json::Value;
use spatiallock_protocol::model_config::{
    DownBlockType, MidBlockType, TextEncoderConfig, UNetConfig, UpBlockType, VaeConfig,
};

use crate::error::ModelError;

/// How grounding is present in a diffusers U-Net config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionType {
    /// Plain SD.
    Default,
    /// GLIGEN (`attention_type: "gated"`): a `position_net` and a gated self-attention fuser in
    /// every transformer block.
    Gated,
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, message: String) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn u32(&self, key: &str, default: Option<u32>) -> Result<u32, ModelError> {
        match self.get(key) {
            None => default.ok_or_else(|| self.err(format!("missing `{key}`"))),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, found {v}"))),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {v}"))),
        }
    }

    fn str_list(&self, key: &str) -> Result<Vec<String>, ModelError> {
        let v = self.get(key).ok_or_else(|| self.err(format!("missing `{key}`")))?;
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.err(format!("`{key}` must be a list of strings, found {v}")))
    }

    fn u32_list(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        let v = self.get(key).ok_or_else(|| self.err(format!("missing `{key}`")))?;
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.err(format!("`{key}` must be a list of integers, found {v}")))
    }

    /// Rejects a field whose value is not one we implement.
    fn require(&self, key: &str, supported: &[Value]) -> Result<(), ModelError> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if supported.contains(v) => Ok(()),
            Some(v) => Err(self.err(format!(
                "unsupported `{key}`: {v} (SpatialLock implements SD v1.x: {})",
                supported.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" or ")
            ))),
        }
    }
}

/// A diffusers `unet/config.json` → our U-Net config and its attention type.
pub fn unet_from_json(json: &Value, path: &Path) -> Result<(UNetConfig, AttentionType), ModelError> {
    use serde_json::json;
    let f = Fields { json, path };
    f.require("act_fn", &[json!("silu")])?;
    f.require("center_input_sample", &[json!(false)])?;
    f.require("downsample_padding", &[json!(1)])?;
    f.require("mid_block_scale_factor", &[json!(1), json!(1.0)])?;
    f.require("use_linear_projection", &[json!(false)])?;
    f.require("transformer_layers_per_block", &[json!(1)])?;
    f.require("only_cross_attention", &[json!(false)])?;
    f.require("dual_cross_attention", &[json!(false)])?;
    f.require("resnet_time_scale_shift", &[json!("default")])?;
    f.require("time_embedding_type", &[json!("positional")])?;
    f.require("conv_in_kernel", &[json!(3)])?;
    f.require("conv_out_kernel", &[json!(3)])?;
    for absent in [
        "class_embed_type",
        "addition_embed_type",
        "encoder_hid_dim",
        "time_cond_proj_dim",
        "num_class_embeds",
    ] {
        if let Some(v) = f.get(absent) {
            return Err(f.err(format!("unsupported `{absent}`: {v} (SD v1.x has none)")));
        }
    }
    let heads = match f.get("attention_head_dim") {
        Some(Value::Array(a)) => {
            let first = a.first().and_then(Value::as_u64);
            if first.is_none() || a.iter().any(|x| x.as_u64() != first) {
                return Err(f.err(format!(
                    "`attention_head_dim` must be one number for every block, found {}",
                    Value::Array(a.clone())
                )));
            }
            first.and_then(|n| u32::try_from(n).ok()).unwrap_or(8)
        }
        _ => f.u32("attention_head_dim", Some(8))?,
    };
    if let Some(n) = f.get("num_attention_heads") {
        if n.as_u64() != Some(u64::from(heads)) {
            return Err(f.err(format!(
                "unsupported `num_attention_heads`: {n} differs from attention_head_dim {heads}"
            )));
        }
    }
    let down = f
        .str_list("down_block_types")?
        .iter()
        .map(|t| match t.as_str() {
            "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
            "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
            other => Err(f.err(format!("unsupported down block type `{other}`"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let up = f
        .str_list("up_block_types")?
        .iter()
        .map(|t| match t.as_str() {
            "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
            "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
            other => Err(f.err(format!("unsupported up block type `{other}`"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mid = match f.get("mid_block_type").and_then(Value::as_str) {
        None | Some("UNetMidBlock2DCrossAttn") => Some(MidBlockType::UNetMidBlock2DCrossAttn),
        Some(other) => return Err(f.err(format!("unsupported `mid_block_type` `{other}`"))),
    };
    let attention_type = match f.get("attention_type").and_then(Value::as_str) {
        None | Some("default") => AttentionType::Default,
        Some("gated") => AttentionType::Gated,
        Some(other) => return Err(f.err(format!("unsupported `attention_type` `{other}` (default or gated)"))),
    };
    let config = UNetConfig {
        sample_size: f.u32("sample_size", Some(64))?,
        in_channels: f.u32("in_channels", Some(4))?,
        out_channels: f.u32("out_channels", Some(4))?,
        block_out_channels: f.u32_list("block_out_channels")?,
        down_block_types: down,
        mid_block_type: mid,
        up_block_types: up,
        layers_per_block: f.u32("layers_per_block", Some(2))?,
        cross_attention_dim: f.u32("cross_attention_dim", Some(768))?,
        attention_head_dim: heads,
        norm_num_groups: f.u32("norm_num_groups", Some(32))?,
        norm_eps: f.f64("norm_eps", 1e-5)?,
        flip_sin_to_cos: f.get("flip_sin_to_cos").and_then(Value::as_bool).unwrap_or(true),
        freq_shift: f.f64("freq_shift", 0.0)?,
    };
    Ok((config, attention_type))
}

/// A diffusers `vae/config.json` → our VAE config.
pub fn vae_from_json(json: &Value, path: &Path) -> Result<VaeConfig, ModelError> {
    use serde_json::json;
    let f = Fields { json, path };
    f.require("act_fn", &[json!("silu")])?;
    f.require("use_quant_conv", &[json!(true)])?;
    f.require("use_post_quant_conv", &[json!(true)])?;
    f.require("mid_block_add_attention", &[json!(true)])?;
    for (key, want) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        if let Some(bad) = f.str_list(key)?.iter().find(|t| *t != want) {
            return Err(f.err(format!("unsupported `{key}` entry `{bad}` (only {want})")));
        }
    }
    Ok(VaeConfig {
        in_channels: f.u32("in_channels", Some(3))?,
        out_channels: f.u32("out_channels", Some(3))?,
        latent_channels: f.u32("latent_channels", Some(4))?,
        block_out_channels: f.u32_list("block_out_channels")?,
        layers_per_block: f.u32("layers_per_block", Some(2))?,
        norm_num_groups: f.u32("norm_num_groups", Some(32))?,
        scaling_factor: f.f64("scaling_factor", 0.18215)?,
    })
}

/// A transformers `text_encoder/config.json` (`CLIPTextConfig`) → our text-encoder config.
pub fn text_encoder_from_json(json: &Value, path: &Path) -> Result<TextEncoderConfig, ModelError> {
    use serde_json::json;
    let f = Fields { json, path };
    f.require("hidden_act", &[json!("quick_gelu"), json!("gelu")])?;
    Ok(TextEncoderConfig {
        vocab_size: f.u32("vocab_size", Some(49408))?,
        hidden_size: f.u32("hidden_size", None)?,
        intermediate_size: f.u32("intermediate_size", None)?,
        num_hidden_layers: f.u32("num_hidden_layers", None)?,
        num_attention_heads: f.u32("num_attention_heads", None)?,
        max_position_embeddings: f.u32("max_position_embeddings", Some(77))?,
        hidden_act: f
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("quick_gelu")
            .to_string(),
        layer_norm_eps: f.f64("layer_norm_eps", 1e-5)?,
        eos_token_id: f.get("eos_token_id").and_then(Value::as_i64).unwrap_or(2),
    })
}

/// Our U-Net config as a diffusers `unet/config.json`.
pub fn unet_to_json(c: &UNetConfig, attention: AttentionType) -> Value {
    let names = |v: Vec<String>| Value::from(v);
    serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": c.sample_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "block_out_channels": c.block_out_channels,
        "down_block_types": names(c.down_block_types.iter().map(|t| format!("{t:?}")).collect()),
        "mid_block_type": c.mid_block_type.map(|t| format!("{t:?}")),
        "up_block_types": names(c.up_block_types.iter().map(|t| format!("{t:?}")).collect()),
        "layers_per_block": c.layers_per_block,
        "cross_attention_dim": c.cross_attention_dim,
        "attention_head_dim": c.attention_head_dim,
        "norm_num_groups": c.norm_num_groups,
        "norm_eps": c.norm_eps,
        "flip_sin_to_cos": c.flip_sin_to_cos,
        "freq_shift": c.freq_shift,
        "act_fn": "silu",
        "attention_type": match attention { AttentionType::Default => "default", AttentionType::Gated => "gated" },
    })
}

/// Our text-encoder config as a transformers `text_encoder/config.json`.
pub fn text_encoder_to_json(c: &TextEncoderConfig) -> Value {
    serde_json::json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": c.hidden_act,
        "layer_norm_eps": c.layer_norm_eps,
        "eos_token_id": c.eos_token_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_diffusers_json() {
        let m = spatiallock_protocol::trial::builtin_model("sd14").expect("sd14");
        let p = Path::new("config.json");
        let (unet, att) = unet_from_json(&unet_to_json(&m.unet, AttentionType::Gated), p).expect("unet");
        assert_eq!((unet, att), (m.unet.clone(), AttentionType::Gated));
        let te = text_encoder_from_json(&text_encoder_to_json(&m.text_encoder), p).expect("clip");
        assert_eq!(te, m.text_encoder);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let m = spatiallock_protocol::trial::builtin_model("sd14").expect("sd14");
        let mut json = unet_to_json(&m.unet, AttentionType::Default);
        json["use_linear_projection"] = Value::Bool(true);
        let err = unet_from_json(&json, Path::new("unet/config.json"))
            .expect_err("SD2-style")
            .to_string();
        assert!(err.contains("unsupported `use_linear_projection`: true"), "{err}");
    }
}
