//! The worker loop: register, long-poll for leases, run each attempt, repeat until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spatiallock_protocol::api::{check_host_port, GangOffer, RegisterWorker};
use tokio::sync::watch;

use crate::attempt::{run_attempt, AttemptEnd};
use crate::client::{ClientError, CoordinatorClient};
use crate::ranks::{free_port, RankLaunch};
use crate::roots::Roots;
use crate::telemetry::{serve_metrics, WorkerTelemetry};
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
    /// Where the worker serves its Prometheus metrics (`http://ADDR/metrics`) while it runs;
    /// `None` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// `HOST:PORT` at which Prometheus reaches those metrics, sent with the registration so that
    /// the coordinator's `GET /v1/prometheus/targets` lists this worker (port 0 stands for the
    /// port [`WorkerConfig::metrics_listen`] was bound to). `None`, or no `metrics_listen`:
    /// not advertised.
    pub metrics_address: Option<String>,
}

/// Stops the metrics server when the worker returns, whichever way.
struct StopServer(Option<tokio::task::JoinHandle<()>>);

impl Drop for StopServer {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            server.abort();
        }
    }
}

/// The address advertised for the metrics endpoint: `address` with a port of 0 replaced by
/// `bound` (the port the server got).
///
/// Errors: [`WorkerError::Config`] for an address that is not `HOST:PORT`.
fn advertised_address(address: &str, bound: u16) -> Result<String, WorkerError> {
    let address = match address.strip_suffix(":0") {
        Some(host) => format!("{host}:{bound}"),
        None => address.to_string(),
    };
    check_host_port(&address).map_err(|e| WorkerError::Config(format!("--metrics-address: {e}")))?;
    Ok(address)
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

/// Runs until `shutdown` turns true (finishing or checkpointing the current job first). With
/// [`WorkerConfig::metrics_listen`] set, serves `/metrics` from before registering until it
/// returns (or until `shutdown` turns true).
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
    let telemetry =
        WorkerTelemetry::new().map_err(|e| WorkerError::Config(format!("cannot set up worker metrics: {e}")))?;
    let telemetry = Arc::new(telemetry);
    // Served before registering, so Prometheus sees the worker while the coordinator starts.
    let (_metrics_server, metrics_address) = match config.metrics_listen {
        Some(addr) => {
            // Not `shutdown`: attempts still checkpoint and report after it turns true, and
            // Prometheus should see them (and this worker up) until the worker returns.
            let (_, never) = watch::channel(false);
            let (bound, server) = serve_metrics(addr, telemetry.clone(), never)
                .await
                .map_err(|e| WorkerError::Config(format!("cannot serve worker metrics on {addr}: {e}")))?;
            tracing::info!("worker metrics at http://{bound}/metrics");
            let advertised = config
                .metrics_address
                .as_deref()
                .map(|a| advertised_address(a, bound.port()))
                .transpose()?;
            (StopServer(Some(server)), advertised)
        }
        None => (StopServer(None), None),
    };
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
        metrics_address,
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
    telemetry.registered(&config.name, &config.devices);
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
                telemetry.attempt_finished(Some(&end));
                free.extend(devices);
                ends.push(end);
            }
            Err(e) => {
                telemetry.attempt_finished(None);
                tracing::error!("an attempt task failed: {e}");
            }
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
                let (client, roots, launch, stop, me, telemetry) = (
                    client.clone(),
                    config.roots.clone(),
                    config.launch.clone(),
                    shutdown.clone(),
                    me.worker_id.clone(),
                    telemetry.clone(),
                );
                telemetry.attempt_started();
                running.spawn(async move {
                    let end = run_attempt(&client, &me, &roots, &devices, &launch, lease, stop, telemetry).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_takes_the_bound_port_for_port_zero() {
        assert_eq!(advertised_address("node-7:0", 9101).unwrap(), "node-7:9101");
        assert_eq!(advertised_address("10.0.0.7:9200", 9101).unwrap(), "10.0.0.7:9200");
        assert_eq!(advertised_address("[::1]:0", 9101).unwrap(), "[::1]:9101");
        let e = advertised_address("http://node-7:9101", 9101).unwrap_err().to_string();
        assert!(e.starts_with("--metrics-address: "), "{e}");
    }
}
