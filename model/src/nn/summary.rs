//! Parameter counts per module, frozen vs trainable: what `spatiallock model summary` prints.

use std::collections::BTreeMap;

use serde::Serialize;
use tch::nn::VarStore;

use super::params::is_grounding_param;

/// One row: a module group, its parameter count, and whether training updates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleRow {
    /// `conv_in`, `down_blocks.2`, `position_net`, `grounding layers in up.1`, ...
    pub module: String,
    /// Parameter elements.
    pub params: i64,
    /// Updated by training (PoI modules; the base is frozen).
    pub trainable: bool,
}

/// The attention block a U-Net parameter sits in, named as placements name them (`down.2`,
/// `mid`, `up.1`), or its top-level module.
fn block_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["down_blocks", i, ..] => format!("down.{i}"),
        ["up_blocks", i, ..] => format!("up.{i}"),
        ["mid_block", ..] => "mid".to_string(),
        [first, ..] => first.to_string(),
        [] => String::new(),
    }
}

/// The module group a U-Net parameter belongs to: grounding layers by the block they sit in,
/// everything else by its top-level module (`down_blocks.i`, `mid_block`, `up_blocks.i`, ...).
pub fn unet_group(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let block = block_of(name);
    if name.starts_with("position_net.") {
        "position_net".to_string()
    } else if is_grounding_param(name) {
        format!("grounding layers in {block}")
    } else {
        match parts.as_slice() {
            [top @ ("down_blocks" | "up_blocks"), i, ..] => format!("{top}.{i}"),
            [first, ..] => first.to_string(),
            [] => String::new(),
        }
    }
}

/// Groups the parameters of `vs`.
pub fn module_rows(vs: &VarStore, group: impl Fn(&str) -> String, trainable: impl Fn(&str) -> bool) -> Vec<ModuleRow> {
    let mut rows: BTreeMap<(bool, String), i64> = BTreeMap::new();
    for (name, var) in vs.variables() {
        *rows.entry((trainable(&name), group(&name))).or_default() += var.numel() as i64;
    }
    rows.into_iter()
        .map(|((trainable, module), params)| ModuleRow {
            module,
            params,
            trainable,
        })
        .collect()
}

/// `859.52M`-style formatting.
pub fn millions(n: i64) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

/// One grounding layer of a U-Net (a `grounding_attn` or `fuser` module): where it sits and
/// how many parameters it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroundingLayer {
    /// Its key prefix, e.g. `down_blocks.2.attentions.0.transformer_blocks.0.grounding_attn`.
    pub key: String,
    /// The attention block it sits in (`down.2`, `mid`, `up.1`).
    pub block: String,
    /// Parameter elements.
    pub params: i64,
    /// Of which the gated feed-forward: `ff`, its LayerNorm `norm2` and its gate `alpha_dense`.
    pub feed_forward: i64,
}

/// The grounding layers among `(parameter name, elements)` pairs, in key order.
pub fn grounding_layers(params: &[(String, i64)]) -> Vec<GroundingLayer> {
    let mut layers: BTreeMap<String, GroundingLayer> = BTreeMap::new();
    for (name, n) in params {
        let Some(end) = [".grounding_attn.", ".fuser."]
            .iter()
            .find_map(|m| name.find(m).map(|i| i + m.len() - 1))
        else {
            continue;
        };
        let (key, rest) = (&name[..end], &name[end + 1..]);
        let layer = layers.entry(key.to_string()).or_insert_with(|| GroundingLayer {
            key: key.to_string(),
            block: block_of(name),
            params: 0,
            feed_forward: 0,
        });
        layer.params += *n;
        if rest.starts_with("ff.") || rest.starts_with("norm2.") || rest == "alpha_dense" {
            layer.feed_forward += *n;
        }
    }
    layers.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_blocks_and_grounding() {
        assert_eq!(unet_group("down_blocks.2.resnets.0.conv1.weight"), "down_blocks.2");
        assert_eq!(
            unet_group("down_blocks.2.attentions.1.transformer_blocks.0.grounding_attn.attn.to_q.weight"),
            "grounding layers in down.2"
        );
        assert_eq!(
            unet_group("mid_block.attentions.0.transformer_blocks.0.fuser.linear.bias"),
            "grounding layers in mid"
        );
        assert_eq!(unet_group("position_net.linears.0.weight"), "position_net");
        assert_eq!(unet_group("conv_in.weight"), "conv_in");
    }

    #[test]
    fn grounding_layers_are_found_with_their_feed_forward() {
        let g = "down_blocks.2.attentions.1.transformer_blocks.0.grounding_attn";
        let f = "mid_block.attentions.0.transformer_blocks.0.fuser";
        let names = [
            (format!("{g}.attn.to_q.weight"), 100),
            (format!("{g}.ff.net.0.proj.weight"), 40),
            (format!("{g}.norm2.bias"), 4),
            (format!("{g}.alpha_dense"), 1),
            (format!("{g}.alpha_attn"), 1),
            (format!("{f}.linear.weight"), 30),
            ("position_net.linears.0.weight".to_string(), 7),
            ("conv_in.weight".to_string(), 9),
        ];
        let layers = grounding_layers(&names);
        assert_eq!(
            layers,
            [
                GroundingLayer {
                    key: g.into(),
                    block: "down.2".into(),
                    params: 146,
                    feed_forward: 45,
                },
                GroundingLayer {
                    key: f.into(),
                    block: "mid".into(),
                    params: 30,
                    feed_forward: 0,
                },
            ]
        );
    }
}
