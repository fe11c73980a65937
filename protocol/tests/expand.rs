//! Grid expansion, the job DAG, hashing and validation, on the shipped configs and small specs.

use std::path::PathBuf;

use serde_json::json;
use spatiallock_protocol::expand::{expand, JobKind, JobPayload, Plan};
use spatiallock_protocol::spec::{ExperimentSpec, SpecFormat};
use spatiallock_protocol::SpecErrors;

fn config(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("configs")
        .join(rel)
}

fn plan_file(rel: &str) -> Plan {
    let spec = ExperimentSpec::load(&config(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    expand(&spec).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A small valid spec on the tiny architecture; `extra` is appended at the top level.
fn tiny_spec(extra: &str) -> String {
    format!(
        r#"
name: t
base:
  model:
    arch: tiny
    base: {{pretrain: {{steps: 10, batch_size: 4}}}}
  data:
    train: {{kind: shapes, split: train, count: 8}}
    val: [{{kind: shapes, split: val, count: 4}}]
    resolution: 32
  training: {{steps: 5, batch_size: 4}}
{extra}
"#
    )
}

fn parse(text: &str) -> Result<Plan, SpecErrors> {
    let spec = ExperimentSpec::parse(text, SpecFormat::Yaml)?;
    expand(&spec)
}

fn errors_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(p) => panic!("expected the spec to be rejected, got {} trials", p.trials.len()),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn assert_error(text: &str, path: &str, needle: &str) {
    let errors = errors_of(text);
    assert!(
        errors.iter().any(|e| e.starts_with(path) && e.contains(needle)),
        "no error at `{path}` containing `{needle}` in {errors:#?}"
    );
}

#[test]
fn table6_is_six_trials_with_the_papers_numbers() {
    let plan = plan_file("paper/table6.yaml");
    assert_eq!(plan.trials.len(), 6);
    assert_eq!(plan.count(JobKind::Train), 6);
    assert_eq!(plan.count(JobKind::Evaluate), 6);
    let learnable = &plan.trials[5];
    assert_eq!(learnable.axes["loss.weights"], json!("learnable"));
    let r = learnable.reference.expect("reference attached");
    assert_eq!(
        (r.fid, r.map, r.ap50, r.ap75),
        (Some(18.32), Some(32.1), Some(41.1), Some(36.7))
    );
    let first = plan.trials[0].reference.expect("reference attached");
    assert_eq!(first.fid, Some(27.5));
}

#[test]
fn table4_trains_once_per_training_set() {
    let plan = plan_file("paper/table4.yaml");
    assert_eq!(plan.trials.len(), 4);
    assert_eq!(plan.count(JobKind::Train), 2);
    assert_eq!(plan.count(JobKind::Evaluate), 4);
    assert!(plan.count(JobKind::Train) < plan.count(JobKind::Evaluate));
    // COCO→Flickr and COCO→nuScenes share their training job.
    assert_eq!(plan.trials[0].model_job, plan.trials[1].model_job);
    assert_ne!(plan.trials[0].model_job, plan.trials[2].model_job);
    // Every evaluation waits for the training job of its trial.
    for t in &plan.trials {
        for e in &t.eval_jobs {
            let job = plan.job(e).expect("eval job exists");
            assert!(job.depends_on.contains(t.model_job.as_ref().expect("trained")));
        }
    }
}

/// Table 5: one augmentation job per trial, after the trial's model and the real-only detector,
/// retraining that detector exactly as it was trained, scored on the first validation set.
#[test]
fn table5_augments_the_detector_the_trial_evaluates_with() {
    let plan = plan_file("miniature-table5.yaml");
    assert_eq!(plan.trials.len(), 3);
    assert_eq!(plan.count(JobKind::AugmentDetector), 3);
    assert_eq!(plan.count(JobKind::TrainDetector), 1);
    for t in &plan.trials {
        let id = t.augment_job.as_ref().expect("an augmentation job");
        let job = plan.job(id).expect("the job exists");
        let model = t.model_job.as_ref().expect("a trained model");
        let JobPayload::AugmentDetector(a) = &job.payload else {
            panic!("{id} is not an augmentation");
        };
        assert!(job.depends_on.contains(model) && job.depends_on.contains(&a.detector_job));
        let JobPayload::TrainDetector(real_only) = &plan.job(&a.detector_job).expect("detector job").payload else {
            panic!("{} is not a detector job", a.detector_job);
        };
        assert_eq!(&a.detector, real_only);
        assert_eq!(a.images, 512);
        assert_eq!(JobKind::of_job_id(id), Some(JobKind::AugmentDetector));
        assert_eq!(
            JobKind::of_job_id(&format!("exp-1.{id}")),
            Some(JobKind::AugmentDetector)
        );
        assert!(!t.eval_jobs.contains(id), "an augmentation is not an evaluation");
    }
    assert_eq!(plan.trials[0].reference.and_then(|r| r.map_gain), Some(3.2));
    // Grids without `augment` have no such job and keep their hashes.
    assert_eq!(plan_file("miniature.yaml").count(JobKind::AugmentDetector), 0);
    assert_eq!(JobKind::of_job_id("augment-detector-"), None);
    assert_eq!(JobKind::of_job_id("pretrain-xyz"), None);
}

#[test]
fn augmentation_needs_images_and_a_builtin_detector() {
    assert_error(&tiny_spec("  augment: {images: 0}"), "augment.images", "between 1 and");
    assert_error(
        &tiny_spec("  augment: {images: 4}\n  eval: {detector: {kind: torchscript, path: det.pt}}"),
        "augment",
        "built-in evaluation detector",
    );
    assert_error(
        &tiny_spec("  augment: {imgs: 4}"),
        "base.augment.imgs",
        "did you mean `images`",
    );
    // A case (or an axis) can ask for one where the base has none.
    let cases = "cases:\n  study:\n    - {name: plain, set: {}}\n    - {name: augmented, set: {augment: {images: 4}}}";
    let plan = parse(&tiny_spec(cases)).expect("the grid expands");
    assert_eq!(plan.count(JobKind::AugmentDetector), 1);
    assert_eq!(
        (
            plan.trials[0].augment_job.is_some(),
            plan.trials[1].augment_job.is_some()
        ),
        (false, true)
    );
}

/// Every grid under `configs/` (not the model architectures in `configs/models/`) expands to
/// its expected number of trials; a grid added without an entry here fails.
#[test]
fn every_shipped_grid_expands() {
    let expected = [
        ("paper/table1.yaml", 2),
        ("paper/table2.yaml", 4),
        ("paper/table3.yaml", 5),
        ("paper/table4.yaml", 4),
        ("paper/table6.yaml", 6),
        ("demo.yaml", 1),
        ("miniature.yaml", 12),
        ("miniature-base.yaml", 4),
        ("miniature-gpu.yaml", 12),
        ("miniature-table5.yaml", 3),
        ("paper/table5.yaml", 1),
    ];
    let mut shipped = Vec::new();
    for dir in ["", "paper"] {
        for entry in std::fs::read_dir(config(dir)).expect("configs/ is readable").flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") || name.ends_with(".json") {
                shipped.push(if dir.is_empty() { name } else { format!("{dir}/{name}") });
            }
        }
    }
    shipped.sort();
    for file in &shipped {
        let trials = expected
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("configs/{file} is shipped but not listed in every_shipped_grid_expands"));
        assert_eq!(plan_file(file).trials.len(), trials, "{file}");
    }
    assert_eq!(
        shipped.len(),
        expected.len(),
        "listed grids that are not shipped: {shipped:?}"
    );
}

