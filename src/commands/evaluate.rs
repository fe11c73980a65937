//! `spatiallock evaluate GRID [--trial N]`: train the trial's evaluation detector if needed and
//! run the evaluation jobs on each of its validation sets (after `spatiallock train`), through
//! the job executor;
//! or `spatiallock evaluate --checkpoint DIR --dataset SPEC --detector DIR|FILE.pt` for any
//! training checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_model::data::open::open_dataset;
use spatiallock_model::eval::detector::{Detector, ScriptedDetector};
use spatiallock_model::eval::frechet::few_samples_warning;
use spatiallock_model::eval::run::{evaluate_model, EvalDetector, EvalResults};
use spatiallock_model::executor::{execute, read_results, JobContext};
use spatiallock_model::layout::JobDir;
use spatiallock_model::pipeline::load_for_sampling;
use spatiallock_protocol::cost::{FD_DETECTOR_FEATURES, FID_FEATURES};
use spatiallock_protocol::expand::{expand, JobKind, JobPayload};
use spatiallock_protocol::spec::{parse_document, ExperimentSpec, SpecFormat};
use spatiallock_protocol::trial::{DatasetSpec, EvalConfig};
use tch::Device;

use super::progress::TerminalHooks;
use super::train::{input_folders, run_job};

/// Arguments of `evaluate`.
#[derive(Args)]
pub struct EvaluateArgs {
    /// A grid spec or trial configuration already trained with `spatiallock train`.
    pub file: Option<PathBuf>,
    /// Which trial of the grid.
    #[arg(long, default_value_t = 0)]
    pub trial: usize,
    /// Where job outputs are (`<out>/<experiment>/<job-id>/`).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Evaluate this training checkpoint instead of a grid trial.
    #[arg(long, conflicts_with = "file")]
    pub checkpoint: Option<PathBuf>,
    /// With --checkpoint: the validation dataset, as YAML/JSON text or a file
    /// (e.g. `{kind: shapes, split: val, count: 32}`).
    #[arg(long, requires = "checkpoint")]
    pub dataset: Option<String>,
    /// With --checkpoint: a trained detector folder or a TorchScript `.pt`.
    #[arg(long, requires = "checkpoint")]
    pub detector: Option<PathBuf>,
    /// The device: `cpu`, `cuda:N` or `N` (one device; a worker takes several).
    #[arg(long = "devices", alias = "device", value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
}

fn detector_from_path(path: &Path, device: Device) -> anyhow::Result<EvalDetector> {
    if path.is_dir() {
        Ok(EvalDetector::Builtin(Box::new(Detector::load(path, device)?)))
    } else {
        Ok(EvalDetector::Scripted(ScriptedDetector::load(path, device)?))
    }
}

/// Two lines of results (the image-level scores, then the per-object ones: grounding accuracy,
/// mean IoU of its matches, category recall), and on standard error a warning when the Fréchet distance rests on
/// fewer images than its features have dimensions (it is then biased; see
/// [`few_samples_warning`]).
fn print_results(label: &str, r: &EvalResults, out: &Path) {
    let (fd, distance) = match (r.fid, r.fd_detector) {
        (Some(f), _) => (format!("FID {f:.2}"), Some(("FID", FID_FEATURES))),
        (None, Some(f)) => (
            format!("fd_detector {f:.3}"),
            Some(("fd_detector", FD_DETECTOR_FEATURES)),
        ),
        _ => ("no Fréchet distance".into(), None),
    };
    println!(
        "{label}: {fd}  mAP {:.1}  AP50 {:.1}  AP75 {:.1}  {:.3} s/image  ({} images) → {}",
        r.map,
        r.ap50,
        r.ap75,
        r.inference_s,
        r.images,
        out.display()
    );
    let show = |v: Option<f64>, digits: usize| v.map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"));
    println!(
        "  per object: grounding accuracy {} % (IoU ≥ 0.5)  mean IoU {}  category recall {} %",
        show(r.grounding_accuracy, 1),
        show(r.mean_iou, 3),
        show(r.category_recall, 1)
    );
    // The real side has one image per layout, the generated side `images_per_layout` each.
    let sides = format!("{} real and {} generated images", r.layouts, r.images);
    let fewest = r.layouts.min(r.images) as i64;
    if let Some(w) = distance.and_then(|(name, dims)| few_samples_warning(name, &sides, fewest, dims as i64)) {
        eprintln!("warning: {label}: {w}");
    }
}

