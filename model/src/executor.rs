//! The one job executor: runs any job kind from its payload, the output folders of the jobs it
//! depends on and a [`Hooks`] object, into one output folder laid out by [`JobDir`]. The worker
//! (hooks that report to the coordinator), `spatiallock train` / `evaluate` (progress on the
//! terminal, JSONL) and, with data-parallel training, every rank process call [`execute`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::Device;

use spatiallock_protocol::api::AUGMENT_METRICS;
use spatiallock_protocol::expand::{AugmentSpec, EvalSpec, NoopSpec, TrainSpec};
use spatiallock_protocol::trial::{BaseWeights, DetectorConfig, NoopFailure};
use spatiallock_protocol::JobPayload;

use crate::data::open::open_dataset;
use crate::dist::DataParallel;
use crate::error::ModelError;
use crate::eval::augment::{augment_detector, Augmentation};
use crate::eval::detector::{train_detector, Detector, DetectorTraining, ScriptedDetector};
use crate::eval::run::{evaluate_model, EvalDetector, EvalResults};
use crate::hooks::Hooks;
use crate::layout::{JobDir, ModelOutput};
use crate::pipeline::{load_for_sampling, load_untrained, SpatialLockModel};
use crate::train::run::{pretrain, train, RunOptions};

/// Pretraining checkpoints this many times over its run.
const PRETRAIN_CHECKPOINTS: u64 = 10;
/// Seed of the evaluation detector's initialisation and data order (train-detector jobs, and
/// the augmented detector, which trains as the real-only one did).
const DETECTOR_SEED: u64 = 0;

/// What a job runs with.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The output folder (created if missing).
    pub out: PathBuf,
    /// The attempt number (1-based); noop jobs use it to fail on purpose.
    pub attempt: u64,
    /// A checkpoint to resume training from.
    pub resume: Option<PathBuf>,
    /// Output folders of the jobs this one depends on (plan job id → folder).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where tensors live.
    pub device: Device,
    /// Root of the stores of frozen encoders' outputs shared between jobs; `None` keeps them
    /// in memory for this job only.
    pub cache_dir: Option<PathBuf>,
    /// The data-parallel group a training job runs as one rank of (a rank process); `None`
    /// trains on this process alone.
    pub data_parallel: Option<DataParallel>,
}

/// Why a job did not produce its output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The job is wrong (bad config, bad data, NaN loss): retrying it spends an attempt.
    #[error("{0}")]
    App(String),
    /// Something around the job failed (its output folder or the caches cannot be written):
    /// retried without spending an attempt.
    #[error("{0}")]
    Infra(String),
    /// It stopped because the hooks asked it to (training wrote a checkpoint first); the text
    /// says where.
    #[error("stopped on request {0}")]
    Stopped(String),
}

/// A job's failure before it is classed: the model's error, or one already classed.
enum Failure {
    Model(ModelError),
    Job(JobError),
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        Failure::Model(e)
    }
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        Failure::Job(e)
    }
}

impl JobContext {
    fn input(&self, id: &str) -> Result<JobDir, JobError> {
        self.inputs
            .get(id)
            .map(JobDir::new)
            .ok_or_else(|| JobError::App(format!("the output of job `{id}` this job needs was not given")))
    }

    fn only_input(&self) -> Result<JobDir, JobError> {
        match self.inputs.values().collect::<Vec<_>>().as_slice() {
            [one] => Ok(JobDir::new(one)),
            other => Err(JobError::App(format!(
                "expected the output of one dependency (the pretrained base), got {}",
                other.len()
            ))),
        }
    }

    /// Classes a model error: a stop is `Stopped`; reading or writing a file of this job's own
    /// output folder or of the encoder caches (a full disk, a lost mount) is `Infra`, retried
    /// without spending an attempt; anything else (bad data, a bad config, a NaN) is `App`.
    /// The message carries the error's causes ([`with_causes`]): a file error names the file
    /// and the OS error.
    fn classify(&self, e: ModelError) -> JobError {
        match e {
            ModelError::Stopped(at) => JobError::Stopped(at),
            // Another rank is gone or stalled: the rank that failed first says why.
            ModelError::Collective(m) => JobError::Infra(format!("data-parallel group: {m}")),
            ModelError::Io { ref path, .. }
                if path.starts_with(&self.out) || self.cache_dir.as_ref().is_some_and(|c| path.starts_with(c)) =>
            {
                JobError::Infra(with_causes(&e))
            }
            other => JobError::App(with_causes(&other)),
        }
    }

