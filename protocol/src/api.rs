//! Bodies of the coordinator's HTTP API (`/v1`), shared by the coordinator, the worker and
//! the CLI client.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SpecError;
use crate::expand::{JobKind, JobPayload};
use crate::spec::Reference;

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the jobs it depends on.
    Blocked,
    /// Ready to be leased.
    Queued,
    /// Leased by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Out of attempts, or a dependency failed.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::Blocked,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Blocked => "blocked",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more will happen to the job.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// Why an attempt failed: infrastructure failures are retried without spending an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// Lost lease, preemption, worker shutdown, device loss.
    Infra,
    /// The job itself is wrong: NaN loss, bad data, bad config, a panic.
    App,
}

impl FailureClass {
    /// The class's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Infra => "infra",
            FailureClass::App => "app",
        }
    }
}

/// Every error response: a message naming the field or value at fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Each problem found in a spec, with its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<SpecError>,
}

/// Answer to `POST /v1/experiments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitResponse {
    /// The experiment's id.
    pub id: String,
    /// False when the `Idempotency-Key` named an experiment that already existed.
    pub created: bool,
    /// Trials in the grid.
    pub num_trials: u64,
    /// Jobs in the DAG.
    pub num_jobs: u64,
    /// Jobs by kind.
    pub jobs_by_kind: BTreeMap<String, u64>,
    /// Accepted but suspicious settings.
    pub warnings: Vec<SpecError>,
}

/// The best trial by a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BestTrial {
    /// Trial index.
    pub trial: u64,
    /// The metric.
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// An experiment as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentView {
    /// Id.
    pub id: String,
    /// Name from the spec.
    pub name: String,
    /// `running` while any job is not finished, then `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Scheduling priority.
    pub priority: i64,
    /// Submission time (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// Trials in the grid.
    pub num_trials: u64,
    /// Jobs by state.
    pub jobs: BTreeMap<String, u64>,
    /// The best trial by the requested metric (`?best_by=map`), when any has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestTrial>,
    /// The submitted spec (only in `GET /v1/experiments/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointRef {
    /// Training step it holds.
    pub step: u64,
    /// Where it is (`file:///…`).
    pub uri: String,
}

/// One attempt at a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// Attempt number (from 1).
    pub attempt: u64,
    /// The worker that ran it.
    pub worker: String,
    /// Start (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// End, when it ended.
    pub ended_at_ms: Option<i64>,
    /// `running`, `succeeded`, `failed-app`, `failed-infra`, `lost`, `cancelled`.
    pub outcome: String,
    /// The error it reported.
    pub error: Option<String>,
}

/// A job as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// Id (`<experiment>.<job>`).
    pub id: String,
    /// Its experiment.
    pub experiment_id: String,
    /// Kind.
    pub kind: JobKind,
    /// Short description.
    pub label: String,
    /// State.
    pub state: JobState,
    /// Priority (higher first).
    pub priority: i64,
    /// The current (or last) attempt number.
    pub attempt: u64,
    /// Attempts spent by application failures.
    pub spent_attempts: u64,
    /// The budget for application failures.
    pub max_attempts: u64,
    /// Jobs that must succeed first.
    pub depends_on: Vec<String>,
    /// Trials the job serves.
    pub trials: Vec<u64>,
    /// The last error reported.
    pub last_error: Option<String>,
    /// The last committed checkpoint.
    pub checkpoint: Option<CheckpointRef>,
    /// Where the job's result is, once it succeeded.
    pub output: Option<String>,
    /// Latest value of each metric (when listing one experiment's jobs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latest: BTreeMap<String, f64>,
    /// Every attempt (only in `GET /v1/jobs/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptView>,
    /// Why a queued job has not started (a gang forming, or larger than the live workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// What the job runs (only in `GET /v1/jobs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A trial as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrialView {
    /// Id (`<experiment>.<index>`).
    pub id: String,
    /// Its experiment.
    pub experiment_id: String,
    /// Index in the grid.
    pub index: u64,
    /// Axis values.
    pub axes: IndexMap<String, Value>,
    /// Derived from its jobs: the least finished state among them.
    pub state: JobState,
    /// The job whose output is the trial's model.
    pub model_job: Option<String>,
    /// Its evaluation jobs.
    pub eval_jobs: Vec<String>,
    /// Latest value of each metric of the trial's own results: its model job's training metrics
    /// (`loss`, `loss_diffusion`, `lambda_g`, …), then its evaluation jobs' scores (`map`, `fid`,
    /// …; with several validation sets, the last one's). The pretraining's and the evaluation
    /// detector's series are left out (their `loss` is not the trial's):
    /// `GET /v1/trials/{id}/metrics` has every job's series apart.
    pub metrics: BTreeMap<String, f64>,
    /// The paper's numbers for this point.
    pub reference: Option<Reference>,
    /// Full configuration (only in `GET /v1/trials/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// The model job's last committed checkpoint (only in `GET /v1/trials/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRef>,
}

