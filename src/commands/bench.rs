//! `spatiallock bench train-step|sample`: our timings on bench-tiny beside diffusers' on the same
//! configuration, measured in the same run; each implementation runs in its own process so its
//! peak RSS is its own.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;
use spatiallock_model::bench::{peak_rss_mb, sample, train_step, Variant};

/// What to time.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BenchMode {
    /// One training step (batch 16, 8 boxes, AdamW on the grounding modules).
    TrainStep,
    /// 50-step DDIM + classifier-free guidance, one image.
    Sample,
    /// COCO bbox evaluation of 5000 images / ~250k detections, JSON parsing included.
    CocoEval,
    /// The Fréchet distance between two 2048-d Gaussians.
    Frechet,
    /// Coordinator throughput and submit-to-lease latency with noop jobs (PostgreSQL + Redis, SQLite).
    Queue,
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::TrainStep => "train-step",
            BenchMode::Sample => "sample",
            BenchMode::CocoEval => "coco-eval",
            BenchMode::Frechet => "frechet",
            BenchMode::Queue => "queue",
        }
    }
}

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// What to time.
    pub mode: BenchMode,
    /// Timed iterations per implementation (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Skip the diffusers reference (ratios are then not printed).
    #[arg(long)]
    pub no_reference: bool,
    /// Python with torch 2.13 and diffusers (default: the set-up's venv;
    /// `bash scripts/fixtures/setup-python.sh` installs diffusers there).
    #[arg(long, env = "SPATIALLOCK_PYTHON")]
    pub python: Option<PathBuf>,
    /// coco-eval: images in the generated set (the reference set is 5000).
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// queue: noop jobs in the throughput phase.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// queue: concurrent worker clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// queue: PostgreSQL server to create the benchmark database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_admin_url: String,
    /// queue: Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Internal: run one of our variants in this process and print JSON.
    #[arg(long, hide = true)]
    pub variant: Option<String>,
}

fn default_python() -> PathBuf {
    let cache = std::env::var_os("SPATIALLOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/spatiallock"));
    cache.join("torch-2.13.0/bin/python")
}

fn parse_variant(s: &str) -> anyhow::Result<Variant> {
    Ok(match s {
        "gligen" => Variant::Gligen,
        "spatiallock" => Variant::Spatiallock,
        "spatiallock-pog" => Variant::SpatiallockPog,
        other => bail!("unknown variant {other}"),
    })
}

fn run_child(cmd: &mut Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed no JSON: {text}"))
}

