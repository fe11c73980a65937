//! Loading a diffusers model directory unchanged: `unet/`, `vae/`, `text_encoder/` (each
//! `config.json` + safetensors) and `tokenizer/` (`vocab.json` + `merges.txt`). The architecture
//! comes from the config files, so SD v1.4 and tiny random models go through the same code.

use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Device;

use super::clip::ClipTextModel;
use super::diffusers_config::{read_json, text_encoder_from_json, unet_from_json, vae_from_json, AttentionType};
use super::params::is_grounding_param;
use super::tokenizer::ClipTokenizer;
use super::transformer::FuserKind;
use super::unet::{GroundingSetup, UNet2DConditionModel};
use super::vae::AutoencoderKL;
use super::weights::{component_files, load_var_store, read_tensors, LoadReport, LoadRules};
use crate::error::ModelError;

/// A network with the variable store that owns its parameters.
#[derive(Debug)]
pub struct Loaded<M> {
    /// The network.
    pub model: M,
    /// Its parameters.
    pub vs: VarStore,
    /// What loading did (parameters initialised fresh are listed).
    pub report: LoadReport,
}

/// GLIGEN's grounding wiring for a U-Net: a gated self-attention fuser in every attention block,
/// `position_net` with 512 hidden units, phrases of the context width.
pub fn gligen_setup(unet: &spatiallock_protocol::model_config::UNetConfig) -> GroundingSetup {
    let blocks = unet.attention_blocks();
    GroundingSetup {
        kind: FuserKind::Gligen,
        blocks,
        phrase_dim: i64::from(unet.cross_attention_dim),
        mlp_hidden: 512,
        fourier_freqs: 8,
        max_objects: 30,
    }
}

/// Loads `dir/unet`. With `grounding` `None` the wiring follows the config (`attention_type:
/// gated` → GLIGEN); otherwise the given wiring is built, and grounding parameters that the
/// checkpoint does not have are freshly initialised (they are SpatialLock's own modules).
pub fn load_unet(
    dir: &Path,
    device: Device,
    grounding: Option<GroundingSetup>,
) -> Result<Loaded<UNet2DConditionModel>, ModelError> {
    let folder = dir.join("unet");
    let config_path = folder.join("config.json");
    let (config, attention) = unet_from_json(&read_json(&config_path)?, &config_path)?;
    let checkpoint_has_grounding = attention == AttentionType::Gated;
    let setup = grounding.unwrap_or_else(|| {
        if checkpoint_has_grounding {
            gligen_setup(&config)
        } else {
            GroundingSetup::off()
        }
    });
    let mut vs = VarStore::new(device);
    let model = UNet2DConditionModel::new(&vs.root(), &config, setup);
    let tensors = read_tensors(&component_files(&folder)?)?;
    // A GLIGEN checkpoint must carry its grounding weights; a plain SD one cannot.
    let may_be_missing =
        |k: &str| is_grounding_param(k) && (!checkpoint_has_grounding || k.contains(".grounding_attn."));
    let rules = LoadRules {
        may_be_missing: &may_be_missing,
        may_be_extra: &|_| false,
    };
    let report = load_var_store(&mut vs, &tensors, &folder, &rules)?;
    Ok(Loaded { model, vs, report })
}

/// Loads `dir/vae`.
pub fn load_vae(dir: &Path, device: Device) -> Result<Loaded<AutoencoderKL>, ModelError> {
    let folder = dir.join("vae");
    let config_path = folder.join("config.json");
    let config = vae_from_json(&read_json(&config_path)?, &config_path)?;
    let mut vs = VarStore::new(device);
    let model = AutoencoderKL::new(&vs.root(), &config);
    let tensors = read_tensors(&component_files(&folder)?)?;
    let report = load_var_store(&mut vs, &tensors, &folder, &LoadRules::strict())?;
    Ok(Loaded { model, vs, report })
}

/// Loads `dir/text_encoder`. Checkpoints written by transformers ≥ 5 leave out the
/// `text_model.` prefix and older ones carry a `position_ids` buffer; both load.
pub fn load_text_encoder(dir: &Path, device: Device) -> Result<Loaded<ClipTextModel>, ModelError> {
    let folder = dir.join("text_encoder");
    let config_path = folder.join("config.json");
    let config = text_encoder_from_json(&read_json(&config_path)?, &config_path)?;
    let tensors = read_tensors(&component_files(&folder)?)?;
    let prefixed = tensors.iter().any(|(k, _)| k.starts_with("text_model."));
    let mut vs = VarStore::new(device);
    let root = if prefixed { vs.root() / "text_model" } else { vs.root() };
    let model = ClipTextModel::new(&root, &config);
    let rules = LoadRules {
        may_be_missing: &|_| false,
        may_be_extra: &|k: &str| k.ends_with("position_ids"),
    };
    let report = load_var_store(&mut vs, &tensors, &folder, &rules)?;
    Ok(Loaded { model, vs, report })
}

/// Loads `dir/tokenizer` (`vocab.json` + `merges.txt`).
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, ModelError> {
    let folder: PathBuf = dir.join("tokenizer");
    ClipTokenizer::from_files(&folder.join("vocab.json"), &folder.join("merges.txt"))
}
