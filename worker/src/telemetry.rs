//! The worker's own Prometheus metrics (prefix `spatiallock_worker_`, base units, `_total`
//! counters) and the small HTTP server that exposes them at `/metrics`. Per-job series are
//! removed when the job's attempt ends, so labels stay bounded; the coordinator keeps the full
//! history. Training steps are timed per rank (`rank`: the rank's number in its data-parallel
//! group, bounded by the world size), with the gradient all-reduce's time and bytes when the job
//! has more than one rank. On a machine with an NVIDIA driver, each GPU's utilisation and memory are read
//! through NVML (`libnvidia-ml.so.1`, loaded at run time) at every scrape; elsewhere no GPU
//! series exist.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nvml_wrapper::Nvml;
use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use spatiallock_protocol::api::FailureClass;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::attempt::AttemptEnd;
use crate::report::StepTiming;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// What `spatiallock_model::ModelError::NonFinite` says, wherever its message ends up in a
/// failure's causes (a test keeps the two in step).
const NON_FINITE: &str = " is not finite (";

/// Outcome label of an attempt whose supervising task itself failed (a panic outside the job).
const TASK_FAILED: &str = "task_failed";

/// The names of the GPU gauges, exported only where NVML loads (utilisation ratio 0–1, memory
/// used and in all in bytes; labelled `gpu`).
pub const GPU_METRICS: [&str; 3] = [
    "spatiallock_worker_gpu_utilization_ratio",
    "spatiallock_worker_gpu_memory_used_bytes",
    "spatiallock_worker_gpu_memory_total_bytes",
];

/// Upper bounds of the step-time histogram's buckets, in seconds: a tiny CPU model's
/// milliseconds to a full-size model's minute.
const STEP_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
];

/// The `outcome` label of an attempt that ended this way: a stable lowercase word
/// (`succeeded`, `failed_app`, `failed_infra`, `cancelled`, `lease_lost`, `shutdown`,
/// `gang_member_ended`).
pub fn outcome(end: &AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Succeeded => "succeeded",
        AttemptEnd::Failed(FailureClass::App, _) => "failed_app",
        AttemptEnd::Failed(FailureClass::Infra, _) => "failed_infra",
        AttemptEnd::Cancelled => "cancelled",
        AttemptEnd::LeaseLost => "lease_lost",
        AttemptEnd::Shutdown => "shutdown",
        AttemptEnd::GangMemberEnded(_) => "gang_member_ended",
    }
}

/// Every metric a worker exports, in a registry of its own.
pub struct WorkerTelemetry {
    registry: Registry,
    /// `spatiallock_worker_info{worker,devices}`: 1 once the worker registered with the
    /// coordinator (no unit; the labels carry the information).
    pub info: IntGaugeVec,
    /// `spatiallock_worker_attempts_running`: attempts running now (count).
    pub attempts_running: IntGauge,
    /// `spatiallock_worker_attempts_total{outcome}`: attempts ended, by outcome (count; see
    /// [`outcome`]).
    pub attempts: IntCounterVec,
    /// `spatiallock_worker_diverged_attempts_total`: attempts that failed because a loss or the
    /// gradient norm became NaN or infinite (count; the trainer stops at such a step, so no NaN
    /// ever reaches the loss series).
    pub diverged: IntCounter,
    /// `spatiallock_worker_job_step{job}`: latest training step a running job reported (steps).
    pub job_step: GaugeVec,
    /// `spatiallock_worker_images_per_second{job}`: latest training throughput a running job
    /// reported (images per second).
    pub images_per_second: GaugeVec,
    /// `spatiallock_worker_step_seconds{rank}`: wall time of each training step on each of this
    /// worker's ranks (seconds; a histogram).
    pub step_seconds: HistogramVec,
    /// `spatiallock_worker_allreduce_seconds_total{rank}`: wall time spent in gradient
    /// all-reduces by each rank of a data-parallel job (seconds; no series for one-rank jobs).
    pub allreduce_seconds: CounterVec,
    /// `spatiallock_worker_allreduce_bytes_total{rank}`: gradient bytes each rank of a
    /// data-parallel job all-reduced (bytes; no series for one-rank jobs).
    pub allreduce_bytes: IntCounterVec,
    /// NVML and the GPU gauges, when NVML loaded at start (`None` on machines without an NVIDIA
    /// driver: no GPU series at all).
    gpus: Option<GpuGauges>,
}

