//! `spatiallock train CONFIG|GRID --trial N`: run one trial's pretraining and training
//! in-process, with a progress bar, JSONL metrics and checkpoints; re-running resumes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_model::train::encoder_cache::CacheReport;
use spatiallock_model::train::run::{latest_checkpoint, pretrain, train, Control, Outcome, RunOptions};
use spatiallock_model::train::trainer::StepMetrics;
use spatiallock_protocol::expand::{expand, JobPayload};
use spatiallock_protocol::spec::ExperimentSpec;

use super::progress::Progress;

/// Arguments of `train`.
#[derive(Args)]
pub struct TrainArgs {
    /// A grid spec or a single trial configuration (YAML/JSON).
    pub file: PathBuf,
    /// Which trial of the grid (see `spatiallock plan`).
    #[arg(long, default_value_t = 0)]
    pub trial: usize,
    /// Where job outputs go (`<out>/<experiment>/<job-id>/`).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Where the frozen encoders' outputs (VAE latents, caption embeddings) are kept for reuse
    /// by later runs on the same data (default `<out>/.cache/encoders`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep them in memory for this run only.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

fn metrics_writer(job_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(job_dir).with_context(|| format!("creating {}", job_dir.display()))?;
    let path = job_dir.join("metrics.jsonl");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

fn on_step<'a>(progress: &'a mut Progress, log: &'a mut std::fs::File) -> impl FnMut(&StepMetrics) -> Control + 'a {
    move |m: &StepMetrics| {
        let ips = progress.images_per_second(m.step);
        progress.show(m, ips);
        let mut row = serde_json::to_value(m).unwrap_or_default();
        row["images_per_s"] = serde_json::Value::from(ips);
        let _ = writeln!(log, "{row}");
        Control::Continue
    }
}

fn show_cache_report(job: &str, dir: &Path) {
    if let Some(report) = CacheReport::read(dir) {
        eprintln!("{job}: {}", report.summary());
    }
}

/// Runs the trial's jobs.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    tch::set_num_threads(tch::get_num_threads().max(1));
    let device = super::model::parse_device(&args.device)?;
    let spec = ExperimentSpec::load_grid_or_trial(&args.file).with_context(|| args.file.display().to_string())?;
    let plan = expand(&spec).with_context(|| args.file.display().to_string())?;
    let Some(trial) = plan.trials.get(args.trial) else {
        bail!(
            "--trial {}: the grid has {} trial(s) (0..{})",
            args.trial,
            plan.trials.len(),
            plan.trials.len().saturating_sub(1)
        );
    };
    let Some(model_job) = &trial.model_job else {
        println!(
            "trial {} trains nothing (PoI and PoG are off): its model is the base",
            args.trial
        );
        return Ok(());
    };
    let root = args.out.join(&plan.name);
    let cache_dir = match (&args.cache_dir, args.no_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => Some(args.out.join(".cache").join("encoders")),
    };
    let mut chain = Vec::new();
    let mut next = Some(model_job.clone());
    while let Some(id) = next {
        let job = plan
            .job(&id)
            .with_context(|| format!("job {id} missing from the plan"))?;
        next = job.depends_on.first().cloned();
        chain.push(job.clone());
    }
    chain.reverse();
    let mut base_dir: Option<PathBuf> = None;
    for job in chain {
        let dir = root.join(&job.id);
        let resume = latest_checkpoint(&dir);
        let opts = |every| RunOptions {
            out: &dir,
            resume: resume.as_deref(),
            checkpoint_every: every,
            device,
            cache_dir: cache_dir.as_deref(),
        };
        match &job.payload {
            JobPayload::Pretrain(p) => {
                let base = dir.join("base");
                if base.join("unet/config.json").is_file() {
                    eprintln!("{}: done already ({})", job.id, base.display());
                } else {
                    let mut log = metrics_writer(&dir)?;
                    let mut progress = Progress::new(&job.id, p.pretrain.steps, p.pretrain.batch_size as usize);
                    let every = (p.pretrain.steps / 4).max(1);
                    pretrain(p, &opts(every), &mut on_step(&mut progress, &mut log))?;
                    show_cache_report(&job.id, &dir);
                }
                base_dir = Some(base);
            }
            JobPayload::Train(t) => {
                let base = match (&t.base, &base_dir) {
                    (spatiallock_protocol::trial::BaseWeights::Path(p), _) => PathBuf::from(p),
                    (_, Some(b)) => b.clone(),
                    _ => bail!("{}: no base model to train on", job.id),
                };
                if dir.join("final").is_file() {
                    eprintln!("{}: done already", job.id);
                } else {
                    let mut log = metrics_writer(&dir)?;
                    let mut progress = Progress::new(&job.id, t.training.steps, t.training.batch_size as usize);
                    let outcome = train(
                        t,
                        &base,
                        &opts(t.training.checkpoint_every),
                        &mut on_step(&mut progress, &mut log),
                    )?;
                    show_cache_report(&job.id, &dir);
                    if let Outcome::Stopped(s) = outcome {
                        bail!("{}: stopped at step {s}", job.id);
                    }
                }
                let final_ckpt = std::fs::read_to_string(dir.join("final")).unwrap_or_default();
                println!(
                    "trial {}: trained {} → checkpoint {}",
                    args.trial,
                    job.id,
                    final_ckpt.trim()
                );
                println!("metrics: {}", dir.join("metrics.jsonl").display());
            }
            other => bail!("unexpected job in the model chain: {:?}", std::mem::discriminant(other)),
        }
    }
    Ok(())
}
