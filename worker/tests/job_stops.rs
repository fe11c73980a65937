//! A stop request (cancel, lease loss, shutdown) ends detector training and evaluation after
//! the current step or batch of layouts, reported as `Stopped`, not as a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spatiallock_model::layout::JobDir;
use spatiallock_protocol::expand::{expand, Job, JobKind, JobPayload};
use spatiallock_protocol::spec::{ExperimentSpec, SpecFormat};
use spatiallock_worker::jobs::{execute, JobEnv, JobFailure};
use spatiallock_worker::report::{Event, Reporter, StopFlag, StopReason};
use tch::Device;

// 300 detector steps and 64 layouts: if a stop request were ignored, both would run to the end
// (tens of seconds) and the assertions on `Stopped` would fail.
const GRID: &str = "
name: stops
base:
  model: {arch: tiny, base: {pretrain: {steps: 2, batch_size: 2}}}
  data:
    train: {kind: shapes, split: train, count: 4}
    val: [{kind: shapes, split: val, count: 64}]
    resolution: 32
  poi: {enabled: false}
  pog: {enabled: false, enh_fusion: false}
  eval: {ddim_steps: 2, fid: detector, detector: {kind: builtin, steps: 300, batch_size: 2}}
";

fn job(jobs: &[Job], kind: JobKind) -> Job {
    jobs.iter()
        .find(|j| j.kind == kind)
        .cloned()
        .expect("the grid has this job")
}

/// Runs `payload` with the stop flag set to `stop` (if any); returns the result and the log lines.
fn run(
    payload: &JobPayload,
    out: &Path,
    inputs: BTreeMap<String, PathBuf>,
    stop: Option<StopReason>,
) -> (Result<PathBuf, JobFailure>, Vec<String>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let flag = StopFlag::default();
    if let Some(reason) = stop {
        flag.set(reason);
    }
    let reporter = Reporter::new(tx, flag);
    let env = JobEnv {
        out: out.to_path_buf(),
        attempt: 1,
        resume: None,
        inputs,
        device: Device::Cpu,
        reporter: &reporter,
        cache_dir: out.join(".cache"),
        devices: vec!["cpu".into()],
        launch: spatiallock_worker::RankLaunch::default(),
        gang: None,
    };
    let result = execute(payload, &env);
    let mut logs = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::Log(line) = event {
            logs.push(line);
        }
    }
    (result, logs)
}

#[test]
fn detector_training_and_evaluation_stop_after_their_current_step() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = expand(&ExperimentSpec::parse(GRID, SpecFormat::Yaml).expect("grid parses")).expect("grid expands");
    let pretrain = job(&plan.jobs, JobKind::Pretrain);
    let detector = job(&plan.jobs, JobKind::TrainDetector);
    let evaluate = job(&plan.jobs, JobKind::Evaluate);

    let (base, _) = run(&pretrain.payload, &dir.path().join("pretrain"), BTreeMap::new(), None);
    let base = base.expect("the base pretrains");

    // Asked to stop before it starts: the detector ends after its first step, saving nothing.
    let det_dir = dir.path().join("detector");
    let (stopped, logs) = run(&detector.payload, &det_dir, BTreeMap::new(), Some(StopReason::Cancel));
    assert_eq!(stopped, Err(JobFailure::Stopped(StopReason::Cancel)));
    assert!(!JobDir::new(&det_dir).detector_weights().exists());
    assert!(
        logs.iter().any(|l| l.contains("stopped at detector step 1 of 300")),
        "{logs:?}"
    );

    // A short detector for the evaluation, then an evaluation stopped after its first batch.
    let JobPayload::TrainDetector(mut short) = detector.payload.clone() else {
        panic!("not a detector job")
    };
    short.steps = 2;
    let (det, _) = run(&JobPayload::TrainDetector(short), &det_dir, BTreeMap::new(), None);
    let det = det.expect("the short detector trains");
    let inputs = BTreeMap::from([(pretrain.id.clone(), base), (detector.id.clone(), det)]);
    let eval_dir = dir.path().join("evaluate");
    let (stopped, logs) = run(&evaluate.payload, &eval_dir, inputs, Some(StopReason::LeaseLost));
    assert_eq!(stopped, Err(JobFailure::Stopped(StopReason::LeaseLost)));
    assert!(
        !JobDir::new(&eval_dir).results().exists(),
        "a stopped evaluation reports no results"
    );
    assert!(logs.iter().any(|l| l.contains("after 8 of 64 layouts")), "{logs:?}");
}
