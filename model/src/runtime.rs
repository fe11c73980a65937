//! What libtorch this binary runs on: version, threads, CUDA.

use tch::Cuda;

/// A description of the tensor runtime, for `spatiallock doctor` and logs.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// The libtorch version tch was built for.
    pub torch_version: &'static str,
    /// Intra-op threads.
    pub threads: i32,
    /// Whether CUDA can be used.
    pub cuda_available: bool,
    /// Number of visible CUDA devices.
    pub cuda_devices: i64,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
}

/// Reads the runtime's state (loading CUDA if the machine has it).
pub fn runtime_info() -> RuntimeInfo {
    RuntimeInfo {
        torch_version: TORCH_VERSION,
        threads: tch::get_num_threads(),
        cuda_available: Cuda::is_available(),
        cuda_devices: Cuda::device_count(),
        cudnn_available: Cuda::cudnn_is_available(),
    }
}

/// The libtorch release tch 0.26 binds.
pub const TORCH_VERSION: &str = "2.13.0";
