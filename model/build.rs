//! The model crate's build script: the shared libtorch link settings, plus a small C++ shim for
//! what tch does not bind: the autocast controls (`csrc/autocast.cpp`, bf16 autocast on CUDA) and
//! what the process loaded (`csrc/runtime.cpp`, for `spatiallock doctor`), and PyTorch's
//! distributed engine (`csrc/c10d.cpp`: TCPStore, ProcessGroupGloo, and ProcessGroupNCCL with the
//! `nccl` feature).
//!
//! The wheel ships c10d's headers but not gloo's, which `ProcessGroupGloo.hpp` includes; Debian's
//! `libgloo-dev` provides them (headers only: libtorch carries gloo's code). The NCCL group also
//! needs CUDA headers the wheel lacks; `scripts/setup-nccl.sh` installs them and prints the
//! `SPATIALLOCK_CUDA_INCLUDE` to build with.

use std::path::PathBuf;

#[path = "../build/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::main();
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/runtime.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=SPATIALLOCK_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // PyPI wheels since torch 2.7 use the C++11 ABI; LIBTORCH_CXX11_ABI=0 for an older build. It
    // must match libtorch's: runtime.cpp receives a std::string from at::show_config().
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let root = std::env::var("LIBTORCH_INCLUDE")
        .or_else(|_| std::env::var("LIBTORCH"))
        .unwrap_or_else(|_| {
            panic!(
                "neither LIBTORCH nor LIBTORCH_INCLUDE is set: run `bash scripts/setup.sh` \
                 (it points .cargo/config.toml at libtorch)"
            )
        });
    let include = PathBuf::from(root).join("include");
    let gloo = PathBuf::from(std::env::var("GLOO_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    if !gloo.join("gloo/config.h").exists() {
        panic!(
            "gloo's headers are missing ({}): install Debian's libgloo-dev (`bash scripts/setup.sh` \
             does), or set GLOO_INCLUDE to the folder above `gloo/`",
            gloo.join("gloo/config.h").display()
        );
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("USE_C10D_GLOO", None)
        .file("csrc/autocast.cpp")
        .file("csrc/runtime.cpp")
        .file("csrc/c10d.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        let cuda = std::env::var("SPATIALLOCK_CUDA_INCLUDE").unwrap_or_else(|_| {
            panic!(
                "the `nccl` feature needs CUDA and NCCL headers: run `bash scripts/setup-nccl.sh` \
                 and build with the SPATIALLOCK_CUDA_INCLUDE it prints"
            )
        });
        for dir in std::env::split_paths(&cuda) {
            build.include(dir);
        }
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("SPATIALLOCK_WITH_NCCL", None);
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build.compile("spatiallock_shim");
}
