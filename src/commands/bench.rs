//! `spatiallock bench train-step|sample`: our timings beside diffusers' (GLIGEN) on the same
//! architecture, device, precision and input sizes, measured in the same run; each
//! implementation runs in its own process so its peak RSS and device memory are its own.
//! `--json` writes the whole table (with `spatiallock doctor`'s runtime) for scripts such as
//! `scripts/gpu-check.sh`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;
use spatiallock_model::bench::{peak_rss_mb, sample, train_step, BenchSetup, Variant};
use spatiallock_model::nn::diffusers_config::unet_to_json;
use spatiallock_model::nn::diffusers_config::AttentionType;
use spatiallock_model::runtime::runtime_info;
use spatiallock_protocol::trial::load_model_config;

/// What to time.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BenchMode {
    /// One training step (ε-MSE, + PoG's loss for spatiallock-pog; AdamW on the grounding
    /// modules and the perception head).
    TrainStep,
    /// DDIM + classifier-free guidance with scheduled grounding, one image (VAE decode included
    /// when the model has a VAE).
    Sample,
    /// COCO bbox evaluation of 5000 images / ~250k detections, JSON parsing included.
    CocoEval,
    /// The Fréchet distance between two 2048-d Gaussians.
    Frechet,
    /// Coordinator throughput and submit-to-lease latency with noop jobs (PostgreSQL + Redis, SQLite).
    Queue,
    /// The coordinator process under load: experiment-list reads beside /healthz, and
    /// simulated workers long-polling while noop jobs flow (PostgreSQL + Redis).
    Api,
    /// Data-parallel scaling of the SpatialLock training step at 1, 2, … CPU ranks (c10d Gloo)
    /// beside PyTorch DDP, and all-reduce times beside torch.distributed.
    Dp,
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::TrainStep => "train-step",
            BenchMode::Sample => "sample",
            BenchMode::CocoEval => "coco-eval",
            BenchMode::Frechet => "frechet",
            BenchMode::Queue => "queue",
            BenchMode::Api => "api",
            BenchMode::Dp => "dp",
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
    /// Python with torch and diffusers for the reference (default: the set-up's venv;
    /// `bash scripts/fixtures/setup-python.sh` installs diffusers there).
    #[arg(long, env = "SPATIALLOCK_PYTHON")]
    pub python: Option<PathBuf>,
    /// train-step, sample: model architecture, a name in configs/models/ or a YAML path
    /// (random weights).
    #[arg(long, default_value = "bench-tiny")]
    pub model: String,
    /// train-step, sample: the device, `cpu`, `cuda`, `cuda:N` or `N` (one device).
    #[arg(long = "devices", alias = "device", value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// train-step, sample: fp32, or bf16 autocast (weights and losses stay fp32).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// train-step: images per step.
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    /// train-step, sample: side of the U-Net input in cells (latent side with a VAE; default:
    /// the model's sample_size).
    #[arg(long)]
    pub size: Option<i64>,
    /// train-step, sample: boxes per image.
    #[arg(long, default_value_t = 8)]
    pub boxes: i64,
    /// sample: DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: i64,
    /// sample: fraction of the steps with grounding on (GLIGEN's scheduled sampling β).
    #[arg(long, default_value_t = 0.3)]
    pub grounding_fraction: f64,
    /// train-step, sample: our variants to time, comma-separated (gligen, spatiallock,
    /// spatiallock-pog; default: all three for train-step, the first two for sample).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// train-step, sample: also write the table, the set-up and the runtime as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// coco-eval: images in the generated set (the reference set is 5000).
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// queue, api: noop jobs in the throughput (queue) or scale (api) phase.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// queue: concurrent worker clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// api: experiments stored before the list is read.
    #[arg(long, default_value_t = 1000)]
    pub experiments: usize,
    /// api: concurrent connections of the read phase.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// api: seconds each read endpoint is driven.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// api: the coordinator binary to load (default: spatiallock-coordinator beside this one).
    #[arg(long)]
    pub coordinator_binary: Option<PathBuf>,
    /// api: simulated workers of the scale phase (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// queue, api: PostgreSQL server to create the benchmark database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_admin_url: String,
    /// queue: trivial trials for the Ray Tune reference (run when --python has `ray[tune]`).
    #[arg(long, default_value_t = 50)]
    pub ray_trials: usize,
    /// queue, api: Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// dp: world sizes to run, comma-separated (default 1,2).
    #[arg(long, value_delimiter = ',')]
    pub ranks: Vec<usize>,
    /// dp: gradient bucket size, in MiB (DDP's default).
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mib: f64,
    /// dp: all-reduce sizes to time, in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 4.0, 25.0])]
    pub all_reduce_mib: Vec<f64>,
    /// Internal: run one of our variants in this process and print JSON.
    #[arg(long, hide = true)]
    pub variant: Option<String>,
}

/// Forward precision of a benchmark.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Precision {
    /// Everything in fp32.
    Fp32,
    /// bf16 autocast.
    Bf16,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The set-up's venv for the libtorch this binary was built against
