//! Checkpoints of a training run: the trainable tensors, the optimiser's moments and step, and
//! the run's step and spec. Randomness is derived from (seed, step), so no RNG state is needed:
//! resuming from a checkpoint replays exactly what an uninterrupted run would have done.
//!
//! Layout of a checkpoint directory: `trainable.safetensors`, `optimizer.safetensors`
//! (`m.<name>`, `v.<name>`), `ema.safetensors` (the moving average of the trainable tensors,
//! same names, f32; only when the run averages), `state.json` (`step`, `optimizer_step`, `spec`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{to_json_text, ModelError};
use crate::layout::CHECKPOINT_STATE;
use crate::optim::AdamW;

/// The trainable tensors of a checkpoint, by parameter name.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// The optimiser's moments of a checkpoint (`m.<name>`, `v.<name>`).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The exponential moving average of the trainable tensors (same names as
/// [`TRAINABLE_FILE`]), present when the run keeps one; sampling prefers it.
pub const EMA_FILE: &str = "ema.safetensors";

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The AdamW step counter.
    pub optimizer_step: i64,
    /// The run's configuration (the job payload), for checks and for sampling later.
    pub spec: serde_json::Value,
    /// The base model directory the run trained on (absolute).
    #[serde(default)]
    pub base: Option<String>,
    /// The precision the forward pass of the process that wrote this checkpoint ran in
    /// (`fp32`, `bf16-autocast`); a run resumed on another device may have used another before.
    /// Absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn weights_err(path: &Path) -> impl Fn(tch::TchError) -> ModelError + '_ {
    move |e| ModelError::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes a checkpoint into `dir` (created; files replaced atomically by rename), with the
/// averaged tensors `ema` (`(name, tensor)`) when given; without them an older `ema.safetensors`
/// in `dir` is removed.
///
/// Errors: [`ModelError::Io`] / [`ModelError::Weights`] naming the file.
pub fn save(
    dir: &Path,
    opt: &AdamW,
    ema: Option<&[(String, Tensor)]>,
    state: &CheckpointState,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).contiguous();
    let params: Vec<(String, Tensor)> = opt.params.iter().map(|p| (p.name.clone(), cpu(&p.param))).collect();
    let moments: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .flat_map(|p| {
            [
                (format!("m.{}", p.name), cpu(&p.m)),
                (format!("v.{}", p.name), cpu(&p.v)),
            ]
        })
        .collect();
    let averaged: Option<Vec<(String, Tensor)>> = ema.map(|ema| ema.iter().map(|(n, t)| (n.clone(), cpu(t))).collect());
    let mut files = vec![(TRAINABLE_FILE, &params), (OPTIMIZER_FILE, &moments)];
    match &averaged {
        Some(averaged) => files.push((EMA_FILE, averaged)),
        None => {
            let stale = dir.join(EMA_FILE);
            if stale.exists() {
                std::fs::remove_file(&stale).map_err(io(&stale))?;
            }
        }
    }
    for (name, tensors) in files {
        let tmp = dir.join(format!("{name}.tmp"));
        Tensor::write_safetensors(tensors, &tmp).map_err(weights_err(&tmp))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(io(dir))?;
    }
    let tmp = dir.join(format!("{CHECKPOINT_STATE}.tmp"));
    let text = to_json_text("the checkpoint state", state)?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_STATE)).map_err(io(dir))
}

/// Reads `state.json` of a checkpoint.
pub fn read_state(dir: &Path) -> Result<CheckpointState, ModelError> {
    let path = dir.join(CHECKPOINT_STATE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path,
        message: format!("invalid checkpoint state: {e}"),
    })
}

/// The averaged tensors of a checkpoint by name, or `None` when it has none.
///
/// Errors: [`ModelError::Weights`] when `ema.safetensors` exists but cannot be read.
pub fn read_ema(dir: &Path) -> Result<Option<std::collections::HashMap<String, Tensor>>, ModelError> {
    let path = dir.join(EMA_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let tensors = Tensor::read_safetensors(&path).map_err(weights_err(&path))?;
    Ok(Some(tensors.into_iter().collect()))
}

/// Copies the trainable tensors of a checkpoint into `opt`'s parameters (and, with
/// `with_optimizer`, its moments and step). Every parameter must be present with its shape.
pub fn restore(dir: &Path, opt: &mut AdamW, with_optimizer: bool) -> Result<CheckpointState, ModelError> {
    let state = read_state(dir)?;
    let path = dir.join(TRAINABLE_FILE);
    let params: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(weights_err(&path))?
        .into_iter()
        .collect();
    let opt_path = dir.join(OPTIMIZER_FILE);
    let moments: std::collections::HashMap<String, Tensor> = if with_optimizer {
        Tensor::read_safetensors(&opt_path)
            .map_err(weights_err(&opt_path))?
            .into_iter()
            .collect()
    } else {
        Default::default()
    };
    tch::no_grad(|| -> Result<(), ModelError> {
        for p in &mut opt.params {
            let src = params.get(&p.name).ok_or_else(|| ModelError::Weights {
                path: path.clone(),
                message: format!("checkpoint has no `{}`", p.name),
            })?;
            if src.size() != p.param.size() {
                return Err(ModelError::Weights {
                    path: path.clone(),
                    message: format!(
                        "`{}`: checkpoint has {:?}, model expects {:?}",
                        p.name,
                        src.size(),
                        p.param.size()
                    ),
                });
            }
            p.param
                .shallow_clone()
                .copy_(&src.to_kind(p.param.kind()).to_device(p.param.device()));
            if with_optimizer {
                for (key, dst) in [(format!("m.{}", p.name), &mut p.m), (format!("v.{}", p.name), &mut p.v)] {
                    let src = moments.get(&key).ok_or_else(|| ModelError::Weights {
                        path: opt_path.clone(),
                        message: format!("optimizer state has no `{key}`"),
                    })?;
                    dst.copy_(&src.to_device(dst.device()));
                }
            }
        }
        Ok(())
    })?;
    if with_optimizer {
        opt.step = state.optimizer_step;
    }
    Ok(state)
}
