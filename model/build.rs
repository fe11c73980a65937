//! The model crate's build script: the shared libtorch link settings, plus a small C++ shim for
//! what tch does not bind: the autocast controls (`csrc/autocast.cpp`, bf16 autocast on CUDA) and
//! what the process loaded (`csrc/runtime.cpp`, for `spatiallock doctor`).

use std::path::PathBuf;

#[path = "../build/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::main();
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/runtime.cpp");
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
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/autocast.cpp")
        .file("csrc/runtime.cpp")
        .compile("spatiallock_shim");
}
