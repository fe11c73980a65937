//! Prometheus metrics (prefix `spatiallock_`, base units, `_total` counters). Per-trial
//! series are removed when their job ends, so labels stay bounded; full history is in the
//! database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use spatiallock_protocol::api::MetricPoint;

/// Training metrics shown live: (reported name, gauge name, help).
const LIVE: &[(&str, &str, &str)] = &[
    (
        "loss_diffusion",
        "spatiallock_trial_diffusion_loss",
        "Latest diffusion (ε-MSE) loss",
    ),
    (
        "loss_perception",
        "spatiallock_trial_perception_loss",
        "Latest perception (PoG) loss",
    ),
    (
        "lambda_g",
        "spatiallock_trial_lambda_g",
        "Latest diffusion loss weight λg",
    ),
    (
        "lambda_p",
        "spatiallock_trial_lambda_p",
        "Latest perception loss weight λp",
    ),
    (
        "gate_mean",
        "spatiallock_trial_gate_mean",
        "Mean tanh(α) of the grounding gates",
    ),
    (
        "images_per_second",
        "spatiallock_trial_images_per_second",
        "Training throughput",
    ),
    ("step", "spatiallock_trial_step", "Latest training step"),
];

/// Evaluation results: (reported name, gauge name, help).
const FINAL: &[(&str, &str, &str)] = &[
    ("fid", "spatiallock_trial_fid", "FID of the trial's samples"),
    (
        "fd_detector",
        "spatiallock_trial_fd_detector",
        "Fréchet distance in the detector's feature space",
    ),
    ("map", "spatiallock_trial_map", "COCO mAP@[.5:.95] (percent)"),
    ("ap50", "spatiallock_trial_ap50", "COCO AP50 (percent)"),
    ("ap75", "spatiallock_trial_ap75", "COCO AP75 (percent)"),
    (
        "grounding_accuracy",
        "spatiallock_trial_grounding_accuracy",
        "Input boxes matched by a detection of their category at IoU >= 0.5 (percent)",
    ),
    (
        "mean_iou",
        "spatiallock_trial_mean_iou",
        "Mean IoU of the matched input boxes and detections (ratio 0-1)",
    ),
    (
        "category_recall",
        "spatiallock_trial_category_recall",
        "Input objects whose category is detected anywhere in the image (percent)",
    ),
];

const TRIAL_LABELS: &[&str] = &["experiment", "trial", "job"];

