//! `spatiallock model summary|forward`: inspect architectures and run checkpoints.
//!
//! `model summary` counts parameters per module, frozen vs trainable, for the SpatialLock and
//! GLIGEN variants, the PoG head and the loss weights, and puts the trainable ratio beside the
//! paper's "less than 50.7 %" with what ours counts and what other readings give (the paper
//! does not say what it counts).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use spatiallock_model::nn::clip::ClipTextModel;
use spatiallock_model::nn::loss_weights::LossWeighting;
use spatiallock_model::nn::model_dir::{load_text_encoder, load_unet, load_vae};
use spatiallock_model::nn::params::{count_params, is_grounding_param};
use spatiallock_model::nn::perception::PerceptionHead;
use spatiallock_model::nn::summary::{grounding_layers, millions, module_rows, unet_group, GroundingLayer, ModuleRow};
use spatiallock_model::nn::transformer::FuserKind;
use spatiallock_model::nn::unet::{GroundingInput, GroundingSetup, UNet2DConditionModel};
use spatiallock_model::nn::vae::AutoencoderKL;
use spatiallock_model::pipeline::down_output_sizes;
use spatiallock_protocol::cost::COCO_CATEGORIES;
use spatiallock_protocol::trial::{load_model_config, LossWeights};
use spatiallock_protocol::ModelConfig;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// `model` subcommands.
#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameters per module, frozen vs trainable, for the SpatialLock and GLIGEN variants.
    Summary(SummaryArgs),
    /// Run a diffusers checkpoint on tensors from a safetensors file and write the outputs.
    Forward(ForwardArgs),
}

/// Arguments of `model summary`.
#[derive(Args)]
pub struct SummaryArgs {
    /// A model config (`configs/models/sd14.yaml`) or a built-in name (`sd14`, `tiny`).
    pub config: String,
    /// Image side in pixels the PoG head is built for (Enh-Fusion has a positional embedding
    /// per feature cell). Default: the U-Net's sample size × the VAE factor (512 for sd14).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Categories the PoG head predicts (COCO has 80).
    #[arg(long, default_value_t = COCO_CATEGORIES)]
    pub classes: u64,
    /// Print one JSON object with every count instead of the tables.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `model forward`.
#[derive(Args)]
pub struct ForwardArgs {
    /// A diffusers model directory (`unet/`, optionally `vae/` and `text_encoder/`).
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs: `sample`, `timestep`, `encoder_hidden_states` (or `input_ids` to run the text
    /// encoder), optional `boxes`, `phrase_embeddings`, `masks`, `grounding_scale`, and optional
    /// `latents` to decode with the VAE.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs (`eps`, `tap_down_<i>`, `tap_mid`, `last_hidden_state`,
    /// `pooled`, `decoded`).
    #[arg(long)]
    pub out: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs a `model` subcommand.
pub fn run(cmd: &ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Summary(a) => summary(a),
        ModelCommand::Forward(a) => forward(a),
    }
}

/// One U-Net variant's parameters.
#[derive(Serialize)]
struct VariantSummary {
    /// `SpatialLock (Grounding-Attention)` or `GLIGEN (gated self-attention)`.
    name: &'static str,
    /// The attention blocks with grounding layers.
    grounding_blocks: Vec<String>,
    /// Parameters per module group.
    modules: Vec<ModuleRow>,
    /// All U-Net parameters (base and grounding).
    total: i64,
    /// The PoI parameters: the grounding tokenizer and the grounding layers.
    trainable: i64,
    /// Every grounding layer.
    grounding_layers: Vec<GroundingLayer>,
}

impl VariantSummary {
    /// Parameters of the grounding tokenizer (`position_net`).
    fn tokenizer(&self) -> i64 {
        self.modules
            .iter()
            .filter(|r| r.module == "position_net")
            .map(|r| r.params)
            .sum()
    }

    /// Parameters of the grounding layers' gated feed-forwards.
    fn feed_forward(&self) -> i64 {
        self.grounding_layers.iter().map(|l| l.feed_forward).sum()
    }

