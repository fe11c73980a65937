//! A SpatialLock model assembled for training or sampling: the frozen base (U-Net, CLIP text
//! encoder and tokenizer, VAE when not in pixel space), PoI grounding layers, the PoG perception
//! head and the loss weighting, with the text embeddings of captions and phrases cached.
//!
//! A base is a diffusers model directory. SD v1.4 is one; tiny configs pretrain their own and
//! save it in the same layout ([`save_base`]), so every later stage loads bases the same way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use spatiallock_protocol::expand::TrainSpec;
use spatiallock_protocol::trial::{Placement, PoiKind};
use spatiallock_protocol::ModelConfig;

use crate::assets::clip_bpe_vocab;
use crate::diffusion::schedule::NoiseSchedule;
use crate::error::{to_json_text, ModelError};
use crate::layout::{BASE_UNET_CONFIG, CHECKPOINT_STATE};
use crate::nn::clip::ClipTextModel;
use crate::nn::diffusers_config::{text_encoder_to_json, unet_to_json, AttentionType};
use crate::nn::grounding::GroundingBatch;
use crate::nn::loss_weights::LossWeighting;
use crate::nn::model_dir::{load_text_encoder, load_unet, load_vae};
use crate::nn::perception::PerceptionHead;
use crate::nn::tokenizer::ClipTokenizer;
use crate::nn::transformer::FuserKind;
use crate::nn::unet::{GroundingSetup, UNet2DConditionModel};
use crate::nn::vae::AutoencoderKL;

/// Text embeddings of one string: the U-Net context `[L, C]` and the pooled phrase vector `[C]`.
#[derive(Debug)]
pub struct TextEmbedding {
    /// `last_hidden_state` of the caption.
    pub context: Tensor,
    /// Pooled end-of-text state (the phrase embedding).
    pub pooled: Tensor,
}

/// The frozen text side: tokenizer, encoder and a cache of embeddings.
#[derive(Debug)]
pub struct TextSide {
    /// The CLIP text encoder.
    pub encoder: ClipTextModel,
    /// Its parameters.
    pub vs: VarStore,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    cache: Mutex<HashMap<String, (Tensor, Tensor)>>,
    phrases: Mutex<HashMap<String, Tensor>>,
}

impl TextSide {
    /// Wraps an encoder and tokenizer.
    pub fn new(encoder: ClipTextModel, vs: VarStore, tokenizer: ClipTokenizer) -> Self {
        let ctx = encoder.config().max_position_embeddings as usize;
        Self {
            encoder,
            vs,
            tokenizer: tokenizer.with_context_len(ctx),
            cache: Mutex::new(HashMap::new()),
            phrases: Mutex::new(HashMap::new()),
        }
    }

    /// Encodes texts without caching → `([B, L, C], [B, C])`.
    pub fn encode(&self, texts: &[&str]) -> (Tensor, Tensor) {
        let ids = self.tokenizer.encode_batch(texts).to_device(self.vs.device());
        let out = tch::no_grad(|| self.encoder.forward(&ids));
        (out.last_hidden_state, out.pooled)
    }

    /// Pooled embeddings of phrases `[B, C]`, cached (only the pooled state is kept, so a
    /// dataset with many distinct phrases stays small).
    pub fn phrase_embeddings(&self, texts: &[&str]) -> Tensor {
        let mut cache = self.phrases.lock().unwrap_or_else(|e| e.into_inner());
        self.fill(&mut cache, texts, |_, pooled| pooled);
        let pooled: Vec<Tensor> = texts.iter().map(|t| cache[*t].shallow_clone()).collect();
        Tensor::stack(&pooled, 0)
    }

    /// The phrase embeddings of a packed batch, `[B, N, C]` on `masks`' device, zero in padded
    /// (or masked-out) slots; `masks` is `[B, N]`.
    pub fn grounding_phrases(&self, batch: &GroundingBatch, masks: &Tensor) -> Tensor {
        let (b, n) = batch.shape();
        self.phrase_embeddings(&batch.phrases())
            .to_device(masks.device())
            .view([b as i64, n as i64, -1])
            * masks.unsqueeze(-1)
    }

    /// Encodes, in one batch, the texts `cache` lacks, and keeps `keep(context, pooled)` of each.
    fn fill<T>(&self, cache: &mut HashMap<String, T>, texts: &[&str], keep: impl Fn(Tensor, Tensor) -> T) {
        let missing: Vec<&str> = texts.iter().copied().filter(|t| !cache.contains_key(*t)).collect();
        if missing.is_empty() {
            return;
        }
        let (context, pooled) = self.encode(&missing);
        for (i, t) in missing.iter().enumerate() {
            let i = i as i64;
            cache.insert(t.to_string(), keep(context.get(i), pooled.get(i)));
        }
    }

