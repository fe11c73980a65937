//! `spatiallock run GRID`: the embedded default, as a user runs it — and runs it again.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{spatiallock, text};
use spatiallock_model::image_io::read_rgb;

#[test]
fn run_completes_a_tiny_grid_prints_the_table_and_resumes_without_redoing_work() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let first = spatiallock(&["run", "tests/fixtures/tiny-grid.yaml", "--out", dir]);
    let t = text(&first);
    assert!(first.status.success(), "{t}");
    // The report: a header and one row per trial, with our numbers.
    assert!(t.contains("| trial | components | val | state |"), "{t}");
    let (main_table, augmentation) = t
        .split_once("Detector augmentation (paper Table 5)")
        .unwrap_or_else(|| panic!("no augmentation table: {t}"));
    let rows: Vec<&str> = main_table
        .lines()
        .filter(|l| l.starts_with("| 0 |") || l.starts_with("| 1 |"))
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(rows.iter().all(|r| r.contains("succeeded")), "{t}");
    // The second trial's augmentation: both detectors scored, 4 synthetic images.
    assert!(
        augmentation
            .lines()
            .any(|l| l.starts_with("| 1 | PoI+PoG | succeeded | 4 |") && !l.contains('–')),
        "{augmentation}"
    );
    assert!(t.contains("samples.png"), "{t}");
    assert!(
        t.contains("not meaningful") || t.contains("not the paper's results"),
        "{t}"
    );
    let db = out.path().join("spatiallock.db");
    assert!(db.is_file());

    // Again: the same experiment, nothing rerun.
    let second = spatiallock(&["run", "tests/fixtures/tiny-grid.yaml", "--out", dir]);
    let t2 = text(&second);
    assert!(second.status.success(), "{t2}");
    assert!(t2.contains("was submitted before"), "{t2}");
    assert!(t2.contains("0 job(s) resume"), "{t2}");
    let attempts: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("exp-"))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().filter_map(|j| j.ok()))
        .flat_map(|j| std::fs::read_dir(j.path()).unwrap().filter_map(|a| a.ok()))
        .map(|a| a.file_name().to_string_lossy().to_string())
        .collect();
    assert!(!attempts.is_empty());
    assert!(
        attempts.iter().all(|a| a == "attempt-1"),
        "a job ran twice: {attempts:?}"
    );

    // The figures: `run` wrote them beside its outputs, and `spatiallock figures` writes them
    // again from a coordinator serving the run's database.
    assert!(t.contains("figures: "), "{t}");
    let strips = files_named(out.path(), "strip.png");
    assert_eq!(strips.len(), 2, "one strip per evaluation: {strips:?}");
    let strip = read_rgb(&strips[0]).unwrap();
    assert!(
        strip.width() >= 4 * 256,
        "4 cells of at least 256 px: {}",
        strip.width()
    );
    let check = |dir: &Path| {
        let comparison = read_rgb(&dir.join("comparison.png")).unwrap();
        assert_eq!(comparison.height(), 2 * strip.height(), "one row per trial");
        assert!(comparison.width() > strip.width());
        for trial in 0..2 {
            let curves = read_rgb(&dir.join(format!("curves-{trial}.png"))).unwrap();
            assert!(curves.width() > 0 && curves.height() > 0);
        }
        let index = std::fs::read_to_string(dir.join("figures.md")).unwrap();
        assert!(
            index.contains("comparison.png") && index.contains("curves-1.png"),
            "{index}"
        );
        // The strips come over HTTP, as they would to a client on another machine.
        assert!(
            index.contains("2 strip(s) served by the coordinator, 0 read from output folders here"),
            "{index}"
        );
    };
    check(&out.path().join("tiny-grid-figures"));
    let coordinator = Coordinator::serving(&db);
    let figs = out.path().join("figs");
    let made = spatiallock(&[
        "figures",
        "tiny-grid",
        "--out",
        figs.to_str().unwrap(),
        "--coordinator",
        &coordinator.url,
    ]);
    let t3 = text(&made);
    assert!(made.status.success(), "{t3}");
    assert!(
        t3.contains("comparison.png") && t3.contains("curves-0.png") && t3.contains("figures.md"),
        "{t3}"
    );
    check(&figs);
}

/// Every file called `name` under `dir`, sorted.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// A `spatiallock coordinator` process on a database, killed when dropped.
struct Coordinator {
    child: std::process::Child,
    url: String,
}

impl Coordinator {
    fn serving(db: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_spatiallock"))
            .args([
                "coordinator",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
            ])
            .arg(format!("sqlite://{}", db.display()))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the coordinator did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_rejects_a_bad_grid_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("bad.yaml");
    std::fs::write(
        &grid,
        "name: bad\nbase:\n  model: {arch: tiny, base: {pretrain: {steps: 1}}}\n  data: {train: {kind: shapes, split: train, count: 4}, val: [], resolution: 32}\ngrid:\n  training.stepz: [1, 2]\n",
    )
    .unwrap();
    let out = spatiallock(&[
        "run",
        grid.to_str().unwrap(),
        "--out",
        dir.path().join("runs").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("grid.training.stepz"), "{t}");
    assert!(t.contains("did you mean `steps`"), "{t}");
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_while_the_first_runs() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap().to_string();
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["run", "tests/fixtures/tiny-grid.yaml", "--out", &dir])
        .current_dir(common::root())
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The database appears once the first run holds the lock and has started its coordinator.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !out.path().join("spatiallock.db").exists() {
        assert!(std::time::Instant::now() < deadline, "the first run did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = spatiallock(&["run", "tests/fixtures/tiny-grid.yaml", "--out", &dir]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let t = text(&second);
    assert!(t.contains("another `spatiallock run` is using"), "{t}");
}