/// One point of a metric series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MetricPoint {
    /// Training step (or 0 for final values).
    pub step: u64,
    /// Value.
    pub value: f64,
}

/// Metric name → points in step order (`GET /v1/jobs/{id}/metrics`).
pub type MetricSeries = BTreeMap<String, Vec<MetricPoint>>;

/// One job's metric series within a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobMetrics {
    /// Job id (`<experiment>.<job>`).
    pub job: String,
    /// Which stage of the trial the series come from.
    pub kind: JobKind,
    /// The job's short description.
    pub label: String,
    /// Metric name → points in step order (the training step; 0 for one-off results such as an
    /// evaluation's scores), each series downsampled to the request's `max_points`.
    pub series: BTreeMap<String, Vec<MetricPoint>>,
}

/// `GET /v1/trials/{id}/metrics`: the series of each job of a trial kept apart, since
/// pretraining, training and the evaluation detector's training report the same names
/// (`loss`, `lr`, …) over steps of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrialMetrics {
    /// Trial id (`<experiment>.<index>`).
    pub trial: String,
    /// Every job of the trial, dependencies first (pretrain, train, train-detector, evaluate);
    /// a job that reported nothing yet has an empty `series`.
    pub jobs: Vec<JobMetrics>,
}

/// One row of an experiment report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportRow {
    /// Trial index.
    pub trial: u64,
    /// Axis values.
    pub axes: IndexMap<String, Value>,
    /// Validation dataset (the evaluation job's label).
    pub val: String,
    /// The evaluation job's state.
    pub state: JobState,
    /// Our numbers.
    pub ours: Reference,
    /// Which metric `ours.fid` is: `fid` or `fd_detector`.
    pub fid_kind: Option<String>,
    /// How many images `ours.fid` was computed from (the smaller of the real and generated
    /// sets); below the feature dimension (2048 for `fid`, 128 for `fd_detector`) the distance
    /// is biased upward and comparable only with distances over as many images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_images: Option<u64>,
    /// Percent of the input boxes matched by a detection (score ≥ 0.3) of their category at IoU ≥ 0.5 (each
    /// generated image against its own layout; greedy one-to-one matching as pycocotools'); absent
    /// before the evaluation reported it.
    #[serde(default)]
    pub grounding_accuracy: Option<f64>,
    /// Mean IoU (fraction 0–1) of the pairs matched for `grounding_accuracy`; absent when nothing
    /// matched.
    #[serde(default)]
    pub mean_iou: Option<f64>,
    /// Percent of the input objects whose category is detected anywhere in their image (location
    /// ignored): how well the model draws the objects, apart from where.
    #[serde(default)]
    pub category_recall: Option<f64>,
    /// Detector augmentation (the trial's `augment`, paper Table 5; on the trial's first row
    /// only): see [`AugmentScores`]. Absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<AugmentScores>,
    /// The paper's numbers, when the spec gives them.
    pub paper: Option<Reference>,
}

/// The metrics a detector augmentation job reports, at step 0, in this order: the detector's mAP
/// on real validation images trained on real images alone and on real + synthetic ones
/// (percent), the gain (percentage points; not reported when either mAP is undefined), the two
/// AP50s (percent), and the synthetic images added. Its detector training's `step` and `loss` are not among them (nor the trial's).
pub const AUGMENT_METRICS: [&str; 6] = [
    "detector_map_real",
    "detector_map_augmented",
    "detector_map_gain",
    "detector_ap50_real",
    "detector_ap50_augmented",
    "synthetic_images",
];

