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

mod fid {
    use super::fixtures;
    use spatiallock_model::eval::frechet::{frechet_distance, GaussianStats, StatsAccumulator};
    use tch::{Kind, Tensor};

    #[test]
    fn frechet_distance_matches_pytorch_fid() {
        tch::set_num_threads(1);
        let dir = fixtures().join("fid");
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases")).expect("json");
        for c in cases {
            let name = c["name"].as_str().expect("name");
            let a = GaussianStats::read_npz(&dir.join(c["a"].as_str().expect("a"))).expect("stats a");
            let b = GaussianStats::read_npz(&dir.join(c["b"].as_str().expect("b"))).expect("stats b");
            let ours = frechet_distance(&a, &b).expect("distance");
            // pytorch-fid perturbs both covariances by 1e-6·I when scipy's sqrtm fails; that
            // case is compared with the unperturbed exact value it also records.
            let key = if c["eps_retry"].as_bool() == Some(true) {
                "fid_eigvals"
            } else {
                "fid"
            };
            let want = c[key].as_f64().expect("fid");
            let err = (ours - want).abs() / want.abs().max(1.0);
            println!("{name}: ours {ours} vs {want} ({key}), error {err:.2e}");
            assert!(err <= 1e-6, "{name}: ours {ours} vs {want}");
        }
    }

    #[test]
    fn streaming_statistics_match_numpy_cov() {
        let t: std::collections::HashMap<String, Tensor> = Tensor::read_npz(fixtures().join("fid/features.npz"))
            .expect("npz")
            .into_iter()
            .collect();
        let feats = &t["feats"];
        let mut acc = StatsAccumulator::new(feats.size()[1]);
        for chunk in feats.split(64, 0) {
            acc.add(&chunk).expect("batch");
        }
        let s = acc.finish().expect("stats");
        let mu_err = (&s.mu - t["mu"].to_kind(Kind::Double)).abs().max().double_value(&[]);
        let sigma_err = (&s.sigma - t["sigma"].to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            mu_err < 1e-12 && sigma_err < 1e-12,
            "mu {mu_err:e}, sigma {sigma_err:e}"
        );
    }

    #[test]
    fn bad_statistics_files_name_the_array() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.npz");
        let mu = Tensor::zeros([4], (Kind::Double, tch::Device::Cpu));
        Tensor::write_npz(&[("mu", &mu)], &path).expect("write");
        let err = GaussianStats::read_npz(&path).expect_err("no sigma").to_string();
        assert!(err.contains("s.npz") && err.contains("no array `sigma`"), "{err}");
        let sigma = Tensor::zeros([3, 3], (Kind::Double, tch::Device::Cpu));
        Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &path).expect("write");
        let err = GaussianStats::read_npz(&path).expect_err("shape").to_string();
        assert!(err.contains("`sigma` must be [4, 4]"), "{err}");
        std::fs::write(&path, b"garbage").expect("write");
        assert!(GaussianStats::read_npz(&path).is_err());
    }

    #[test]
    fn inception_features_match_pytorch_fid() {
        use spatiallock_model::eval::inception::{read_image01, FidInception};
        tch::set_num_threads(1);
        let net = FidInception::load_installed(tch::Device::Cpu)
            .expect("loads")
            .expect("the FID Inception is installed by scripts/setup.sh");
        let dir = fixtures().join("inception");
        let want: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("features.safetensors"))
                .expect("features")
                .into_iter()
                .collect();
        let pre: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("preprocessed.safetensors"))
                .expect("pre")
                .into_iter()
                .collect();
        let mut names: Vec<_> = std::fs::read_dir(dir.join("images"))
            .expect("images")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        assert_eq!(names.len(), 3);
        for (i, path) in names.iter().enumerate() {
            let img = read_image01(path).expect("image");
            let x = FidInception::preprocess(&img);
            if i == 0 {
                let diff = (x.narrow(1, 0, 1) - &pre["input"]).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "preprocessing differs by {diff}");
            }
            let sums = x
                .to_kind(Kind::Double)
                .sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Double)
                .view([3]);
            let want_sums = pre["input_sum"].get(i as i64);
            assert!(
                (sums - want_sums).abs().max().double_value(&[]) < 1e-2,
                "image {i} preprocessing checksums"
            );
            let f = net.features(&img).expect("features");
            let diff = (&f - want["features"].narrow(0, i as i64, 1))
                .abs()
                .max()
                .double_value(&[]);
            println!("{}: max feature difference {diff:.2e}", path.display());
            assert!(diff <= 1e-4, "image {i}: features differ by {diff}");
        }
    }
}
