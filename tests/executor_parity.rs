//! The CLI (`spatiallock train`) and the worker run jobs through the same executor: for the same
//! payloads they write the same folders — the same files, the same tensors bit for bit, the same
//! checkpoint state. Only what names the folders themselves differs (the base path a checkpoint
//! records, the encoder stores a run used), and `metrics.jsonl`, which is the CLI's own record.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use spatiallock_model::layout::JobDir;
use spatiallock_protocol::expand::{expand, JobKind};
use spatiallock_protocol::spec::ExperimentSpec;
use spatiallock_worker::jobs::{execute, JobEnv};
use spatiallock_worker::report::{Reporter, StopFlag};

fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out
}

/// JSON with the fields that name folders removed.
fn without_paths(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).expect("json");
    if let Some(o) = v.as_object_mut() {
        o.remove("base");
        o.remove("stores");
    }
    v
}

fn assert_same_folder(cli: &Path, worker: &Path) {
    let mut a = files(cli);
    a.remove(JobDir::new("").metrics_log().as_path());
    let b = files(worker);
    assert_eq!(a, b, "the same files in {cli:?} and {worker:?}");
    for rel in &a {
        let (x, y) = (
            std::fs::read(cli.join(rel)).expect("read"),
            std::fs::read(worker.join(rel)).expect("read"),
        );
        let name = rel.to_string_lossy();
        if name.ends_with(".json") {
            let (x, y) = (String::from_utf8_lossy(&x), String::from_utf8_lossy(&y));
            assert_eq!(without_paths(&x), without_paths(&y), "{name}");
        } else if Path::new(rel) == JobDir::new("").final_marker() {
            let rel_of = |root: &Path, bytes: &[u8]| {
                PathBuf::from(String::from_utf8_lossy(bytes).trim())
                    .strip_prefix(root)
                    .expect("final points inside its folder")
                    .to_path_buf()
            };
            assert_eq!(rel_of(cli, &x), rel_of(worker, &y), "{name}");
        } else {
            assert!(x == y, "{name} differs between the CLI's and the worker's folder");
        }
    }
}

#[test]
fn the_cli_and_the_worker_write_identical_job_folders() {
    tch::set_num_threads(1);
    let spec = ExperimentSpec::load_grid_or_trial(&root().join("tests/fixtures/tiny-trial.yaml")).expect("spec");
    let plan = expand(&spec).expect("plan");
    let runs = tempfile::tempdir().expect("tempdir");

    // The CLI, as a user runs it.
    let cli_out = runs.path().join("cli");
    let out = spatiallock(&[
        "train",
        "tests/fixtures/tiny-trial.yaml",
        "--out",
        cli_out.to_str().expect("utf-8"),
        "--cache-dir",
        runs.path().join("cli-cache").to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // The worker's executor adapter on the same payloads, in plan order.
    let worker_root = runs.path().join("worker");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = Reporter::new(tx, StopFlag::default());
    let mut done: BTreeMap<String, PathBuf> = BTreeMap::new();
    for kind in [JobKind::Pretrain, JobKind::Train] {
        let job = plan
            .jobs
            .iter()
            .find(|j| j.kind == kind)
            .expect("the trial has this job");
        let env = JobEnv {
            out: worker_root.join(&job.id),
            attempt: 1,
            resume: None,
            inputs: job.depends_on.iter().map(|d| (d.clone(), done[d].clone())).collect(),
            device: tch::Device::Cpu,
            reporter: &reporter,
            cache_dir: runs.path().join("worker-cache"),
            devices: vec!["cpu".into()],
            launch: spatiallock_worker::RankLaunch::default(),
            gang: None,
        };
        let folder = execute(&job.payload, &env).unwrap_or_else(|e| panic!("{}: {e:?}", job.id));
        while rx.try_recv().is_ok() {}
        let cli_folder = cli_out.join(&plan.name).join(&job.id);
        assert_same_folder(&cli_folder, &folder);
        assert!(JobDir::new(&folder).is_complete(kind), "{}", job.id);
        done.insert(job.id.clone(), folder);
    }
}