/// A trial's detector augmentation in a report: the evaluation detector's mAP on real validation
/// images trained on real images alone and on real + synthetic ones (percent), and the gain
/// (percentage points; the paper's "UP"). A field is absent until the job reported it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AugmentScores {
    /// mAP of the detector trained on real images alone, percent.
    pub map_real: Option<f64>,
    /// mAP of the detector trained on real + synthetic images, percent.
    pub map_augmented: Option<f64>,
    /// `map_augmented − map_real`, percentage points.
    pub map_gain: Option<f64>,
    /// Synthetic images added.
    pub synthetic_images: Option<u64>,
    /// The augmentation job's state.
    pub state: JobState,
}

/// Mean and spread of one metric over the seeds of a [`SummaryRow`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeanSd {
    /// How many of the group's rows have the metric (≥ 1).
    pub n: u64,
    /// Their mean, in the metric's unit.
    pub mean: f64,
    /// Their sample standard deviation (divisor n − 1); absent when n = 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
}

/// Report rows that differ only in their seed (the spec's `seeds`, or an axis named `seed` or
/// ending in `.seed`): the same axis values and validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SummaryRow {
    /// Axis values shared by the group (seed axes left out).
    pub axes: IndexMap<String, Value>,
    /// Validation dataset.
    pub val: String,
    /// The rows' trial indices, in report order; their count is the number of seeds.
    pub trials: Vec<u64>,
    /// mAP@[.5:.95], percent.
    pub map: Option<MeanSd>,
    /// AP50, percent.
    pub ap50: Option<MeanSd>,
    /// Grounding accuracy, percent.
    pub grounding_accuracy: Option<MeanSd>,
    /// Mean IoU of matched boxes, fraction 0–1.
    pub mean_iou: Option<MeanSd>,
    /// The Fréchet distance of kind `fid_kind` (rows of another kind are left out).
    pub fid: Option<MeanSd>,
    /// `fid` or `fd_detector`.
    pub fid_kind: Option<String>,
}

/// `GET /v1/experiments/{id}/report?format=json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// Experiment id.
    pub experiment_id: String,
    /// Name.
    pub name: String,
    /// Axis names in order.
    pub axes: Vec<String>,
    /// One row per (trial, validation dataset).
    pub rows: Vec<ReportRow>,
    /// One row per group of `rows` that differ only in their seed, in order of first
    /// appearance: mean ± sd over the seeds.
    #[serde(default)]
    pub summary: Vec<SummaryRow>,
}

/// `POST /v1/workers/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    /// A human-readable name (host name): 1–200 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Devices it runs jobs on (`cpu`, `cuda:0`, …), at least one.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub devices: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where Prometheus reaches this worker's own metrics, `HOST:PORT` (its `--metrics-address`;
    /// scraped as `http://HOST:PORT/metrics`): listed by `GET /v1/prometheus/targets` while the
    /// worker is live. Absent (older workers, or none serving metrics): not listed. The accepted
    /// form is [`HOST_PORT_PATTERN`] ([`check_host_port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 3,
            max_length = 255,
            pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
        )
    )]
    pub metrics_address: Option<String>,
}

/// The form of a `HOST:PORT` address ([`RegisterWorker::metrics_address`]) as a regular
/// expression (at most 255 characters in all): a host name or IPv4 address, or an IPv6 address
/// in brackets, a colon, and a port 1–65535 without leading zeros. The OpenAPI document carries
/// the same pattern; [`check_host_port`] implements it.
pub const HOST_PORT_PATTERN: &str = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";

