//! `spatiallock eval coco --gt GT.json --dt DT.json [--json]`: pycocotools' 12 bbox statistics.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use spatiallock_model::eval::coco::{evaluate, load_detections, CocoGt, STAT_NAMES};

/// `eval` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// COCO bbox mAP, identical to pycocotools.
    Coco(CocoArgs),
}

/// Arguments of `eval coco`.
#[derive(Args)]
pub struct CocoArgs {
    /// Ground truth (COCO instances JSON).
    #[arg(long)]
    pub gt: PathBuf,
    /// Detections (COCO results JSON: a list of {image_id, category_id, bbox, score}).
    #[arg(long)]
    pub dt: PathBuf,
    /// Print the statistics as a JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs an `eval` subcommand.
pub fn run(cmd: &EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Coco(args) => coco(args),
    }
}

fn coco(args: &CocoArgs) -> anyhow::Result<()> {
    let gt = CocoGt::load(&args.gt).context("reading ground truth")?;
    let dts = load_detections(&args.dt, &gt).context("reading detections")?;
    let result = evaluate(&gt, &dts);
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = STAT_NAMES
            .iter()
            .zip(result.stats)
            .map(|(n, v)| (n.to_string(), serde_json::Value::from(v)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    let labels = [
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    ];
    for (label, v) in labels.iter().zip(result.stats) {
        println!(" {label} = {v:.3}");
    }
    Ok(())
}
