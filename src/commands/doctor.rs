//! `spatiallock doctor`: what libtorch and devices this binary sees.

use spatiallock_model::runtime::runtime_info;

/// Prints the runtime description.
pub fn run() -> anyhow::Result<()> {
    let info = runtime_info();
    println!("libtorch      {}", info.torch_version);
    println!("threads       {}", info.threads);
    println!(
        "cuda          {}",
        if info.cuda_available {
            "available"
        } else {
            "unavailable"
        }
    );
    println!("cuda devices  {}", info.cuda_devices);
    println!(
        "cudnn         {}",
        if info.cudnn_available {
            "available"
        } else {
            "unavailable"
        }
    );
    Ok(())
}
