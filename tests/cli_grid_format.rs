//! End-to-end: the grid format as a user meets it through the `spatiallock` binary —
//! `spatiallock schema` prints (or writes) the grid's JSON Schema, and `plan` names every
//! problem of a grid's base at once, in words rather than Rust type names.

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn schema_prints_the_grid_schema_or_writes_it_to_a_file() {
    let out = spatiallock(&["schema"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on standard output");
    assert_eq!(printed, spatiallock_protocol::schema::grid_schema());
    assert_eq!(printed["$schema"], "https://json-schema.org/draft/2020-12/schema");

    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("grid.schema.json");
    let out = spatiallock(&["schema", "--output", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "the schema went to the file only");
    let written = std::fs::read_to_string(&file).expect("the schema file");
    let written: Value = serde_json::from_str(&written).expect("JSON in the file");
    assert_eq!(written, printed);

    let missing = dir.path().join("no-such-folder").join("grid.schema.json");
    let out = spatiallock(&["schema", "--output", &missing.display().to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot write {}", missing.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_names_every_problem_of_the_base_in_plain_words() {
    let grid = "\
name: first-grid
base:
  model:
    arch: tiny
    base: {pretrain: {steps: 100}}
  data:
    train: {kind: shapes, split: train, count: 64}
    val: {kind: shapes, split: val, count: 16}
  training: {steps: many}
  eval:
    detector: {steps: 100}
";
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("first-grid.yaml");
    std::fs::write(&file, grid).expect("write the grid");
    let out = spatiallock(&["plan", &file.display().to_string()]);
    assert!(!out.status.success(), "the grid has four problems");
    let err = stderr(&out);
    for expected in [
        "invalid spec (4 problems)",
        "base.data.val: invalid type: a mapping, expected a list",
        "base.data.resolution: is required (it has no default)",
        "base.training.steps: invalid type: string \"many\", expected a whole number ≥ 0",
        "base.eval.detector.kind: is required (it has no default)",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }
    let problems: Vec<&str> = err.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    assert_eq!(problems.len(), 4, "{err}");
    for jargon in ["u64", "u32", "sequence", "SpecError", "struct "] {
        assert!(problems.iter().all(|p| !p.contains(jargon)), "`{jargon}` in:\n{err}");
    }
}
