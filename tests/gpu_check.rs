//! `scripts/gpu-check.sh --cpu`: the prepared GPU check in its reduced CPU mode, run as CI runs
//! it, so that the script a GPU machine gets cannot rot. Needs the diffusers reference installed
//! in the set-up's venv (scripts/test.sh does it: scripts/bench/requirements.txt).

mod common;

use common::*;
use serde_json::Value;

#[test]
fn gpu_check_cpu_mode_writes_our_and_diffusers_measurements() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/gpu-check.sh"))
        .arg("--cpu")
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_spatiallock"))
        .arg("--out")
        .arg(out_dir.path())
        .env("OMP_NUM_THREADS", "1")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("gpu-check.sh runs");
    assert!(out.status.success(), "{}", text(&out));
    let json: Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("gpu-check.json")).expect("gpu-check.json written"))
            .expect("gpu-check.json parses");
    assert_eq!(json["mode"], "cpu (reduced)");
    assert_eq!(json["failed_measurements"], 0, "{json}");
    assert_eq!(
        json["doctor"]["torch_version"], json["doctor"]["torch_built_against"],
        "{json}"
    );
    for (name, precision, unit) in [
        ("train_bf16", "bf16", "s/step"),
        ("train_fp32", "fp32", "s/step"),
        ("sample_fp32", "fp32", "s/image"),
        ("sample_bf16", "bf16", "s/image"),
    ] {
        let m = &json[name];
        assert_eq!(m["precision"], precision, "{name}: {m}");
        let rows = m["rows"].as_array().unwrap_or_else(|| panic!("{name} has rows: {m}"));
        let names: Vec<&str> = rows.iter().filter_map(|r| r["implementation"].as_str()).collect();
        assert_eq!(names.first(), Some(&"diffusers GLIGEN"), "{name}: {names:?}");
        assert!(names.iter().any(|n| n.starts_with("spatiallock")), "{name}: {names:?}");
        for r in rows {
            assert_eq!(r["unit"], unit, "{name}: {r}");
            let secs = r["seconds"].as_f64().unwrap_or(-1.0);
            assert!(secs > 0.0 && secs.is_finite(), "{name}: {r}");
        }
        assert_eq!(m["reference"]["impl"], "diffusers", "{name}: {m}");
    }
    let log = std::fs::read_to_string(out_dir.path().join("gpu-check.log")).expect("log");
    assert!(log.contains("vs diffusers") && log.contains("libtorch"), "{log}");
}