fn python(args: &BenchArgs) -> PathBuf {
    args.python.clone().unwrap_or_else(default_python)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// COCO evaluation: the reference script generates the set and times pycocotools and
/// faster-coco-eval; we time ours on the same files.
fn coco_eval(args: &BenchArgs) -> anyhow::Result<()> {
    use spatiallock_model::eval::coco::{evaluate, load_detections, CocoGt};
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(python(args));
    cmd.arg(script("fixtures/make_coco_bench.py"))
        .arg(dir.path())
        .arg("--images")
        .arg(args.images.to_string());
    let reference = run_child(&mut cmd, "pycocotools / faster-coco-eval reference")?;
    let start = std::time::Instant::now();
    let gt = CocoGt::load(&dir.path().join("gt.json"))?;
    let dts = load_detections(&dir.path().join("dt.json"), &gt)?;
    let ours = evaluate(&gt, &dts);
    let secs = start.elapsed().as_secs_f64();
    let py = reference["pycocotools_s"].as_f64().unwrap_or(f64::NAN);
    let fast = reference["faster_coco_eval_s"].as_f64().unwrap_or(f64::NAN);
    let want: Vec<f64> = reference["stats_pycocotools"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let diff = ours
        .stats
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "bench coco-eval: {} images, {} GT, {} detections, {} categories (JSON parsing included; we use {} threads)",
        reference["images"],
        reference["gt"],
        reference["dt"],
        reference["categories"],
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("  {:<20} {:>10} {:>14}", "implementation", "seconds", "speed-up");
    println!("  {:<20} {:>10.3} {:>14}", "pycocotools", py, "1.00×");
    println!("  {:<20} {:>10.3} {:>13.2}×", "faster-coco-eval", fast, py / fast);
    println!("  {:<20} {:>10.3} {:>13.2}×", "spatiallock", secs, py / secs);
    println!(
        "  ours vs faster-coco-eval: {:.2}×; max |stat − pycocotools| = {diff:.1e}",
        fast / secs
    );
    Ok(())
}

/// Fréchet distance at d = 2048: pytorch-fid's `calculate_frechet_distance` beside ours on the
/// same statistics files.
fn frechet(args: &BenchArgs) -> anyhow::Result<()> {
    use spatiallock_model::eval::frechet::{frechet_distance, GaussianStats};
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(python(args));
    cmd.arg(script("fixtures/bench_frechet.py"))
        .arg(dir.path())
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1");
    let reference = run_child(&mut cmd, "pytorch-fid reference")?;
    let a = GaussianStats::read_npz(&dir.path().join("stats_a.npz"))?;
    let b = GaussianStats::read_npz(&dir.path().join("stats_b.npz"))?;
    let start = std::time::Instant::now();
    let fid = frechet_distance(&a, &b)?;
    let secs = start.elapsed().as_secs_f64();
    let py = reference["pytorch_fid_s"].as_f64().unwrap_or(f64::NAN);
    let want = reference["fid"].as_f64().unwrap_or(f64::NAN);
    println!("bench frechet: d = 2048, 1 thread");
    println!("  pytorch-fid  {py:>8.3} s  FID {want:.9}");
    println!(
        "  spatiallock  {secs:>8.3} s  FID {fid:.9}  ({:.2}× faster; relative difference {:.1e})",
        py / secs,
        (fid - want).abs() / want.abs()
    );
    Ok(())
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    match args.mode {
        BenchMode::CocoEval => return coco_eval(args),
        BenchMode::Frechet => return frechet(args),
        BenchMode::Queue => {
            return super::bench_queue::run(&super::bench_queue::QueueBench {
                jobs: args.jobs,
                clients: args.clients,
                probes: 200,
                postgres_admin_url: args.postgres_admin_url.clone(),
                redis_url: args.redis_url.clone(),
            })
        }
        _ => {}
    }
    if let Some(v) = &args.variant {
        let variant = parse_variant(v)?;
        let r = match args.mode {
            BenchMode::Sample => sample(variant, args.iters)?,
            _ => train_step(variant, args.iters)?,
        };
        let mut json = serde_json::to_value(&r)?;
        json["peak_rss_mb"] = Value::from(peak_rss_mb().unwrap_or(0.0));
        println!("{json}");
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the spatiallock binary")?;
    let variants: &[&str] = match args.mode {
        BenchMode::Sample => &["gligen", "spatiallock"],
        _ => &["gligen", "spatiallock", "spatiallock-pog"],
    };
    println!(
        "bench {} on bench-tiny (3×32×32, widths 64/128/256, batch 16, 8 boxes), 1 intra-op thread",
        args.mode.name()
    );
    let reference = if args.no_reference {
        None
    } else {
        let python = args.python.clone().unwrap_or_else(default_python);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/diffusers_reference.py");
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(args.mode.name())
            .arg(args.iters.to_string())
            .env("OMP_NUM_THREADS", "1");
        Some(run_child(
            &mut cmd,
            &format!("diffusers reference ({})", python.display()),
        )?)
    };
    let mut rows = Vec::new();
    if let Some(r) = &reference {
        rows.push((
            "diffusers GLIGEN".to_string(),
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mb"].as_f64(),
            None,
        ));
    }
    for v in variants {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "bench",
            args.mode.name(),
            "--iters",
            &args.iters.to_string(),
            "--variant",
            v,
        ])
        .env("OMP_NUM_THREADS", "1");
        let r = run_child(&mut cmd, &format!("spatiallock bench variant {v}"))?;
        rows.push((
            format!("spatiallock {v}"),
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mb"].as_f64(),
            r["trainable_params"].as_i64(),
        ));
    }
    let unit = if args.mode == BenchMode::TrainStep {
        "s/step"
    } else {
        "s/image"
    };
    let base = reference.as_ref().and_then(|r| r["seconds"].as_f64());
    println!(
        "  {:<28} {:>10} {:>16} {:>12} {:>12}",
        "implementation", unit, "vs diffusers", "peak RSS", "trainable"
    );
    for (name, secs, rss, params) in rows {
        let ratio = base.map(|b| format!("{:.2}×", b / secs)).unwrap_or_else(|| "-".into());
        let rss = rss.map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "-".into());
        let params = params
            .map(|p| format!("{:.2}M", p as f64 / 1e6))
            .unwrap_or_else(|| "-".into());
        println!("  {name:<28} {secs:>10.3} {ratio:>16} {rss:>12} {params:>12}");
    }
    println!("(ratio = diffusers time / our time: above 1 means we are faster)");
    Ok(())
}
