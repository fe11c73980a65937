//! `spatiallock model summary|forward`: inspect architectures and run checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use spatiallock_model::nn::clip::ClipTextModel;
use spatiallock_model::nn::model_dir::{load_text_encoder, load_unet, load_vae};
use spatiallock_model::nn::params::is_grounding_param;
use spatiallock_model::nn::summary::{millions, module_rows, unet_group, ModuleRow};
use spatiallock_model::nn::transformer::FuserKind;
use spatiallock_model::nn::unet::{GroundingInput, GroundingSetup, UNet2DConditionModel};
use spatiallock_model::nn::vae::AutoencoderKL;
use spatiallock_protocol::trial::load_model_config;
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

fn print_rows(title: &str, rows: &[ModuleRow]) -> (i64, i64) {
    println!("{title}");
    println!("  {:<32} {:>12}  trainable", "module", "params");
    let (mut total, mut trainable) = (0, 0);
    for r in rows {
        println!(
            "  {:<32} {:>12}  {}",
            r.module,
            millions(r.params),
            if r.trainable { "yes" } else { "no" }
        );
        total += r.params;
        if r.trainable {
            trainable += r.params;
        }
    }
    println!(
        "  {:<32} {:>12}  trainable {}",
        "total",
        millions(total),
        millions(trainable)
    );
    (total, trainable)
}

fn unet_variant(model: &ModelConfig, kind: FuserKind, blocks: Vec<String>) -> (i64, i64) {
    let vs = VarStore::new(Device::Cpu);
    let setup = GroundingSetup::from_model(model, kind, blocks.clone());
    let _unet = UNet2DConditionModel::new(&vs.root(), &model.unet, setup);
    let name = match kind {
        FuserKind::SpatialLock => "SpatialLock (Grounding-Attention)",
        FuserKind::Gligen => "GLIGEN (gated self-attention)",
        FuserKind::Off => "base",
    };
    let rows = module_rows(&vs, unet_group, is_grounding_param);
    print_rows(&format!("U-Net, {name}, grounding in [{}]", blocks.join(", ")), &rows)
}

fn summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let model = load_model_config(&args.config).with_context(|| args.config.clone())?;
    let blocks = model.attention_blocks();
    let last_down = blocks.iter().rev().find(|b| b.starts_with("down.")).cloned();
    let first_up = blocks.iter().find(|b| b.starts_with("up.")).cloned();
    let spatiallock_blocks: Vec<String> = last_down.into_iter().chain(first_up).collect();
    println!(
        "architecture {} (U-Net widths {:?})\n",
        model.name, model.unet.block_out_channels
    );

    let (sl_total, sl_trainable) = unet_variant(&model, FuserKind::SpatialLock, spatiallock_blocks);
    println!();
    let (gl_total, gl_trainable) = unet_variant(&model, FuserKind::Gligen, blocks);
    let base = sl_total - sl_trainable;
    println!("\nbase U-Net (frozen): {} ({} params)", millions(base), base);
    let vs = VarStore::new(Device::Cpu);
    let _clip = ClipTextModel::new(&(vs.root() / "text_model"), &model.text_encoder);
    println!(
        "text encoder (frozen): {}",
        millions(spatiallock_model::nn::params::count_params(&vs, |_| true))
    );
    if let Some(vae) = &model.vae {
        let vs = VarStore::new(Device::Cpu);
        let _vae = AutoencoderKL::new(&vs.root(), vae);
        println!(
            "VAE (frozen): {}",
            millions(spatiallock_model::nn::params::count_params(&vs, |_| true))
        );
    }
    println!(
        "\ntrainable PoI parameters: SpatialLock {} vs GLIGEN {} = {:.1}% (the paper: under 50.7%)",
        millions(sl_trainable),
        millions(gl_trainable),
        100.0 * sl_trainable as f64 / gl_trainable as f64
    );
    println!(
        "U-Net totals: SpatialLock {}, GLIGEN {}",
        millions(sl_total),
        millions(gl_total)
    );
    println!("(PoG's perception head is not counted yet: it arrives with the training milestone.)");
    Ok(())
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
