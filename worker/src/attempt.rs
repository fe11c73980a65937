//! Supervising one leased attempt: the job runs on a blocking thread while async tasks keep
//! the lease alive (heartbeats), forward metrics, checkpoints and logs in batches, and turn a
//! cancel, a lost lease or a shutdown into a stop request. The attempt always ends with a
//! report — complete, or fail with its class — unless the lease is already gone.
//!
//! Every write (complete, fail, metrics, checkpoint commits, logs) is retried while the
//! coordinator is briefly away, until the lease would run out (see `LeaseClock`): an attempt
//! that finishes while the coordinator restarts is still reported, not rerun.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spatiallock_protocol::api::{
    CheckpointCommit, CompleteRequest, FailRequest, FailureClass, Lease, LogBatch, MetricPoint, MetricsBatch,
};
use tch::Device;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::watch;

use crate::client::CoordinatorClient;
use crate::jobs::{execute, JobEnv, JobFailure};
use crate::ranks::RankLaunch;
use crate::report::{Event, Reporter, StopFlag, StopReason};
use crate::roots::{file_uri, Roots};
use crate::telemetry::WorkerTelemetry;

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    /// Completed and reported.
    Succeeded,
    /// Reported as failed.
    Failed(FailureClass, String),
    /// Cancelled by the user; reported.
    Cancelled,
    /// The lease was lost; nothing reported.
    LeaseLost,
    /// Stopped for a worker shutdown; reported as an infra failure.
    Shutdown,
    /// A gang member's ranks ended without an error of their own (a stop, or another member
    /// failing): rank 0's worker reports the attempt.
    GangMemberEnded(String),
}

/// When the lease runs out unless renewed, as this worker can tell: its TTL from when the
/// attempt started (a little after the coordinator granted it), then from when the last
/// accepted heartbeat was sent. It may end slightly after the coordinator's lease; the
/// coordinator's fencing refuses any write that comes too late. The attempt's writes are retried until then; after it, another worker may hold
/// the job and the coordinator's fencing refuses them anyway.
#[derive(Debug, Clone)]
struct LeaseClock(Arc<Mutex<Instant>>);

impl LeaseClock {
    /// A lease granted now for `ttl`.
    fn new(ttl: Duration) -> LeaseClock {
        LeaseClock(Arc::new(Mutex::new(Instant::now() + ttl)))
    }

    /// A heartbeat sent at `sent` was accepted: the lease now lasts `ttl` from then.
    fn renewed(&self, sent: Instant, ttl: Duration) {
        let mut end = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *end = (*end).max(sent + ttl);
    }