/// Checks a `HOST:PORT` address, as workers advertise their metrics endpoint
/// ([`RegisterWorker::metrics_address`]): exactly the strings of at most 255 characters that
/// [`HOST_PORT_PATTERN`] matches — a host name or IPv4 address (letters, digits, `.`, `-`,
/// `_`) or an IPv6 address in brackets (`[fd00::7]`), a colon, and a port 1–65535 in decimal
/// digits without leading zeros; no scheme, path or whitespace.
///
/// Errors: what is wrong with the address, in words.
pub fn check_host_port(address: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. worker-3.example:9101, 10.0.0.7:9101 or [fd00::7]:9101";
    if address.chars().count() > 255 {
        return Err("must have at most 255 characters".into());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not HOST:PORT ({EXAMPLE})"));
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0')
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Err(format!(
            "`{address}`: the port must be a number 1–65535 without leading zeros ({EXAMPLE})"
        ));
    }
    let host_ok = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .is_some_and(|v6| !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_ok {
        return Err(format!(
            "`{address}`: the host must be a host name, an IPv4 address or an IPv6 address in brackets, \
             without scheme or path ({EXAMPLE})"
        ));
    }
    Ok(())
}

/// Answer to a worker registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerRegistered {
    /// The id to use in every later call.
    pub worker_id: String,
    /// Lease time-to-live: heartbeat well within it.
    pub lease_ttl_ms: u64,
    /// This worker's secret key (64 hex digits): sent back in the `Spatiallock-Worker-Key`
    /// header of every later worker call, it proves which worker is calling. Shown once.
    #[serde(default)]
    pub worker_key: String,
}

/// `POST /v1/workers/{id}/lease`: long-poll for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Longest time to wait for a job, in ms (capped by the coordinator).
    #[serde(default)]
    pub wait_ms: u64,
    /// Devices the worker has free: only jobs needing at most this many ranks are leased
    /// (at least 1; 1 when absent).
    #[serde(default = "one_device")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub devices: u32,
    /// Set by a worker that can be a member of a gang (a training job with more ranks than
    /// any one worker has devices): where its rank 0 would serve the rendezvous store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangOffer>,
}

/// Where a worker's rank 0 would serve the group's rendezvous store (c10d's TCPStore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GangOffer {
    /// Host name or address the other members reach this worker at (1–255 characters).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 255))]
    pub address: String,
    /// A free TCP port on it (1–65535).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u16,
}

/// A worker's part in a gang that has started: its ranks are `first_rank ..
/// first_rank + ranks` of `world_size`, meeting at `master_addr:master_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GangAssignment {
    /// Ranks in the whole group.
    pub world_size: u32,
    /// This worker's first rank (rank 0's worker reports completion, metrics and checkpoints).
    pub first_rank: u32,
    /// Ranks this worker runs (one process per device).
    pub ranks: u32,
    /// Rank 0's rendezvous store host.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Workers in the gang.
    pub members: u32,
}

fn one_device() -> u32 {
    1
}

/// A leased job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    /// Job id.
    pub job_id: String,
    /// Its experiment.
    pub experiment_id: String,
    /// Attempt number: carry it in every write for this job.
    pub attempt: u64,
    /// What to run.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: JobPayload,
    /// Resume from here (the last committed checkpoint of an earlier attempt).
    pub checkpoint: Option<CheckpointRef>,
    /// Outputs of the jobs this one depends on: job id (without the experiment prefix) → URI.
    pub inputs: BTreeMap<String, String>,
    /// Heartbeat within this many ms or lose the lease.
    pub lease_ttl_ms: u64,
    /// For a gang member: its ranks and the rendezvous; absent for a job this worker runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangAssignment>,
}

/// A write from the worker that runs attempt `attempt` of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AttemptRef {
    /// The attempt the worker holds.
    pub attempt: u64,
    /// A gang member's worker id: its heartbeat keeps its own membership alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// Answer to a job heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAnswer {
    /// Stop now: the job was cancelled.
    pub cancel: bool,
    /// The lease now ends this many ms from now.
    pub lease_ttl_ms: u64,
}

/// `POST /v1/jobs/{id}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The attempt.
    pub attempt: u64,
    /// Where the result is (a model directory, an evaluation folder), when there is one.
    #[serde(default)]
    pub output: Option<String>,
}

/// `POST /v1/jobs/{id}/fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The attempt.
    pub attempt: u64,
    /// Infra failures are retried without spending an attempt.
    pub class: FailureClass,
    /// What went wrong.
    pub message: String,
}

/// `POST /v1/jobs/{id}/metrics`: values upserted by (job, name, step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MetricsBatch {
    /// The attempt.
    pub attempt: u64,
    /// name (1–128 characters) → points.
    pub metrics: BTreeMap<String, Vec<MetricPoint>>,
}

/// `POST /v1/jobs/{id}/checkpoints`: a checkpoint written, to be resumed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointCommit {
    /// The attempt.
    pub attempt: u64,
    /// Step it holds.
    pub step: u64,
    /// Where it is (not empty).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub uri: String,
}