    /// Identifies the text side's outputs: the encoder (configuration and weights) and the
    /// tokenizer.
    pub fn fingerprint(&self) -> Result<String, ModelError> {
        Ok(format!(
            "{}+{}",
            crate::persist::record_store::encoder_fingerprint(self.encoder.config(), &self.vs)?,
            self.tokenizer.fingerprint()
        ))
    }

    /// Embeds texts (cached: each distinct string is encoded once) → `([B, L, C], [B, C])`.
    pub fn embed(&self, texts: &[&str]) -> (Tensor, Tensor) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.fill(&mut cache, texts, |context, pooled| (context, pooled));
        let ctx: Vec<Tensor> = texts.iter().map(|t| cache[*t].0.shallow_clone()).collect();
        let pooled: Vec<Tensor> = texts.iter().map(|t| cache[*t].1.shallow_clone()).collect();
        (Tensor::stack(&ctx, 0), Tensor::stack(&pooled, 0))
    }
}

/// libtorch's random generator is global: building a network takes this lock and seeds the
/// generator first, so initialisation is reproducible even when several models are built in
/// parallel threads.
static INIT: Mutex<()> = Mutex::new(());

/// Runs `build` with libtorch's generator seeded by `seed`, under the init lock.
pub fn seeded<T>(seed: u64, build: impl FnOnce() -> T) -> T {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed((crate::data::rng::SplitMix64::from_parts(&[seed, 0x1417]).next_u64() >> 1) as i64);
    build()
}

/// A model ready to train or sample.
#[derive(Debug)]
pub struct SpatialLockModel {
    /// The U-Net (base + grounding layers).
    pub unet: UNet2DConditionModel,
    /// Its parameters.
    pub unet_vs: VarStore,
    /// Tokenizer and text encoder.
    pub text: TextSide,
    /// The VAE (None in pixel space).
    pub vae: Option<(AutoencoderKL, VarStore)>,
    /// The PoG head (None when PoG is off).
    pub perception: Option<(PerceptionHead, VarStore)>,
    /// How losses combine.
    pub weighting: LossWeighting,
    /// The training noise schedule.
    pub schedule: NoiseSchedule,
    /// Where tensors live.
    pub device: Device,
}

/// The grounding wiring a training spec asks for.
pub fn grounding_setup(spec: &TrainSpec) -> GroundingSetup {
    if !spec.poi.enabled {
        return GroundingSetup::off();
    }
    let kind = match spec.poi.kind {
        PoiKind::Spatiallock => FuserKind::SpatialLock,
        PoiKind::Gligen => FuserKind::Gligen,
    };
    let blocks = match &spec.poi.placement {
        Some(Placement::Blocks(b)) => b.clone(),
        _ => spec.arch.attention_blocks(),
    };
    GroundingSetup::from_model(&spec.arch, kind, blocks)
}

/// Spatial sizes of the U-Net's down-block outputs for an input of `size`² cells.
pub fn down_output_sizes(arch: &ModelConfig, size: i64) -> Vec<(i64, i64)> {
    let levels = arch.unet.block_out_channels.len();
    (0..levels)
        .map(|i| {
            let s = size >> (i + 1).min(levels - 1);
            (s, s)
        })
        .collect()
}

impl SpatialLockModel {
    /// Loads the base in `base_dir` and adds the modules `spec` asks for; the perception head
    /// predicts `classes` categories.
    pub fn load(spec: &TrainSpec, base_dir: &Path, classes: i64, device: Device) -> Result<Self, ModelError> {
        let unet = seeded(spec.seed, || load_unet(base_dir, device, Some(grounding_setup(spec))))?;
        // Built under the init lock too: its random init (overwritten by the weights) would
        // otherwise draw from the global generator while another thread builds a seeded model.
        let text_side = seeded(spec.seed, || load_text_side(base_dir, device))?;
        let vae = if base_dir.join("vae").is_dir() {
            let v = seeded(spec.seed, || load_vae(base_dir, device))?;
            Some((v.model, v.vs))
        } else {
            None
        };
        let latent = i64::from(spec.resolution) / i64::from(spec.arch.vae_factor());
        let perception = spec.pog.enabled.then(|| {
            let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed((crate::data::rng::SplitMix64::from_parts(&[spec.seed, 0x9E6]).next_u64() >> 1) as i64);
            let vs = VarStore::new(device);
            let channels: Vec<i64> = spec
                .arch
                .unet
                .block_out_channels
                .iter()
                .map(|&c| i64::from(c))
                .collect();
            let sizes = down_output_sizes(&spec.arch, latent);
            let head = PerceptionHead::new(
                &vs.root(),
                &spec.arch.perception,
                &channels,
                &sizes,
                classes,
                spec.pog.enh_fusion,
            );
            (head, vs)
        });
        Ok(Self {
            unet: unet.model,
            unet_vs: unet.vs,
            text: text_side,
            vae,
            perception,
            weighting: seeded(spec.seed, || LossWeighting::new(spec.loss.weights, device)),
            schedule: NoiseSchedule::stable_diffusion(),
            device,
        })
    }
}