    /// Mean parameters per grounding layer.
    fn mean_layer(&self) -> i64 {
        let n = self.grounding_layers.len().max(1) as i64;
        self.grounding_layers.iter().map(|l| l.params).sum::<i64>() / n
    }
}

/// The PoG head's parameters.
#[derive(Serialize)]
struct PerceptionSummary {
    /// Image side it was built for, pixels.
    resolution: u32,
    /// Categories it predicts.
    classes: u64,
    /// Enh-Fusion is counted in (the paper's full model).
    enh_fusion: bool,
    /// Parameters per module (`fpn`, `fusion`, `cls_head`, `reg_head`).
    modules: Vec<ModuleRow>,
    /// All of them.
    total: i64,
}

/// The trainable totals and ratios.
#[derive(Serialize)]
struct TrainableSummary {
    /// SpatialLock's PoI parameters.
    spatiallock_poi: i64,
    /// SpatialLock's PoI, PoG and loss-weight parameters: what training updates by default.
    spatiallock_poi_pog: i64,
    /// GLIGEN's PoI parameters (all it trains).
    gligen_poi: i64,
    /// `spatiallock_poi / gligen_poi`, percent.
    poi_percent: f64,
    /// `spatiallock_poi_pog / gligen_poi`, percent.
    poi_pog_percent: f64,
}

/// What the paper says beside what we count.
#[derive(Serialize)]
struct PaperComparison {
    /// The paper's words.
    claim: &'static str,
    /// What its figure counts.
    basis: &'static str,
    /// What ours counts.
    ours: String,
    /// Both variants without the grounding layers' feed-forwards, percent.
    attention_only_percent: f64,
    /// One SpatialLock layer per selected block against all of GLIGEN's, percent.
    one_layer_per_block_percent: f64,
}

/// Everything `model summary` reports (its `--json`); counts are parameter elements.
#[derive(Serialize)]
struct Summary {
    /// The architecture's name.
    architecture: String,
    /// The U-Net's width per level.
    unet_widths: Vec<u32>,
    /// SpatialLock's U-Net, then GLIGEN's.
    variants: Vec<VariantSummary>,
    /// The frozen base U-Net.
    base_unet: i64,
    /// The frozen text encoder.
    text_encoder: i64,
    /// The frozen VAE (`null` in pixel space).
    vae: Option<i64>,
    /// The PoG head.
    perception: PerceptionSummary,
    /// The learnable loss weights s_g, s_p.
    loss_weights: i64,
    /// Trainable totals and ratios.
    trainable: TrainableSummary,
    /// The paper's figure beside ours.
    paper: PaperComparison,
}

const PAPER_CLAIM: &str = "Since utilizing only two cross-attention modules, our model's trained parameters are \
                           less than 50.7% of those in GLIGEN";

fn print_rows(title: &str, rows: &[ModuleRow], total: i64, trainable: Option<i64>) {
    println!("{title}");
    println!("  {:<32} {:>12}  trainable", "module", "params");
    for r in rows {
        println!(
            "  {:<32} {:>12}  {}",
            r.module,
            millions(r.params),
            if r.trainable { "yes" } else { "no" }
        );
    }
    match trainable {
        Some(t) => println!("  {:<32} {:>12}  trainable {}", "total", millions(total), millions(t)),
        None => println!("  {:<32} {:>12}", "total", millions(total)),
    }
}

fn unet_variant(model: &ModelConfig, kind: FuserKind, blocks: Vec<String>) -> VariantSummary {
    let vs = VarStore::new(Device::Cpu);
    let setup = GroundingSetup::from_model(model, kind, blocks.clone());
    let _unet = UNet2DConditionModel::new(&vs.root(), &model.unet, setup);
    let name = match kind {
        FuserKind::SpatialLock => "SpatialLock (Grounding-Attention)",
        FuserKind::Gligen => "GLIGEN (gated self-attention)",
        FuserKind::Off => "base",
    };
    let modules = module_rows(&vs, unet_group, is_grounding_param);
    let variables = vs.variables();
    VariantSummary {
        name,
        grounding_blocks: blocks,
        total: modules.iter().map(|r| r.params).sum(),
        trainable: modules.iter().filter(|r| r.trainable).map(|r| r.params).sum(),
        modules,
        grounding_layers: grounding_layers(
            &variables
                .iter()
                .map(|(n, t)| (n.clone(), t.numel() as i64))
                .collect::<Vec<_>>(),
        ),
    }
}

/// The largest `--resolution` (pixels) and `--classes` `model summary` builds a PoG head for.
const MAX_SUMMARY_RESOLUTION: u32 = 4096;
const MAX_SUMMARY_CLASSES: i64 = 100_000;

/// The PoG head for `model` at `resolution` pixels predicting `classes` categories, Enh-Fusion on.
fn perception_head(model: &ModelConfig, resolution: u32, classes: u64) -> anyhow::Result<PerceptionSummary> {
    let multiple = model.resolution_multiple();
    if resolution == 0 || !resolution.is_multiple_of(multiple) {
        bail!(
            "--resolution {resolution}: must be a positive multiple of {multiple} for {}",
            model.name
        );
    }
    // The head is built for real to be counted: bound what it may allocate.
    if resolution > MAX_SUMMARY_RESOLUTION {
        bail!("--resolution {resolution}: at most {MAX_SUMMARY_RESOLUTION} pixels (the head is built to be counted)");
    }
    let classes_i64 = i64::try_from(classes)
        .ok()
        .filter(|c| (1..=MAX_SUMMARY_CLASSES).contains(c))
        .with_context(|| format!("--classes {classes}: must be 1 to {MAX_SUMMARY_CLASSES}"))?;
    let latent = i64::from(resolution / model.vae_factor().max(1));
    let channels: Vec<i64> = model.unet.block_out_channels.iter().map(|&c| i64::from(c)).collect();
    let vs = VarStore::new(Device::Cpu);
    let _head = PerceptionHead::new(
        &vs.root(),
        &model.perception,
        &channels,
        &down_output_sizes(model, latent),
        classes_i64,
        true,
    );
    let top = |name: &str| name.split('.').next().unwrap_or(name).to_string();
    Ok(PerceptionSummary {
        resolution,
        classes,
        enh_fusion: true,
        modules: module_rows(&vs, top, |_| true),
        total: count_params(&vs, |_| true),
    })
}

fn percent(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let model = load_model_config(&args.config).with_context(|| args.config.clone())?;
    let resolution = args
        .resolution
        .unwrap_or(model.unet.sample_size.saturating_mul(model.vae_factor()));
    let perception = perception_head(&model, resolution, args.classes)?;
    let blocks = model.attention_blocks();
    let last_down = blocks.iter().rev().find(|b| b.starts_with("down.")).cloned();
    let first_up = blocks.iter().find(|b| b.starts_with("up.")).cloned();
    let spatiallock_blocks: Vec<String> = last_down.into_iter().chain(first_up).collect();

    let sl = unet_variant(&model, FuserKind::SpatialLock, spatiallock_blocks);
    let gl = unet_variant(&model, FuserKind::Gligen, blocks);
    let base_unet = sl.total - sl.trainable;
    let vs = VarStore::new(Device::Cpu);
    let _clip = ClipTextModel::new(&(vs.root() / "text_model"), &model.text_encoder);
    let text_encoder = count_params(&vs, |_| true);
    let vae = model.vae.as_ref().map(|v| {
        let vs = VarStore::new(Device::Cpu);
        let _vae = AutoencoderKL::new(&vs.root(), v);
        count_params(&vs, |_| true)
    });
    let loss_weights = match LossWeighting::new(LossWeights::Learnable, Device::Cpu) {
        LossWeighting::Learnable { vs, .. } => count_params(&vs, |_| true),
        LossWeighting::Fixed { .. } => 0,
    };

    let poi_pog = sl.trainable + perception.total + loss_weights;
    let trainable = TrainableSummary {
        spatiallock_poi: sl.trainable,
        spatiallock_poi_pog: poi_pog,
        gligen_poi: gl.trainable,
        poi_percent: percent(sl.trainable, gl.trainable),
        poi_pog_percent: percent(poi_pog, gl.trainable),
    };
    // Other readings of the paper's figure: the attention parts alone, or one layer per block.
    let attention_only = percent(sl.trainable - sl.feed_forward(), gl.trainable - gl.feed_forward());
    let mut first_per_block: Vec<&GroundingLayer> = Vec::new();
    for layer in &sl.grounding_layers {
        if !first_per_block.iter().any(|l| l.block == layer.block) {
            first_per_block.push(layer);
        }
    }
    let one_per_block = percent(
        sl.tokenizer() + first_per_block.iter().map(|l| l.params).sum::<i64>(),
        gl.trainable,
    );
    let ours = format!(
        "every parameter training updates: the grounding tokenizer ({}, in both variants) and {} \
         Grounding-Attention layers (gated cross-attention and a gated feed-forward, one in each transformer \
         of [{}]; {} on average) against GLIGEN's {} gated self-attention layers ({} on average)",
        millions(sl.tokenizer()),
        sl.grounding_layers.len(),
        sl.grounding_blocks.join(", "),
        millions(sl.mean_layer()),
        gl.grounding_layers.len(),
        millions(gl.mean_layer()),
    );
    let summary = Summary {
        architecture: model.name.clone(),
        unet_widths: model.unet.block_out_channels.clone(),
        base_unet,
        text_encoder,
        vae,
        loss_weights,
        trainable,
        paper: PaperComparison {
            claim: PAPER_CLAIM,
            basis: "not stated in the paper",
            ours,
            attention_only_percent: attention_only,
            one_layer_per_block_percent: one_per_block,
        },
        perception,
        variants: vec![sl, gl],
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    println!("architecture {} (U-Net widths {:?})\n", s.architecture, s.unet_widths);
    for v in &s.variants {
        let title = format!("U-Net, {}, grounding in [{}]", v.name, v.grounding_blocks.join(", "));
        print_rows(&title, &v.modules, v.total, Some(v.trainable));
        println!();
    }
    println!(
        "base U-Net (frozen): {} ({} params)",
        millions(s.base_unet),
        s.base_unet
    );
    println!("text encoder (frozen): {}", millions(s.text_encoder));
    if let Some(vae) = s.vae {
        println!("VAE (frozen): {}", millions(vae));
    }
    let p = &s.perception;
    println!();
    print_rows(
        &format!(
            "PoG perception head at {} px, {} categories (Enh-Fusion on; --resolution, --classes)",
            p.resolution, p.classes
        ),
        &p.modules,
        p.total,
        None,
    );
    println!("learnable loss weights (s_g, s_p): {} parameters", s.loss_weights);

    let t = &s.trainable;
    let gligen = millions(t.gligen_poi);
    println!("\ntrainable parameters (what training updates by default: grounding, perception, loss weights)");
    println!(
        "  {:<40} {:>10} = {:.1}% of GLIGEN's {gligen}",
        "SpatialLock PoI",
        millions(t.spatiallock_poi),
        t.poi_percent
    );
    println!(
        "  {:<40} {:>10} = {:.1}% of GLIGEN's {gligen}",
        "SpatialLock PoI + PoG + loss weights",
        millions(t.spatiallock_poi_pog),
        t.poi_pog_percent
    );
    if let [sl, gl] = s.variants.as_slice() {
        println!(
            "  U-Net totals: SpatialLock {}, GLIGEN {}",
            millions(sl.total),
            millions(gl.total)
        );
    }
    println!("\nthe paper: \"{}\" — it does not say what it counts.", s.paper.claim);
    println!("ours counts {}.", s.paper.ours);
    println!(
        "other readings: the attention alone, without the grounding layers' feed-forwards in either variant, \
         {:.1}%; one SpatialLock layer per selected block, {:.1}%. Which one the paper used is not stated, so \
         the difference from its figure stays unexplained.",
        s.paper.attention_only_percent, s.paper.one_layer_per_block_percent
    );
}

/// `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    spatiallock_model::runtime::parse_device(s).map_err(|e| anyhow::anyhow!("--device: {e}"))
}

fn forward(args: &ForwardArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let inputs: HashMap<String, Tensor> = Tensor::read_safetensors(&args.inputs)
        .with_context(|| format!("{}: not a readable safetensors file", args.inputs.display()))?
        .into_iter()
        .map(|(k, v)| (k, v.to_device(device)))
        .collect();
    let get = |name: &str| inputs.get(name);
    let require =
        |name: &str| get(name).with_context(|| format!("{}: missing input tensor `{name}`", args.inputs.display()));
    let mut outputs: Vec<(String, Tensor)> = Vec::new();

    let encoded = match get("input_ids") {
        Some(ids) => {
            let te = load_text_encoder(&args.model, device)?;
            let out = tch::no_grad(|| te.model.forward(ids));
            outputs.push(("last_hidden_state".into(), out.last_hidden_state.shallow_clone()));
            outputs.push(("pooled".into(), out.pooled));
            Some(out.last_hidden_state)
        }
        None => None,
    };
    let context = match (get("encoder_hidden_states"), encoded) {
        (Some(ctx), _) => ctx.shallow_clone(),
        (None, Some(encoded)) => encoded,
        (None, None) => bail!(
            "{}: needs `encoder_hidden_states` or `input_ids`",
            args.inputs.display()
        ),
    };
    let unet = load_unet(&args.model, device, None)?;
    let (sample, timestep) = (require("sample")?, require("timestep")?);
    let scale = get("grounding_scale").map(|s| s.double_value(&[])).unwrap_or(1.0);
    let grounding = match (get("boxes"), get("phrase_embeddings"), get("masks")) {
        (Some(boxes), Some(phrases), Some(masks)) => Some(GroundingInput {
            boxes,
            phrases,
            masks,
            scale,
        }),
        (None, None, None) => None,
        _ => bail!(
            "{}: grounding needs all of `boxes`, `phrase_embeddings` and `masks`",
            args.inputs.display()
        ),
    };
    if grounding.is_some() && unet.model.grounding().kind == FuserKind::Off {
        bail!(
            "{}: the inputs have boxes but this U-Net has no grounding layers",
            args.model.display()
        );
    }
    let out = tch::no_grad(|| unet.model.forward(sample, timestep, &context, grounding))?;
    outputs.push(("eps".into(), out.eps));
    for (i, t) in out.down.into_iter().enumerate() {
        outputs.push((format!("tap_down_{i}"), t));
    }
    outputs.push(("tap_mid".into(), out.mid));
    if let Some(latents) = get("latents") {
        let vae = load_vae(&args.model, device)?;
        outputs.push(("decoded".into(), tch::no_grad(|| vae.model.decode(latents))));
    }
    let outputs: Vec<(String, Tensor)> = outputs
        .into_iter()
        .map(|(k, v)| (k, v.to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&outputs, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let names: Vec<&str> = outputs.iter().map(|(k, _)| k.as_str()).collect();
    println!("wrote {} ({})", args.out.display(), names.join(", "));
    Ok(())
}
