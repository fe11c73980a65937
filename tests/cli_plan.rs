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

/// The "tiny" grid: 5 training steps, but the default evaluation (a 2000-step detector,
/// 50 DDIM steps over every layout). `plan` shows each job's steps, images, sampler steps and
/// estimated time, the totals and what they assume, and warns; `--json` carries the same.
#[test]
fn plan_shows_costs_and_warns_about_a_tiny_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tiny.yaml");
    std::fs::write(
        &file,
        "name: tiny-look\nbase:\n  model: {arch: tiny, base: {pretrain: {steps: 20, batch_size: 16}}}\n  data:\n    \
         train: {kind: shapes, split: train, count: 64}\n    val: [{kind: shapes, split: val, count: 32}]\n    \
         resolution: 32\n  training: {steps: 5, batch_size: 16}\n",
    )
    .expect("write spec");
    let path = file.to_str().expect("utf-8 path");

    let out = spatiallock(&["plan", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "steps×batch",
        "est. time",
        "2000×32",          // the detector's default steps × batch
        "5×16",             // the training job
        "estimated time: ", // the totals
        "with the jobs one after another; at best",
        "an estimate for one CPU core per rank",
        "eval.detector.steps: the evaluation detector trains for 2000 steps (the default of eval.detector.steps), \
         400× the 5 training steps",
        "data.val: FID on shapes/val from 32 real and 32 generated images, fewer than the 2048 dimensions",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let evaluation = text
        .lines()
        .find(|l| l.trim_start().starts_with("evaluate-"))
        .unwrap_or_else(|| panic!("an evaluation row in\n{text}"));
    assert!(
        evaluation.contains(" 32 ") && evaluation.contains(" 50 "),
        "{evaluation}"
    );

    let out = spatiallock(&["plan", path, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let cost = &plan["cost"];
    let jobs = cost["jobs"].as_array().expect("cost.jobs");
    assert_eq!(jobs.len(), plan["jobs"].as_array().map_or(0, Vec::len));
    let of = |kind: &str| jobs.iter().find(|j| j["kind"] == kind).expect("a job of the kind");
    assert_eq!(of("train-detector")["steps"], 2000);
    assert_eq!(of("train")["steps"], 5);
    let evaluate = of("evaluate");
    assert_eq!(
        (
            &evaluate["layouts"],
            &evaluate["images_generated"],
            &evaluate["sampler_steps"]
        ),
        (&serde_json::json!(32), &serde_json::json!(32), &serde_json::json!(50))
    );
    for job in jobs {
        assert!(job["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{job}");
    }
    let (sequential, chain) = (
        cost["sequential_seconds"].as_f64().expect("sequential_seconds"),
        cost["critical_path_seconds"].as_f64().expect("critical_path_seconds"),
    );
    assert!(0.0 < chain && chain <= sequential, "{cost}");
    assert!(
        cost["basis"]["device"].as_str().is_some_and(|d| d.contains("CPU core")),
        "{cost}"
    );
    assert!(
        plan["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w["path"] == "eval.detector.steps"),
        "{}",
        plan["warnings"]
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