impl SpatialLockModel {
    /// A fresh random base for pretraining (no grounding, no perception).
    pub fn for_pretraining(arch: &ModelConfig, seed: u64, device: Device) -> Result<Self, ModelError> {
        let (unet, unet_vs, text) = fresh_base(arch, seed, device)?;
        Ok(Self {
            unet,
            unet_vs,
            text,
            vae: None,
            perception: None,
            weighting: LossWeighting::Fixed { g: 1.0, p: 0.0 },
            schedule: NoiseSchedule::stable_diffusion(),
            device,
        })
    }
}

/// Loads `text_encoder/` and the tokenizer: `tokenizer/` when the directory has one, else the
/// installed CLIP vocabulary.
pub fn load_text_side(base_dir: &Path, device: Device) -> Result<TextSide, ModelError> {
    let te = load_text_encoder(base_dir, device)?;
    let tokenizer = if base_dir.join("tokenizer/vocab.json").is_file() {
        crate::nn::model_dir::load_tokenizer(base_dir)?
    } else {
        ClipTokenizer::from_bpe_gz(&clip_bpe_vocab()?)?
    };
    Ok(TextSide::new(te.model, te.vs, tokenizer))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let text = to_json_text(&path.display().to_string(), value)?;
    std::fs::write(path, text).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_store(vs: &VarStore, path: &Path) -> Result<(), ModelError> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let named: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&named, path).map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes a base model as a diffusers directory (`unet/`, `text_encoder/`, `tokenizer/`).
/// The U-Net must have no grounding layers (a base is plain text-to-image).
///
/// It is written into `<dir>.partial` and renamed to `dir` when complete, so a `dir` that exists
/// is whole (an interrupted save leaves only the partial folder, which the next save replaces).
///
/// Errors: [`ModelError::Io`] / [`ModelError::Weights`] naming the file.
pub fn save_base(dir: &Path, arch: &ModelConfig, unet_vs: &VarStore, text: &TextSide) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    write_base_files(&partial, arch, unet_vs, text)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&partial, dir).map_err(io(dir))
}

fn write_base_files(dir: &Path, arch: &ModelConfig, unet_vs: &VarStore, text: &TextSide) -> Result<(), ModelError> {
    for sub in ["unet", "text_encoder"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|source| ModelError::Io {
            path: d.clone(),
            source,
        })?;
    }
    write_json(
        &dir.join(BASE_UNET_CONFIG),
        &unet_to_json(&arch.unet, AttentionType::Default),
    )?;
    write_store(unet_vs, &dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    write_json(
        &dir.join("text_encoder/config.json"),
        &text_encoder_to_json(&arch.text_encoder),
    )?;
    // transformers' layout: parameters under `text_model.`.
    let mut named: Vec<(String, Tensor)> = text.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let named: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(k, v)| {
            let key = if k.starts_with("text_model.") {
                k
            } else {
                format!("text_model.{k}")
            };
            (key, v.detach().to_device(Device::Cpu).contiguous())
        })
        .collect();
    let path = dir.join("text_encoder/model.safetensors");
    Tensor::write_safetensors(&named, &path).map_err(|e| ModelError::Weights {
        path,
        message: e.to_string(),
    })?;
    text.tokenizer.save(&dir.join("tokenizer"))
}

