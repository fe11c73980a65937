//! End-to-end: `spatiallock model summary` and `spatiallock model forward`.

mod common;

use common::*;

use std::path::Path;

use tch::Tensor;

/// `spatiallock model forward --model MODEL --inputs INPUTS --out OUT`.
fn model_forward(model: &Path, inputs: &Path, out: &Path) -> std::process::Output {
    let arg = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (model, inputs, out) = (arg(model), arg(inputs), arg(out));
    spatiallock(&[
        "model", "forward", "--model", &model, "--inputs", &inputs, "--out", &out,
    ])
}

#[test]
fn summary_counts_trainable_grounding_for_both_variants() {
    let out = spatiallock(&["model", "summary", "tiny"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("SpatialLock (Grounding-Attention), grounding in [down.2, up.0]"),
        "{text}"
    );
    assert!(
        text.contains("GLIGEN (gated self-attention), grounding in [down.1, down.2, mid, up.0, up.1]"),
        "{text}"
    );
    // PoG is counted, and the ratio stands beside the paper's with what each counts.
    assert!(text.contains("PoG perception head at 32 px, 80 categories"), "{text}");
    assert!(text.contains("SpatialLock PoI + PoG + loss weights"), "{text}");
    assert!(
        text.contains("less than 50.7% of those in GLIGEN\" — it does not say what it counts"),
        "{text}"
    );
    assert!(text.contains("ours counts every parameter training updates"), "{text}");
    assert!(!text.contains("not counted yet"), "{text}");
}

#[test]
fn summary_json_has_every_count() {
    let out = spatiallock(&["model", "summary", "tiny", "--json", "--classes", "12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let int = |v: &serde_json::Value| v.as_i64().unwrap_or_else(|| panic!("a count: {v}"));
    let variants = s["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2);
    assert_eq!(variants[0]["grounding_blocks"], serde_json::json!(["down.2", "up.0"]));
    let trainable = &s["trainable"];
    let (poi, gligen) = (int(&trainable["spatiallock_poi"]), int(&trainable["gligen_poi"]));
    assert_eq!(poi, int(&variants[0]["trainable"]));
    assert_eq!(s["perception"]["classes"], 12);
    assert!(int(&s["perception"]["total"]) > 0);
    assert_eq!(int(&s["loss_weights"]), 2, "s_g and s_p");
    assert_eq!(
        int(&trainable["spatiallock_poi_pog"]),
        poi + int(&s["perception"]["total"]) + int(&s["loss_weights"])
    );
    let percent = trainable["poi_percent"].as_f64().expect("a ratio");
    assert!((percent - 100.0 * poi as f64 / gligen as f64).abs() < 1e-9);
    assert!(
        s["paper"]["basis"].as_str().is_some_and(|b| b.contains("not stated")),
        "{}",
        s["paper"]
    );
    // A PoG head for a size the U-Net cannot take is refused, naming the multiple.
    let bad = spatiallock(&["model", "summary", "tiny", "--resolution", "30"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--resolution 30: must be a positive multiple of 4"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn summary_rejects_unknown_configs() {
    let out = spatiallock(&["model", "summary", "sd99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a built-in architecture"));
}

#[test]
fn forward_round_trips_the_gligen_fixture() {
    tch::set_num_threads(1);
    let fixtures = root().join("model/tests/fixtures/nets");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("out.safetensors");
    let model = fixtures.join("gligen-tiny");
    let inputs = fixtures.join("io/unet_gligen.safetensors");
    let out = model_forward(&model, &inputs, &out_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out_file)
        .expect("outputs")
        .into_iter()
        .collect();
    let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&inputs)
        .expect("reference")
        .into_iter()
        .collect();
    let diff = (&ours["eps"] - &reference["eps"]).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "eps differs by {diff}");
    assert!(ours.contains_key("tap_down_0") && ours.contains_key("tap_mid"));
}

#[test]
fn forward_names_a_missing_input() {
    let fixtures = root().join("model/tests/fixtures/nets");
    let dir = tempfile::tempdir().expect("tempdir");
    let partial = dir.path().join("in.safetensors");
    let t = Tensor::zeros([2, 7, 16], (tch::Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(&[("encoder_hidden_states", &t)], &partial).expect("write");
    let model = fixtures.join("sd-tiny");
    let out = model_forward(&model, &partial, &dir.path().join("o.safetensors"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing input tensor `sample`"));
}

#[test]
fn eval_coco_prints_the_twelve_stats() {
    let dir = root().join("model/tests/fixtures/eval/coco/random");
    let (gt, dt) = (dir.join("gt.json"), dir.join("dt.json"));
    let out = spatiallock(&[
        "eval",
        "coco",
        "--gt",
        gt.to_str().expect("utf-8"),
        "--dt",
        dt.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(stats.as_object().map(|m| m.len()), Some(12));
    let text = spatiallock(&[
        "eval",
        "coco",
        "--gt",
        gt.to_str().expect("utf-8"),
        "--dt",
        dt.to_str().expect("utf-8"),
    ]);
    assert!(String::from_utf8_lossy(&text.stdout)
        .contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"));
    let bad = root().join("model/tests/fixtures/eval/coco/unknown_image");
    let out = spatiallock(&[
        "eval",
        "coco",
        "--gt",
        bad.join("gt.json").to_str().expect("utf-8"),
        "--dt",
        bad.join("dt.json").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an image of the ground truth"));
}

#[test]
fn forward_runs_the_text_encoder_and_vae_decoder_too() {
    tch::set_num_threads(1);
    let fixtures = root().join("model/tests/fixtures/nets");
    let read = |name: &str| -> std::collections::HashMap<String, Tensor> {
        Tensor::read_safetensors(fixtures.join("io").join(name))
            .expect("fixture")
            .into_iter()
            .collect()
    };
    let (unet, clip, vae) = (
        read("unet.safetensors"),
        read("clip.safetensors"),
        read("vae.safetensors"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("in.safetensors");
    let named = [
        ("sample", &unet["sample"]),
        ("timestep", &unet["timestep"]),
        ("encoder_hidden_states", &unet["encoder_hidden_states"]),
        ("input_ids", &clip["input_ids"]),
        ("latents", &vae["latent_mean"]),
    ];
    Tensor::write_safetensors(&named, &inputs).expect("write");
    let out_file = dir.path().join("out.safetensors");
    let model = fixtures.join("sd-tiny");
    let out = model_forward(&model, &inputs, &out_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out_file)
        .expect("outputs")
        .into_iter()
        .collect();
    let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-4;
    assert!(close(&ours["eps"], &unet["eps"]));
    assert!(close(&ours["pooled"], &clip["pooled"]));
    assert!(close(&ours["last_hidden_state"], &clip["last_hidden_state"]));
    assert!(close(&ours["decoded"], &vae["decoded"]));
}

#[test]
fn fid_stats_and_score_from_image_folders() {
    let images = root().join("model/tests/fixtures/eval/inception/images");
    let dir = tempfile::tempdir().expect("tempdir");
    let npz = dir.path().join("stats.npz");
    let out = spatiallock(&[
        "fid",
        "stats",
        images.to_str().expect("utf-8"),
        "--out",
        npz.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let score = spatiallock(&[
        "fid",
        "score",
        npz.to_str().expect("utf-8"),
        images.to_str().expect("utf-8"),
    ]);
    assert!(score.status.success(), "{}", String::from_utf8_lossy(&score.stderr));
    let text = String::from_utf8_lossy(&score.stdout);
    let value: f64 = text.trim().trim_start_matches("FID ").parse().expect("a number");
    // The same images: 0, never a negative round-off value such as -0.000073.
    assert!((0.0..1e-3).contains(&value), "same images, FID ≈ 0: {text}");
    assert!(!text.contains('-'), "{text}");
    // 3 images against 2048 dimensions: the FID is printed with a warning naming the count.
    let warning = String::from_utf8_lossy(&score.stderr);
    assert!(
        warning.contains("warning: FID from 3 and 3 images, fewer than its 2048 feature dimensions"),
        "{warning}"
    );

    let json = spatiallock(&[
        "fid",
        "score",
        npz.to_str().expect("utf-8"),
        images.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(report["metric"], "fid");
    assert_eq!(report["dims"], 2048);
    assert_eq!(
        report["images"],
        serde_json::json!([3, 3]),
        "the .npz written by `fid stats` records its count"
    );
    assert!(
        report["value"].as_f64().is_some_and(|v| (0.0..1e-3).contains(&v)),
        "{report}"
    );
    assert!(
        report["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("3 and 3 images")),
        "{report}"
    );

    // An unreadable image is an error naming the file.
    std::fs::write(dir.path().join("broken.png"), b"not a png").expect("write");
    std::fs::copy(images.join("0_64x48.png"), dir.path().join("ok.png")).expect("copy");
    let bad = spatiallock(&[
        "fid",
        "stats",
        dir.path().to_str().expect("utf-8"),
        "--out",
        npz.to_str().expect("utf-8"),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("broken.png"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Statistics files other FID tools crashed on are refused with one line naming the file and
/// the problem (exit 1, not a libtorch panic).
#[test]
fn fid_score_refuses_statistics_with_nan_in_sigma() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eye = Tensor::eye(3, (tch::Kind::Double, tch::Device::Cpu));
    let good = dir.path().join("good.npz");
    Tensor::write_npz(
        &[
            ("mu", &Tensor::zeros([3], (tch::Kind::Double, tch::Device::Cpu))),
            ("sigma", &eye),
        ],
        &good,
    )
    .expect("write");
    let sigma = eye.copy();
    let _ = sigma.get(0).get(1).fill_(f64::NAN);
    let _ = sigma.get(1).get(0).fill_(f64::NAN);
    let bad = dir.path().join("nan-sigma.npz");
    Tensor::write_npz(
        &[
            ("mu", &Tensor::zeros([3], (tch::Kind::Double, tch::Device::Cpu))),
            ("sigma", &sigma),
        ],
        &bad,
    )
    .expect("write");
    let out = spatiallock(&[
        "fid",
        "score",
        bad.to_str().expect("utf-8"),
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("nan-sigma.npz") && err.contains("`sigma` holds 2 NaN"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no FID printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