/// The answer to a checkpoint commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointCommitted {
    /// Whether the job's checkpoint pointer moved (false when it already held a later step).
    pub committed: bool,
}

/// `POST /v1/jobs/{id}/logs`: lines of the attempt's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    /// The attempt.
    pub attempt: u64,
    /// Lines, oldest first (at most 10 000 per batch).
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub lines: Vec<String>,
}

/// `GET /v1/jobs/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogTail {
    /// The attempt shown.
    pub attempt: u64,
    /// The last lines.
    pub lines: Vec<String>,
}

/// One job's part of a trial's logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobLog {
    /// Job id (`<experiment>.<job>`).
    pub job: String,
    /// Kind.
    pub kind: JobKind,
    /// The job's short description.
    pub label: String,
    /// State.
    pub state: JobState,
    /// The attempt whose lines are shown: the latest (0: the job never started).
    pub attempt: u64,
    /// The job's last error as recorded (`attempt 3 (app): …`, or `dependency … failed` for a
    /// job failed by a dependency without running).
    pub last_error: Option<String>,
    /// Every attempt, oldest first, each with its outcome and the error it ended with.
    pub attempts: Vec<AttemptView>,
    /// The last lines of the shown attempt's log, oldest first.
    pub lines: Vec<String>,
}

/// `GET /v1/trials/{id}/logs`: every job of a trial, dependencies first, with why each attempt
/// that failed failed, and the tail of each job's latest attempt's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrialLogs {
    /// Trial id (`<experiment>.<index>`).
    pub trial: String,
    /// Every job of the trial, dependencies first.
    pub jobs: Vec<JobLog>,
}

/// `POST /v1/experiments/{id}/priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PriorityChange {
    /// New priority (higher first), -1000 to 1000.
    #[cfg_attr(feature = "openapi", schema(minimum = -1000, maximum = 1000))]
    pub priority: i64,
}

/// Answer to cancel and retry-failed: how many jobs changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Changed {
    /// Jobs affected.
    pub jobs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_and_addresses_with_a_port() {
        for ok in [
            "worker-3.example:9101",
            "10.0.0.7:9101",
            "[fd00::7]:9101",
            "localhost:1",
            "w_1:65535",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "worker",
            "worker:",
            ":9101",
            "worker:0",
            "worker:65536",
            "worker:+80",
            "worker:09101",
            "[]:9101",
            "[::1:9101",
            "http://worker:9101",
            "worker:9101/metrics",
            "fd00::7:9101",
            "[nope]:9101",
            "two words:9101",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert!(check_host_port(&format!("{}:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn the_check_and_the_documented_pattern_agree() {
        let schema = serde_json::json!({"type": "string", "maxLength": 255, "pattern": HOST_PORT_PATTERN});
        let validator = jsonschema::validator_for(&schema).unwrap();
        let long = format!("{}:1", "a".repeat(300));
        for s in [
            "worker-3.example:9101",
            "10.0.0.7:9101",
            "[fd00::7]:9101",
            "[::ffff:10.0.0.7]:80",
            "a:1",
            "a:65535",
            "a:65536",
            "a:99999",
            "a:100000",
            "a:0",
            "a:09",
            "a:1\n",
            "a :1",
            "[]:1",
            "[g::1]:1",
            "[::1:1",
            "::1]:1",
            "a/b:1",
            "http://a:1",
            "a:1:2",
            ":1",
            "a:",
            "",
            long.as_str(),
        ] {
            assert_eq!(
                validator.is_valid(&serde_json::json!(s)),
                check_host_port(s).is_ok(),
                "{s:?}: {:?}",
                check_host_port(s)
            );
        }
    }

    #[test]
    fn registrations_without_a_metrics_address_stay_valid() {
        let old: RegisterWorker = serde_json::from_str(r#"{"name": "w", "devices": ["cpu"]}"#).unwrap();
        assert_eq!(old.metrics_address, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("metrics_address"));
        let new: RegisterWorker =
            serde_json::from_str(r#"{"name": "w", "devices": ["cpu"], "metrics_address": "h:9101"}"#).unwrap();
        assert_eq!(new.metrics_address.as_deref(), Some("h:9101"));
    }
}
