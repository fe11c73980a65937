//! Build script shared by every package whose binaries or tests link libtorch.
//!
//! - Gives binaries an rpath to libtorch's `lib/` directory (resolved through the `.libtorch`
//!   link to the real install), so they run without `LD_LIBRARY_PATH`. It is a RUNPATH
//!   (`--enable-new-dtags`), so `LD_LIBRARY_PATH` still wins: that is how a binary built here runs
//!   against another machine's libtorch (`scripts/with-torch.sh`).
//! - Keeps `libtorch_cuda` as a real dependency: Linux linkers drop shared libraries that no
//!   symbol refers to (`--as-needed`), and nothing in our code refers to CUDA symbols directly,
//!   so without this the same binary would report CUDA unavailable on a GPU machine.

use std::path::PathBuf;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    let lib = match (std::env::var("LIBTORCH_LIB"), std::env::var("LIBTORCH")) {
        (Ok(lib), _) => PathBuf::from(lib).join("lib"),
        (Err(_), Ok(root)) => PathBuf::from(root).join("lib"),
        _ => return, // torch-sys reports the missing libtorch with its own instructions
    };
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