    /// When the lease would run out.
    fn deadline(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn heartbeats(
    client: CoordinatorClient,
    job: String,
    attempt: u64,
    ttl: Duration,
    stop: StopFlag,
    member: Option<String>,
    clock: LeaseClock,
) {
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let give_up = ttl - ttl / 4;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match client.job_heartbeat(&job, attempt, member.as_deref()).await {
            Ok(answer) => {
                last_ok = Instant::now();
                let granted = if answer.lease_ttl_ms > 0 {
                    Duration::from_millis(answer.lease_ttl_ms)
                } else {
                    ttl
                };
                clock.renewed(sent, granted);
                if answer.cancel {
                    stop.set(StopReason::Cancel);
                }
            }
            Err(e) if e.is_stale() => {
                tracing::warn!(%job, attempt, "lease lost: {e}");
                stop.set(StopReason::LeaseLost);
                return;
            }
            Err(e) => {
                tracing::warn!(%job, attempt, "heartbeat failed: {e}");
                if last_ok.elapsed() >= give_up {
                    // Another worker may get the job after the TTL: stop before that.
                    stop.set(StopReason::LeaseLost);
                    return;
                }
            }
        }
    }
}

/// Forwards the job's events until the job drops its reporter; each write is retried until
/// the lease would run out. Metric points also update the worker's per-job gauges.
async fn forward(
    client: CoordinatorClient,
    job: String,
    attempt: u64,
    mut events: UnboundedReceiver<Event>,
    stop: StopFlag,
    clock: LeaseClock,
    telemetry: Arc<WorkerTelemetry>,
) {
    let mut metrics: BTreeMap<String, Vec<MetricPoint>> = BTreeMap::new();
    let mut lines: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let flush = |metrics: &mut BTreeMap<String, Vec<MetricPoint>>, lines: &mut Vec<String>| {
        let batch = MetricsBatch {
            attempt,
            metrics: std::mem::take(metrics),
        };
        let logs = LogBatch {
            attempt,
            lines: std::mem::take(lines),
        };
        let (client, job, stop, clock) = (client.clone(), job.clone(), stop.clone(), clock.clone());
        async move {
            let (c, j, b, l) = (&client, job.as_str(), &batch, &logs);
            for result in [
                if batch.metrics.is_empty() {
                    Ok(())
                } else {
                    client
                        .retrying(clock.deadline(), &format!("{job}: metrics"), move || c.metrics(j, b))
                        .await
                },
                if logs.lines.is_empty() {
                    Ok(())
                } else {
                    client
                        .retrying(clock.deadline(), &format!("{job}: logs"), move || c.logs(j, l))
                        .await
                },
            ] {
                if let Err(e) = result {
                    if e.is_stale() {
                        stop.set(StopReason::LeaseLost);
                    } else {
                        tracing::warn!(%job, "report dropped: {e}");
                    }
                }
            }
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Metric { name, step, value }) => {
                    telemetry.observe(&job, &name, value);
                    metrics.entry(name).or_default().push(MetricPoint { step, value });
                }
                // The worker's own metrics only: the coordinator gets rank 0's step metrics.
                Some(Event::StepTiming(timing)) => telemetry.step_timing(&timing),
                // NUL cannot be stored (the coordinator refuses it): shown as U+FFFD instead.
                Some(Event::Log(line)) => lines.push(line.replace('\0', "\u{fffd}")),
                Some(Event::Checkpoint { step, uri }) => {
                    // Metrics up to the checkpoint go first, so a resume never loses them.
                    flush(&mut metrics, &mut lines).await;
                    let commit = CheckpointCommit { attempt, step, uri };
                    let (c, j, b) = (&client, job.as_str(), &commit);
                    let what = format!("{job}: checkpoint commit (step {step})");
                    if let Err(e) = client.retrying(clock.deadline(), &what, move || c.checkpoint(j, b)).await {
                        if e.is_stale() {
                            stop.set(StopReason::LeaseLost);
                        } else {
                            tracing::warn!(%job, step, "checkpoint commit failed: {e}");
                        }
                    }
                }
                None => {
                    flush(&mut metrics, &mut lines).await;
                    return;
                }
            },
            _ = tick.tick() => flush(&mut metrics, &mut lines).await,
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs one leased attempt to its end and reports it. The job's metric points also update
/// `telemetry`'s per-job gauges, which are removed once the job's events are all forwarded.
#[allow(clippy::too_many_arguments)]
pub async fn run_attempt(
    client: &CoordinatorClient,
    worker: &str,
    roots: &Roots,
    devices: &[String],
    launch: &RankLaunch,
    lease: Lease,
    mut shutdown: watch::Receiver<bool>,
    telemetry: Arc<WorkerTelemetry>,
) -> AttemptEnd {
    let job = lease.job_id.clone();
    let attempt = lease.attempt;
    let stop = StopFlag::default();
    let device = devices
        .first()
        .and_then(|d| spatiallock_model::runtime::parse_device(d).ok())
        .unwrap_or(Device::Cpu);
    let (devices, launch) = (devices.to_vec(), launch.clone());
    let ttl = Duration::from_millis(lease.lease_ttl_ms.max(400));
    let clock = LeaseClock::new(ttl);
    let fail = |class: FailureClass, message: String| {
        let client = client.clone();
        let job = job.clone();
        let clock = clock.clone();
        async move {
            let body = FailRequest {
                attempt,
                class,
                // NUL cannot be stored (the coordinator refuses it): shown as U+FFFD instead.
                message: message.replace('\0', "\u{fffd}"),
            };
            let (c, j, b) = (&client, job.as_str(), &body);
            match client
                .retrying(clock.deadline(), &format!("{job}: fail"), move || c.fail(j, b))
                .await
            {
                Ok(()) => AttemptEnd::Failed(class, message),
                Err(e) if e.is_stale() => AttemptEnd::LeaseLost,
                Err(e) => {
                    tracing::error!(%job, "cannot report the failure: {e}");
                    AttemptEnd::Failed(class, message)
                }
            }
        }
    };

    // Paths first: a job that reads or writes outside the roots is the job's fault.
    type Prepared = (Option<PathBuf>, BTreeMap<String, PathBuf>, PathBuf, PathBuf);
    let prepared = (|| -> Result<Prepared, String> {
        roots.check_payload(&lease.payload)?;
        let out = roots.output_path(&roots.attempt_dir(&job, attempt))?;
        let cache_dir = roots.output_path(&roots.encoder_cache())?;
        let resume = lease
            .checkpoint
            .as_ref()
            .map(|c| roots.artifact_path(&c.uri))
            .transpose()?;
        let inputs = lease
            .inputs
            .iter()
            .map(|(k, uri)| Ok((k.clone(), roots.artifact_path(uri)?)))
            .collect::<Result<_, String>>()?;
        Ok((resume, inputs, out, cache_dir))
    })();
    let (resume, inputs, out, cache_dir) = match prepared {
        Ok(p) => p,
        Err(message) => return fail(FailureClass::App, message).await,
    };

    let (tx, rx) = unbounded_channel();
    let reporter = Reporter::new(tx, stop.clone());
    let gang = lease.gang.clone();
    // A gang member other than rank 0's: rank 0's worker reports completion.
    let member_only = gang.as_ref().is_some_and(|g| g.first_rank > 0);
    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        job.clone(),
        attempt,
        ttl,
        stop.clone(),
        gang.as_ref().map(|_| worker.to_string()),
        clock.clone(),
    ));
    let forwarder = tokio::spawn(forward(
        client.clone(),
        job.clone(),
        attempt,
        rx,
        stop.clone(),
        clock.clone(),
        telemetry.clone(),
    ));
    let stop_on_shutdown = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|s| *s).await.is_ok() {
                stop.set(StopReason::Shutdown);
            }
        })
    };
    let payload = lease.payload.clone();
    tracing::info!(%job, attempt, out = %out.display(), "running");
    let result = tokio::task::spawn_blocking(move || {
        reporter.log(format!("attempt {attempt} on {device:?}, output {}", out.display()));
        let env = JobEnv {
            out,
            attempt,
            resume,
            inputs,
            device,
            reporter: &reporter,
            cache_dir,
            devices,
            launch,
            gang,
        };
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| execute(&payload, &env)));
        if let Ok(Err(JobFailure::App(m) | JobFailure::Infra(m))) = &r {
            reporter.log(format!("failed: {m}"));
        }
        r
    })
    .await;
    let _ = forwarder.await; // the reporter is gone: everything is flushed
    telemetry.job_ended(&job);
    heartbeat.abort();
    stop_on_shutdown.abort();

    match result {
        Ok(Ok(Ok(_))) if member_only => AttemptEnd::Succeeded,
        // Only a member's own application error is its to report; a stop or a broken group is
        // reported once, by rank 0's worker, after its checkpoint.
        Ok(Ok(Err(JobFailure::Infra(m)))) if member_only => AttemptEnd::GangMemberEnded(m),
        Ok(Ok(Err(JobFailure::Stopped(reason)))) if member_only => {
            AttemptEnd::GangMemberEnded(format!("stopped ({reason:?})"))
        }
        Ok(Ok(Ok(output))) => {
            let body = CompleteRequest {
                attempt,
                output: Some(file_uri(&output)),
            };
            let (c, j, b) = (client, job.as_str(), &body);
            // The heartbeats have stopped: the lease lasts until the last one's TTL runs out.
            match client
                .retrying(clock.deadline(), &format!("{job}: complete"), move || c.complete(j, b))
                .await
            {
                Ok(()) => AttemptEnd::Succeeded,
                Err(e) if e.is_stale() => AttemptEnd::LeaseLost,
                Err(e) => {
                    tracing::error!(%job, "cannot report completion: {e}");
                    AttemptEnd::Failed(FailureClass::Infra, e.to_string())
                }
            }
        }
        Ok(Ok(Err(JobFailure::App(m)))) => fail(FailureClass::App, m).await,
        Ok(Ok(Err(JobFailure::Infra(m)))) => fail(FailureClass::Infra, m).await,
        Ok(Ok(Err(JobFailure::Stopped(StopReason::Cancel)))) => {
            match fail(FailureClass::Infra, "cancelled by the user".into()).await {
                AttemptEnd::LeaseLost => AttemptEnd::LeaseLost,
                _ => AttemptEnd::Cancelled,
            }
        }
        Ok(Ok(Err(JobFailure::Stopped(StopReason::LeaseLost)))) => AttemptEnd::LeaseLost,
        Ok(Ok(Err(JobFailure::Stopped(StopReason::Shutdown)))) => {
            match fail(
                FailureClass::Infra,
                "the worker shut down (training jobs wrote a checkpoint; detector and evaluation jobs start again)"
                    .into(),
            )
            .await
            {
                AttemptEnd::LeaseLost => AttemptEnd::LeaseLost,
                _ => AttemptEnd::Shutdown,
            }
        }
        Ok(Err(panic)) => fail(FailureClass::App, format!("panic: {}", panic_message(panic))).await,
        Err(join) => fail(FailureClass::App, format!("the job thread failed: {join}")).await,
    }
}