    fn run_options(&self, checkpoint_every: u64) -> RunOptions<'_> {
        RunOptions {
            out: &self.out,
            resume: self.resume.as_deref(),
            checkpoint_every,
            device: self.device,
            cache_dir: self.cache_dir.as_deref(),
            data_parallel: None,
        }
    }
}

/// `e`'s message followed by each of its causes, `: `-separated, as anyhow's `{:#}` prints a
/// chain (a thiserror type's own `{:#}` prints only its top message): a [`ModelError::Io`] reads
/// `…/val.json: No such file or directory (os error 2)`. A cause whose text the message already
/// ends with is not repeated.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !more.is_empty() && !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Runs a job into `ctx.out` and returns that folder.
///
/// Errors: [`JobError::Stopped`] when `hooks` asked to stop; [`JobError::Infra`] when the
/// output folder or the encoder caches cannot be read or written; [`JobError::App`] for
/// everything the job itself got wrong.
pub fn execute(payload: &JobPayload, ctx: &JobContext, hooks: &mut dyn Hooks) -> Result<PathBuf, JobError> {
    std::fs::create_dir_all(&ctx.out)
        .map_err(|e| JobError::Infra(format!("cannot create {}: {e}", ctx.out.display())))?;
    if let Some(r) = &ctx.resume {
        hooks.log(&format!("attempt {} resumes from {}", ctx.attempt, r.display()));
    }
    run(payload, ctx, hooks).map_err(|f| match f {
        Failure::Job(e) => e,
        Failure::Model(e) => ctx.classify(e),
    })
}

fn run(payload: &JobPayload, ctx: &JobContext, hooks: &mut dyn Hooks) -> Result<PathBuf, Failure> {
    match payload {
        JobPayload::Noop(n) => Ok(noop(n, ctx, hooks)?),
        JobPayload::Pretrain(p) => {
            let every = (p.pretrain.steps / PRETRAIN_CHECKPOINTS).max(1);
            pretrain(p, &ctx.run_options(every), hooks)?;
            hooks.log("finished");
            Ok(ctx.out.clone())
        }
        JobPayload::Train(t) => {
            match &ctx.data_parallel {
                None if t.world_size > 1 => hooks.log(&format!(
                    "world_size {} asked for, but this process runs alone (not a rank process): \
                     training on {:?} with the whole global batch of {}",
                    t.world_size, ctx.device, t.training.batch_size
                )),
                Some(dp) if dp.env.world_size != t.world_size as usize => hooks.log(&format!(
                    "world_size {} asked for, running on the {} ranks of this group with the same \
                     global batch of {}",
                    t.world_size, dp.env.world_size, t.training.batch_size
                )),
                _ => {}
            }
            let base = match &t.base {
                BaseWeights::Path(p) => PathBuf::from(p),
                BaseWeights::Pretrain(_) => ctx.only_input()?.base(),
            };
            let opts = RunOptions {
                data_parallel: ctx.data_parallel.as_ref(),
                ..ctx.run_options(t.training.checkpoint_every.max(1))
            };
            train(t, &base, &opts, hooks)?;
            hooks.log("finished");
            Ok(ctx.out.clone())
        }
        JobPayload::TrainDetector(d) => {
            let data = open_dataset(&d.data, d.resolution)?;
            let run = DetectorTraining {
                resolution: i64::from(d.resolution),
                steps: d.steps,
                batch_size: d.batch_size as usize,
                lr: d.lr,
                seed: DETECTOR_SEED,
            };
            let det = train_detector(data.as_ref(), run, ctx.device, hooks)?;
            det.save(&ctx.out)?;
            hooks.log(&format!("detector trained for {} steps", d.steps));
            Ok(ctx.out.clone())
        }
        JobPayload::Evaluate(e) => evaluate(e, ctx, hooks),
        JobPayload::AugmentDetector(a) => augment(a, ctx, hooks),
    }
}

