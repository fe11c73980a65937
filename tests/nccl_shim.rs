//! The NCCL half of the c10d shim (`model/csrc/c10d.cpp` with `--features nccl`) still compiles
//! against the headers `scripts/setup-nccl.sh` provides. CPU machines build without it, so
//! without this check the GPU build could rot unnoticed. (Linking and running it need a GPU
//! machine: `scripts/gpu-check.sh --prepare` builds with the feature.)

mod common;

use std::process::Command;

#[test]
fn the_nccl_process_group_compiles_against_the_cuda_headers() {
    let root = common::root();
    let setup = Command::new("bash")
        .arg(root.join("scripts/setup-nccl.sh"))
        .current_dir(&root)
        .output()
        .expect("bash runs");
    assert!(setup.status.success(), "{}", common::text(&setup));
    let line = String::from_utf8_lossy(&setup.stdout).to_string();
    let dirs = line
        .trim()
        .strip_prefix("export SPATIALLOCK_CUDA_INCLUDE=")
        .unwrap_or_else(|| panic!("setup-nccl.sh printed {line}"))
        .to_string();
    let torch = root.join(".libtorch/include");
    let mut cmd = Command::new("c++");
    cmd.args(["-std=c++17", "-fsyntax-only", "-w", "-D_GLIBCXX_USE_CXX11_ABI=1"])
        .args([
            "-DUSE_C10D_GLOO",
            "-DUSE_C10D_NCCL",
            "-DUSE_CUDA",
            "-DSPATIALLOCK_WITH_NCCL",
        ])
        .arg(format!("-I{}", torch.display()))
        .arg(format!("-I{}", torch.join("torch/csrc/api/include").display()));
    for d in std::env::split_paths(&dirs) {
        cmd.arg(format!("-I{}", d.display()));
    }
    let out = cmd.arg(root.join("model/csrc/c10d.cpp")).output().expect("c++ runs");
    assert!(out.status.success(), "{}", common::text(&out));
}
