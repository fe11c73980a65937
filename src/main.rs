//! `spatiallock`: the command-line entry point to every SpatialLock component.

mod commands;

use clap::{Parser, Subcommand};

/// SpatialLock: layout-controlled text-to-image experiments, from a laptop to a GPU cluster.
#[derive(Parser)]
#[command(name = "spatiallock", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    remote: commands::client::Remote,
}

#[derive(Subcommand)]
enum Command {
    /// Run a grid end to end on this machine: embedded coordinator (SQLite) and CPU worker.
    Run(commands::run::RunArgs),
    /// Validate an experiment grid and print its trials and job DAG.
    Plan(commands::plan::PlanArgs),
    /// Serve the coordinator (REST API over PostgreSQL or SQLite, Redis dispatch).
    Coordinator(commands::service::CoordinatorArgs),
    /// Run a worker: lease jobs from a coordinator and execute them.
    Worker(commands::service::WorkerArgs),
    #[command(flatten)]
    Client(commands::client::ClientCommand),
    /// Run one trial (pretraining and training) in-process.
    Train(commands::train::TrainArgs),
    /// Evaluate a trained trial (or checkpoint): generate, detect, mAP, FID, sample grid.
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Generate images from a trained checkpoint and a layout.
    Sample(commands::sample::SampleArgs),
    /// Evaluation metrics on files (COCO mAP).
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// FID statistics and scores (pytorch-fid compatible `.npz`).
    #[command(subcommand)]
    Fid(commands::fid::FidCommand),
    /// Time our training step or sampler beside diffusers (any model, device, precision), COCO
    /// evaluation, the Fréchet distance or the coordinator queue.
    Bench(commands::bench::BenchArgs),
    /// Inspect model architectures and run checkpoints.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Show the tensor runtime this process loaded (libtorch, CUDA runtime, cuDNN, NCCL: versions
    /// and files), threads and devices.
    Doctor(commands::doctor::DoctorArgs),
    /// One rank of a data-parallel training job: started by the worker, or by a launcher
    /// (torchrun, srun, a Kubernetes indexed job) with the torchrun variables set.
    Rank(commands::rank::RankArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Coordinator(args) => commands::service::coordinator(&args),
        Command::Worker(args) => commands::service::worker(&args, &cli.remote),
        Command::Client(cmd) => commands::client::run(&cli.remote, &cmd),
        Command::Train(args) => commands::train::run(&args),
        Command::Sample(args) => commands::sample::run(&args),
        Command::Evaluate(args) => commands::evaluate::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Eval(cmd) => commands::eval::run(&cmd),
        Command::Fid(cmd) => commands::fid::run(&cmd),
        Command::Model(cmd) => commands::model::run(&cmd),
        Command::Doctor(args) => commands::doctor::run(&args),
        Command::Rank(args) => commands::rank::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
