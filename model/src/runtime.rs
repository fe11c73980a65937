//! What libtorch this process runs on: the version and file of the libtorch that was *loaded*
//! (which may be a foreign one, found through `LD_LIBRARY_PATH`; see `scripts/with-torch.sh`),
//! the version it was built against, threads, and the CUDA runtime, cuDNN and NCCL libraries
//! that libtorch_cuda brought in. Read through `csrc/runtime.cpp`.

use std::ffi::{c_char, c_long, CStr, CString};
use std::path::PathBuf;

use serde::Serialize;
use tch::Cuda;

extern "C" {
    fn spatiallock_torch_config(buf: *mut c_char, len: usize) -> c_long;
    fn spatiallock_torch_header_version() -> *const c_char;
    fn spatiallock_int_version(symbol: *const c_char) -> i32;
    fn spatiallock_cudnn_version() -> i64;
    fn spatiallock_symbol_library(symbol: *const c_char, buf: *mut c_char, len: usize) -> c_long;
    fn spatiallock_cuda_mem_info(device: i32, free: *mut usize, total: *mut usize) -> i32;
}

/// A loaded native library: its version and the file it was loaded from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoadedLibrary {
    /// Dotted version (`13.0`, `9.19.0`, `2.27.3`).
    pub version: String,
    /// The file the dynamic loader mapped (canonical path when it exists).
    pub path: Option<PathBuf>,
}

/// A description of the tensor runtime, for `spatiallock doctor`, benchmarks and logs.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The version of the libtorch that was loaded (its `TORCH_VERSION` build setting), or
    /// `unknown` when its build description does not say.
    pub torch_version: String,
    /// The libtorch version of the headers this binary was compiled against.
    pub torch_built_against: String,
    /// The `libtorch_cpu` file that was loaded.
    pub torch_library: Option<PathBuf>,
    /// libtorch's compile-time CUDA and cuDNN versions (`CUDA_VERSION`, `CUDNN_VERSION` build
    /// settings); absent for a CPU-only libtorch.
    pub torch_cuda_build: Option<String>,
    /// The CUDA runtime (`libcudart`) loaded with libtorch_cuda.
    pub cuda_runtime: Option<LoadedLibrary>,
    /// The CUDA driver's API version (`cudaDriverGetVersion`); absent when no driver is installed.
    pub cuda_driver: Option<String>,
    /// cuDNN, when loaded.
    pub cudnn: Option<LoadedLibrary>,
    /// NCCL, when loaded.
    pub nccl: Option<LoadedLibrary>,
    /// Intra-op threads.
    pub threads: i32,
    /// Whether CUDA can be used.
    pub cuda_available: bool,
    /// Number of visible CUDA devices.
    pub cuda_devices: i64,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
}

impl RuntimeInfo {
    /// Whether the loaded libtorch has the major.minor version this binary was built against
    /// (libtorch's C++ ABI changes between minor releases). `None` when the loaded version is unknown.
    pub fn versions_match(&self) -> Option<bool> {
        let major_minor = |v: &str| v.split(['.', '+']).take(2).collect::<Vec<_>>().join(".");
        (self.torch_version != "unknown")
            .then(|| major_minor(&self.torch_version) == major_minor(&self.torch_built_against))
    }
}

