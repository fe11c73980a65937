//! `spatiallock bench dp`: data-parallel scaling of the SpatialLock training step (PoI + PoG,
//! `spatiallock-pog`) at 1, 2, … CPU ranks, one process per rank on c10d's Gloo, beside PyTorch
//! DDP (gloo, the same U-Net architecture and global batch: diffusers' GLIGEN) measured in the
//! same run; and the all-reduce time of float32 buckets beside `torch.distributed.all_reduce`.
//! Images/s are the global batch over the seconds per step of rank 0.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use spatiallock_model::bench::{all_reduce_seconds, peak_rss_mb, train_step_on, BenchSetup, Variant};
use spatiallock_model::dist::{ProcessGroup, RankEnv, SingleRank};

use super::bench::{python, reference_config, run_child, script, BenchArgs};

fn bucket_bytes(args: &BenchArgs) -> usize {
    (args.bucket_mib * (1u64 << 20) as f64) as usize
}

fn all_reduce_bytes(args: &BenchArgs) -> Vec<usize> {
    args.all_reduce_mib
        .iter()
        .map(|m| (m * (1u64 << 20) as f64) as usize)
        .collect()
}

/// In a rank process (`--variant` set): joins the group of the torchrun variables (or runs
/// alone), times the step and the all-reduces, and prints JSON on rank 0.
pub fn child(args: &BenchArgs, setup: &BenchSetup) -> anyhow::Result<()> {
    let env = RankEnv::from_process()?;
    let mut group: Box<dyn spatiallock_model::dist::Collective> = match &env {
        Some(env) => Box::new(ProcessGroup::join(
            env,
            setup.device,
            std::time::Duration::from_secs(120),
        )?),
        None => Box::new(SingleRank),
    };
    let (step, averaging) = train_step_on(
        setup,
        Variant::SpatiallockPog,
        args.iters,
        group.as_mut(),
        bucket_bytes(args),
    )?;
    let mut all_reduce = serde_json::Map::new();
    if group.world_size() > 1 {
        for bytes in all_reduce_bytes(args) {
            let s = all_reduce_seconds(group.as_mut(), bytes, args.iters, setup.device)?;
            all_reduce.insert(bytes.to_string(), json!(s));
        }
    }
    group.barrier()?;
    if group.rank() == 0 {
        println!(
            "{}",
            json!({
                "step_s": step.seconds,
                "averaging_s": averaging,
                "all_reduce": all_reduce,
                "trainable_params": step.trainable_params,
                "peak_rss_mb": peak_rss_mb(),
            })
        );
    }
    Ok(())
}

/// Runs `world` rank processes of this binary and returns rank 0's JSON.
fn ranks(args: &BenchArgs, world: usize) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the spatiallock binary")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut children = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "dp", "--variant", "spatiallock-pog"])
            .args(["--model", &args.model, "--devices", &args.device])
            .args(["--batch", &args.batch.to_string(), "--boxes", &args.boxes.to_string()])
            .args([
                "--iters",
                &args.iters.to_string(),
                "--bucket-mib",
                &args.bucket_mib.to_string(),
            ])
            .arg("--all-reduce-mib")
            .arg(
                args.all_reduce_mib
                    .iter()
                    .map(f64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(size) = args.size {
            cmd.args(["--size", &size.to_string()]);
        }
        if world > 1 {
            let env = RankEnv {
                master_addr: "127.0.0.1".into(),
                master_port: port,
                rank,
                world_size: world,
                local_rank: rank,
                local_world_size: world,
            };
            cmd.envs(env.vars());
        }
        children.push(cmd.spawn().context("starting a rank process")?);
    }
    let mut first = None;
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "rank {rank} of {world} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if rank == 0 {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let line = text.lines().last().unwrap_or_default().to_string();
            first = Some(serde_json::from_str(&line).with_context(|| format!("rank 0 printed no JSON: {text}"))?);
        }
    }
    first.context("no rank ran")
}