/// The GPU gauges, refreshed from NVML at scrape time ([`WorkerTelemetry::refresh_gpus`]).
/// `gpu` is the NVML index (the order of `nvidia-smi`, which is CUDA's unless
/// `CUDA_VISIBLE_DEVICES` or `CUDA_DEVICE_ORDER` change it).
struct GpuGauges {
    nvml: Nvml,
    /// `spatiallock_worker_gpu_utilization_ratio{gpu}`: fraction of the last sample period
    /// (1/6 s to 1 s, by product) in which a kernel ran (0–1).
    utilization: GaugeVec,
    /// `spatiallock_worker_gpu_memory_used_bytes{gpu}`: device memory allocated (bytes).
    memory_used: GaugeVec,
    /// `spatiallock_worker_gpu_memory_total_bytes{gpu}`: device memory in all (bytes).
    memory_total: GaugeVec,
}

impl GpuGauges {
    /// The gauges, registered in `registry`, over an initialised NVML.
    fn new(nvml: Nvml, registry: &Registry) -> Result<GpuGauges, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), &["gpu"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(GpuGauges {
            nvml,
            utilization: gauge(
                GPU_METRICS[0],
                "Fraction of the last sample period in which a kernel ran on the GPU (0-1, NVML)",
            )?,
            memory_used: gauge(GPU_METRICS[1], "GPU memory allocated, in bytes (NVML)")?,
            memory_total: gauge(GPU_METRICS[2], "GPU memory in all, in bytes (NVML)")?,
        })
    }

    /// Reads every GPU. A reading NVML refuses (e.g. utilisation on a MIG-enabled GPU) drops
    /// that series until it can be read again, rather than exporting a stale value.
    fn refresh(&self) {
        let count = match self.nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "NVML: cannot count the GPUs");
                return;
            }
        };
        for index in 0..count {
            let label = index.to_string();
            let labels = [label.as_str()];
            let device = match self.nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "NVML: cannot open the GPU");
                    let _ = self.utilization.remove_label_values(&labels);
                    let _ = self.memory_used.remove_label_values(&labels);
                    let _ = self.memory_total.remove_label_values(&labels);
                    continue;
                }
            };
            match device.utilization_rates() {
                Ok(u) => self
                    .utilization
                    .with_label_values(&labels)
                    .set(f64::from(u.gpu) / 100.0),
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "NVML: no utilisation");
                    let _ = self.utilization.remove_label_values(&labels);
                }
            }
            match device.memory_info() {
                Ok(m) => {
                    self.memory_used.with_label_values(&labels).set(m.used as f64);
                    self.memory_total.with_label_values(&labels).set(m.total as f64);
                }
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "NVML: no memory information");
                    let _ = self.memory_used.remove_label_values(&labels);
                    let _ = self.memory_total.remove_label_values(&labels);
                }
            }
        }
    }
}

impl std::fmt::Debug for WorkerTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTelemetry").finish_non_exhaustive()
    }
}