#[test]
fn table2_base_only_row_evaluates_the_base_without_training() {
    let plan = plan_file("paper/table2.yaml");
    let none = &plan.trials[0];
    assert_eq!(none.axes["components"], json!("none"));
    assert_eq!(none.model_job, None, "nothing to train: the base on disk is evaluated");
    assert_eq!(plan.count(JobKind::Train), 3);
}

#[test]
fn table3_placements_become_block_lists() {
    let plan = plan_file("paper/table3.yaml");
    let JobPayload::Train(t) = &plan.job(plan.trials[4].model_job.as_deref().unwrap()).unwrap().payload else {
        panic!("train payload")
    };
    let placement = serde_json::to_value(&t.poi.placement).unwrap();
    assert_eq!(placement, json!(["down.2", "up.1"]));
    assert_eq!(plan.trials[4].reference.unwrap().infer_s, Some(2.1));
}

#[test]
fn grid_cases_and_seeds_multiply_in_order() {
    let plan = parse(&tiny_spec(
        r#"
grid:
  training.lr: [1.0e-4, 2.0e-4]
  loss.weights: [[1, 0.5], learnable]
cases:
  parts:
    - {name: poi, set: {pog.enabled: false, pog.enh_fusion: false}}
    - {name: full, set: {}}
    - {name: no-enh, set: {pog.enh_fusion: false}}
seeds: 2
"#,
    ))
    .unwrap();
    assert_eq!(plan.trials.len(), 2 * 2 * 3 * 2);
    // First axis slowest, seeds fastest.
    assert_eq!(plan.trials[0].axes["training.lr"], json!(0.0001));
    assert_eq!(plan.trials[0].config.seed, 0);
    assert_eq!(plan.trials[1].config.seed, 1);
    assert_eq!(plan.trials[2].axes["parts"], json!("full"));
    assert_eq!(plan.trials[23].axes["training.lr"], json!(0.0002));
    // Each training job's description names its grid point.
    let first_train = plan.trials[0].model_job.as_deref().expect("a training job");
    let label = &plan.jobs.iter().find(|j| j.id == first_train).expect("listed").label;
    assert!(
        label.starts_with("train tiny (PoI on, PoG off) on shapes/train [") && label.contains("training.lr=0.0001"),
        "{label}"
    );
    // One pretraining job gates every training job.
    assert_eq!(plan.count(JobKind::Pretrain), 1);
    let pretrain = plan.jobs.iter().find(|j| j.kind == JobKind::Pretrain).unwrap();
    for j in plan.jobs.iter().filter(|j| j.kind == JobKind::Train) {
        assert_eq!(j.depends_on, vec![pretrain.id.clone()]);
    }
    // Dependencies come before dependants.
    for (i, j) in plan.jobs.iter().enumerate() {
        for d in &j.depends_on {
            let at = plan.jobs.iter().position(|x| &x.id == d).expect("dependency exists");
            assert!(at < i, "{} listed before its dependency {d}", j.id);
        }
    }
}