/// The benchmark's table.
pub fn run(args: &BenchArgs, setup: &BenchSetup) -> anyhow::Result<()> {
    let worlds = if args.ranks.is_empty() {
        vec![1, 2]
    } else {
        args.ranks.clone()
    };
    if worlds.contains(&0) {
        bail!("--ranks: every world size must be at least 1");
    }
    if setup.device != tch::Device::Cpu {
        bail!("bench dp runs CPU ranks (Gloo); on GPUs use the NCCL build on a GPU machine");
    }
    for w in &worlds {
        if setup.batch % *w as i64 != 0 {
            bail!("--batch {} does not split over {w} ranks", setup.batch);
        }
    }
    if !(args.bucket_mib.is_finite() && args.bucket_mib > 0.0) {
        bail!("--bucket-mib must be a positive number");
    }
    println!(
        "bench dp on {} (cpu, fp32, global batch {}, {}×{} input, {} boxes), 1 intra-op thread per rank, {} MiB buckets",
        setup.arch.name, setup.batch, setup.size, setup.size, setup.boxes, args.bucket_mib
    );
    let mut ours = Vec::new();
    for &w in &worlds {
        ours.push((w, ranks(args, w)?));
    }
    let reference = if args.no_reference {
        None
    } else {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("ddp.json");
        let mut cfg = reference_config(args, setup);
        cfg["worlds"] = json!(worlds);
        cfg["all_reduce_bytes"] = json!(all_reduce_bytes(args));
        std::fs::write(&config, serde_json::to_vec(&cfg)?)?;
        let python = python(args);
        let mut cmd = Command::new(&python);
        cmd.arg(script("bench/ddp_reference.py"))
            .arg(&config)
            .env("OMP_NUM_THREADS", "1");
        Some(run_child(
            &mut cmd,
            &format!("PyTorch DDP reference ({})", python.display()),
        )?)
    };
    let batch = setup.batch as f64;
    let images = |s: f64| batch / s;
    let base = ours[0].1["step_s"].as_f64().unwrap_or(f64::NAN);
    let ref_base = reference
        .as_ref()
        .and_then(|r| r["ddp"][worlds[0].to_string()].as_f64())
        .unwrap_or(f64::NAN);
    println!(
        "{:>6}  {:>14}  {:>9}  {:>12}  {:>18}  {:>11}",
        "ranks", "ours img/s", "scaling", "averaging", "PyTorch DDP img/s", "DDP scaling"
    );
    let mut rows = Vec::new();
    for (w, r) in &ours {
        let s = r["step_s"].as_f64().unwrap_or(f64::NAN);
        let avg = r["averaging_s"].as_f64().unwrap_or(f64::NAN);
        let ddp = reference.as_ref().and_then(|x| x["ddp"][w.to_string()].as_f64());
        println!(
            "{w:>6}  {:>14.1}  {:>8.2}×  {:>10.1} %  {:>18}  {:>11}",
            images(s),
            base / s,
            100.0 * avg / s,
            ddp.map_or("-".into(), |d| format!("{:.1}", images(d))),
            ddp.map_or("-".into(), |d| format!("{:.2}×", ref_base / d)),
        );
        rows.push(
            json!({"ranks": w, "step_s": s, "images_per_s": images(s), "scaling": base / s,
            "averaging_s": avg, "ddp_step_s": ddp, "ddp_scaling": ddp.map(|d| ref_base / d)}),
        );
    }
    let mut bandwidth = Vec::new();
    if let Some((w, r)) = ours.iter().find(|(w, _)| *w > 1) {
        println!("all-reduce (sum, float32) over {w} ranks:");
        println!(
            "{:>10}  {:>12}  {:>10}  {:>22}  {:>7}",
            "MiB", "ours ms", "ours GB/s", "torch.distributed ms", "ratio"
        );
        for bytes in all_reduce_bytes(args) {
            let s = r["all_reduce"][bytes.to_string()].as_f64().unwrap_or(f64::NAN);
            let t = reference
                .as_ref()
                .and_then(|x| x["all_reduce"][bytes.to_string()].as_f64());
            println!(
                "{:>10.1}  {:>12.2}  {:>10.2}  {:>22}  {:>7}",
                bytes as f64 / (1u64 << 20) as f64,
                s * 1e3,
                bytes as f64 / s / 1e9,
                t.map_or("-".into(), |t| format!("{:.2}", t * 1e3)),
                t.map_or("-".into(), |t| format!("{:.2}×", t / s)),
            );
            bandwidth.push(json!({"bytes": bytes, "ours_s": s, "torch_s": t}));
        }
    }
    if let Some(path) = &args.json {
        let doc = json!({"setup": {"model": setup.arch.name, "batch": setup.batch, "size": setup.size,
            "boxes": setup.boxes, "bucket_mib": args.bucket_mib, "threads_per_rank": 1},
            "scaling": rows, "all_reduce": bandwidth});
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| path.display().to_string())?;
    }
    Ok(())
}
