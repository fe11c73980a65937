//! `spatiallock train CONFIG|GRID --trial N`: run one trial's pretraining and training
//! in-process through the job executor, with a progress bar, JSONL metrics and checkpoints;
//! re-running resumes. The job folders are those a worker writes for the same payloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_model::executor::{execute, JobContext};
use spatiallock_model::layout::JobDir;
use spatiallock_protocol::expand::{expand, Job, JobKind, JobPayload};
use spatiallock_protocol::spec::ExperimentSpec;
use tch::Device;

use super::progress::TerminalHooks;

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
    /// The device: `cpu`, `cuda:N` or `N` (one device; a worker takes several).
    #[arg(long = "devices", alias = "device", value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Where the frozen encoders' outputs (VAE latents, caption embeddings) are kept for reuse
    /// by later runs on the same data (default `<out>/.cache/encoders`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep them in memory for this run only.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

/// The output folders of `job`'s dependencies under `root` (plan job id → folder).
pub fn input_folders(root: &Path, job: &Job) -> BTreeMap<String, PathBuf> {
    job.depends_on.iter().map(|id| (id.clone(), root.join(id))).collect()
}

/// Runs `job` into `root/<job id>` through the executor (resuming from its last checkpoint),
/// unless it finished before. Returns its folder.
pub fn run_job(
    root: &Path,
    job: &Job,
    device: Device,
    cache_dir: Option<&Path>,
    mut hooks: TerminalHooks,
) -> anyhow::Result<JobDir> {
    let dir = JobDir::new(root.join(&job.id));
    if dir.is_complete(job.kind) {
        eprintln!("{}: done already ({})", job.id, dir.root().display());
        return Ok(dir);
    }
    let ctx = JobContext {
        out: dir.root().to_path_buf(),
        attempt: 1,
        resume: dir.latest_checkpoint(),
        inputs: input_folders(root, job),
        device,
        cache_dir: cache_dir.map(Path::to_path_buf),
        data_parallel: None,
    };
    execute(&job.payload, &ctx, &mut hooks).with_context(|| format!("job {}", job.id))?;
    Ok(dir)
}

/// Runs the trial's jobs.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    tch::set_num_threads(tch::get_num_threads().max(1));
    let device = super::service::single_device(&args.device)?;
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
    for job in chain {
        let steps = match &job.payload {
            JobPayload::Pretrain(p) => p.pretrain.steps,
            JobPayload::Train(t) => t.training.steps,
            _ => bail!("{}: not a training job ({})", job.id, job.kind.as_str()),
        };
        let job_dir = JobDir::new(root.join(&job.id));
        std::fs::create_dir_all(job_dir.root()).with_context(|| format!("creating {}", job_dir.root().display()))?;
        let hooks = TerminalHooks::new(&job.id, steps).with_metrics_log(&job_dir.metrics_log())?;
        let dir = run_job(&root, &job, device, cache_dir.as_deref(), hooks)?;
        if job.kind == JobKind::Train {
            println!(
                "trial {}: trained {} → checkpoint {}",
                args.trial,
                job.id,
                dir.final_checkpoint()?.display()
            );
            println!("metrics: {}", dir.metrics_log().display());
        }
    }
    Ok(())
}
