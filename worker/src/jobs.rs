//! Running one job of each kind in the calling (blocking) thread: pretrain, train,
//! train-detector, evaluate and noop. Progress, checkpoints and logs go to the [`Reporter`];
//! a stop request ends training at a checkpoint, and detector training or an evaluation after
//! its current step or batch of layouts (they restart from the beginning on the next attempt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spatiallock_model::data::open::open_dataset;
use spatiallock_model::error::ModelError;
use spatiallock_model::eval::detector::{train_detector, Detector, DetectorTraining, ScriptedDetector};
use spatiallock_model::eval::run::{evaluate_model, EvalDetector};
use spatiallock_model::pipeline::{load_for_sampling, load_untrained};
use spatiallock_model::train::encoder_cache::CacheReport;
use spatiallock_model::train::run::{checkpoint_dir, latest_checkpoint, pretrain, train, Control, Outcome, RunOptions};
use spatiallock_model::train::trainer::StepMetrics;
use spatiallock_protocol::expand::{EvalSpec, NoopSpec};
use spatiallock_protocol::trial::{BaseWeights, DetectorConfig, NoopFailure};
use spatiallock_protocol::JobPayload;
use tch::Device;

use crate::report::{Reporter, StopReason};
use crate::roots::file_uri;

/// Why a job did not produce its output.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFailure {
    /// The job is wrong (bad config, bad data, NaN loss, a panic): spends an attempt.
    App(String),
    /// Something around the job failed: retried for free.
    Infra(String),
    /// It stopped on request, after checkpointing.
    Stopped(StopReason),
}

impl From<ModelError> for JobFailure {
    fn from(e: ModelError) -> Self {
        JobFailure::App(e.to_string())
    }
}

/// What a job gets to run with.
pub struct JobEnv<'a> {
    /// This attempt's folder (created).
    pub out: PathBuf,
    /// The attempt number.
    pub attempt: u64,
    /// A checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Output folders of the jobs this one depends on (plan job id → folder).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Device.
    pub device: Device,
    /// Progress and control.
    pub reporter: &'a Reporter,
    /// Root of the stores of frozen encoders' outputs shared between jobs.
    pub cache_dir: PathBuf,
}

impl JobEnv<'_> {
    fn input(&self, id: &str) -> Result<&PathBuf, JobFailure> {
        self.inputs
            .get(id)
            .ok_or_else(|| JobFailure::App(format!("the output of job `{id}` this job needs was not given")))
    }

    fn only_input(&self) -> Result<&PathBuf, JobFailure> {
        match self.inputs.values().collect::<Vec<_>>().as_slice() {
            [one] => Ok(one),
            other => Err(JobFailure::App(format!(
                "expected the output of one dependency (the pretrained base), got {}",
                other.len()
            ))),
        }
    }
}

/// Runs a job; returns its output folder.
pub fn execute(payload: &JobPayload, env: &JobEnv) -> Result<PathBuf, JobFailure> {
    std::fs::create_dir_all(&env.out)
        .map_err(|e| JobFailure::Infra(format!("cannot create {}: {e}", env.out.display())))?;
    match payload {
        JobPayload::Noop(n) => noop(n, env),
        JobPayload::Pretrain(p) => {
            let every = (p.pretrain.steps / 10).max(1);
            let outcome = pretrain(
                p,
                &options(env, every),
                &mut step_reporter(env, every, p.pretrain.batch_size),
            )?;
            finish(env, outcome)
        }
        JobPayload::Train(t) => {
            let base = match &t.base {
                BaseWeights::Path(p) => PathBuf::from(p),
                BaseWeights::Pretrain(_) => env.only_input()?.join("base"),
            };
            let every = t.training.checkpoint_every.max(1);
            let outcome = train(
                t,
                &base,
                &options(env, every),
                &mut step_reporter(env, every, t.training.batch_size),
            )?;
            finish(env, outcome)
        }
        JobPayload::TrainDetector(d) => {
            let data = open_dataset(&d.data, d.resolution)?;
            let run = DetectorTraining {
                resolution: i64::from(d.resolution),
                steps: d.steps,
                batch_size: d.batch_size as usize,
                lr: d.lr,
                seed: 0,
            };
            let reporter = env.reporter;
            let every = (d.steps / 20).max(1);
            let det = train_detector(data.as_ref(), run, env.device, &mut |step, loss| {
                if step % every == 0 || step == d.steps {
                    reporter.metric("loss", step, loss);
                    reporter.metric("step", step, step as f64);
                }
                stop_control(reporter)
            })
            .map_err(|e| stopped_or_failed(env, e))?;
            det.save(&env.out)?;
            env.reporter.log(format!("detector trained for {} steps", d.steps));
            Ok(env.out.clone())
        }
        JobPayload::Evaluate(e) => evaluate(e, env),
    }
}