#[test]
fn settings_of_disabled_features_do_not_split_jobs() {
    // PoI-only trials that differ in a setting of a disabled feature train the same model.
    let plan = parse(&tiny_spec(
        r#"
grid:
  pog.box_loss: [giou, smooth_l1]
cases:
  parts:
    - {name: poi, set: {pog.enabled: false, pog.enh_fusion: false}}
"#,
    ))
    .unwrap();
    assert_eq!(plan.trials.len(), 2);
    assert_eq!(
        plan.count(JobKind::Train),
        1,
        "box loss of a disabled PoG does not change training"
    );
    assert_eq!(plan.count(JobKind::Evaluate), 1);
    assert_eq!(plan.trials[0].eval_jobs, plan.trials[1].eval_jobs);
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.message.contains("trials 0 and 1 train and evaluate the same model")));
}

#[test]
fn hashes_ignore_key_order_number_spelling_and_format() {
    let a = parse(&tiny_spec("grid:\n  training.lr: [0.0001, 1.0]\n")).unwrap();
    let b_text = r#"{
      "grid": {"training.lr": [1e-4, 1]},
      "base": {
        "training": {"batch_size": 4.0, "steps": 5},
        "data": {"resolution": 32, "val": [{"count": 4, "split": "val", "kind": "shapes"}],
                 "train": {"split": "train", "kind": "shapes", "count": 8}},
        "model": {"base": {"pretrain": {"batch_size": 4, "steps": 1e1}}, "arch": "tiny"}
      },
      "name": "t"
    }"#;
    let b = expand(&ExperimentSpec::parse(b_text, SpecFormat::Json).unwrap()).unwrap();
    let ids = |p: &Plan| p.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(
        a.trials.iter().map(|t| &t.hash).collect::<Vec<_>>(),
        b.trials.iter().map(|t| &t.hash).collect::<Vec<_>>()
    );
    // Writing a default explicitly does not change anything either.
    let explicit = tiny_spec("grid:\n  training.lr: [0.0001, 1.0]\n").replace(
        "training: {steps: 5, batch_size: 4}",
        "training: {steps: 5, batch_size: 4, grad_accum: 1, weight_decay: 0.0}\n  poi: {placement: [down.2, up.0]}",
    );
    let d = parse(&explicit).unwrap();
    assert_eq!(ids(&a), ids(&d));
}

#[test]
fn hashes_change_when_training_changes() {
    let a = parse(&tiny_spec("")).unwrap();
    let b = parse(&tiny_spec("").replace("steps: 5,", "steps: 6,")).unwrap();
    assert_ne!(a.trials[0].model_job, b.trials[0].model_job);
    // Evaluation-only changes keep the training job.
    let c = parse(&tiny_spec("").replace("resolution: 32\n", "resolution: 32\n  eval: {ddim_steps: 7}\n")).unwrap();
    assert_eq!(a.trials[0].model_job, c.trials[0].model_job);
    assert_ne!(a.trials[0].eval_jobs, c.trials[0].eval_jobs);
}

