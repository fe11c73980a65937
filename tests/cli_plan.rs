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
    assert!(text.contains("libtorch      2.13.0"), "{text}");
    assert!(text.contains("cuda "), "{text}");
}
