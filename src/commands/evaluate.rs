//! `spatiallock evaluate GRID [--trial N]`: train the trial's evaluation detector if needed and
//! run the evaluation pipeline on each of its validation sets (after `spatiallock train`);
//! or `spatiallock evaluate --checkpoint DIR --dataset SPEC --detector DIR|FILE.pt` for any
//! training checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_model::data::open::open_dataset;
use spatiallock_model::eval::detector::{train_detector, Detector, DetectorTraining, ScriptedDetector};
use spatiallock_model::eval::run::{evaluate_model, EvalDetector, EvalResults};
use spatiallock_model::pipeline::{load_for_sampling, load_untrained, SpatialLockModel};
use spatiallock_model::train::run::Control;
use spatiallock_protocol::expand::{expand, EvalSpec, JobPayload};
use spatiallock_protocol::spec::{parse_document, ExperimentSpec, SpecFormat};
use spatiallock_protocol::trial::{BaseWeights, DatasetSpec, EvalConfig};
use tch::Device;

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
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn detector_from_path(path: &Path, device: Device) -> anyhow::Result<EvalDetector> {
    if path.is_dir() {
        Ok(EvalDetector::Builtin(Box::new(Detector::load(path, device)?)))
    } else {
        Ok(EvalDetector::Scripted(ScriptedDetector::load(path, device)?))
    }
}

fn print_results(label: &str, r: &EvalResults, out: &Path) {
    let fd = match (r.fid, r.fd_detector) {
        (Some(f), _) => format!("FID {f:.2}"),
        (None, Some(f)) => format!("fd_detector {f:.3}"),
        _ => "no Fréchet distance".into(),
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
}

/// Runs the evaluation(s).
pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    let device = super::model::parse_device(&args.device)?;
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
            &mut |_, _| Control::Continue,
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
        let JobPayload::Evaluate(e) = &job.payload else {
            bail!("{eval_id} is not an evaluation job")
        };
        let model = load_model(&root, e, device, file, args.trial)?;
        let detector = match &e.detector_job {
            Some(id) => builtin_detector(&root, &plan, id, device)?,
            None => match &e.eval.detector {
                spatiallock_protocol::trial::DetectorConfig::Torchscript { path } => {
                    EvalDetector::Scripted(ScriptedDetector::load(Path::new(path), device)?)
                }
                _ => bail!("{eval_id}: no detector"),
            },
        };
        let val = open_dataset(&e.val, e.model.resolution)?;
        let out = root.join(eval_id);
        let label = format!("trial {} on {}", args.trial, e.val.label());
        let r = evaluate_model(
            &model,
            i64::from(e.model.resolution),
            val.as_ref(),
            &e.eval,
            &detector,
            &out,
            &mut |done, n| {
                eprint!("\r{label}: generated {done}/{n} layouts");
                Control::Continue
            },
        )?;
        eprintln!();
        print_results(&label, &r, &out);
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

fn load_model(
    root: &Path,
    e: &EvalSpec,
    device: Device,
    file: &Path,
    trial: usize,
) -> anyhow::Result<SpatialLockModel> {
    let untrained = |base: &Path| -> anyhow::Result<SpatialLockModel> { Ok(load_untrained(&e.model, base, device)?) };
    match e.model_job.as_deref() {
        Some(id) if id.starts_with("train-") => {
            let marker = root.join(id).join("final");
            let ckpt = std::fs::read_to_string(&marker).map_err(|_| {
                anyhow::anyhow!(
                    "{id} has not finished; run `spatiallock train {} --trial {trial}` first",
                    file.display()
                )
            })?;
            Ok(load_for_sampling(Path::new(ckpt.trim()), device)?.0)
        }
        Some(id) => {
            let base = root.join(id).join("base");
            if !base.join("unet/config.json").is_file() {
                bail!(
                    "{id} has not finished; run `spatiallock train {} --trial {trial}` first",
                    file.display()
                );
            }
            untrained(&base)
        }
        None => match &e.model.base {
            BaseWeights::Path(p) => untrained(Path::new(p)),
            BaseWeights::Pretrain(_) => bail!("no base model for this evaluation"),
        },
    }
}

fn builtin_detector(
    root: &Path,
    plan: &spatiallock_protocol::Plan,
    id: &str,
    device: Device,
) -> anyhow::Result<EvalDetector> {
    let dir = root.join(id);
    if dir.join("detector.json").is_file() {
        return Ok(EvalDetector::Builtin(Box::new(Detector::load(&dir, device)?)));
    }
    let job = plan.job(id).with_context(|| format!("job {id} missing"))?;
    let JobPayload::TrainDetector(d) = &job.payload else {
        bail!("{id} is not a detector job")
    };
    let data = open_dataset(&d.data, d.resolution)?;
    let run = DetectorTraining {
        resolution: i64::from(d.resolution),
        steps: d.steps,
        batch_size: d.batch_size as usize,
        lr: d.lr,
        seed: 0,
    };
    let mut last = std::time::Instant::now();
    let det = train_detector(data.as_ref(), run, device, &mut |step, loss| {
        if last.elapsed().as_secs_f64() > 2.0 || step == d.steps {
            eprint!("\r{id}: step {step}/{} loss {loss:.4}", d.steps);
            last = std::time::Instant::now();
        }
        Control::Continue
    })?;
    eprintln!();
    det.save(&dir)?;
    Ok(EvalDetector::Builtin(Box::new(det)))
}
