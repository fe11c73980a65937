//! The grid format's JSON Schema against the grids people write: every grid and architecture
//! in `configs/`, and the README's example grid, which must also expand to what the README says.
//! Wrong types are refused by the schema and by the parser alike, each naming the same path.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use spatiallock_protocol::expand::{expand, JobKind};
use spatiallock_protocol::schema::grid_schema;
use spatiallock_protocol::spec::{parse_document, ExperimentSpec, SpecFormat};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The YAML or JSON files directly in `dir`, sorted.
fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
        })
        .collect();
    files.sort();
    files
}

fn read_document(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_document(&text, SpecFormat::from_path(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Each problem the schema finds in `document`, as `JSON pointer: message`.
fn schema_problems(schema: &Value, document: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("the schema itself is invalid: {e}"));
    validator
        .iter_errors(document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The README's example grid: the first ```yaml block after the `## Writing a grid` heading.
fn readme_grid() -> (String, String) {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split_once("\n## Writing a grid\n")
        .map(|(_, rest)| rest)
        .expect("README.md has a `## Writing a grid` section");
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block.to_string())
        .expect("a ```yaml block in `## Writing a grid`");
    (readme, block)
}

#[test]
fn every_grid_and_architecture_in_configs_fits_the_schema() {
    let schema = grid_schema();
    let mut grids = spec_files(&repo().join("configs"));
    grids.extend(spec_files(&repo().join("configs/paper")));
    let grids: Vec<PathBuf> = grids
        .into_iter()
        .filter(|p| read_document(p).get("base").is_some())
        .collect();
    assert!(grids.len() >= 7, "demo, miniature and the paper tables: {grids:?}");
    for grid in &grids {
        let problems = schema_problems(&schema, &read_document(grid));
        assert!(problems.is_empty(), "{}:\n{}", grid.display(), problems.join("\n"));
    }

    // Architectures (`model.arch` files) fit the schema's ModelConfig.
    let arch_schema = json!({
        "$schema": schema["$schema"],
        "$ref": "#/$defs/ModelConfig",
        "$defs": schema["$defs"],
    });
    let archs = spec_files(&repo().join("configs/models"));
    assert!(archs.len() >= 3, "{archs:?}");
    for arch in &archs {
        let problems = schema_problems(&arch_schema, &read_document(arch));
        assert!(problems.is_empty(), "{}:\n{}", arch.display(), problems.join("\n"));
    }
}

#[test]
fn the_readme_grid_fits_the_schema_and_expands_as_the_readme_says() {
    let (readme, block) = readme_grid();
    assert!(
        block.starts_with("# yaml-language-server: $schema="),
        "the example starts with the editor's schema line:\n{block}"
    );
    let document = parse_document(&block, SpecFormat::Yaml).unwrap_or_else(|e| panic!("{e}\n{block}"));
    let problems = schema_problems(&grid_schema(), &document);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The same load and expansion as `spatiallock plan` and `submit`.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("first-grid.yaml");
    std::fs::write(&file, &block).expect("write the grid");
    let spec = ExperimentSpec::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let plan = expand(&spec).unwrap_or_else(|e| panic!("{e}"));
    let said = format!(
        "It expands to {} trials and {} jobs: {} pretrain, {} train, {} train-detector and {} evaluate",
        plan.trials.len(),
        plan.jobs.len(),
        plan.count(JobKind::Pretrain),
        plan.count(JobKind::Train),
        plan.count(JobKind::TrainDetector),
        plan.count(JobKind::Evaluate),
    );
    assert!(
        readme.replace('\n', " ").contains(&said),
        "README.md should say `{said}` after its example grid"
    );
}

#[test]
fn wrong_types_fail_the_schema_and_the_parser_at_the_same_path() {
    let (_, block) = readme_grid();
    let good = parse_document(&block, SpecFormat::Yaml).expect("the README grid parses");
    let schema = grid_schema();
    // (what to change, the schema's instance path, the parser's error path)
    let cases: [(&str, Value, &str, &str); 5] = [
        (
            "/base/data/resolution",
            json!("big"),
            "/base/data/resolution",
            "base.data.resolution",
        ),
        (
            "/base/data/val",
            json!({"kind": "shapes", "split": "val", "count": 8}),
            "/base/data/val",
            "base.data.val",
        ),
        (
            "/base/eval/detector",
            json!({"steps": 50}),
            "/base/eval/detector",
            "base.eval.detector.kind",
        ),
        (
            "/base/training/stpes",
            json!(5),
            "/base/training",
            "base.training.stpes",
        ),
        ("/priority", json!(5000), "/priority", "priority"),
    ];
    for (pointer, value, schema_path, parser_path) in cases {
        let mut bad = good.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
        bad.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent} is a mapping in the README grid"))
            .insert(key.to_string(), value.clone());

        let problems = schema_problems(&schema, &bad);
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("{schema_path}: "))),
            "{pointer} = {value}: the schema finds nothing at {schema_path}: {problems:#?}"
        );

        let text = serde_json::to_string(&bad).expect("JSON text");
        let refused = ExperimentSpec::parse(&text, SpecFormat::Json).and_then(|spec| expand(&spec).map(|_| ()));
        let errors = refused.expect_err("the parser refuses it too");
        assert!(
            errors.0.iter().any(|e| e.path == parser_path),
            "{pointer} = {value}: no parser error at {parser_path}: {errors}"
        );
    }
}

#[test]
fn the_parser_names_every_problem_of_the_base_at_once() {
    let (_, block) = readme_grid();
    let mut bad = parse_document(&block, SpecFormat::Yaml).expect("the README grid parses");
    let data = bad
        .pointer_mut("/base/data")
        .and_then(Value::as_object_mut)
        .expect("base.data");
    data.remove("resolution");
    data.insert("val".into(), json!({"kind": "shapes", "split": "val", "count": 8}));
    bad["base"]["training"]["steps"] = json!("many");
    bad["base"]["eval"]["detector"] = json!({"steps": 50});
    // A grid axis that is not a list: named in the same run as the base's problems.
    bad["grid"]["training.lr"] = json!(0.001);
    let text = serde_json::to_string(&bad).expect("JSON text");
    let errors = ExperimentSpec::parse(&text, SpecFormat::Json)
        .and_then(|spec| expand(&spec))
        .expect_err("five problems");
    let shown: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    for expected in [
        "base.data.val: invalid type: a mapping, expected a list",
        "base.data.resolution: is required (it has no default)",
        "base.training.steps: invalid type: string \"many\", expected a whole number ≥ 0",
        "base.eval.detector.kind: is required (it has no default)",
    ] {
        assert!(shown.iter().any(|s| s == expected), "no `{expected}` in {shown:#?}");
    }
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("grid.training.lr: invalid type:") && s.ends_with("expected a list")),
        "the grid's problem in the same run: {shown:#?}"
    );
    assert!(
        !errors.to_string().contains("u64") && !errors.to_string().contains("sequence"),
        "Rust words in {errors}"
    );
}