/// libtorch's `at::show_config()`: its build description.
pub fn torch_config() -> String {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: the shim writes at most `buf.len()` bytes, NUL-terminated, and never throws.
    let mut n = unsafe { spatiallock_torch_config(buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 && n as usize >= buf.len() {
        buf = vec![0u8; n as usize + 1]; // longer than the first guess: ask again with room
                                         // SAFETY: as above.
        n = unsafe { spatiallock_torch_config(buf.as_mut_ptr().cast(), buf.len()) };
    }
    if n < 0 {
        return String::new();
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The value of `KEY=value` in libtorch's "Build settings" line.
fn build_setting<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config
        .split([',', '\n'])
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim_start_matches("- Build settings: ") == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn library_of(symbol: Option<&str>) -> Option<PathBuf> {
    let name = symbol.and_then(|s| CString::new(s).ok());
    let ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
    let mut buf = vec![0u8; 4096];
    // SAFETY: `ptr` is NULL or a NUL-terminated string alive for the call; the shim writes at
    // most `buf.len()` bytes, NUL-terminated.
    let n = unsafe { spatiallock_symbol_library(ptr, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    let path = PathBuf::from(CStr::from_bytes_until_nul(&buf).ok()?.to_string_lossy().into_owned());
    Some(path.canonicalize().unwrap_or(path))
}

fn int_version(symbol: &str) -> Option<i64> {
    let name = CString::new(symbol).ok()?;
    // SAFETY: `name` is NUL-terminated and alive for the call; the shim only calls the symbol
    // with the `int f(int*)` signature that CUDA and NCCL document for it.
    let v = unsafe { spatiallock_int_version(name.as_ptr()) };
    (v >= 0).then_some(i64::from(v))
}

/// `cudaRuntimeGetVersion` / `cudaDriverGetVersion` codes: 1000·major + 10·minor.
fn cuda_version(code: i64) -> String {
    format!("{}.{}", code / 1000, (code % 1000) / 10)
}

/// cuDNN ≥ 9 and NCCL ≥ 2.9 encode major·10000 + minor·100 + patch; older releases major·1000 +
/// minor·100 + patch.
fn three_part_version(code: i64) -> String {
    let major_unit = if code >= 10000 { 10000 } else { 1000 };
    format!("{}.{}.{}", code / major_unit, (code % major_unit) / 100, code % 100)
}

/// Reads the runtime's state (loading CUDA if the machine has it).
pub fn runtime_info() -> RuntimeInfo {
    let config = torch_config();
    // SAFETY: returns a pointer to a static NUL-terminated string literal in the shim.
    let built_against = unsafe { CStr::from_ptr(spatiallock_torch_header_version()) }
        .to_string_lossy()
        .into_owned();
    let torch_cuda_build =
        build_setting(&config, "CUDA_VERSION").map(|cuda| match build_setting(&config, "CUDNN_VERSION") {
            Some(cudnn) => format!("CUDA {cuda}, cuDNN {cudnn}"),
            None => format!("CUDA {cuda}"),
        });
    let cudnn_code = {
        // SAFETY: dlsym lookup and a call of `size_t cudnnGetVersion(void)` when present.
        let v = unsafe { spatiallock_cudnn_version() };
        (v > 0).then_some(v)
    };
    RuntimeInfo {
        torch_version: build_setting(&config, "TORCH_VERSION").unwrap_or("unknown").to_string(),
        torch_built_against: built_against,
        torch_library: library_of(None),
        torch_cuda_build,
        cuda_runtime: int_version("cudaRuntimeGetVersion").map(|v| LoadedLibrary {
            version: cuda_version(v),
            path: library_of(Some("cudaRuntimeGetVersion")),
        }),
        cuda_driver: int_version("cudaDriverGetVersion").filter(|&v| v > 0).map(cuda_version),
        cudnn: cudnn_code.map(|v| LoadedLibrary {
            version: three_part_version(v),
            path: library_of(Some("cudnnGetVersion")),
        }),
        nccl: int_version("ncclGetVersion").map(|v| LoadedLibrary {
            version: three_part_version(v),
            path: library_of(Some("ncclGetVersion")),
        }),
        threads: tch::get_num_threads(),
        cuda_available: Cuda::is_available(),
        cuda_devices: Cuda::device_count(),
        cudnn_available: Cuda::cudnn_is_available(),
    }
}

/// A device name: `cpu`, `cuda` (device 0) or `cuda:N`.
///
/// Errors: a message naming the text and the accepted forms.
pub fn parse_device(s: &str) -> Result<tch::Device, String> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("unknown device `{s}` (cpu, cuda or cuda:N)")),
    }
}

/// Device memory in use on CUDA device `device`, in bytes (`cudaMemGetInfo`: total − free).
/// It counts everything on the device: the CUDA context and what libtorch's caching allocator
/// holds, which after a workload is its peak reservation (the allocator keeps freed blocks).
/// `None` without a loaded CUDA runtime or that device.
pub fn cuda_memory_in_use(device: usize) -> Option<u64> {
    let device = i32::try_from(device).ok()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the shim calls cudaGetDevice/cudaSetDevice/cudaMemGetInfo with valid pointers.
    let rc = unsafe { spatiallock_cuda_mem_info(device, &mut free, &mut total) };
    (rc == 0).then(|| (total - free.min(total)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_libtorch_reports_its_own_version_and_file() {
        let info = runtime_info();
        assert_eq!(info.versions_match(), Some(true), "{info:?}");
        let lib = info.torch_library.as_deref().expect("libtorch_cpu path");
        assert!(
            lib.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libtorch_cpu")),
            "{lib:?}"
        );
    }

    #[test]
    fn device_names_parse_or_name_the_fault() {
        assert_eq!(parse_device("cpu"), Ok(tch::Device::Cpu));
        assert_eq!(parse_device("cuda"), Ok(tch::Device::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(tch::Device::Cuda(3)));
        let err = parse_device("gpu0").unwrap_err();
        assert!(err.contains("`gpu0`"), "{err}");
    }

    #[test]
    fn build_settings_and_version_codes_parse() {
        let config = "  - CPU capability usage: AVX2\n  - Build settings: BLAS_INFO=mkl, CUDA_VERSION=13.0, \
                      CUDNN_VERSION=9.19.0, TORCH_VERSION=2.11.0, USE_CUDA=ON, \n";
        assert_eq!(build_setting(config, "TORCH_VERSION"), Some("2.11.0"));
        assert_eq!(build_setting(config, "BLAS_INFO"), Some("mkl"));
        assert_eq!(build_setting(config, "CUDA_VERSION"), Some("13.0"));
        assert_eq!(build_setting(config, "USE_ROCM"), None);
        assert_eq!(cuda_version(13000), "13.0");
        assert_eq!(cuda_version(12040), "12.4");
        assert_eq!(three_part_version(91900), "9.19.0");
        assert_eq!(three_part_version(22703), "2.27.3");
        assert_eq!(three_part_version(8902), "8.9.2");
    }
}
