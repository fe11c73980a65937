//! One rank of a data-parallel training job, as its own process (`spatiallock rank --job FILE`).
//! It finds its group in the torchrun variables, runs the job through the one executor and, when
//! a worker supervises it, talks to that worker over its standard streams: JSON lines out
//! ([`RankEvent`]; rank 0 alone reports metrics and checkpoints), `stop` lines in (end of input
//! also means stop: the worker is gone). Run by a launcher instead (torchrun, `srun`, a
//! Kubernetes indexed job), it writes the same lines and stops on SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spatiallock_model::dist::{DataParallel, RankEnv, DEFAULT_BUCKET_BYTES};
use spatiallock_model::executor::{self, JobContext, JobError};
use spatiallock_model::hooks::{Hooks, StepMetrics};
use spatiallock_model::runtime::parse_device;
use spatiallock_protocol::JobPayload;

use crate::report::StepTiming;

/// Set by a supervising worker: the rank reads `stop` lines on its standard input.
pub const SUPERVISED_VAR: &str = "SPATIALLOCK_RANK_SUPERVISED";

/// A training job as every rank of its group runs it (the worker writes it as
/// `rank-job-<first rank>.json` in the attempt's folder; a launcher can run the same file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankJob {
    /// The job (a `train` payload).
    pub payload: JobPayload,
    /// Output folder (rank 0 writes checkpoints and the final marker there).
    pub out: PathBuf,
    /// Attempt number (1-based).
    #[serde(default = "one")]
    pub attempt: u64,
    /// Checkpoint to resume from.
    #[serde(default)]
    pub resume: Option<PathBuf>,
    /// Output folders of the jobs this one depends on (plan job id → folder).
    #[serde(default)]
    pub inputs: BTreeMap<String, PathBuf>,
    /// Device of each local rank (`LOCAL_RANK` indexes it); one entry serves every local rank.
    pub devices: Vec<String>,
    /// Root of the encoder stores shared between jobs.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How long the rendezvous and any collective wait for the other ranks, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Gradient bucket size in MiB (DDP's default 25).
    #[serde(default = "default_bucket_mib")]
    pub bucket_mib: f64,
}

fn one() -> u64 {
    1
}

fn default_timeout_s() -> f64 {
    300.0
}

fn default_bucket_mib() -> f64 {
    (DEFAULT_BUCKET_BYTES >> 20) as f64
}

/// A line a rank writes on its standard output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankEvent {
    /// A metric point (rank 0).
    Metric {
        /// Name.
        name: String,
        /// Training step.
        step: u64,
        /// Value.
        value: f64,
    },
    /// A checkpoint is completely written (rank 0).
    Checkpoint {
        /// The step it holds.
        step: u64,
        /// Its folder.
        dir: PathBuf,
    },
    /// A log line.
    Log(String),
    /// This rank's timing of a training step (every rank).
    StepTiming(StepTiming),
    /// The rank's last line: how it ended.
    End(RankEnd),
}

/// How a rank ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankEnd {
    /// The job finished; its output folder.
    Succeeded(PathBuf),
    /// The job is wrong (spends an attempt).
    App(String),
    /// Something around the job failed (another rank gone, a disk): retried free.
    Infra(String),
    /// Stopped on request after the checkpoint; where.
    Stopped(String),
}

fn emit(event: &RankEvent) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        // A closed pipe means the supervisor is gone; the stop flag ends the run.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

struct StreamHooks {
    lead: bool,
    rank: usize,
    stop: Arc<AtomicBool>,
}

impl Hooks for StreamHooks {
    fn metric(&mut self, name: &str, step: u64, value: f64) {
        if self.lead && value.is_finite() {
            emit(&RankEvent::Metric {
                name: name.into(),
                step,
                value,
            });
        }
    }

    fn rank_step(&mut self, rank: usize, m: &StepMetrics) {
        emit(&RankEvent::StepTiming(StepTiming::of(rank, m)));
    }

    fn checkpoint_committed(&mut self, step: u64, dir: &Path) {
        if self.lead {
            emit(&RankEvent::Checkpoint {
                step,
                dir: dir.to_path_buf(),
            });
        }
    }

    fn log(&mut self, line: &str) {
        emit(&RankEvent::Log(format!("rank {}: {line}", self.rank)));
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Turns `stop` on when the supervisor says so (a `stop` line, or the end of input), or, with
/// no supervisor, on SIGTERM.
fn watch_for_stop(stop: Arc<AtomicBool>) {
    if std::env::var_os(SUPERVISED_VAR).is_some() {
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) if l.trim() == "stop" => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    } else {
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    term.recv().await;
                    stop.store(true, Ordering::SeqCst);
                }
            });
        });
    }
}

/// Runs one rank of the job in `job_file`; returns how it ended (also written as the last
/// [`RankEvent`]).
///
/// Errors: the file or the torchrun variables are wrong (nothing ran).
pub fn run_rank(job_file: &Path) -> Result<RankEnd, String> {
    let text = std::fs::read_to_string(job_file).map_err(|e| format!("{}: {e}", job_file.display()))?;
    let job: RankJob = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", job_file.display()))?;
    let env = RankEnv::from_process()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "WORLD_SIZE is not set: a rank process needs the torchrun variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK)".to_string())?;
    let device = match job.devices.as_slice() {
        [] => return Err(format!("{}: `devices` is empty", job_file.display())),
        [one] => one,
        many => many.get(env.local_rank).ok_or_else(|| {
            format!(
                "{}: LOCAL_RANK {} but only {} devices listed",
                job_file.display(),
                env.local_rank,
                many.len()
            )
        })?,
    };
    let device = parse_device(device)?;
    if !(job.timeout_s.is_finite() && job.timeout_s > 0.0) {
        return Err(format!(
            "{}: timeout_s must be a positive number of seconds",
            job_file.display()
        ));
    }
    if !(job.bucket_mib.is_finite() && job.bucket_mib > 0.0) {
        return Err(format!(
            "{}: bucket_mib must be a positive number of MiB",
            job_file.display()
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_for_stop(stop.clone());
    let ctx = JobContext {
        out: job.out.clone(),
        attempt: job.attempt,
        resume: job.resume.clone(),
        inputs: job.inputs.clone(),
        device,
        cache_dir: job.cache_dir.clone(),
        data_parallel: Some(DataParallel {
            env: env.clone(),
            timeout: Duration::from_secs_f64(job.timeout_s),
            bucket_bytes: (job.bucket_mib * (1u64 << 20) as f64) as usize,
        }),
    };
    let mut hooks = StreamHooks {
        lead: env.rank == 0,
        rank: env.rank,
        stop,
    };
    let end = match executor::execute(&job.payload, &ctx, &mut hooks) {
        Ok(out) => RankEnd::Succeeded(out),
        Err(JobError::App(m)) => RankEnd::App(m),
        Err(JobError::Infra(m)) => RankEnd::Infra(m),
        Err(JobError::Stopped(at)) => RankEnd::Stopped(at),
    };
    emit(&RankEvent::End(end.clone()));
    Ok(end)
}