/// `Stop` once the attempt has been asked to stop.
fn stop_control(reporter: &Reporter) -> Control {
    if reporter.stop_reason().is_some() {
        Control::Stop
    } else {
        Control::Continue
    }
}

/// A run that ended on a stop request is `Stopped` (not a failure); any other error is the job's.
fn stopped_or_failed(env: &JobEnv, e: ModelError) -> JobFailure {
    match e {
        ModelError::Stopped(at) => {
            let reason = env.reporter.stop_reason().unwrap_or(StopReason::Shutdown);
            env.reporter.log(format!("stopped {at} ({reason:?})"));
            JobFailure::Stopped(reason)
        }
        other => other.into(),
    }
}

fn options<'a>(env: &'a JobEnv, every: u64) -> RunOptions<'a> {
    RunOptions {
        out: &env.out,
        resume: env.resume.as_deref(),
        checkpoint_every: every,
        device: env.device,
        cache_dir: Some(&env.cache_dir),
    }
}

/// The per-step callback: metrics, commits of the checkpoint written after the previous
/// step, and stop requests.
fn step_reporter<'a>(env: &'a JobEnv, every: u64, batch: u32) -> impl FnMut(&StepMetrics) -> Control + 'a {
    let start = Instant::now();
    let mut first: Option<u64> = None;
    let mut last_log = Instant::now();
    if let Some(r) = &env.resume {
        env.reporter
            .log(format!("attempt {} resumes from {}", env.attempt, r.display()));
    }
    move |m: &StepMetrics| {
        let r = env.reporter;
        let first = *first.get_or_insert(m.step.saturating_sub(1));
        let ips = (m.step - first) as f64 * f64::from(batch) / start.elapsed().as_secs_f64().max(1e-9);
        r.metric("step", m.step, m.step as f64);
        r.metric("loss", m.step, m.loss);
        r.metric("loss_diffusion", m.step, m.loss_diffusion);
        if let Some(lp) = m.loss_perception {
            r.metric("loss_perception", m.step, lp);
            r.metric("lambda_g", m.step, m.lambda_g);
            r.metric("lambda_p", m.step, m.lambda_p);
        }
        if !m.gates.is_empty() {
            r.metric("gate_mean", m.step, m.gate_mean);
        }
        r.metric("lr", m.step, m.lr);
        r.metric("grad_norm", m.step, m.grad_norm);
        r.metric("images_per_second", m.step, ips);
        let previous = m.step.saturating_sub(1);
        if previous > 0 && previous.is_multiple_of(every) {
            let dir = checkpoint_dir(&env.out, previous);
            if dir.join("state.json").is_file() {
                r.checkpoint(previous, file_uri(&dir));
            }
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            r.log(format!("step {} loss {:.4} ({ips:.1} img/s)", m.step, m.loss));
            last_log = Instant::now();
        }
        stop_control(r)
    }
}

/// Commits the last checkpoint, then reports how the run ended.
fn finish(env: &JobEnv, outcome: Outcome) -> Result<PathBuf, JobFailure> {
    if let Some(report) = CacheReport::read(&env.out) {
        env.reporter.log(report.summary());
    }
    if let Some(dir) = latest_checkpoint(&env.out) {
        if let Some(step) = spatiallock_model::train::run::checkpoint_step(&dir) {
            env.reporter.checkpoint(step, file_uri(&dir));
        }
    }
    match outcome {
        Outcome::Finished => {
            env.reporter.log("finished");
            Ok(env.out.clone())
        }
        Outcome::Stopped(step) => {
            let reason = env.reporter.stop_reason().unwrap_or(StopReason::Shutdown);
            env.reporter
                .log(format!("stopped at step {step} ({reason:?}), checkpoint written"));
            Err(JobFailure::Stopped(reason))
        }
    }
}

