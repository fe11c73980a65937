//! Loading safetensors weights into a network by key name, strictly: every parameter of the
//! network must be in the file (except those the caller allows to be freshly initialised),
//! every tensor of the file must belong to the network, and shapes must agree.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::ModelError;

/// What loading did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Parameters filled from the files.
    pub loaded: usize,
    /// Parameters absent from the files and left at their initial values (allowed ones only).
    pub initialised: Vec<String>,
}

/// Rules for one network.
pub struct LoadRules<'a> {
    /// Parameters that may be missing from the files (SpatialLock's own new modules).
    pub may_be_missing: &'a dyn Fn(&str) -> bool,
    /// File tensors that are not parameters and may be ignored (buffers of old exporters).
    pub may_be_extra: &'a dyn Fn(&str) -> bool,
}

impl LoadRules<'_> {
    /// Everything must match exactly.
    pub fn strict() -> LoadRules<'static> {
        LoadRules {
            may_be_missing: &|_| false,
            may_be_extra: &|_| false,
        }
    }
}

/// Maps key names written by older diffusers/transformers exporters to today's names.
fn modern_key(key: &str) -> String {
    // Old VAE checkpoints name the mid-block attention `query/key/value/proj_attn`.
    let renames = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let mut k = key.to_string();
    for (old, new) in renames {
        if k.contains(old) && k.contains("attentions.") {
            k = k.replace(old, new);
        }
    }
    k
}

/// Reads every tensor of the given safetensors files.
pub fn read_tensors(files: &[PathBuf]) -> Result<Vec<(String, Tensor)>, ModelError> {
    let mut out = Vec::new();
    for f in files {
        let tensors = Tensor::read_safetensors(f).map_err(|e| ModelError::Weights {
            path: f.clone(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        out.extend(tensors);
    }
    Ok(out)
}

/// Fills `vs` from named tensors (see the module doc). On error the caller discards the store.
pub fn load_var_store(
    vs: &mut VarStore,
    tensors: &[(String, Tensor)],
    origin: &Path,
    rules: &LoadRules,
) -> Result<LoadReport, ModelError> {
    let mut variables: HashMap<String, Tensor> = vs.variables();
    let mut missing: BTreeMap<String, Vec<i64>> = variables.iter().map(|(k, v)| (k.clone(), v.size())).collect();
    let mut unexpected = Vec::new();
    let mut mismatched = Vec::new();
    let mut loaded = 0;
    tch::no_grad(|| {
        for (key, src) in tensors {
            let name = modern_key(key);
            let Some(var) = variables.get_mut(&name) else {
                if !(rules.may_be_extra)(key) {
                    unexpected.push(format!("{key} {:?}", src.size()));
                }
                continue;
            };
            missing.remove(&name);
            let want = var.size();
            let mut src = src.shallow_clone();
            // Old exporters stored 1×1 conv weights where today's modules have linear ones.
            if src.size().len() == 4 && want.len() == 2 && src.size()[..2] == want[..] {
                src = src.view(want.as_slice());
            }
            if src.size() != want {
                mismatched.push(format!("{key}: file has {:?}, model expects {want:?}", src.size()));
                continue;
            }
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
            loaded += 1;
        }
    });
    let (allowed, missing): (Vec<_>, Vec<_>) = missing.into_iter().partition(|(k, _)| (rules.may_be_missing)(k));
    let mut problems = Vec::new();
    let list = |title: &str, items: Vec<String>, problems: &mut Vec<String>| {
        if items.is_empty() {
            return;
        }
        let shown: Vec<String> = items.iter().take(10).cloned().collect();
        let more = if items.len() > 10 {
            format!(" … and {} more", items.len() - 10)
        } else {
            String::new()
        };
        problems.push(format!("{title} ({}): {}{more}", items.len(), shown.join("; ")));
    };
    list(
        "missing from the file",
        missing.into_iter().map(|(k, s)| format!("{k} {s:?}")).collect(),
        &mut problems,
    );
    list("not in the model", unexpected, &mut problems);
    list("shape mismatch", mismatched, &mut problems);
    if !problems.is_empty() {
        return Err(ModelError::Weights {
            path: origin.to_path_buf(),
            message: format!("weights do not match the architecture: {}", problems.join(" | ")),
        });
    }
    Ok(LoadReport {
        loaded,
        initialised: allowed.into_iter().map(|(k, _)| k).collect(),
    })
}

/// The safetensors file(s) of a diffusers/transformers component folder: the standard single
/// file (`diffusion_pytorch_model.safetensors` or `model.safetensors`), or the shards listed by
/// a `*.safetensors.index.json`.
///
/// Errors: an unreadable or malformed index ([`ModelError::Io`], [`ModelError::Config`]), a
/// shard named outside `dir` (absolute, or with `..`), or no weights at all
/// ([`ModelError::Weights`]).
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    for name in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
        let f = dir.join(name);
        if f.is_file() {
            return Ok(vec![f]);
        }
    }
    for name in [
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
    ] {
        let index = dir.join(name);
        if !index.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(ModelError::Config {
                path: index,
                message: "no `weight_map` object".into(),
            });
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for f in map.values().filter_map(|v| v.as_str()) {
            // A shard named `../x` or `/x` would be read from outside the weights folder.
            if !crate::data::coco::is_plain_relative(f) {
                return Err(ModelError::Config {
                    path: index,
                    message: format!("weight_map: shard `{f}` must be a file name inside {}", dir.display()),
                });
            }
            files.push(dir.join(f));
        }
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(ModelError::Weights {
        path: dir.to_path_buf(),
        message: "no diffusion_pytorch_model.safetensors, model.safetensors or safetensors index here".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_vae_attention_names_are_modernised() {
        assert_eq!(
            modern_key("encoder.mid_block.attentions.0.query.weight"),
            "encoder.mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            modern_key("decoder.mid_block.attentions.0.proj_attn.bias"),
            "decoder.mid_block.attentions.0.to_out.0.bias"
        );
        assert_eq!(
            modern_key("text_model.encoder.layers.0.self_attn.k_proj.weight"),
            "text_model.encoder.layers.0.self_attn.k_proj.weight"
        );
    }

    #[test]
    fn index_shards_must_stay_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
        let err = component_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors.index.json") && err.contains("shard `../../etc/passwd`"),
            "{err}"
        );
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-1.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            component_files(dir.path()).unwrap(),
            vec![dir.path().join("m-1.safetensors")]
        );
    }
}
