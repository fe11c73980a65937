//! `spatiallock sample --checkpoint DIR --layout LAYOUT.json --out image.png [--draw-boxes]`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_model::diffusion::sampler::SampleSettings;
use spatiallock_model::generate::{sample, Layout};
use spatiallock_model::image_io::{save_grid, DrawBox, INPUT_COLOUR};
use spatiallock_model::pipeline::load_for_sampling;

/// Arguments of `sample`.
#[derive(Args)]
pub struct SampleArgs {
    /// A training checkpoint directory (`…/checkpoints/step-N`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A layout `{"caption": …, "objects": [{"box": [x0,y0,x1,y1], "phrase": …}]}` or a list.
    #[arg(long)]
    pub layout: PathBuf,
    /// The PNG to write (a grid when there are several layouts).
    #[arg(long)]
    pub out: PathBuf,
    /// Draw the layout's boxes on the image.
    #[arg(long)]
    pub draw_boxes: bool,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: i64,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Fraction of steps with grounding on (scheduled grounding).
    #[arg(long, default_value_t = 0.3)]
    pub grounding_fraction: f64,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The device: `cpu`, `cuda:N` or `N` (one device; a worker takes several).
    #[arg(long = "devices", alias = "device", value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
}

/// Generates and writes the image(s).
pub fn run(args: &SampleArgs) -> anyhow::Result<()> {
    let device = super::service::single_device(&args.device)?;
    let text = std::fs::read_to_string(&args.layout).with_context(|| format!("reading {}", args.layout.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", args.layout.display()))?;
    let layouts: Vec<Layout> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|l| vec![l]),
    }
    .with_context(|| {
        format!(
            "{}: expected {{\"caption\", \"objects\": [{{\"box\", \"phrase\"}}]}} or a list",
            args.layout.display()
        )
    })?;
    if layouts.is_empty() {
        bail!("{}: no layouts", args.layout.display());
    }
    if !(0.0..=1.0).contains(&args.grounding_fraction) {
        bail!(
            "--grounding-fraction must be in [0, 1], not {}",
            args.grounding_fraction
        );
    }
    let (model, spec) = load_for_sampling(&args.checkpoint, device)?;
    let settings = SampleSettings {
        steps: args.steps,
        guidance: args.guidance,
        grounding_fraction: args.grounding_fraction,
        seed: args.seed,
        resolution: i64::from(spec.resolution),
    };
    let images = sample(&model, &layouts, settings)?;
    let boxes: Vec<Vec<DrawBox>> = layouts
        .iter()
        .map(|l| {
            if args.draw_boxes {
                l.objects.iter().map(|o| (o.bbox, INPUT_COLOUR)).collect()
            } else {
                Vec::new()
            }
        })
        .collect();
    let cols = (layouts.len() as f64).sqrt().ceil() as usize;
    save_grid(&args.out, &images, &boxes, cols)?;
    println!(
        "wrote {} ({} image(s), {}px)",
        args.out.display(),
        layouts.len(),
        spec.resolution
    );
    Ok(())
}
