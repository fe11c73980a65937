//! End-to-end: `spatiallock train` then `spatiallock sample`, as a user runs them.

mod common;

use common::*;
use spatiallock_model::layout::JobDir;

#[test]
fn train_then_sample_a_tiny_trial() {
    let out = tempfile::tempdir().expect("tempdir");
    let runs = out.path().to_str().expect("utf-8");
    let first = spatiallock(&["train", "tests/fixtures/tiny-trial.yaml", "--out", runs]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("trial 0: trained train-"), "{}", text(&first));
    // The caption embeddings were kept for the next run on the same data.
    let stores: Vec<String> = std::fs::read_dir(out.path().join(".cache/encoders"))
        .expect("encoder cache")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    assert!(stores.iter().any(|s| s.starts_with("captions-")), "{stores:?}");
    assert!(text(&first).contains("encoder caches: inputs"), "{}", text(&first));
    let exp = out.path().join("tiny-trial");
    let train_dir = std::fs::read_dir(&exp)
        .expect("experiment dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("train-")))
        .expect("train job dir");
    let metrics = std::fs::read_to_string(JobDir::new(&train_dir).metrics_log()).expect("metrics");
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect();
    assert_eq!(rows.len(), 4);
    for key in [
        "loss",
        "loss_diffusion",
        "loss_perception",
        "lambda_g",
        "lambda_p",
        "gates",
        "lr",
        "images_per_second",
    ] {
        assert!(rows[3].get(key).is_some(), "metrics row lacks {key}: {}", rows[3]);
    }

    // Running it again finds both jobs done.
    let again = spatiallock(&["train", "tests/fixtures/tiny-trial.yaml", "--out", runs]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("done already"), "{}", text(&again));

    // Evaluate: trains the detector, generates, detects, scores, writes results and a grid.
    let eval = spatiallock(&["evaluate", "tests/fixtures/tiny-trial.yaml", "--out", runs]);
    assert!(eval.status.success(), "{}", text(&eval));
    assert!(
        text(&eval).contains("mAP") && text(&eval).contains("s/image"),
        "{}",
        text(&eval)
    );
    let eval_dir = std::fs::read_dir(&exp)
        .expect("experiment dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("evaluate-"))
        })
        .expect("evaluate job dir");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(JobDir::new(&eval_dir).results()).expect("results"))
            .expect("json");
    assert_eq!(results["images"], 4);
    assert!(
        results["fid"].is_number() || results["fd_detector"].is_number(),
        "{results}"
    );
    assert!(JobDir::new(&eval_dir).samples().is_file() && JobDir::new(&eval_dir).detections().is_file());
    // Deterministic given the seed: a second evaluation gives the same numbers.
    let again = spatiallock(&["evaluate", "tests/fixtures/tiny-trial.yaml", "--out", runs]);
    assert!(again.status.success(), "{}", text(&again));
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(JobDir::new(&eval_dir).results()).expect("results"))
            .expect("json");
    for key in ["coco_stats", "fid", "fd_detector", "images"] {
        assert_eq!(results[key], second[key], "{key} differs between runs");
    }

    let ckpt = std::fs::read_to_string(JobDir::new(&train_dir).final_marker()).expect("final marker");
    let layout = out.path().join("layout.json");
    std::fs::write(
        &layout,
        r#"{"caption": "a red circle", "objects": [{"box": [0.1, 0.1, 0.6, 0.6], "phrase": "red circle"}]}"#,
    )
    .expect("layout");
    let png = out.path().join("image.png");
    let sampled = spatiallock(&[
        "sample",
        "--checkpoint",
        ckpt.trim(),
        "--layout",
        layout.to_str().expect("utf-8"),
        "--out",
        png.to_str().expect("utf-8"),
        "--draw-boxes",
        "--steps",
        "4",
    ]);
    assert!(sampled.status.success(), "{}", text(&sampled));
    let bytes = std::fs::read(&png).expect("png written");
    assert_eq!(&bytes[1..4], b"PNG");
    // IHDR width and height (big-endian) at bytes 16..24: one 32×32 image.
    assert_eq!(&bytes[16..24], &[0, 0, 0, 32, 0, 0, 0, 32]);
}

#[test]
fn train_rejects_a_trial_out_of_range() {
    let out = spatiallock(&["train", "configs/paper/table6.yaml", "--trial", "9"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--trial 9: the grid has 6 trial(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn sample_rejects_a_bad_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("bad.json");
    std::fs::write(&layout, r#"{"objects": 3}"#).expect("write");
    let out = spatiallock(&[
        "sample",
        "--checkpoint",
        dir.path().to_str().expect("utf-8"),
        "--layout",
        layout.to_str().expect("utf-8"),
        "--out",
        "x.png",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.json: expected"), "{}", text(&out));
}
