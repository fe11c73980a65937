//! COCO mAP and Fréchet distance against pycocotools and pytorch-fid
//! (`model/tests/fixtures/eval`, made by `scripts/fixtures/make_eval.sh`).

use std::path::PathBuf;

use spatiallock_model::eval::coco::{evaluate, load_detections, CocoGt};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

#[test]
fn coco_stats_equal_pycocotools_on_every_edge_case() {
    let cases = [
        "ties", "crowd", "areas", "missing", "many", "zero", "random", "empty_gt",
    ];
    for case in cases {
        let dir = fixtures().join("coco").join(case);
        let gt = CocoGt::load(&dir.join("gt.json")).unwrap_or_else(|e| panic!("{case}: {e}"));
        let dts = load_detections(&dir.join("dt.json"), &gt).unwrap_or_else(|e| panic!("{case}: {e}"));
        let ours = evaluate(&gt, &dts);
        let text = std::fs::read_to_string(dir.join("stats.json")).expect("stats");
        let want: serde_json::Value = serde_json::from_str(&text).expect("json");
        let stats: Vec<f64> = want["stats"]
            .as_array()
            .expect("stats")
            .iter()
            .map(|v| v.as_f64().expect("f64"))
            .collect();
        for (i, (a, b)) in ours.stats.iter().zip(&stats).enumerate() {
            assert!((a - b).abs() <= 1e-12, "{case}: stat {i}: ours {a} vs pycocotools {b}");
        }
        if let Some(p) = want.get("precision_sum").and_then(|v| v.as_f64()) {
            let ours_p: f64 = ours.precision.iter().sum();
            assert!(
                (ours_p - p).abs() <= 1e-9 * p.abs().max(1.0),
                "{case}: precision sum {ours_p} vs {p}"
            );
        }
        if let Some(r) = want.get("recall_sum").and_then(|v| v.as_f64()) {
            let ours_r: f64 = ours.recall.iter().sum();
            assert!(
                (ours_r - r).abs() <= 1e-9 * r.abs().max(1.0),
                "{case}: recall sum {ours_r} vs {r}"
            );
        }
    }
}

#[test]
fn detections_on_unknown_images_are_an_error() {
    let dir = fixtures().join("coco/unknown_image");
    let gt = CocoGt::load(&dir.join("gt.json")).expect("gt");
    let err = load_detections(&dir.join("dt.json"), &gt)
        .expect_err("unknown image")
        .to_string();
    assert!(
        err.contains("dt.json") && err.contains("is not an image of the ground truth"),
        "{err}"
    );
}

#[test]
fn malformed_coco_files_name_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gt_path = dir.path().join("gt.json");
    std::fs::write(&gt_path, r#"{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, -3, 4]}], "categories": [{"id": 1}]}"#).expect("write");
    let err = CocoGt::load(&gt_path).expect_err("negative size").to_string();
    assert!(
        err.contains("gt.json") && err.contains("annotations[0]") && err.contains("negative"),
        "{err}"
    );
    std::fs::write(&gt_path, r#"{"images": [{"id": "one"}]}"#).expect("write");
    let err = CocoGt::load(&gt_path).expect_err("bad id").to_string();
    assert!(err.contains("images[0].id"), "{err}");
    std::fs::write(&gt_path, "not json").expect("write");
    assert!(CocoGt::load(&gt_path).is_err());
}
