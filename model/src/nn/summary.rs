//! Parameter counts per module, frozen vs trainable: what `spatiallock model summary` prints.

use std::collections::BTreeMap;

use tch::nn::VarStore;

use super::params::is_grounding_param;

/// One row: a module group, its parameter count, and whether training updates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRow {
    /// `conv_in`, `down_blocks.2`, `position_net`, `grounding layers in up.1`, ...
    pub module: String,
    /// Parameter elements.
    pub params: i64,
    /// Updated by training (PoI modules; the base is frozen).
    pub trainable: bool,
}

/// The module group a U-Net parameter belongs to: grounding layers by the block they sit in,
/// everything else by its top-level module (`down_blocks.i`, `mid_block`, `up_blocks.i`, ...).
pub fn unet_group(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let block = match parts.as_slice() {
        ["down_blocks", i, ..] => format!("down.{i}"),
        ["up_blocks", i, ..] => format!("up.{i}"),
        ["mid_block", ..] => "mid".to_string(),
        [first, ..] => first.to_string(),
        [] => String::new(),
    };
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
}