#[test]
fn yaml_json_round_trip_keeps_the_plan() {
    for file in ["paper/table4.yaml", "paper/table6.yaml", "demo.yaml"] {
        let spec = ExperimentSpec::load(&config(file)).unwrap();
        let from_json = ExperimentSpec::parse(&spec.to_json(), SpecFormat::Json).unwrap();
        let from_yaml = ExperimentSpec::parse(&spec.to_yaml(), SpecFormat::Yaml).unwrap();
        assert_eq!(spec, from_json, "{file} via JSON");
        assert_eq!(spec, from_yaml, "{file} via YAML");
        assert_eq!(expand(&spec).unwrap(), expand(&from_json).unwrap(), "{file}");
    }
}

#[test]
fn misspelt_keys_are_named_with_a_suggestion() {
    assert_error(&tiny_spec("prority: 3"), "prority", "did you mean `priority`?");
    assert_error(&tiny_spec("bse: {}"), "bse", "unknown field");
    let text = tiny_spec("").replace("training: {steps: 5", "training: {stpes: 5, steps: 5");
    assert_error(&text, "base.training.stpes", "did you mean `steps`?");
    let text = tiny_spec("").replace("arch: tiny", "arch: tinny");
    assert_error(&text, "base.model.arch", "did you mean `tiny`?");
    let text = tiny_spec("").replace("kind: shapes, split: train", "kind: shape, split: train");
    assert_error(&text, "base.data.train", "did you mean `shapes`?");
}

#[test]
fn wrong_types_are_named() {
    let text = tiny_spec("").replace("steps: 5,", "steps: five,");
    assert_error(&text, "base.training.steps", "invalid type");
    assert_error(
        &tiny_spec("grid:\n  loss.weights: [[1, 2, 3]]\n"),
        "loss.weights",
        "pair of numbers",
    );
    assert_error(&tiny_spec("seeds: [1, -2]"), "seeds", "list of non-negative seeds");
    assert_error(&tiny_spec("grid: [1, 2]"), "grid", "invalid type");
}

#[test]
fn empty_axes_and_duplicates_are_rejected() {
    assert_error(
        &tiny_spec("grid:\n  training.lr: []\n"),
        "grid.training.lr",
        "axis has no values",
    );
    assert_error(&tiny_spec("cases:\n  c: []\n"), "cases.c", "axis has no cases");
    assert_error(
        &tiny_spec("grid:\n  training.lr: [0.1, 1.0e-1]\n"),
        "grid.training.lr[1]",
        "listed twice",
    );
    assert_error(
        &tiny_spec("cases:\n  c: [{name: a, set: {}}, {name: a, set: {}}]\n"),
        "cases.c[1].name",
        "defined twice",
    );
    assert_error(&tiny_spec("seeds: [3, 3]"), "seeds[1]", "listed twice");
}

#[test]
fn grids_past_the_limit_are_rejected_before_expansion() {
    let text = tiny_spec(
        "grid:\n  training.steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n  training.lr: [0.1, 0.2, 0.3]\nlimits: {max_trials: 20}\n",
    );
    assert_error(&text, "limits.max_trials", "expands to 30 trials");
    // The default limit applies too.
    let many: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let text = tiny_spec(&format!("grid:\n  training.steps: [{}]\n", many.join(", ")));
    assert_error(&text, "limits.max_trials", "more than limits.max_trials = 256");
}

#[test]
fn override_paths_must_exist() {
    assert_error(
        &tiny_spec("grid:\n  training.lrr: [1]\n"),
        "grid.training.lrr",
        "did you mean `lr`?",
    );
    assert_error(
        &tiny_spec("cases:\n  c: [{name: a, set: {poi.kindd: gligen}}]\n"),
        "cases.c[0].set.poi.kindd",
        "does not exist",
    );
    assert_error(
        &tiny_spec("grid:\n  nothing.here: [1]\n"),
        "grid.nothing.here",
        "has no key `nothing`",
    );
    // Paths inside a resolved architecture exist.
    let plan = parse(&tiny_spec("grid:\n  model.arch.unet.layers_per_block: [1, 2]\n")).unwrap();
    assert_eq!(
        plan.count(JobKind::Pretrain),
        2,
        "a different architecture needs its own base"
    );
}

#[test]
fn two_axes_may_not_set_the_same_path() {
    let text =
        tiny_spec("grid:\n  loss.weights: [learnable]\ncases:\n  c: [{name: a, set: {loss: {weights: learnable}}}]\n");
    assert_error(&text, "", "two axes may not set the same config path");
    assert_error(
        &tiny_spec("grid:\n  seed: [1, 2]\nseeds: 2\n"),
        "",
        "`seeds` sets `seed`",
    );
}

