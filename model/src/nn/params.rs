//! Which parameters belong to which module group, freezing, and counting.

use spatiallock_protocol::trial::Trainable;
use tch::nn::VarStore;

/// True for PoI parameters: the grounding tokenizer and the gated layers of either kind.
pub fn is_grounding_param(name: &str) -> bool {
    name.starts_with("position_net.") || name.contains(".grounding_attn.") || name.contains(".fuser.")
}

/// Whether a U-Net parameter is trained under a config's `training.trainable` groups: PoI
/// modules with `grounding`, the base U-Net with `unet` (PoG and the loss weights live outside
/// the U-Net's store).
pub fn unet_trainable(groups: &[Trainable]) -> impl Fn(&str) -> bool + '_ {
    move |name| {
        if is_grounding_param(name) {
            groups.contains(&Trainable::Grounding)
        } else {
            groups.contains(&Trainable::Unet)
        }
    }
}

/// Makes the parameters for which `trainable` holds require gradients and freezes the rest.
/// Returns how many parameters (elements) are trainable.
pub fn set_trainable(vs: &VarStore, trainable: impl Fn(&str) -> bool) -> i64 {
    let mut count = 0;
    for (name, var) in vs.variables() {
        let on = trainable(&name);
        let _ = var.set_requires_grad(on);
        if on {
            count += var.numel() as i64;
        }
    }
    count
}

/// Number of parameter elements whose name satisfies `which`.
pub fn count_params(vs: &VarStore, which: impl Fn(&str) -> bool) -> i64 {
    vs.variables()
        .iter()
        .filter(|(n, _)| which(n))
        .map(|(_, v)| v.numel() as i64)
        .sum()
}
