//! `spatiallock`: the command-line entry point to every SpatialLock component.

mod commands;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::client::{ClientCommand, Remote};

/// SpatialLock: layout-controlled text-to-image experiments, from a laptop to a GPU cluster.
#[derive(Parser)]
#[command(name = "spatiallock", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a grid end to end on this machine: embedded coordinator (SQLite) and CPU worker.
    Run(commands::run::RunArgs),
    /// Validate an experiment grid and print its trials and job DAG.
    Plan(commands::plan::PlanArgs),
    /// Print the JSON Schema of the grid format: every field with its type, default and unit.
    Schema(commands::schema::SchemaArgs),
    /// Serve the coordinator (REST API over PostgreSQL or SQLite, Redis dispatch).
    Coordinator(commands::service::CoordinatorArgs),
    /// Run a worker: lease jobs from a coordinator and execute them.
    Worker(commands::service::WorkerArgs),
    #[command(flatten)]
    Client(ClientCommand),
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

/// The command line: every client command (each subcommand of [`ClientCommand`], whoever adds
/// one) also takes [`Remote`]'s `--coordinator` and `--token`; no other command does (`worker`
/// has its own, for a worker token).
fn command_line() -> clap::Command {
    let client = ClientCommand::augment_subcommands(clap::Command::new("client"));
    let names: Vec<String> = client.get_subcommands().map(|c| c.get_name().to_string()).collect();
    names.iter().fold(Cli::command(), |cmd, name| {
        cmd.mut_subcommand(name, |sub| {
            // `augment_args` also sets the command's description from `Remote`'s doc comment:
            // keep the subcommand's own.
            let (about, long_about) = (sub.get_about().cloned(), sub.get_long_about().cloned());
            let sub = Remote::augment_args(sub);
            let sub = match about {
                Some(about) => sub.about(about),
                None => sub,
            };
            match long_about {
                Some(long_about) => sub.long_about(long_about),
                None => sub,
            }
        })
    })
}

/// Whether a command's work is printing for a reader (`… | head` may close early), as opposed
/// to the long-running services and the commands that run other processes or serve sockets.
fn prints_for_a_reader(command: &Command) -> bool {
    !matches!(
        command,
        Command::Run(_) | Command::Coordinator(_) | Command::Worker(_) | Command::Rank(_) | Command::Bench(_)
    )
}

/// Restores the default SIGPIPE disposition (Rust ignores it, so `println!` panics on a closed
/// pipe): a printing command whose reader went away then ends quietly, as Unix tools do.
#[cfg(unix)]
fn end_quietly_on_closed_pipe() {
    // SAFETY: called at start-up before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_pipe() {}

fn main() -> std::process::ExitCode {
    let matches = command_line().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if prints_for_a_reader(&cli.command) {
        end_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Schema(args) => commands::schema::run(&args),
        Command::Coordinator(args) => commands::service::coordinator(&args),
        Command::Worker(args) => commands::service::worker(&args),
        Command::Client(cmd) => {
            // The client command's own matches hold the `Remote` flags `command_line` added.
            let own = matches.subcommand().map_or(&matches, |(_, sub)| sub);
            let remote = Remote::from_arg_matches(own).unwrap_or_else(|e| e.exit());
            commands::client::run(&remote, &cmd)
        }
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
