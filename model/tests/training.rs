//! Training on a handful of shapes: pretraining a tiny base, then SpatialLock on it —
//! losses fall, gates move, λ learns, runs are deterministic and resume exactly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use spatiallock_model::error::ModelError;
use spatiallock_model::hooks::Hooks;
use spatiallock_model::hooks::StepMetrics;
use spatiallock_model::layout::JobDir;
use spatiallock_model::train::run::{pretrain, train, RunOptions};
use spatiallock_protocol::expand::{train_spec, trial_from_value, PretrainSpec, TrainSpec};
use spatiallock_protocol::trial::builtin_model;
use tch::Device;

fn trial(extra: serde_json::Value) -> TrainSpec {
    let mut v = serde_json::json!({
        "seed": 3,
        "model": {"arch": "tiny", "base": {"pretrain": {"steps": 30, "batch_size": 8, "lr": 2e-3}}},
        "data": {"train": {"kind": "shapes", "split": "train", "count": 8, "seed": 5},
                 "val": [{"kind": "shapes", "split": "val", "count": 4}], "resolution": 32},
        "training": {"steps": 40, "batch_size": 8, "lr": 3e-3, "caption_dropout": 0.0,
                     "grounding_dropout": 0.0, "checkpoint_every": 1000},
    });
    merge(&mut v, extra);
    let cfg = trial_from_value(v).expect("valid trial");
    let arch = cfg.arch().expect("resolved").clone();
    train_spec(&cfg, &arch)
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// One small base shared by every test of this file.
fn base() -> &'static Path {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, dir) = BASE.get_or_init(|| {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = PretrainSpec {
            arch: builtin_model("tiny").expect("tiny"),
            pretrain: serde_json::from_value(serde_json::json!({"steps": 30, "batch_size": 8, "lr": 2e-3}))
                .expect("cfg"),
            data: serde_json::from_value(
                serde_json::json!({"kind": "shapes", "split": "train", "count": 8, "seed": 5}),
            )
            .expect("data"),
            resolution: 32,
        };
        let opts = RunOptions {
            out: dir.path(),
            resume: None,
            checkpoint_every: 0,
            device: Device::Cpu,
            cache_dir: None,
            data_parallel: None,
        };
        let mut record = Record::default();
        pretrain(&spec, &opts, &mut record).expect("pretraining runs");
        let losses: Vec<f64> = record.seen.iter().map(|m| m.loss_diffusion).collect();
        let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            last < 0.85 * first,
            "pretraining loss should fall: {first:.4} → {last:.4}"
        );
        let base = JobDir::new(dir.path()).base();
        (dir, base)
    });
    dir
}

/// Hooks that record every step and ask to stop after step `stop_at`.
#[derive(Default)]
struct Record {
    seen: Vec<StepMetrics>,
    stop_at: Option<u64>,
}

impl Hooks for Record {
    fn metric(&mut self, _: &str, _: u64, _: f64) {}
    fn train_step(&mut self, m: &StepMetrics) {
        self.seen.push(m.clone());
    }
    fn checkpoint_committed(&mut self, _: u64, _: &Path) {}
    fn log(&mut self, _: &str) {}
    fn should_stop(&mut self) -> bool {
        self.stop_at.is_some() && self.seen.last().map(|m| m.step) == self.stop_at
    }
}