/// (`$SPATIALLOCK_CACHE/torch-<version>`, see scripts/setup-torch.sh).
fn default_python() -> PathBuf {
    let cache = std::env::var_os("SPATIALLOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/spatiallock"));
    cache.join(format!("torch-{}/bin/python", runtime_info().torch_built_against))
}

fn parse_variant(s: &str) -> anyhow::Result<Variant> {
    Ok(match s {
        "gligen" => Variant::Gligen,
        "spatiallock" => Variant::Spatiallock,
        "spatiallock-pog" => Variant::SpatiallockPog,
        other => bail!("unknown variant `{other}` (gligen, spatiallock or spatiallock-pog)"),
    })
}

pub(super) fn run_child(cmd: &mut Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed: {}", err.trim().trim_start_matches("error: "));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed no JSON: {text}"))
}

pub(super) fn python(args: &BenchArgs) -> PathBuf {
    args.python.clone().unwrap_or_else(default_python)
}

/// A reference script: under `$SPATIALLOCK_SCRIPTS` (set by scripts/gpu-check.sh, for a binary
/// built on another machine), else the `scripts/` folder of the checkout it was built from.
pub fn script(name: &str) -> PathBuf {
    std::env::var_os("SPATIALLOCK_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts"))
        .join(name)
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

/// The benchmark set-up the arguments describe.
fn setup(args: &BenchArgs) -> anyhow::Result<BenchSetup> {
    let arch = load_model_config(&args.model).map_err(|e| anyhow::anyhow!("--model {}: {e}", args.model))?;
    let device = super::service::single_device(&args.device)?;
    if let tch::Device::Cuda(n) = device {
        let visible = tch::Cuda::device_count();
        if n as i64 >= visible {
            bail!(
                "--devices {}: this process sees {visible} CUDA device(s) (spatiallock doctor)",
                args.device
            );
        }
    }
    let size = args.size.unwrap_or(i64::from(arch.unet.sample_size));
    Ok(BenchSetup {
        arch,
        device,
        bf16: args.precision == Precision::Bf16,
        batch: args.batch,
        size,
        boxes: args.boxes,
        steps: args.steps,
        grounding_fraction: args.grounding_fraction,
    })
}

/// What the diffusers reference script needs to build the same workload (scripts/bench/diffusers_reference.py).
pub(super) fn reference_config(args: &BenchArgs, s: &BenchSetup) -> Value {
    let (device, bf16) = (s.device, s.bf16);
    serde_json::json!({
        "mode": args.mode.name(),
        "iters": args.iters,
        "device": match device { tch::Device::Cuda(n) => format!("cuda:{n}"), _ => "cpu".into() },
        "bf16": bf16,
        "batch": s.batch,
        "size": s.size,
        "boxes": s.boxes,
        "steps": s.steps,
        "grounding_fraction": s.grounding_fraction,
        "context_tokens": s.arch.text_encoder.max_position_embeddings,
        "unet": unet_to_json(&s.arch.unet, AttentionType::Gated),
        "vae": s.arch.vae,
    })
}

/// One row of the table.
#[derive(serde::Serialize)]
struct Row {
    implementation: String,
    seconds: f64,
    unit: String,
    peak_rss_mb: Option<f64>,
    cuda_memory_bytes: Option<u64>,
    trainable_params: Option<i64>,
}

