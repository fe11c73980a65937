//! The worker's side of the one job executor ([`spatiallock_model::executor`]): its hooks
//! forward metrics, committed checkpoints and log lines to the attempt's [`Reporter`] and answer
//! its stop flag; a job's errors become the worker's failure classes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spatiallock_model::executor::{self, JobContext, JobError};
use spatiallock_model::hooks::{report_step, Hooks, StepMetrics};
use spatiallock_protocol::api::GangAssignment;
use spatiallock_protocol::JobPayload;
use tch::Device;

use crate::ranks::{execute_ranks, rank_devices, Placement, RankLaunch};
use crate::report::{Reporter, StepTiming, StopReason};
use crate::roots::file_uri;

/// Why a job did not produce its output.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFailure {
    /// The job is wrong (bad config, bad data, NaN loss, a panic): spends an attempt.
    App(String),
    /// Something around the job failed: retried for free.
    Infra(String),
    /// It stopped on request (training after checkpointing).
    Stopped(StopReason),
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
    /// The devices this attempt was given (a multi-rank training job runs one rank on each of
    /// the first `world_size`; other jobs run on `device`, the first).
    pub devices: Vec<String>,
    /// How rank processes start.
    pub launch: RankLaunch,
    /// This worker's part of a gang (its ranks run on `devices`); `None` runs the job here alone.
    pub gang: Option<GangAssignment>,
}

/// Hooks reporting to the attempt's supervisor.
struct ReporterHooks<'a> {
    reporter: &'a Reporter,
    last_log: Instant,
}

impl Hooks for ReporterHooks<'_> {
    fn metric(&mut self, name: &str, step: u64, value: f64) {
        self.reporter.metric(name, step, value);
    }

    fn train_step(&mut self, m: &StepMetrics) {
        report_step(self, m);
        if self.last_log.elapsed() > Duration::from_secs(10) {
            self.reporter.log(format!(
                "step {} loss {:.4} ({:.1} img/s)",
                m.step, m.loss, m.images_per_second
            ));
            self.last_log = Instant::now();
        }
    }

    fn rank_step(&mut self, rank: usize, m: &StepMetrics) {
        self.reporter.step_timing(StepTiming::of(rank, m));
    }

    fn checkpoint_committed(&mut self, step: u64, dir: &Path) {
        self.reporter.checkpoint(step, file_uri(dir));
    }

    fn log(&mut self, line: &str) {
        self.reporter.log(line);
    }

    fn should_stop(&mut self) -> bool {
        self.reporter.stop_reason().is_some()
    }
}

/// Runs a job through the executor (a multi-rank training job as one process per rank);
/// returns its output folder.
pub fn execute(payload: &JobPayload, env: &JobEnv) -> Result<PathBuf, JobFailure> {
    if let Some(gang) = &env.gang {
        let devices = env.devices.get(..gang.ranks as usize).ok_or_else(|| {
            JobFailure::Infra(format!(
                "the gang gave this worker {} ranks; it holds {} devices",
                gang.ranks,
                env.devices.len()
            ))
        })?;
        let place = Placement {
            master_addr: gang.master_addr.clone(),
            master_port: gang.master_port,
            world_size: gang.world_size as usize,
            first_rank: gang.first_rank as usize,
        };
        return execute_ranks(payload, env, devices, &place, &env.launch);
    }
    if let Some(devices) = rank_devices(payload, &env.devices).map_err(JobFailure::Infra)? {
        let place = Placement::local(devices.len())
            .map_err(|e| JobFailure::Infra(format!("no free port for the rendezvous: {e}")))?;
        return execute_ranks(payload, env, &devices, &place, &env.launch);
    }
    let ctx = JobContext {
        out: env.out.clone(),
        attempt: env.attempt,
        resume: env.resume.clone(),
        inputs: env.inputs.clone(),
        device: env.device,
        cache_dir: Some(env.cache_dir.clone()),
        data_parallel: None,
    };
    let mut hooks = ReporterHooks {
        reporter: env.reporter,
        last_log: Instant::now(),
    };
    executor::execute(payload, &ctx, &mut hooks).map_err(|e| match e {
        JobError::App(m) => JobFailure::App(m),
        JobError::Infra(m) => JobFailure::Infra(m),
        JobError::Stopped(at) => {
            let reason = env.reporter.stop_reason().unwrap_or(StopReason::Shutdown);
            env.reporter.log(format!("stopped {at} ({reason:?})"));
            JobFailure::Stopped(reason)
        }
    })
}
