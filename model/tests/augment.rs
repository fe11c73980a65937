//! Detector augmentation (paper Table 5) through the one executor: a grid with `augment`
//! expands to an `augment-detector` job, which runs after its model (here a base-only trial's
//! pretraining) and the real-only detector, and writes its results, preview and detector.

use std::collections::BTreeMap;
use std::path::Path;

use spatiallock_model::eval::augment::AugmentResults;
use spatiallock_model::eval::detector::Detector;
use spatiallock_model::executor::{execute, JobContext, JobError};
use spatiallock_model::hooks::Hooks;
use spatiallock_model::layout::JobDir;
use spatiallock_protocol::api::AUGMENT_METRICS;
use spatiallock_protocol::expand::{expand, JobKind};
use spatiallock_protocol::spec::{ExperimentSpec, SpecFormat};
use tch::Device;

/// Hooks that keep every step-0 metric and the log.
#[derive(Default)]
struct Record {
    results: BTreeMap<String, f64>,
    log: Vec<String>,
}

impl Hooks for Record {
    fn metric(&mut self, name: &str, step: u64, value: f64) {
        if step == 0 {
            self.results.insert(name.to_string(), value);
        }
    }
    fn checkpoint_committed(&mut self, _: u64, _: &Path) {}
    fn log(&mut self, line: &str) {
        self.log.push(line.to_string());
    }
    fn should_stop(&mut self) -> bool {
        false
    }
}

const GRID: &str = r#"
name: augment-test
base:
  model:
    arch: tiny
    base: {pretrain: {steps: 2, batch_size: 4}}
  data:
    train: {kind: shapes, variant: simple, split: train, count: 12}
    val: [{kind: shapes, variant: simple, split: val, count: 6}]
    resolution: 32
  poi: {enabled: false}
  pog: {enabled: false, enh_fusion: false}
  eval:
    ddim_steps: 2
    detector: {kind: builtin, steps: 6, batch_size: 4, lr: 1.0e-3}
  augment: {images: 10}
"#;

#[test]
fn the_augmentation_job_scores_both_detectors_on_real_images() {
    tch::set_num_threads(1);
    let spec = ExperimentSpec::parse(GRID, SpecFormat::Yaml).expect("the grid parses");
    let plan = expand(&spec).expect("the grid expands");
    let root = tempfile::tempdir().expect("a temporary folder");
    let mut outputs = BTreeMap::new();
    let mut record = Record::default();
    // Dependencies first: the plan lists jobs in dependency order. The evaluation is not needed.
    for job in plan.jobs.iter().filter(|j| j.kind != JobKind::Evaluate) {
        let ctx = JobContext {
            out: root.path().join(&job.id),
            attempt: 1,
            resume: None,
            inputs: job
                .depends_on
                .iter()
                .map(|d| (d.clone(), outputs.get(d).cloned().expect("a dependency ran first")))
                .collect(),
            device: Device::Cpu,
            cache_dir: None,
            data_parallel: None,
        };
        let out = execute(&job.payload, &ctx, &mut record).unwrap_or_else(|e| panic!("{}: {e}", job.id));
        assert!(JobDir::new(&out).is_complete(job.kind), "{} is not complete", job.id);
        outputs.insert(job.id.clone(), out);
    }

    let id = plan.trials[0].augment_job.as_ref().expect("an augmentation job");
    let dir = JobDir::new(&outputs[id]);
    let text = std::fs::read_to_string(dir.augmentation()).expect("augmentation.json");
    let r: AugmentResults = serde_json::from_str(&text).expect("the results parse");
    // The real images are the detector's training set: by default the validation set's train
    // counterpart (6 shapes), not the model's 12.
    assert_eq!((r.real_images, r.synthetic_images, r.val_images), (6, 10, 6));
    let gain = r.map_gain.expect("both mAPs are defined on shapes");
    assert!((gain - (r.augmented.map - r.real.map)).abs() < 1e-12, "{r:?}");
    for s in [r.real, r.augmented] {
        assert!((0.0..=100.0).contains(&s.map) || s.map == -1.0, "{s:?}");
    }
    for name in AUGMENT_METRICS {
        assert!(
            record.results.contains_key(name),
            "{name} not reported: {:?}",
            record.results
        );
    }
    assert_eq!(record.results["synthetic_images"], 10.0);
    assert_eq!(record.results["detector_map_gain"], gain);
    assert!(
        record.log.iter().any(|l| l.contains("with 10 synthetic added")),
        "{:?}",
        record.log
    );
    assert!(dir.root().join("synthetic.png").is_file());
    assert!(
        dir.root().join("synthetic").join("000009.png").is_file(),
        "each synthetic image is kept as a PNG"
    );
    Detector::load(&dir.root().join("detector"), Device::Cpu).expect("the augmented detector loads");
}

/// The augmentation needs its model and the real-only detector: without them it fails in words.
#[test]
fn missing_inputs_are_named() {
    let spec = ExperimentSpec::parse(GRID, SpecFormat::Yaml).expect("the grid parses");
    let plan = expand(&spec).expect("the grid expands");
    let id = plan.trials[0].augment_job.as_ref().expect("an augmentation job");
    let job = plan.job(id).expect("the job");
    let root = tempfile::tempdir().expect("a temporary folder");
    let ctx = JobContext {
        out: root.path().join("out"),
        attempt: 1,
        resume: None,
        inputs: BTreeMap::new(),
        device: Device::Cpu,
        cache_dir: None,
        data_parallel: None,
    };
    let Err(JobError::App(message)) = execute(&job.payload, &ctx, &mut Record::default()) else {
        panic!("an augmentation without its inputs ran");
    };
    assert!(message.contains("was not given"), "{message}");
}