/// A fresh, randomly initialised base for `arch` (pretraining starts here): U-Net without
/// grounding and a frozen random text encoder, seeded.
pub fn fresh_base(
    arch: &ModelConfig,
    seed: u64,
    device: Device,
) -> Result<(UNet2DConditionModel, VarStore, TextSide), ModelError> {
    if arch.vae.is_some() {
        return Err(ModelError::Input(format!(
            "architecture `{}` works in latent space: pretraining from scratch needs a pixel-space config (vae: null)",
            arch.name
        )));
    }
    let (unet, unet_vs, encoder, text_vs) = seeded(seed, || {
        let unet_vs = VarStore::new(device);
        let unet = UNet2DConditionModel::new(&unet_vs.root(), &arch.unet, GroundingSetup::off());
        let text_vs = VarStore::new(device);
        let encoder = ClipTextModel::new(&(text_vs.root() / "text_model"), &arch.text_encoder);
        (unet, unet_vs, encoder, text_vs)
    });
    let tokenizer = ClipTokenizer::from_bpe_gz(&clip_bpe_vocab()?)?;
    Ok((unet, unet_vs, TextSide::new(encoder, text_vs, tokenizer)))
}

/// The base with nothing trained on it (a trial with PoI and PoG off): PoG is not built.
pub fn load_untrained(spec: &TrainSpec, base_dir: &Path, device: Device) -> Result<SpatialLockModel, ModelError> {
    let mut spec = spec.clone();
    spec.pog.enabled = false;
    spec.pog.enh_fusion = false;
    SpatialLockModel::load(&spec, base_dir, 1, device)
}

/// Loads a training checkpoint for sampling: its base, the grounding layers it trained (the
/// perception head is not needed to sample) — their moving average (`ema.safetensors`) when
/// the checkpoint has one, else the raw weights. Returns the model and the run's spec.
///
/// Errors: [`ModelError::Config`] for a `state.json` that is not a training run's,
/// [`ModelError::Weights`] naming a weights file that cannot be read or does not fit.
pub fn load_for_sampling(checkpoint: &Path, device: Device) -> Result<(SpatialLockModel, TrainSpec), ModelError> {
    let state = crate::persist::checkpoint::read_state(checkpoint)?;
    let bad = |message: String| ModelError::Config {
        path: checkpoint.join(CHECKPOINT_STATE),
        message,
    };
    let mut spec: TrainSpec =
        serde_json::from_value(state.spec.clone()).map_err(|e| bad(format!("not a training checkpoint: {e}")))?;
    let base = state
        .base
        .clone()
        .ok_or_else(|| bad("the checkpoint does not record its base model".into()))?;
    spec.pog.enabled = false;
    spec.pog.enh_fusion = false;
    let model = SpatialLockModel::load(&spec, Path::new(&base), 1, device)?;
    let path = sampling_weights_file(checkpoint);
    if spec.training.ema_decay.is_some() && !path.ends_with(crate::persist::checkpoint::EMA_FILE) {
        return Err(ModelError::Weights {
            path,
            message: format!(
                "the run kept a moving average of its weights (training.ema_decay), but {} is missing: \
                 the checkpoint is incomplete",
                crate::persist::checkpoint::EMA_FILE
            ),
        });
    }
    let tensors = Tensor::read_safetensors(&path).map_err(|e| ModelError::Weights {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut vars = model.unet_vs.variables();
    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, t) in &tensors {
            if let Some(key) = name.strip_prefix("unet.") {
                let var = vars.get_mut(key).ok_or_else(|| ModelError::Weights {
                    path: path.clone(),
                    message: format!("`{name}` is not a parameter of the model the checkpoint describes"),
                })?;
                let bad = |e: tch::TchError| ModelError::Weights {
                    path: path.clone(),
                    message: format!("`{name}`: {e}"),
                };
                if t.size() != var.size() {
                    return Err(ModelError::Weights {
                        path: path.clone(),
                        message: format!("`{name}` has shape {:?}, the model's is {:?}", t.size(), var.size()),
                    });
                }
                let src = t
                    .f_to_kind(var.kind())
                    .and_then(|t| t.f_to_device(var.device()))
                    .map_err(bad)?;
                var.f_copy_(&src).map_err(bad)?;
            }
        }
        Ok(())
    })?;
    Ok((model, spec))
}

/// The weights file of a training checkpoint that sampling and evaluation use: the moving
/// average (`ema.safetensors`) when the run kept one, else `trainable.safetensors`.
pub fn sampling_weights_file(checkpoint: &Path) -> std::path::PathBuf {
    use crate::persist::checkpoint::{EMA_FILE, TRAINABLE_FILE};
    let ema = checkpoint.join(EMA_FILE);
    if ema.is_file() {
        ema
    } else {
        checkpoint.join(TRAINABLE_FILE)
    }
}
