//! The worker loop: register, long-poll for leases, run each attempt, repeat until shut down.

use std::time::Duration;

use spatiallock_protocol::api::RegisterWorker;
use tokio::sync::watch;

use crate::attempt::{run_attempt, AttemptEnd};
use crate::client::{ClientError, CoordinatorClient};
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
    /// Devices (`cpu`, `cuda:0`, …); jobs run on the first one (one job at a time).
    pub devices: Vec<String>,
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
    let first = match config.devices.as_slice() {
        [] => return Err(WorkerError::Config("--devices must name at least one device".into())),
        [one] => one,
        several => {
            return Err(WorkerError::Config(format!(
                "--devices {}: a worker uses one device until data-parallel training is built; \
                 start one worker per device",
                several.join(",")
            )))
        }
    };
    let device = parse_device(first).map_err(WorkerError::Config)?;
    if device != tch::Device::Cpu && !tch::Cuda::is_available() {
        return Err(WorkerError::Config(format!(
            "device {first} requested but CUDA is not available"
        )));
    }
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
            Err(e @ ClientError::Transport { .. }) if tries < 30 => {
                tries += 1;
                tracing::warn!("registering: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(worker = %me.worker_id, coordinator = %config.coordinator, ?device, "worker registered");
    let mut ends = Vec::new();
    while !*shutdown.borrow() {
        if config.max_attempts.is_some_and(|m| ends.len() >= m) {
            break;
        }
        let lease = tokio::select! {
            l = client.lease(&me.worker_id, config.lease_wait) => l,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match lease {
            Ok(Some(lease)) => {
                let end = run_attempt(&client, &config.roots, device, lease, shutdown.clone()).await;
                tracing::info!(?end, "attempt ended");
                ends.push(end);
            }
            Ok(None) => {}
            Err(e @ ClientError::Transport { .. }) => {
                tracing::warn!("lease: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ends)
}
