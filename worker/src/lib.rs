//! The SpatialLock worker: registers with the coordinator, long-polls for leases, runs each
//! job (pretrain, train, train-detector, evaluate, noop) on its device while heartbeating the
//! lease, reports metrics, checkpoints and logs, and ends every attempt with a classified
//! report. Also home of the coordinator's HTTP client, which the CLI shares.

pub mod attempt;
pub mod client;
pub mod jobs;
pub mod rank_process;
pub mod ranks;
pub mod report;
pub mod roots;
/// The worker's own Prometheus metrics and the `/metrics` server that exposes them.
pub mod telemetry;
pub mod worker;

pub use attempt::AttemptEnd;
pub use client::{Backoff, ClientError, CoordinatorClient};
pub use ranks::RankLaunch;
pub use roots::Roots;
pub use telemetry::{serve_metrics, WorkerTelemetry};
pub use worker::{run_worker, WorkerConfig, WorkerError};