/// Per job: the gauges it set and their label values.
type SeriesIndex = BTreeMap<String, Vec<(&'static str, Vec<String>)>>;

/// Every metric the coordinator exports.
pub struct Telemetry {
    registry: Registry,
    /// Jobs by state and kind (refreshed from the database at scrape time).
    pub jobs: IntGaugeVec,
    /// Seconds from queued to leased.
    pub queue_wait: HistogramVec,
    /// Seconds an attempt ran.
    pub run_duration: HistogramVec,
    /// Leases the reaper expired.
    pub lease_expirations: IntCounter,
    /// Retries by failure class.
    pub retries: IntCounterVec,
    /// Workers with a heartbeat within the lease TTL.
    pub workers_alive: IntGauge,
    /// Gang jobs gathering members (refreshed at scrape time).
    pub gangs_forming: IntGauge,
    /// Ranks reserved by members of forming gangs (refreshed at scrape time).
    pub gang_ranks_reserved: IntGauge,
    /// Seconds from a gang's first reservation to its start.
    pub gang_rendezvous: prometheus::Histogram,
    /// HTTP requests by method, route and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by method and route.
    pub http_duration: HistogramVec,
    live: HashMap<&'static str, GaugeVec>,
    finals: HashMap<&'static str, GaugeVec>,
    /// Label sets set per job, to remove them when the job ends.
    series: Mutex<SeriesIndex>,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants; a failure here is a programming error caught by the
    // unit test below.
    r.unwrap_or_else(|e| panic!("invalid metric definition: {e}"))
}

impl Telemetry {
    /// Creates and registers every metric.
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let jobs = must(IntGaugeVec::new(
            Opts::new("spatiallock_jobs", "Jobs by state and kind"),
            &["state", "kind"],
        ));
        let buckets = vec![
            0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
        ];
        let queue_wait = must(HistogramVec::new(
            HistogramOpts::new("spatiallock_queue_wait_seconds", "Time from queued to leased").buckets(buckets.clone()),
            &["kind"],
        ));
        let run_duration = must(HistogramVec::new(
            HistogramOpts::new("spatiallock_job_run_duration_seconds", "Run time of an attempt").buckets(vec![
                0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
            ]),
            &["kind", "outcome"],
        ));
        let lease_expirations = must(IntCounter::new(
            "spatiallock_lease_expirations_total",
            "Leases expired by the reaper (no heartbeat)",
        ));
        let retries = must(IntCounterVec::new(
            Opts::new(
                "spatiallock_job_retries_total",
                "Attempts requeued after a failure, by class",
            ),
            &["class"],
        ));
        let workers_alive = must(IntGauge::new(
            "spatiallock_workers_alive",
            "Workers seen within the lease TTL",
        ));
        let gangs_forming = must(IntGauge::new(
            "spatiallock_gangs_forming",
            "Gang jobs (more ranks than one worker has) gathering members",
        ));
        let gang_ranks_reserved = must(IntGauge::new(
            "spatiallock_gang_ranks_reserved",
            "Ranks reserved by the members of forming gangs",
        ));
        let gang_rendezvous = must(prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "spatiallock_gang_rendezvous_seconds",
                "Time from a gang's first reservation to its start",
            )
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 1800.0]),
        ));
        let http_requests = must(IntCounterVec::new(
            Opts::new("spatiallock_http_requests_total", "HTTP requests"),
            &["method", "route", "status"],
        ));
        let http_duration = must(HistogramVec::new(
            HistogramOpts::new("spatiallock_http_request_duration_seconds", "HTTP request latency").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["method", "route"],
        ));
        reg(Box::new(jobs.clone()));
        reg(Box::new(queue_wait.clone()));
        reg(Box::new(run_duration.clone()));
        reg(Box::new(lease_expirations.clone()));
        reg(Box::new(retries.clone()));
        reg(Box::new(workers_alive.clone()));
        reg(Box::new(gangs_forming.clone()));
        reg(Box::new(gang_ranks_reserved.clone()));
        reg(Box::new(gang_rendezvous.clone()));
        reg(Box::new(http_requests.clone()));
        reg(Box::new(http_duration.clone()));
        let gauges = |defs: &[(&'static str, &'static str, &'static str)]| {
            let mut out = HashMap::new();
            for (name, metric, help) in defs {
                let g = must(GaugeVec::new(Opts::new(*metric, *help), TRIAL_LABELS));
                reg(Box::new(g.clone()));
                out.insert(*name, g);
            }
            out
        };
        let live = gauges(LIVE);
        let finals = gauges(FINAL);
        Telemetry {
            registry,
            jobs,
            queue_wait,
            run_duration,
            lease_expirations,
            retries,
            workers_alive,
            gangs_forming,
            gang_ranks_reserved,
            gang_rendezvous,
            http_requests,
            http_duration,
            live,
            finals,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the per-trial gauges from a metrics batch of `job` (serving `trials`).
    pub fn observe_job_metrics(
        &self,
        experiment: &str,
        job: &str,
        trials: &[u64],
        metrics: &BTreeMap<String, Vec<MetricPoint>>,
    ) {
        let trial = trials.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let labels = vec![experiment.to_string(), trial, job.to_string()];
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let entry = series.entry(job.to_string()).or_default();
        for (name, points) in metrics {
            let Some(last) = points.iter().max_by_key(|p| p.step) else {
                continue;
            };
            let gauge = self
                .live
                .get_key_value(name.as_str())
                .or_else(|| self.finals.get_key_value(name.as_str()));
            if let Some((key, g)) = gauge {
                g.with_label_values(&label_refs).set(last.value);
                if !entry.iter().any(|(k, _)| k == key) {
                    entry.push((key, labels.clone()));
                }
            }
        }
    }

    /// Removes the live series of a job that ended (its final results stay until the
    /// experiment ends).
    pub fn job_ended(&self, job: &str) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entries) = series.get_mut(job) {
            entries.retain(|(name, labels)| {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                match self.live.get(name) {
                    Some(g) => {
                        let _ = g.remove_label_values(&refs);
                        false
                    }
                    None => true,
                }
            });
        }
    }

    /// Whether any per-trial series of the experiment is exported.
    pub fn has_experiment(&self, experiment: &str) -> bool {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .values()
            .any(|e| e.first().is_some_and(|(_, l)| l[0] == experiment))
    }

    /// Removes every per-trial series of an experiment that ended.
    pub fn experiment_ended(&self, experiment: &str) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.retain(|_, entries| {
            let ours = entries.first().is_some_and(|(_, l)| l[0] == experiment);
            if ours {
                for (name, labels) in entries.iter() {
                    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                    if let Some(g) = self.live.get(name).or_else(|| self.finals.get(name)) {
                        let _ = g.remove_label_values(&refs);
                    }
                }
            }
            !ours
        });
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(name: &str, v: f64) -> BTreeMap<String, Vec<MetricPoint>> {
        BTreeMap::from([(name.to_string(), vec![MetricPoint { step: 3, value: v }])])
    }

    #[test]
    fn trial_series_appear_and_are_removed() {
        let t = Telemetry::new();
        t.observe_job_metrics("exp-a", "exp-a.train-1", &[0, 2], &batch("loss_diffusion", 0.25));
        t.observe_job_metrics("exp-a", "exp-a.eval-1", &[0], &batch("map", 12.5));
        let text = t.render();
        assert!(
            text.contains(
                r#"spatiallock_trial_diffusion_loss{experiment="exp-a",job="exp-a.train-1",trial="0,2"} 0.25"#
            ),
            "{text}"
        );
        assert!(text.contains("spatiallock_trial_map{"), "{text}");
        t.job_ended("exp-a.train-1");
        t.job_ended("exp-a.eval-1");
        let text = t.render();
        assert!(!text.contains("spatiallock_trial_diffusion_loss{"), "{text}");
        assert!(
            text.contains("spatiallock_trial_map{"),
            "final results stay until the experiment ends"
        );
        t.experiment_ended("exp-a");
        assert!(!t.render().contains("spatiallock_trial_map{"));
    }

    #[test]
    fn every_metric_has_the_prefix() {
        let t = Telemetry::new();
        t.jobs.with_label_values(&["queued", "noop"]).set(1);
        t.retries.with_label_values(&["app"]).inc();
        for line in t.render().lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("spatiallock_"), "{line}");
        }
    }
}