fn noop(n: &NoopSpec, ctx: &JobContext, hooks: &mut dyn Hooks) -> Result<PathBuf, JobError> {
    let deadline = Instant::now() + Duration::from_millis(n.noop.sleep_ms);
    loop {
        if hooks.should_stop() {
            return Err(JobError::Stopped("while sleeping (noop)".into()));
        }
        if !n.noop.hang && Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let fails_now = n.noop.fail_attempts == 0 || ctx.attempt <= u64::from(n.noop.fail_attempts);
    match n.noop.fail {
        Some(NoopFailure::App) if fails_now => Err(JobError::App(format!(
            "noop failed on purpose (attempt {})",
            ctx.attempt
        ))),
        Some(NoopFailure::Infra) if fails_now => Err(JobError::Infra(format!(
            "noop infra failure on purpose (attempt {})",
            ctx.attempt
        ))),
        _ => Ok(ctx.out.clone()),
    }
}

/// The model a job samples from: the final checkpoint or the base of `model_job`'s output, or
/// `spec`'s base on disk when nothing was trained.
fn sampling_model(model_job: Option<&str>, spec: &TrainSpec, ctx: &JobContext) -> Result<SpatialLockModel, Failure> {
    let device = ctx.device;
    Ok(match model_job {
        Some(id) => match ctx.input(id)?.model_output() {
            Some(ModelOutput::Checkpoint(ckpt)) => load_for_sampling(&ckpt, device)?.0,
            Some(ModelOutput::Base(base)) => load_untrained(spec, &base, device)?,
            None => {
                return Err(JobError::App(format!(
                    "the output of job `{id}` holds no finished model (no final checkpoint, no base)"
                ))
                .into())
            }
        },
        None => match &spec.base {
            BaseWeights::Path(p) => load_untrained(spec, Path::new(p), device)?,
            BaseWeights::Pretrain(_) => return Err(JobError::App("no model to sample from".into()).into()),
        },
    })
}

fn evaluate(e: &EvalSpec, ctx: &JobContext, hooks: &mut dyn Hooks) -> Result<PathBuf, Failure> {
    let device = ctx.device;
    let model = sampling_model(e.model_job.as_deref(), &e.model, ctx)?;
    let detector = match (&e.detector_job, &e.eval.detector) {
        (Some(id), _) => EvalDetector::Builtin(Box::new(Detector::load(ctx.input(id)?.root(), device)?)),
        (None, DetectorConfig::Torchscript { path }) => {
            EvalDetector::Scripted(ScriptedDetector::load(Path::new(path), device)?)
        }
        (None, DetectorConfig::Builtin { .. }) => {
            return Err(JobError::App("no detector for this evaluation".into()).into())
        }
    };
    let val = open_dataset(&e.val, e.model.resolution)?;
    let results = evaluate_model(
        &model,
        i64::from(e.model.resolution),
        val.as_ref(),
        &e.eval,
        &detector,
        &ctx.out,
        hooks,
    )?;
    report_results(&results, hooks);
    hooks.log(&format!(
        "mAP {:.2} AP50 {:.2} AP75 {:.2} grounding accuracy {}; samples at {}",
        results.map,
        results.ap50,
        results.ap75,
        results
            .grounding_accuracy
            .map_or_else(|| "–".to_string(), |g| format!("{g:.2}")),
        JobDir::new(&ctx.out).samples().display()
    ));
    Ok(ctx.out.clone())
}

/// Detector augmentation (paper Table 5): the trial's model generates the synthetic set, the
/// detector retrains on real + synthetic as the real-only one did, and both are scored on the
/// real validation images. Reports [`AUGMENT_METRICS`] at step 0.
fn augment(a: &AugmentSpec, ctx: &JobContext, hooks: &mut dyn Hooks) -> Result<PathBuf, Failure> {
    let device = ctx.device;
    let model = sampling_model(a.model_job.as_deref(), &a.model, ctx)?;
    let real_only = Detector::load(ctx.input(&a.detector_job)?.root(), device)?;
    let real = open_dataset(&a.detector.data, a.detector.resolution)?;
    let val = open_dataset(&a.val, a.model.resolution)?;
    let study = Augmentation {
        model: &model,
        resolution: i64::from(a.model.resolution),
        real: real.as_ref(),
        val: val.as_ref(),
        synthetic_images: a.images as usize,
        eval: &a.eval,
        real_only: &real_only,
        training: DetectorTraining {
            resolution: i64::from(a.detector.resolution),
            steps: a.detector.steps,
            batch_size: a.detector.batch_size as usize,
            lr: a.detector.lr,
            seed: DETECTOR_SEED,
        },
        device,
    };
    let r = augment_detector(&study, &ctx.out, hooks)?;
    let values = [
        Some(r.real.map),
        Some(r.augmented.map),
        r.map_gain,
        Some(r.real.ap50),
        Some(r.augmented.ap50),
        Some(r.synthetic_images as f64),
    ];
    for (name, value) in AUGMENT_METRICS.into_iter().zip(values) {
        if let Some(value) = value {
            hooks.metric(name, 0, value);
        }
    }
    let gain = r.map_gain.map_or_else(
        || "no gain: an mAP is undefined".to_string(),
        |g| format!("{g:+.2} points"),
    );
    hooks.log(&format!(
        "detector mAP on {} real validation images: {:.2} trained on {} real images, {:.2} with {} synthetic \
         added ({gain})",
        r.val_images, r.real.map, r.real_images, r.augmented.map, r.synthetic_images
    ));
    Ok(ctx.out.clone())
}

/// An evaluation's scores as metrics at step 0 (`map`, `ap50`, `ap75`, `grounding_accuracy` and
/// `category_recall` (percent) and `mean_iou` (0–1) when defined, `fid` or `fd_detector`,
/// `inference_s`), and `fd_images`: the fewer of the real and generated images the Fréchet
/// distance comes from (below its feature dimensions it is biased; reports say so).
fn report_results(r: &EvalResults, hooks: &mut dyn Hooks) {
    let fd_images = (r.fid.is_some() || r.fd_detector.is_some()).then(|| r.layouts.min(r.images) as f64);
    for (name, value) in [
        ("map", Some(r.map)),
        ("ap50", Some(r.ap50)),
        ("ap75", Some(r.ap75)),
        ("grounding_accuracy", r.grounding_accuracy),
        ("mean_iou", r.mean_iou),
        ("category_recall", r.category_recall),
        ("fid", r.fid),
        ("fd_detector", r.fd_detector),
        ("fd_images", fd_images),
        ("inference_s", Some(r.inference_s)),
    ] {
        if let Some(v) = value {
            hooks.metric(name, 0, v);
        }
    }
}

/// Reads an evaluation's results back from its job folder.
///
/// Errors: [`ModelError::Io`] when it has none, [`ModelError::Config`] when they do not parse.
pub fn read_results(job: &JobDir) -> Result<EvalResults, ModelError> {
    let path = job.results();
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(path: &str) -> ModelError {
        ModelError::Io {
            path: PathBuf::from(path),
            source: std::io::Error::other("disk full"),
        }
    }

    #[test]
    fn errors_are_classed_by_what_failed() {
        let ctx = JobContext {
            out: PathBuf::from("/runs/job"),
            attempt: 1,
            resume: None,
            inputs: BTreeMap::new(),
            device: Device::Cpu,
            cache_dir: Some(PathBuf::from("/cache")),
            data_parallel: None,
        };
        assert!(matches!(ctx.classify(io("/runs/job/results.json")), JobError::Infra(_)));
        assert!(matches!(
            ctx.classify(io("/cache/latents-1/records.f32")),
            JobError::Infra(_)
        ));
        assert!(matches!(
            ctx.classify(io("/data/coco/instances.json")),
            JobError::App(_)
        ));
        assert!(matches!(
            ctx.classify(ModelError::Input("bad".into())),
            JobError::App(_)
        ));
        assert!(matches!(
            ctx.classify(ModelError::Collective("rank 1 never reached it".into())),
            JobError::Infra(_)
        ));
        assert_eq!(
            ctx.classify(ModelError::Stopped("at step 3".into())),
            JobError::Stopped("at step 3".into())
        );
    }

    /// A validation file that is not there: the failure names the file and the OS's reason.
    #[test]
    fn a_missing_file_is_reported_with_the_os_error() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let missing = dir.path().join("val.json");
        let spec = spatiallock_protocol::trial::DatasetSpec::CocoFormat {
            images: dir.path().join("images").display().to_string(),
            annotations: missing.display().to_string(),
        };
        let Err(e) = open_dataset(&spec, 32) else {
            panic!("a dataset without its annotation file opened");
        };
        let ctx = JobContext {
            out: dir.path().join("out"),
            attempt: 1,
            resume: None,
            inputs: BTreeMap::new(),
            device: Device::Cpu,
            cache_dir: None,
            data_parallel: None,
        };
        let JobError::App(message) = ctx.classify(e) else {
            panic!("a missing dataset file is the job's fault");
        };
        assert!(message.starts_with(&missing.display().to_string()), "{message}");
        assert!(message.contains("No such file or directory"), "{message}");
        assert_eq!(message.matches("No such file").count(), 1, "said once: {message}");
    }

    #[test]
    fn causes_are_joined_once() {
        let torch = ModelError::Torch(tch::TchError::Kind("bad kind".into()));
        assert_eq!(with_causes(&torch), "libtorch: tensor kind error: bad kind");
        assert_eq!(with_causes(&io("/data/x.json")), "/data/x.json: disk full");
    }
}
