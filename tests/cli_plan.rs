//! End-to-end: the `spatiallock` binary as a user runs it.

mod common;

use std::process::Output;

use common::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn plan_table6_shows_six_trials() {
    let out = spatiallock(&["plan", "configs/paper/table6.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("experiment paper-table6: 6 trials"), "{text}");
    assert!(text.contains("learnable"), "{text}");
    assert!(
        text.contains("18.32/32.1/41.1/36.7"),
        "paper numbers beside the trial: {text}"
    );
}

#[test]
fn plan_json_is_machine_readable() {
    let out = spatiallock(&["plan", "configs/paper/table4.yaml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let jobs = plan["jobs"].as_array().expect("jobs");
    let count = |kind: &str| jobs.iter().filter(|j| j["kind"] == kind).count();
    assert_eq!(plan["trials"].as_array().map(Vec::len), Some(4));
    assert!(
        count("train") < count("evaluate"),
        "table 4 trains once per training set"
    );
}

#[test]
fn plan_rejects_a_misspelt_key_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = std::fs::read_to_string(root().join("configs/demo.yaml"))
        .expect("demo grid")
        .replace("warmup_steps:", "warmup_stesp:");
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, spec).expect("write spec");
    let out = spatiallock(&["plan", file.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("base.training.warmup_stesp"), "{err}");
    assert!(err.contains("did you mean `warmup_steps`?"), "{err}");
    assert!(stdout(&out).is_empty(), "nothing printed as if accepted");
}

#[test]
fn plan_reports_a_missing_file() {
    let out = spatiallock(&["plan", "configs/does-not-exist.yaml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read configs/does-not-exist.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn doctor_runs_libtorch_without_library_path() {
    let out = spatiallock(&["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The version of the libtorch that was loaded (not a constant), the file it came from, and
    // the CUDA libraries of the CUDA-enabled wheel, loaded whether or not a GPU is present.
    let pinned = std::fs::read_to_string(common::root().join("scripts/setup-torch.sh")).expect("setup-torch.sh");
    let version = pinned
        .lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION="))
        .expect("TORCH_VERSION= in setup-torch.sh");
    assert!(text.contains(&format!("libtorch      {version} (")), "{text}");
    assert!(text.contains(&format!("built against {version}")), "{text}");
    assert!(text.contains("libtorch_cpu.so)"), "{text}");
    for name in ["cuda runtime  ", "cudnn         ", "nccl          "] {
        let value = text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default();
        assert!(
            value.starts_with(|c: char| c.is_ascii_digit()),
            "{name}: {value:?} in\n{text}"
        );
    }
}

/// `scripts/with-torch.sh --libtorch DIR` makes the binary load another libtorch than the one its
/// RUNPATH names (how the release binary runs on a GPU machine's own PyTorch), and `doctor` says
/// so. The other libtorch here is a hard-linked copy of the set-up's wheel in a folder of its own.
#[test]
fn doctor_names_a_foreign_libtorch_loaded_through_with_torch() {
    let torch = root()
        .join(".libtorch")
        .canonicalize()
        .expect(".libtorch (run scripts/setup.sh)");
    let site = torch.parent().expect("site-packages");
    let copy = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let foreign = copy.path().join("site-packages");
    std::fs::create_dir_all(foreign.join("torch")).expect("mkdir");
    for (from, to) in [
        (torch.join("lib"), foreign.join("torch/lib")),
        (site.join("nvidia"), foreign.join("nvidia")),
    ] {
        if !from.exists() {
            continue; // a CPU-only libtorch has no nvidia/ folder
        }
        let status = std::process::Command::new("cp")
            .arg("-al")
            .arg(&from)
            .arg(&to)
            .status()
            .expect("cp runs");
        assert!(
            status.success(),
            "hard-linking {from:?} to {to:?} (the target dir must share a filesystem with the libtorch cache)"
        );
    }
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/with-torch.sh"))
        .arg("--libtorch")
        .arg(foreign.join("torch"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["doctor", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("with-torch.sh runs");
    assert!(out.status.success(), "{}", text(&out));
    let foreign = foreign.canonicalize().expect("canonical path");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let loaded = info["torch_library"].as_str().unwrap_or_default();
    assert!(loaded.starts_with(foreign.to_str().expect("utf-8 path")), "{info}");
    if let Some(cudart) = info["cuda_runtime"]["path"].as_str() {
        assert!(cudart.starts_with(foreign.to_str().expect("utf-8 path")), "{info}");
    }
    // Without the launcher the same binary loads the libtorch its RUNPATH names.
    let plain = spatiallock(&["doctor", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("doctor --json");
    assert!(
        info["torch_library"]
            .as_str()
            .unwrap_or_default()
            .starts_with(torch.to_str().expect("utf-8")),
        "{info}"
    );
}

#[test]
fn with_torch_refuses_a_folder_that_is_not_libtorch() {
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/with-torch.sh"))
        .args(["--libtorch", "/nonexistent", "--", "true"])
        .output()
        .expect("with-torch.sh runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("/nonexistent is not a libtorch folder"),
        "{}",
        text(&out)
    );
}