fn noop(n: &NoopSpec, env: &JobEnv) -> Result<PathBuf, JobFailure> {
    let deadline = Instant::now() + Duration::from_millis(n.noop.sleep_ms);
    loop {
        if let Some(reason) = env.reporter.stop_reason() {
            return Err(JobFailure::Stopped(reason));
        }
        if !n.noop.hang && Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let fails_now = n.noop.fail_attempts == 0 || env.attempt <= u64::from(n.noop.fail_attempts);
    match n.noop.fail {
        Some(NoopFailure::App) if fails_now => Err(JobFailure::App(format!(
            "noop failed on purpose (attempt {})",
            env.attempt
        ))),
        Some(NoopFailure::Infra) if fails_now => Err(JobFailure::Infra(format!(
            "noop infra failure on purpose (attempt {})",
            env.attempt
        ))),
        _ => Ok(env.out.clone()),
    }
}

fn evaluate(e: &EvalSpec, env: &JobEnv) -> Result<PathBuf, JobFailure> {
    let device = env.device;
    let model = match e.model_job.as_deref() {
        Some(id) if id.starts_with("train-") => {
            let dir = env.input(id)?;
            let marker = dir.join("final");
            let ckpt = std::fs::read_to_string(&marker).map_err(|err| {
                JobFailure::App(format!("{}: {err} (the training job did not finish)", marker.display()))
            })?;
            load_for_sampling(Path::new(ckpt.trim()), device)?.0
        }
        Some(id) => load_untrained(&e.model, &env.input(id)?.join("base"), device)?,
        None => match &e.model.base {
            BaseWeights::Path(p) => load_untrained(&e.model, Path::new(p), device)?,
            BaseWeights::Pretrain(_) => return Err(JobFailure::App("no model to evaluate".into())),
        },
    };
    let detector = match (&e.detector_job, &e.eval.detector) {
        (Some(id), _) => EvalDetector::Builtin(Box::new(Detector::load(env.input(id)?, device)?)),
        (None, DetectorConfig::Torchscript { path }) => {
            EvalDetector::Scripted(ScriptedDetector::load(Path::new(path), device)?)
        }
        (None, DetectorConfig::Builtin { .. }) => {
            return Err(JobFailure::App("no detector for this evaluation".into()))
        }
    };
    let val = open_dataset(&e.val, e.model.resolution)?;
    let reporter = env.reporter;
    let results = evaluate_model(
        &model,
        i64::from(e.model.resolution),
        val.as_ref(),
        &e.eval,
        &detector,
        &env.out,
        &mut |done, n| {
            reporter.metric("layouts_done", 0, done as f64);
            reporter.metric("layouts_total", 0, n as f64);
            stop_control(reporter)
        },
    )
    .map_err(|e| stopped_or_failed(env, e))?;
    for (name, value) in [
        ("map", Some(results.map)),
        ("ap50", Some(results.ap50)),
        ("ap75", Some(results.ap75)),
        ("fid", results.fid),
        ("fd_detector", results.fd_detector),
        ("inference_s", Some(results.inference_s)),
    ] {
        if let Some(v) = value {
            reporter.metric(name, 0, v);
        }
    }
    let path = env.out.join("results.json");
    let text = serde_json::to_string_pretty(&results).unwrap_or_default();
    std::fs::write(&path, text).map_err(|err| JobFailure::Infra(format!("{}: {err}", path.display())))?;
    reporter.log(format!(
        "mAP {:.2} AP50 {:.2} AP75 {:.2}; samples at {}",
        results.map,
        results.ap50,
        results.ap75,
        env.out.join("samples.png").display()
    ));
    Ok(env.out.clone())
}
