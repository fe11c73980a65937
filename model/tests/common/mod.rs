//! Helpers shared by the parity tests: fixture tensors and relative-error checks.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};

/// `model/tests/fixtures/<subdir>`.
pub fn fixture_dir(subdir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(subdir)
}

/// Every tensor of a fixture safetensors file (and one libtorch thread for the test).
pub fn read_tensors(path: PathBuf) -> HashMap<String, Tensor> {
    tch::set_num_threads(1);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// max |ours − reference| relative to the reference's largest magnitude.
pub fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shapes differ");
    let diff = (ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    diff / reference.to_kind(Kind::Double).abs().max().double_value(&[]).max(1e-12)
}

/// Asserts a relative error below `tol`, printing it (the closing notes quote these).
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
    let e = rel_err(ours, reference);
    println!("{what}: max relative error {e:.3e}");
    assert!(e < tol, "{what}: relative error {e:.3e} ≥ {tol:e}");
}