fn run(spec: &TrainSpec, out: &Path, resume: Option<&Path>, stop_at: Option<u64>) -> Vec<StepMetrics> {
    tch::set_num_threads(1);
    let opts = RunOptions {
        out,
        resume,
        checkpoint_every: 5,
        device: Device::Cpu,
        cache_dir: None,
        data_parallel: None,
    };
    let mut record = Record {
        seen: Vec::new(),
        stop_at,
    };
    match train(spec, base(), &opts, &mut record) {
        Ok(()) => assert_eq!(stop_at, None, "asked to stop at {stop_at:?}, ran to the end"),
        Err(ModelError::Stopped(at)) => assert!(stop_at.is_some(), "stopped unasked {at}"),
        Err(e) => panic!("training runs: {e}"),
    }
    record.seen
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn overfitting_a_handful_of_shapes_lowers_both_losses_and_moves_gates() {
    // The whole U-Net is trainable too, so the diffusion loss can fall as it overfits.
    let spec = trial(
        serde_json::json!({"training": {"steps": 60, "trainable": ["grounding", "perception", "loss_weights", "unet"]}}),
    );
    let out = tempfile::tempdir().expect("tempdir");
    let m = run(&spec, out.path(), None, None);
    assert_eq!(m.len(), 60);
    let diff: Vec<f64> = m.iter().map(|s| s.loss_diffusion).collect();
    let perc: Vec<f64> = m.iter().map(|s| s.loss_perception.expect("PoG on")).collect();
    let (first, last) = (..10, 50..);
    println!(
        "diffusion {:.4} → {:.4}, perception {:.4} → {:.4}",
        mean(&diff[first]),
        mean(&diff[last.clone()]),
        mean(&perc[first]),
        mean(&perc[last.clone()])
    );
    assert!(
        mean(&perc[last.clone()]) < 0.6 * mean(&perc[first]),
        "perception loss should fall well below its start"
    );
    assert!(
        mean(&diff[last]) < 0.8 * mean(&diff[first]),
        "diffusion loss should fall well below its start"
    );
    let last = m.last().expect("steps");
    assert!(last.gate_mean > 1e-3, "gates move off zero: {}", last.gate_mean);
    assert!(!last.gates.is_empty());
    assert!(
        (last.lambda_g - 1.0).abs() > 1e-4 && (last.lambda_p - 1.0).abs() > 1e-4,
        "learnable λ moved: {last:?}"
    );
    assert!(JobDir::new(out.path()).final_marker().is_file());
}

#[test]
fn runs_are_deterministic_and_resume_exactly() {
    let spec = trial(serde_json::json!({"training": {"steps": 10}}));
    let a_dir = tempfile::tempdir().expect("tempdir");
    let full = run(&spec, a_dir.path(), None, None);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let again = run(&spec, b_dir.path(), None, None);
    let losses = |m: &[StepMetrics]| m.iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses(&full), losses(&again), "same seed, same losses");

    // Stop after step 5 (checkpointed), resume in a fresh process-like run.
    let c_dir = tempfile::tempdir().expect("tempdir");
    let first = run(&spec, c_dir.path(), None, Some(5));
    assert_eq!(first.len(), 5);
    let ckpt = JobDir::new(c_dir.path()).checkpoint(5);
    let rest = run(&spec, c_dir.path(), Some(&ckpt), None);
    assert_eq!(rest.first().map(|m| m.step), Some(6));
    let resumed: Vec<f64> = losses(&first).into_iter().chain(losses(&rest)).collect();
    assert_eq!(resumed, losses(&full), "resume gives the uninterrupted run's losses");
}

#[test]
fn fixed_weights_and_pog_off_train_what_they_should() {
    let spec = trial(
        serde_json::json!({"training": {"steps": 3}, "pog": {"enabled": false, "enh_fusion": false},
                                        "loss": {"weights": [1.0, 0.0]}}),
    );
    let out = tempfile::tempdir().expect("tempdir");
    let m = run(&spec, out.path(), None, None);
    assert!(m
        .iter()
        .all(|s| s.loss_perception.is_none() && s.lambda_g == 1.0 && s.lambda_p == 0.0));
}

#[test]
fn bf16_precision_trains_under_autocast_with_fp32_losses() {
    // `precision: bf16` forces the autocast path on the CPU (on CUDA `auto` takes it): the
    // forward runs in bf16, so the losses differ from fp32's, but they stay close and fall.
    let steps = serde_json::json!({"training": {"steps": 12}});
    let mut bf16 = steps.clone();
    merge(&mut bf16, serde_json::json!({"training": {"precision": "bf16"}}));
    let fp32_dir = tempfile::tempdir().expect("tempdir");
    let fp32 = run(&trial(steps), fp32_dir.path(), None, None);
    let bf16_dir = tempfile::tempdir().expect("tempdir");
    let half = run(&trial(bf16), bf16_dir.path(), None, None);
    assert_eq!(half.len(), 12);
    let first = |m: &[StepMetrics]| m[0].loss_diffusion;
    assert_ne!(
        first(&half),
        first(&fp32),
        "bf16 autocast must change the forward's rounding"
    );
    let rel = (first(&half) - first(&fp32)).abs() / first(&fp32);
    assert!(rel < 0.05, "bf16 and fp32 first losses differ by {rel:.4}");
    assert!(half
        .iter()
        .all(|m| m.loss.is_finite() && m.loss_perception.is_some_and(f64::is_finite)));
    let p: Vec<f64> = half.iter().filter_map(|m| m.loss_perception).collect();
    assert!(
        mean(&p[p.len() - 4..]) < mean(&p[..4]),
        "perception loss falls under bf16: {p:?}"
    );
    // Each checkpoint records the precision its run used.
    let precision = |dir: &Path| {
        let state = std::fs::read_to_string(
            JobDir::new(dir)
                .checkpoint(12)
                .join(spatiallock_model::layout::CHECKPOINT_STATE),
        )
        .expect("state.json");
        serde_json::from_str::<serde_json::Value>(&state).expect("json")["precision"].clone()
    };
    assert_eq!(precision(bf16_dir.path()), "bf16-autocast");
    assert_eq!(precision(fp32_dir.path()), "fp32");
}