impl Row {
    fn from_json(implementation: String, r: &Value) -> anyhow::Result<Self> {
        let seconds = r["seconds"]
            .as_f64()
            .with_context(|| format!("{implementation} reported no time: {r}"))?;
        Ok(Row {
            implementation,
            seconds,
            unit: r["unit"].as_str().unwrap_or("s").to_string(),
            peak_rss_mb: r["peak_rss_mb"].as_f64(),
            cuda_memory_bytes: r["cuda_memory_bytes"].as_u64(),
            trainable_params: r["trainable_params"].as_i64(),
        })
    }
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    match args.mode {
        BenchMode::CocoEval => return coco_eval(args),
        BenchMode::Frechet => return frechet(args),
        BenchMode::Api => {
            return super::bench_api::run(&super::bench_api::ApiBench {
                experiments: args.experiments,
                connections: args.connections,
                seconds: args.seconds,
                workers: args.workers,
                jobs: args.jobs,
                postgres_admin_url: args.postgres_admin_url.clone(),
                redis_url: args.redis_url.clone(),
                coordinator_binary: args.coordinator_binary.clone(),
            })
        }
        BenchMode::Queue => {
            return super::bench_queue::run(&super::bench_queue::QueueBench {
                jobs: args.jobs,
                clients: args.clients,
                probes: 200,
                postgres_admin_url: args.postgres_admin_url.clone(),
                redis_url: args.redis_url.clone(),
                ray_python: Some(python(args)),
                ray_trials: args.ray_trials,
            })
        }
        _ => {}
    }
    let setup = setup(args)?;
    // Refuse what cannot run before anything is timed (the reference alone takes minutes on a GPU).
    setup.check(args.mode == BenchMode::Sample)?;
    if args.iters == 0 {
        bail!("--iters must be at least 1 (timed iterations after one warm-up)");
    }
    if let Some(dir) = args
        .json
        .as_ref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !dir.is_dir() {
            bail!("--json: the folder {} does not exist", dir.display());
        }
    }
    if args.mode == BenchMode::Dp {
        return match args.variant {
            Some(_) => super::bench_dp::child(args, &setup),
            None => super::bench_dp::run(args, &setup),
        };
    }
    if let Some(v) = &args.variant {
        let variant = parse_variant(v)?;
        let r = match args.mode {
            BenchMode::Sample => sample(&setup, variant, args.iters)?,
            _ => train_step(&setup, variant, args.iters)?,
        };
        let mut json = serde_json::to_value(&r)?;
        json["peak_rss_mb"] = Value::from(peak_rss_mb().unwrap_or(0.0));
        println!("{json}");
        return Ok(());
    }
    let variants: Vec<String> = if args.variants.is_empty() {
        let all = ["gligen", "spatiallock", "spatiallock-pog"];
        let n = if args.mode == BenchMode::Sample { 2 } else { 3 };
        all[..n].iter().map(|s| s.to_string()).collect()
    } else {
        args.variants.clone()
    };
    for v in &variants {
        parse_variant(v).context("--variants")?;
    }
    let what = format!(
        "bench {} on {} ({}, {}, {}×{}×{} input{}, {} boxes), 1 intra-op thread",
        args.mode.name(),
        setup.arch.name,
        args.device,
        args.precision.name(),
        setup.arch.unet.in_channels,
        setup.size,
        setup.size,
        match args.mode {
            BenchMode::Sample => format!(
                ", {} DDIM steps, CFG 7.5, grounding on for the first {:.0}% of steps, {} px image",
                setup.steps,
                setup.grounding_fraction * 100.0,
                setup.image_side()
            ),
            _ => format!(", batch {}", setup.batch),
        },
        setup.boxes
    );
    println!("{what}");
    let mut rows = Vec::new();
    let reference = if args.no_reference {
        None
    } else {
        let python = python(args);
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("reference.json");
        std::fs::write(&config, serde_json::to_vec(&reference_config(args, &setup))?)?;
        let mut cmd = Command::new(&python);
        cmd.arg(script("bench/diffusers_reference.py"))
            .arg(&config)
            .env("OMP_NUM_THREADS", "1");
        let r = run_child(&mut cmd, &format!("diffusers reference ({})", python.display()))?;
        rows.push(Row::from_json("diffusers GLIGEN".into(), &r)?);
        Some(r)
    };
    let exe = std::env::current_exe().context("locating the spatiallock binary")?;
    for v in &variants {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "bench",
            args.mode.name(),
            "--iters",
            &args.iters.to_string(),
            "--variant",
            v,
        ])
        .args(["--model", &args.model, "--devices", &args.device])
        .args([
            "--precision",
            args.precision.name(),
            "--batch",
            &setup.batch.to_string(),
        ])
        .args(["--size", &setup.size.to_string(), "--boxes", &setup.boxes.to_string()])
        .args(["--steps", &setup.steps.to_string()])
        .args(["--grounding-fraction", &setup.grounding_fraction.to_string()])
        .env("OMP_NUM_THREADS", "1");
        let r = run_child(&mut cmd, &format!("spatiallock bench variant {v}"))?;
        rows.push(Row::from_json(format!("spatiallock {v}"), &r)?);
    }
    print_table(&rows, reference.is_some());
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "bench": args.mode.name(),
            "description": what,
            "model": setup.arch.name,
            "device": args.device,
            "precision": args.precision.name(),
            "batch": setup.batch,
            "size": setup.size,
            "image_side": setup.image_side(),
            "boxes": setup.boxes,
            "steps": setup.steps,
            "grounding_fraction": setup.grounding_fraction,
            "iters": args.iters,
            "rows": rows,
            "reference": reference,
            "runtime": runtime_info(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(rows: &[Row], with_reference: bool) {
    let unit = rows.first().map_or("s", |r| r.unit.as_str());
    let base = with_reference.then(|| rows.first().map(|r| r.seconds)).flatten();
    println!(
        "  {:<28} {:>10} {:>14} {:>11} {:>11} {:>10}",
        "implementation", unit, "vs diffusers", "peak RSS", "GPU memory", "trainable"
    );
    for r in rows {
        let ratio = base.map_or_else(|| "-".into(), |b| format!("{:.2}×", b / r.seconds));
        let rss = r.peak_rss_mb.map_or_else(|| "-".into(), |m| format!("{m:.0} MiB"));
        let gpu = r
            .cuda_memory_bytes
            .map_or_else(|| "-".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64));
        let params = r
            .trainable_params
            .map_or_else(|| "-".into(), |p| format!("{:.2}M", p as f64 / 1e6));
        println!(
            "  {:<28} {:>10.3} {ratio:>14} {rss:>11} {gpu:>11} {params:>10}",
            r.implementation, r.seconds
        );
    }
    if base.is_some() {
        println!("(ratio = diffusers time / our time: above 1 means we are faster)");
    }
}
