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
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::TrainStep => "train-step",
            BenchMode::Sample => "sample",
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

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    if let Some(v) = &args.variant {
        let variant = parse_variant(v)?;
        let r = match args.mode {
            BenchMode::TrainStep => train_step(variant, args.iters)?,
            BenchMode::Sample => sample(variant, args.iters)?,
        };
        let mut json = serde_json::to_value(&r)?;
        json["peak_rss_mb"] = Value::from(peak_rss_mb().unwrap_or(0.0));
        println!("{json}");
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the spatiallock binary")?;
    let variants: &[&str] = match args.mode {
        BenchMode::TrainStep => &["gligen", "spatiallock", "spatiallock-pog"],
        BenchMode::Sample => &["gligen", "spatiallock"],
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
