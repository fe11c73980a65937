//! The worker loop: register, long-poll for leases, run each attempt, repeat until shut down.

use std::time::Duration;

use spatiallock_protocol::api::{GangOffer, RegisterWorker};
use tokio::sync::watch;

use crate::attempt::{run_attempt, AttemptEnd};
use crate::client::{ClientError, CoordinatorClient};
use crate::ranks::{free_port, RankLaunch};
use crate::roots::Roots;
use spatiallock_model::runtime::parse_device;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator base URL.
    pub coordinator: String,
    /// Worker (or admin) token.
    pub token: Option<String>,
    /// A name for logs and the API (host name).
    pub name: String,
    /// Devices (`cpu`, `cuda:0`, …; `cpu` may repeat, one CPU slot each). Jobs run side by
    /// side, each on devices of its own: a single-rank job on one, a training job of world size
    /// N as N rank processes on N.
    pub devices: Vec<String>,
    /// How rank processes of multi-rank jobs start.
    pub launch: RankLaunch,
    /// Join gangs (training jobs with more ranks than one worker has devices) as a member
    /// reachable at this host name or address; `None` runs only jobs that fit this worker.
    pub gang_address: Option<String>,
    /// Artifact and dataset roots.
    pub roots: Roots,
    /// Longest single lease long-poll.
    pub lease_wait: Duration,
    /// Stop after this many attempts (tests); `None` runs until shut down.
    pub max_attempts: Option<usize>,
}

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// The coordinator refused or could not be reached for good.
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// Runs until `shutdown` turns true (finishing or checkpointing the current job first).
pub async fn run_worker(
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Vec<AttemptEnd>, WorkerError> {
    if config.devices.is_empty() {
        return Err(WorkerError::Config("--devices must name at least one device".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &config.devices {
        let device = parse_device(name).map_err(WorkerError::Config)?;
        match device {
            tch::Device::Cpu => {}
            tch::Device::Cuda(i) if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize => {
                return Err(WorkerError::Config(format!(
                    "device {name} requested but this machine has {} CUDA device(s)",
                    if tch::Cuda::is_available() {
                        tch::Cuda::device_count()
                    } else {
                        0
                    }
                )))
            }
            other if !seen.insert(other) => return Err(WorkerError::Config(format!("--devices names {name} twice"))),
            _ => {}
        }
    }
    let device = parse_device(&config.devices[0]).map_err(WorkerError::Config)?;
    std::fs::create_dir_all(&config.roots.artifacts).map_err(|e| {
        WorkerError::Config(format!(
            "cannot create the artifact root {}: {e}",
            config.roots.artifacts.display()
        ))
    })?;
    let client = CoordinatorClient::new(&config.coordinator, config.token.clone());
    let registration = RegisterWorker {
        name: config.name.clone(),
        devices: config.devices.clone(),
        labels: Default::default(),
    };
    // The coordinator may still be starting: retry transport errors for a while.
    let mut tries = 0;
    let me = loop {
        match client.register(&registration).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() && tries < 30 => {
                tries += 1;
                tracing::warn!("registering: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(worker = %me.worker_id, coordinator = %config.coordinator, ?device, "worker registered");
    let client = client.with_worker_key(&me.worker_key);
    // Free devices; each running attempt holds the ones it was given until it ends.
    let mut free: Vec<String> = config.devices.clone();
    let mut running: tokio::task::JoinSet<(AttemptEnd, Vec<String>)> = tokio::task::JoinSet::new();
    let mut ends = Vec::new();
    let finished = |done: Result<(AttemptEnd, Vec<String>), tokio::task::JoinError>,
                    free: &mut Vec<String>,
                    ends: &mut Vec<AttemptEnd>| {
        match done {
            Ok((end, devices)) => {
                tracing::info!(?end, "attempt ended");
                free.extend(devices);
                ends.push(end);
            }
            Err(e) => tracing::error!("an attempt task failed: {e}"),
        }
    };
    // Current pause between lease retries while the coordinator is unreachable.
    let mut pause = Duration::ZERO;
    while !*shutdown.borrow() {
        while let Some(done) = running.try_join_next() {
            finished(done, &mut free, &mut ends);
        }
        if config.max_attempts.is_some_and(|m| ends.len() + running.len() >= m) || free.is_empty() {
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = running.join_next() => finished(done, &mut free, &mut ends),
                _ = shutdown.wait_for(|s| *s) => break,
            }
            continue;
        }
        // A free port where this worker's rank 0 would serve a gang's rendezvous store.
        let offer = match (&config.gang_address, free_port()) {
            (Some(address), Ok(port)) => Some(GangOffer {
                address: address.clone(),
                port,
            }),
            _ => None,
        };
        let lease = tokio::select! {
            l = client.lease(&me.worker_id, config.lease_wait, free.len() as u32, offer) => l,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match lease {
            Ok(Some(lease)) => {
                pause = Duration::ZERO;
                let ranks = lease.gang.as_ref().map_or(lease.payload.ranks(), |g| g.ranks);
                let n = (ranks as usize).clamp(1, free.len());
                let devices: Vec<String> = free.drain(..n).collect();
                tracing::info!(job = %lease.job_id, attempt = lease.attempt, ?devices, "leased");
                let (client, roots, launch, stop, me) = (
                    client.clone(),
                    config.roots.clone(),
                    config.launch.clone(),
                    shutdown.clone(),
                    me.worker_id.clone(),
                );
                running.spawn(async move {
                    let end = run_attempt(&client, &me, &roots, &devices, &launch, lease, stop).await;
                    (end, devices)
                });
            }
            Ok(None) => pause = Duration::ZERO,
            // The coordinator (or its database) is away for a while: wait for it, backing off.
            Err(e) if e.is_transient() => {
                pause = (pause * 2).clamp(Duration::from_millis(250), Duration::from_secs(5));
                tracing::warn!("lease: {e}; retrying in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            Err(e) => {
                // Running attempts end (checkpointing) before the error is returned.
                while let Some(done) = running.join_next().await {
                    finished(done, &mut free, &mut ends);
                }
                return Err(e.into());
            }
        }
    }
    // Shutdown (or the attempt limit): running attempts stop at a checkpoint and report.
    while let Some(done) = running.join_next().await {
        finished(done, &mut free, &mut ends);
    }
    Ok(ends)
}
