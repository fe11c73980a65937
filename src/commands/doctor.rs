//! `spatiallock doctor`: which libtorch, CUDA runtime, cuDNN and NCCL this process loaded (files
//! and versions), and what devices it sees. `--json` prints the same as one JSON object.

use anyhow::bail;
use clap::Args;
use spatiallock_model::runtime::{runtime_info, LoadedLibrary, RuntimeInfo};

/// Arguments of `doctor`.
#[derive(Args, Debug, Default)]
pub struct DoctorArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

fn library(lib: &Option<LoadedLibrary>, absent: &str) -> String {
    match lib {
        Some(LoadedLibrary { version, path: Some(p) }) => format!("{version} ({})", p.display()),
        Some(LoadedLibrary { version, path: None }) => version.clone(),
        None => absent.to_string(),
    }
}

fn available(yes: bool) -> &'static str {
    if yes {
        "available"
    } else {
        "unavailable"
    }
}

fn print_lines(info: &RuntimeInfo) {
    let file = info
        .torch_library
        .as_ref()
        .map_or_else(|| "file unknown".to_string(), |p| p.display().to_string());
    println!("libtorch      {} ({file})", info.torch_version);
    println!("built against {}", info.torch_built_against);
    if let Some(build) = &info.torch_cuda_build {
        println!("torch build   {build}");
    }
    let cpu_only = "not loaded (CPU-only libtorch)";
    println!("cuda runtime  {}", library(&info.cuda_runtime, cpu_only));
    println!("cuda driver   {}", info.cuda_driver.as_deref().unwrap_or("none"));
    println!("cudnn         {}", library(&info.cudnn, cpu_only));
    println!("nccl          {}", library(&info.nccl, cpu_only));
    println!("threads       {}", info.threads);
    println!("cuda          {}", available(info.cuda_available));
    println!("cuda devices  {}", info.cuda_devices);
    println!("cudnn use     {}", available(info.cudnn_available));
}

/// Prints the runtime description. Fails when the loaded libtorch is not the major.minor
/// release the binary was built against (its C++ ABI differs).
pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    let info = runtime_info();
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print_lines(&info);
    }
    if info.versions_match() == Some(false) {
        bail!(
            "the loaded libtorch is {} but this binary was built against {}: point it at a libtorch {} \
             (scripts/with-torch.sh) or rebuild against the one you have (LIBTORCH=…, see the README)",
            info.torch_version,
            info.torch_built_against,
            info.torch_built_against
        );
    }
    Ok(())
}