impl WorkerTelemetry {
    /// Creates and registers every metric, and on Linux the process collector
    /// (`process_resident_memory_bytes`, `process_cpu_seconds_total`, … read from `/proc`).
    ///
    /// Errors: a metric definition the registry refuses (a programming error; the unit tests
    /// build one).
    pub fn new() -> Result<WorkerTelemetry, prometheus::Error> {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "spatiallock_worker_info",
                "1 once the worker registered with the coordinator, labelled with its name and devices",
            ),
            &["worker", "devices"],
        )?;
        let attempts_running = IntGauge::new(
            "spatiallock_worker_attempts_running",
            "Attempts this worker is running now",
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "spatiallock_worker_attempts_total",
                "Attempts this worker ended, by outcome",
            ),
            &["outcome"],
        )?;
        let diverged = IntCounter::new(
            "spatiallock_worker_diverged_attempts_total",
            "Attempts that failed because a loss or the gradient norm became NaN or infinite",
        )?;
        let job_step = GaugeVec::new(
            Opts::new(
                "spatiallock_worker_job_step",
                "Latest training step reported by a running job",
            ),
            &["job"],
        )?;
        let images_per_second = GaugeVec::new(
            Opts::new(
                "spatiallock_worker_images_per_second",
                "Latest training throughput of a running job, in images per second",
            ),
            &["job"],
        )?;
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "spatiallock_worker_step_seconds",
                "Wall time of a training step on a rank of this worker, in seconds",
            )
            .buckets(STEP_SECONDS_BUCKETS.to_vec()),
            &["rank"],
        )?;
        let allreduce_seconds = CounterVec::new(
            Opts::new(
                "spatiallock_worker_allreduce_seconds_total",
                "Wall time a rank of a data-parallel job spent all-reducing gradients, in seconds",
            ),
            &["rank"],
        )?;
        let allreduce_bytes = IntCounterVec::new(
            Opts::new(
                "spatiallock_worker_allreduce_bytes_total",
                "Gradient bytes a rank of a data-parallel job all-reduced",
            ),
            &["rank"],
        )?;
        registry.register(Box::new(info.clone()))?;
        registry.register(Box::new(attempts_running.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(diverged.clone()))?;
        registry.register(Box::new(job_step.clone()))?;
        registry.register(Box::new(images_per_second.clone()))?;
        registry.register(Box::new(step_seconds.clone()))?;
        registry.register(Box::new(allreduce_seconds.clone()))?;
        registry.register(Box::new(allreduce_bytes.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let gpus = match Nvml::init() {
            Ok(nvml) => Some(GpuGauges::new(nvml, &registry)?),
            Err(e) => {
                tracing::debug!(error = %e, "NVML is not available (no NVIDIA driver): no GPU metrics");
                None
            }
        };
        Ok(WorkerTelemetry {
            registry,
            info,
            attempts_running,
            attempts,
            diverged,
            job_step,
            images_per_second,
            step_seconds,
            allreduce_seconds,
            allreduce_bytes,
            gpus,
        })
    }

    /// Whether GPU gauges are exported: NVML loaded when the telemetry was created.
    pub fn monitors_gpus(&self) -> bool {
        self.gpus.is_some()
    }

    /// Reads each GPU's utilisation (`spatiallock_worker_gpu_utilization_ratio{gpu}`, 0–1) and
    /// memory (`spatiallock_worker_gpu_memory_used_bytes{gpu}`,
    /// `spatiallock_worker_gpu_memory_total_bytes{gpu}`, bytes) from NVML into the gauges; does
    /// nothing without NVML. Blocks for the NVML calls (a few milliseconds per GPU). Errors are
    /// logged at debug level and drop the series concerned.
    pub fn refresh_gpus(&self) {
        if let Some(gpus) = &self.gpus {
            gpus.refresh();
        }
    }

    /// The worker registered as `worker` with `devices`: sets the info gauge to 1.
    pub fn registered(&self, worker: &str, devices: &[String]) {
        self.info
            .with_label_values(&[worker, devices.join(",").as_str()])
            .set(1);
    }

    /// An attempt started.
    pub fn attempt_started(&self) {
        self.attempts_running.inc();
    }

    /// An attempt ended: `Some` with how it ended, `None` when its task failed without an end
    /// (counted as `task_failed`).
    pub fn attempt_finished(&self, end: Option<&AttemptEnd>) {
        self.attempts_running.dec();
        let word = end.map_or(TASK_FAILED, outcome);
        self.attempts.with_label_values(&[word]).inc();
        if let Some(AttemptEnd::Failed(_, message)) = end {
            if message.contains(NON_FINITE) {
                self.diverged.inc();
            }
        }
    }

    /// A metric point `job` reported: `step` and `images_per_second` update the job's gauges;
    /// other names are left to the coordinator.
    pub fn observe(&self, job: &str, name: &str, value: f64) {
        match name {
            "step" => self.job_step.with_label_values(&[job]).set(value),
            "images_per_second" => self.images_per_second.with_label_values(&[job]).set(value),
            _ => {}
        }
    }

    /// A rank's training step: its wall time into `spatiallock_worker_step_seconds{rank}`, and,
    /// when it all-reduced gradients (a data-parallel job), the all-reduce's seconds and bytes
    /// into `spatiallock_worker_allreduce_{seconds,bytes}_total{rank}`. Negative or non-finite
    /// times are dropped.
    pub fn step_timing(&self, t: &StepTiming) {
        let rank = t.rank.to_string();
        let labels = [rank.as_str()];
        if t.seconds.is_finite() && t.seconds >= 0.0 {
            self.step_seconds.with_label_values(&labels).observe(t.seconds);
        }
        if t.allreduce_bytes > 0 {
            self.allreduce_bytes
                .with_label_values(&labels)
                .inc_by(t.allreduce_bytes);
            if t.allreduce_seconds.is_finite() && t.allreduce_seconds >= 0.0 {
                self.allreduce_seconds
                    .with_label_values(&labels)
                    .inc_by(t.allreduce_seconds);
            }
        }
    }

    /// Removes every series of `job` (its attempt ended).
    pub fn job_ended(&self, job: &str) {
        // An error only means the job never reported that metric.
        let _ = self.job_step.remove_label_values(&[job]);
        let _ = self.images_per_second.remove_label_values(&[job]);
    }

    /// The text exposition format of every metric.
    ///
    /// Errors: a metric family the encoder refuses.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

async fn metrics(State(telemetry): State<Arc<WorkerTelemetry>>) -> Response {
    if telemetry.monitors_gpus() {
        // NVML calls block: off the async threads.
        let t = telemetry.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || t.refresh_gpus()).await {
            tracing::warn!(error = %e, "reading the GPUs failed");
        }
    }
    match telemetry.encode() {
        Ok(text) => ([(CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode worker metrics");
            let message = format!("cannot encode metrics: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Serves `GET /metrics` (the text exposition format) and `GET /healthz` (`ok`) at `listen`
/// until `shutdown` turns true (a dropped sender never stops it: abort the task instead).
///
/// Binds before returning, so a bad or busy address is an error at once; returns the bound
/// address (the real port when `listen` asks for port 0) and the server's task.
pub async fn serve_metrics(
    listen: SocketAddr,
    telemetry: Arc<WorkerTelemetry>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), std::io::Error> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(telemetry);
    let server = tokio::spawn(async move {
        let stop = async move {
            // A dropped sender means "never": the caller aborts the task instead.
            if shutdown.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "worker metrics server stopped");
        }
    });
    Ok((addr, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_training_is_counted_from_its_failure_message() {
        let t = WorkerTelemetry::new().expect("metrics");
        let diverged = spatiallock_model::ModelError::NonFinite {
            step: 7,
            what: "diffusion loss".into(),
            value: f64::NAN,
        };
        for message in [format!("training: {diverged}"), "bad data".to_string()] {
            t.attempt_started();
            t.attempt_finished(Some(&AttemptEnd::Failed(FailureClass::App, message)));
        }
        let text = t.encode().expect("encode");
        assert!(
            text.contains("spatiallock_worker_diverged_attempts_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn job_series_appear_and_are_removed() {
        let t = WorkerTelemetry::new().unwrap();
        t.registered("w1", &["cuda:0".to_string(), "cuda:1".to_string()]);
        for _ in 0..3 {
            t.attempt_started();
        }
        t.observe("exp-a.train-1", "step", 12.0);
        t.observe("exp-a.train-1", "images_per_second", 3.5);
        t.observe("exp-a.train-1", "loss", 0.25);
        t.attempt_finished(Some(&AttemptEnd::Succeeded));
        t.attempt_finished(Some(&AttemptEnd::Failed(FailureClass::App, "bad".into())));
        let text = t.encode().unwrap();
        for series in [
            r#"spatiallock_worker_info{devices="cuda:0,cuda:1",worker="w1"} 1"#,
            r#"spatiallock_worker_job_step{job="exp-a.train-1"} 12"#,
            r#"spatiallock_worker_images_per_second{job="exp-a.train-1"} 3.5"#,
            r#"spatiallock_worker_attempts_total{outcome="succeeded"} 1"#,
            r#"spatiallock_worker_attempts_total{outcome="failed_app"} 1"#,
            // Three started, two finished.
            "spatiallock_worker_attempts_running 1",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing in:\n{text}");
        }
        // Other names (a loss) are left to the coordinator: no series carries them.
        assert!(
            !text.lines().any(|l| !l.starts_with('#') && l.contains("loss")),
            "{text}"
        );
        t.job_ended("exp-a.train-1");
        let text = t.encode().unwrap();
        assert!(!text.contains(r#"job="exp-a.train-1""#), "{text}");
        assert!(text.contains(r#"spatiallock_worker_attempts_total{outcome="succeeded"} 1"#));
        // Ending a job that never reported anything is fine.
        t.job_ended("never-seen");
    }

    #[test]
    fn steps_are_timed_per_rank_and_all_reduces_only_for_data_parallel_ranks() {
        let t = WorkerTelemetry::new().unwrap();
        let timing = |rank, seconds, allreduce_seconds, allreduce_bytes| StepTiming {
            rank,
            step: 1,
            seconds,
            allreduce_seconds,
            allreduce_bytes,
        };
        // A one-rank job: its step time, no all-reduce series.
        t.step_timing(&timing(0, 0.25, 0.0, 0));
        let text = t.encode().unwrap();
        assert!(
            text.lines()
                .any(|l| l == r#"spatiallock_worker_step_seconds_count{rank="0"} 1"#),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("spatiallock_worker_allreduce_")),
            "{text}"
        );
        // Two ranks of a data-parallel job, two steps each; times that are not numbers are
        // dropped, the bytes still counted.
        for rank in [0, 1] {
            for _ in 0..2 {
                t.step_timing(&timing(rank, 0.5, 0.125, 1000));
            }
        }
        t.step_timing(&timing(1, f64::NAN, f64::INFINITY, 24));
        t.step_timing(&timing(1, -1.0, -1.0, 0));
        let text = t.encode().unwrap();
        for series in [
            r#"spatiallock_worker_step_seconds_count{rank="0"} 3"#,
            r#"spatiallock_worker_step_seconds_sum{rank="0"} 1.25"#,
            r#"spatiallock_worker_step_seconds_count{rank="1"} 2"#,
            r#"spatiallock_worker_step_seconds_bucket{rank="1",le="0.5"} 2"#,
            r#"spatiallock_worker_step_seconds_bucket{rank="1",le="0.25"} 0"#,
            r#"spatiallock_worker_allreduce_bytes_total{rank="0"} 2000"#,
            r#"spatiallock_worker_allreduce_bytes_total{rank="1"} 2024"#,
            r#"spatiallock_worker_allreduce_seconds_total{rank="0"} 0.25"#,
            r#"spatiallock_worker_allreduce_seconds_total{rank="1"} 0.25"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing in:\n{text}");
        }
        // Counters, not per-job gauges: a job's end keeps them.
        t.job_ended("exp-a.train-1");
        assert!(t.encode().unwrap().contains("spatiallock_worker_allreduce_bytes_total"));
    }

    #[test]
    fn gpu_series_exist_only_where_nvml_loads() {
        let t = WorkerTelemetry::new().unwrap();
        t.refresh_gpus();
        let text = t.encode().unwrap();
        assert!(text.contains("spatiallock_worker_attempts_running 0"), "{text}");
        if !t.monitors_gpus() {
            // A machine without an NVIDIA driver (CI, laptops): no GPU series, not even empty ones.
            assert!(!text.contains("spatiallock_worker_gpu_"), "{text}");
            return;
        }
        // With NVML: utilisation is a ratio, and each GPU with memory figures has both.
        for line in text
            .lines()
            .filter(|l| l.starts_with("spatiallock_worker_gpu_utilization_ratio{"))
        {
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{line}");
        }
        let used = text.matches("spatiallock_worker_gpu_memory_used_bytes{").count();
        let total = text.matches("spatiallock_worker_gpu_memory_total_bytes{").count();
        assert_eq!(used, total, "{text}");
    }

    #[test]
    fn outcomes_are_stable_lowercase_words() {
        let ends = [
            AttemptEnd::Succeeded,
            AttemptEnd::Failed(FailureClass::App, String::new()),
            AttemptEnd::Failed(FailureClass::Infra, String::new()),
            AttemptEnd::Cancelled,
            AttemptEnd::LeaseLost,
            AttemptEnd::Shutdown,
            AttemptEnd::GangMemberEnded(String::new()),
        ];
        let words: Vec<&str> = ends.iter().map(outcome).collect();
        assert_eq!(
            words,
            [
                "succeeded",
                "failed_app",
                "failed_infra",
                "cancelled",
                "lease_lost",
                "shutdown",
                "gang_member_ended",
            ]
        );
    }

    #[test]
    fn every_worker_metric_has_the_prefix() {
        let t = WorkerTelemetry::new().unwrap();
        t.attempt_finished(None);
        t.observe("j", "step", 1.0);
        t.step_timing(&StepTiming {
            rank: 1,
            step: 1,
            seconds: 0.5,
            allreduce_seconds: 0.1,
            allreduce_bytes: 64,
        });
        for line in t.encode().unwrap().lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("spatiallock_worker_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_health_until_shutdown() {
        let t = Arc::new(WorkerTelemetry::new().unwrap());
        let (stop, stop_rx) = watch::channel(false);
        let (addr, server) = serve_metrics("127.0.0.1:0".parse().unwrap(), t.clone(), stop_rx.clone())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);

        let response = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(content_type, TEXT_FORMAT);
        let body = response.text().await.unwrap();
        assert!(body.contains("spatiallock_worker_attempts_running 0"), "{body}");
        if cfg!(target_os = "linux") {
            assert!(body.contains("process_resident_memory_bytes"), "{body}");
        }

        let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
        assert_eq!(health.status(), reqwest::StatusCode::OK);
        assert_eq!(health.text().await.unwrap(), "ok");

        // The address is taken: a second server cannot bind it.
        assert!(serve_metrics(addr, t, stop_rx).await.is_err());

        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
    }
}