/// Runs the evaluation(s).
pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    let device = super::service::single_device(&args.device)?;
    if let Some(ckpt) = &args.checkpoint {
        let text = args
            .dataset
            .as_deref()
            .context("--dataset is required with --checkpoint")?;
        let text = if Path::new(text).is_file() {
            std::fs::read_to_string(text)?
        } else {
            text.to_string()
        };
        let value = parse_document(&text, SpecFormat::Yaml).context("--dataset")?;
        let dataset: DatasetSpec = serde_json::from_value(value).context("--dataset is not a dataset spec")?;
        let detector = detector_from_path(
            args.detector
                .as_deref()
                .context("--detector is required with --checkpoint")?,
            device,
        )?;
        let (model, spec) = load_for_sampling(ckpt, device)?;
        let val = open_dataset(&dataset, spec.resolution)?;
        let out = args.out.clone();
        let r = evaluate_model(
            &model,
            i64::from(spec.resolution),
            val.as_ref(),
            &EvalConfig::default(),
            &detector,
            &out,
            &mut TerminalHooks::new("evaluate", 0),
        )?;
        print_results(&dataset.label(), &r, &out);
        return Ok(());
    }
    let file = args.file.as_ref().context("give a grid file, or --checkpoint")?;
    let spec = ExperimentSpec::load_grid_or_trial(file).with_context(|| file.display().to_string())?;
    let plan = expand(&spec).with_context(|| file.display().to_string())?;
    let Some(trial) = plan.trials.get(args.trial) else {
        bail!("--trial {}: the grid has {} trial(s)", args.trial, plan.trials.len());
    };
    let root = args.out.join(&plan.name);
    for eval_id in &trial.eval_jobs {
        let job = plan.job(eval_id).with_context(|| format!("job {eval_id} missing"))?;
        // The evaluation detector is trained here when missing; the model must come from
        // `spatiallock train`.
        for dep in &job.depends_on {
            let dep_job = plan.job(dep).with_context(|| format!("job {dep} missing"))?;
            let done = JobDir::new(root.join(dep)).is_complete(dep_job.kind);
            match dep_job.kind {
                JobKind::TrainDetector if !done => {
                    let steps = match &dep_job.payload {
                        JobPayload::TrainDetector(d) => d.steps,
                        _ => 0,
                    };
                    run_job(&root, dep_job, device, None, TerminalHooks::new(dep, steps))?;
                }
                _ if !done => bail!(
                    "{dep} has not finished; run `spatiallock train {} --trial {}` first",
                    file.display(),
                    args.trial
                ),
                _ => {}
            }
        }
        let JobPayload::Evaluate(e) = &job.payload else {
            bail!("{eval_id} is not an evaluation job")
        };
        let label = format!("trial {} on {}", args.trial, e.val.label());
        let dir = JobDir::new(root.join(eval_id));
        // An evaluation is cheap to redo and is redone: it reads the newest model.
        let ctx = JobContext {
            out: dir.root().to_path_buf(),
            attempt: 1,
            resume: None,
            inputs: input_folders(&root, job),
            device,
            cache_dir: None,
            data_parallel: None,
        };
        execute(&job.payload, &ctx, &mut TerminalHooks::new(&label, 0)).with_context(|| format!("job {eval_id}"))?;
        print_results(&label, &read_results(&dir)?, dir.root());
        if let Some(reference) = &trial.reference {
            let show = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_else(|| "-".into());
            println!(
                "  paper: FID {}  mAP {}  AP50 {}  AP75 {}  {} s/image",
                show(reference.fid),
                show(reference.map),
                show(reference.ap50),
                show(reference.ap75),
                show(reference.infer_s)
            );
        }
    }
    Ok(())
}
