//! Helpers shared by the end-to-end tests: running the `spatiallock` binary as a user would;
//! child processes and external tools ([`processes`]); Prometheus and dashboards ([`prometheus`]).

pub mod processes;
pub mod prometheus;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (where a user runs the commands).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `spatiallock ARGS` from the repository root, with one libtorch thread and no
/// `LD_LIBRARY_PATH` (the binary must find libtorch through its rpath).
#[allow(dead_code)] // not every test file uses every helper
pub fn spatiallock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(args)
        .current_dir(root())
        .env_remove("LD_LIBRARY_PATH")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("spatiallock runs")
}

/// Standard output and error together.
#[allow(dead_code)] // not every test file uses every helper
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pid of the `spatiallock rank` process with `RANK=rank` whose job file
/// (`rank-job-<first rank>.json`) lies under `dir`, if one is running.
#[allow(dead_code)] // not every test file uses every helper
pub fn rank_pid(dir: &std::path::Path, rank: usize) -> Option<i32> {
    let wanted = format!("RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !(cmd.contains("rank-job-") && cmd.contains(dir.to_string_lossy().as_ref())) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
