//! The model crate's build script: the shared libtorch link settings, plus a small C++ shim
//! (`csrc/autocast.cpp`) for the autocast controls tch does not bind (bf16 autocast on CUDA).

use std::path::PathBuf;

#[path = "../build/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::main();
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    let root = std::env::var("LIBTORCH_INCLUDE")
        .or_else(|_| std::env::var("LIBTORCH"))
        .unwrap_or_else(|_| {
            panic!("LIBTORCH is not set: run `bash scripts/setup.sh` (it points .cargo/config.toml at libtorch)")
        });
    let include = PathBuf::from(root).join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("csrc/autocast.cpp")
        .compile("spatiallock_autocast");
}