#[test]
fn semantic_errors_name_the_trial_when_only_some_fail() {
    let text = tiny_spec("grid:\n  training.lr: [0.1, -1.0]\n");
    assert_error(&text, "training.lr", "in trial 1 (training.lr=-1)");
    let text = tiny_spec("cases:\n  c: [{name: off, set: {pog.enabled: false}}]\n");
    assert_error(&text, "pog.enh_fusion", "Enh-Fusion is part of PoG");
    assert_error(
        &tiny_spec("grid:\n  poi.placement: [[down.9]]\n"),
        "poi.placement[0]",
        "not an attention block",
    );
    assert_error(
        &tiny_spec("grid:\n  data.resolution: [30]\n"),
        "data.resolution",
        "multiple of 4",
    );
    assert_error(
        &tiny_spec("grid:\n  training.batch_size: [3]\n  world_size: [2]\n"),
        "training.batch_size",
        "world_size",
    );
}

#[test]
fn identical_trials_are_rejected() {
    let text = tiny_spec("cases:\n  c: [{name: a, set: {training.lr: 0.1}}, {name: b, set: {training.lr: 1.0e-1}}]\n");
    assert_error(&text, "", "has exactly the configuration of");
}

#[test]
fn references_must_select_existing_axis_values() {
    let text = tiny_spec("grid:\n  training.lr: [0.1]\nreference:\n  - {when: {training.lr: 0.2}, fid: 1}\n");
    assert_error(&text, "reference[0].when.training.lr", "not one of the axis values");
    let text = tiny_spec("grid:\n  training.lr: [0.1]\nreference:\n  - {when: {training.lr: 0.1}}\n");
    assert_error(&text, "reference[0]", "gives no numbers");
    let text = tiny_spec(
        "grid:\n  training.lr: [0.1]\nreference:\n  - {when: {training.lr: 0.1}, fid: 1}\n  - {when: {training.lr: 0.1}, fid: 2}\n",
    );
    assert_error(&text, "reference[1]", "already gives");
}

#[test]
fn file_datasets_need_detector_training_data() {
    let text = tiny_spec("").replace(
        "val: [{kind: shapes, split: val, count: 4}]",
        "val: [{kind: coco, images: v, instances: v.json}]",
    );
    assert_error(&text, "eval.detector.data", "coco:v");
}

#[test]
fn nothing_is_accepted_from_an_invalid_spec() {
    // Many independent problems are all reported at once.
    let text = tiny_spec("grid:\n  training.lrr: [1]\n  loss.weights: []\nmax_attempts: 0\n");
    let errors = errors_of(&text);
    assert!(errors.len() >= 3, "{errors:#?}");
}

/// The training levers are left out of a serialised configuration while unset, yet axes can
/// sweep them, and an explicit `null` is the same trial as leaving the key out.
#[test]
fn unset_levers_can_be_swept_and_null_means_unset() {
    let swept = parse(&tiny_spec(
        "grid:\n  training.ema_decay: [null, 0.999]\n  loss.min_snr_gamma: [null, 5.0]\n  model.base.pretrain.ema_decay: [null, 0.99]",
    ))
    .expect("levers can be swept");
    assert_eq!(swept.trials.len(), 8);
    let plain = parse(&tiny_spec("")).expect("the plain spec expands");
    let unset = swept
        .trials
        .iter()
        .find(|t| {
            t.config.training.ema_decay.is_none()
                && t.config.loss.min_snr_gamma.is_none()
                && !t.axes.values().any(|v| !v.is_null())
        })
        .expect("the all-null trial");
    assert_eq!(unset.hash, plain.trials[0].hash, "null is the same trial as no key");
    assert!(swept
        .trials
        .iter()
        .any(|t| t.config.training.ema_decay == Some(0.999) && t.config.loss.min_snr_gamma == Some(5.0)));
    let variants = parse(&tiny_spec("grid:\n  data.train.variant: [standard, simple]")).expect("variant sweeps");
    assert_eq!(variants.trials.len(), 2);
    assert_eq!(variants.trials[0].hash, plain.trials[0].hash, "standard is the default");
    assert_ne!(variants.trials[1].hash, plain.trials[0].hash);
    assert_error(
        &tiny_spec("grid:\n  training.ema_decay: [1.5]"),
        "training.ema_decay",
        "",
    );
}
