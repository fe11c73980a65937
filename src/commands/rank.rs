//! `spatiallock rank --job FILE`: one rank of a data-parallel training job. The worker
//! starts one per device; launchers (torchrun `--no-python`, Slurm `srun`, a Kubernetes indexed
//! job) can start it too, with the torchrun variables set (see the README).

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use spatiallock_worker::rank_process::{run_rank, RankEnd};

/// Arguments of `rank`.
#[derive(Args)]
pub struct RankArgs {
    /// The job every rank runs (as the worker writes it in the attempt folder:
    /// `rank-job-<first rank>.json`).
    #[arg(long)]
    pub job: PathBuf,
    /// Intra-op threads for libtorch in this rank.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
}

/// Runs the rank; fails when its job failed (the last JSON line on stdout says how).
pub fn run(args: &RankArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    tch::set_num_threads(args.threads);
    match run_rank(&args.job).map_err(|e| anyhow!(e))? {
        RankEnd::Succeeded(_) | RankEnd::Stopped(_) => Ok(()),
        RankEnd::App(m) | RankEnd::Infra(m) => Err(anyhow!(m)),
    }
}
