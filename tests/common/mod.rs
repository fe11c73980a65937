//! Helpers shared by the end-to-end tests: running the `spatiallock` binary as a user would.

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
