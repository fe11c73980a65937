//! `spatiallock fid stats IMAGES_DIR --out stats.npz` and `spatiallock fid score A B`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use spatiallock_model::eval::frechet::{frechet_distance, GaussianStats, StatsAccumulator};
use spatiallock_model::eval::inception::{inception_path, read_image01, FidInception};
use tch::Device;

/// `fid` subcommands.
#[derive(Subcommand)]
pub enum FidCommand {
    /// Inception statistics of a folder of images, written as pytorch-fid's `.npz`.
    Stats(StatsArgs),
    /// FID between two folders of images or `.npz` statistics files.
    Score(ScoreArgs),
}

/// Arguments of `fid stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// A folder of PNG/JPEG images.
    pub images: PathBuf,
    /// Where to write `mu` and `sigma`.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `fid score`.
#[derive(Args)]
pub struct ScoreArgs {
    /// A folder of images or a `.npz` with `mu` and `sigma`.
    pub a: PathBuf,
    /// A folder of images or a `.npz` with `mu` and `sigma`.
    pub b: PathBuf,
}

/// Runs a `fid` subcommand.
pub fn run(cmd: &FidCommand) -> anyhow::Result<()> {
    match cmd {
        FidCommand::Stats(a) => {
            let s = folder_stats(&a.images)?;
            s.write_npz(&a.out)?;
            println!("wrote {} ({} features)", a.out.display(), s.dim());
            Ok(())
        }
        FidCommand::Score(a) => {
            let (x, y) = (load(&a.a)?, load(&a.b)?);
            println!("FID {:.6}", frechet_distance(&x, &y)?);
            Ok(())
        }
    }
}

fn load(path: &Path) -> anyhow::Result<GaussianStats> {
    if path.is_dir() {
        folder_stats(path)
    } else {
        Ok(GaussianStats::read_npz(path)?)
    }
}

fn folder_stats(dir: &Path) -> anyhow::Result<GaussianStats> {
    let net = FidInception::load_installed(Device::Cpu)?.with_context(|| {
        format!(
            "the FID Inception is not installed at {} (run scripts/setup.sh)",
            inception_path().display()
        )
    })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.len() < 2 {
        bail!("{}: needs at least 2 images (found {})", dir.display(), files.len());
    }
    let mut acc = StatsAccumulator::new(2048);
    for f in &files {
        let img = read_image01(f)?;
        acc.add(&net.features(&img)?)?;
    }
    Ok(acc.finish()?)
}
