//! `spatiallock fid stats IMAGES_DIR --out stats.npz` and `spatiallock fid score A B [--json]`.
//!
//! `fid score` prints the distance with 4 decimals (round-off below 0 is settled to 0, see
//! [`frechet_distance`]) and warns on standard error when a side has fewer images than the
//! features have dimensions (2048 for the Inception): such an FID is biased and compares only
//! with FIDs over as many images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use spatiallock_model::eval::frechet::{few_samples_warning, frechet_distance, GaussianStats, StatsAccumulator};
use spatiallock_model::eval::inception::{inception_path, read_image01, FidInception};
use spatiallock_protocol::cost::FID_FEATURES;
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
    /// Print one JSON object: `metric` (`fid`, or `frechet_distance` for features other than
    /// the Inception's 2048), `value`, `dims`, `images` (per side; `null` when a `.npz` does not
    /// record it), and `warnings`.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `fid` subcommand.
pub fn run(cmd: &FidCommand) -> anyhow::Result<()> {
    match cmd {
        FidCommand::Stats(a) => {
            let s = folder_stats(&a.images)?;
            s.write_npz(&a.out)?;
            let images = s.count.unwrap_or_default();
            println!("wrote {} ({} features of {images} images)", a.out.display(), s.dim());
            Ok(())
        }
        FidCommand::Score(a) => score(a),
    }
}

/// How many images each side had, for the small-sample warning: `4 and 4 images`, or one
/// side's count when the other's statistics do not record it; with the smaller count.
fn sides(counts: [Option<i64>; 2]) -> Option<(String, i64)> {
    match counts {
        [Some(a), Some(b)] => Some((format!("{a} and {b} images"), a.min(b))),
        [Some(n), None] | [None, Some(n)] => Some((format!("{n} images on one side"), n)),
        [None, None] => None,
    }
}

fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let (x, y) = (load(&args.a)?, load(&args.b)?);
    let distance = frechet_distance(&x, &y)?;
    let dims = x.dim();
    let inception = u64::try_from(dims).is_ok_and(|d| d == FID_FEATURES);
    let (metric, name) = if inception {
        ("fid", "FID".to_string())
    } else {
        ("frechet_distance", "Fréchet distance".to_string())
    };
    let warnings: Vec<String> = sides([x.count, y.count])
        .and_then(|(sides, fewest)| few_samples_warning(&name, &sides, fewest, dims))
        .into_iter()
        .collect();
    if args.json {
        let report = json!({
            "metric": metric,
            "value": distance,
            "dims": dims,
            "images": [x.count, y.count],
            "a": args.a.display().to_string(),
            "b": args.b.display().to_string(),
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if inception {
        println!("FID {distance:.4}");
    } else {
        println!("Fréchet distance {distance:.4} ({dims}-dimensional features)");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
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
    let mut acc = StatsAccumulator::new(FID_FEATURES as i64);
    for f in &files {
        let img = read_image01(f)?;
        acc.add(&net.features(&img)?)?;
    }
    Ok(acc.finish()?)
}
