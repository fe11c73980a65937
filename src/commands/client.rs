//! Client commands against a running coordinator: submit, status, report, cancel,
//! retry-failed, logs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use spatiallock_protocol::spec::ExperimentSpec;
use spatiallock_worker::CoordinatorClient;

use super::board::{result_locations, Board};
use super::service::runtime;

/// Where the coordinator is.
#[derive(Args, Clone)]
pub struct Remote {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "SPATIALLOCK_COORDINATOR",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub coordinator: String,
    /// A user (or admin) token.
    #[arg(long, env = "SPATIALLOCK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl Remote {
    fn client(&self) -> CoordinatorClient {
        CoordinatorClient::new(&self.coordinator, self.token.clone())
    }
}

/// The client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Submit a grid (the same file twice submits once: the key is the file's content).
    Submit {
        /// The grid spec.
        file: PathBuf,
        /// Check and expand only.
        #[arg(long)]
        dry_run: bool,
    },
    /// List experiments, or show one experiment's jobs (`--watch`: until it ends).
    Status {
        /// An experiment id.
        experiment: Option<String>,
        /// Keep refreshing until the experiment ends.
        #[arg(long)]
        watch: bool,
    },
    /// Print an experiment's results beside the paper's numbers.
    Report {
        /// The experiment id.
        experiment: String,
        /// md, csv or json.
        #[arg(long, default_value = "md")]
        format: String,
    },
    /// Cancel an experiment (queued jobs at once, running ones at their next heartbeat).
    Cancel {
        /// The experiment id.
        experiment: String,
    },
    /// Requeue an experiment's failed jobs from their last checkpoints.
    RetryFailed {
        /// The experiment id.
        experiment: String,
    },
    /// Show the log tail of a trial's current job.
    Logs {
        /// `<experiment>.<trial index>`.
        trial: String,
        /// Lines to show.
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
}

/// The text to submit for a spec (architecture files already inlined, so the coordinator
/// needs none of ours) and its idempotency key: the same grid submits once.
pub fn submission(spec: &ExperimentSpec) -> (String, String) {
    let key = format!(
        "spec-{}",
        spatiallock_protocol::canonical::hash_of(&serde_json::to_value(spec).unwrap_or_default())
    );
    (spec.to_json(), key)
}

/// Runs a client command.
pub fn run(remote: &Remote, cmd: &ClientCommand) -> anyhow::Result<()> {
    let client = remote.client();
    runtime()?.block_on(async move {
        match cmd {
            ClientCommand::Submit { file, dry_run } => {
                let spec = ExperimentSpec::load_grid_or_trial(file).with_context(|| file.display().to_string())?;
                let (text, key) = submission(&spec);
                if *dry_run {
                    let plan = spatiallock_protocol::expand(&spec)?;
                    println!("{} trials, {} jobs (not submitted)", plan.trials.len(), plan.jobs.len());
                    return Ok(());
                }
                let r = client.submit(&text, true, Some(&key)).await?;
                for w in &r.warnings {
                    eprintln!("warning: {w:?}");
                }
                let what = if r.created { "submitted" } else { "already submitted" };
                println!("{}  ({what}: {} trials, {} jobs)", r.id, r.num_trials, r.num_jobs);
            }
            ClientCommand::Status { experiment: None, .. } => {
                let page = client.experiments().await?;
                for e in page.items {
                    let counts: Vec<String> = e.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect();
                    println!("{}  {:<10} {:<24} {}", e.id, e.state, e.name, counts.join(", "));
                }
            }
            ClientCommand::Status {
                experiment: Some(id),
                watch,
            } => {
                let mut board = Board::new(id);
                loop {
                    let (exp, jobs) = board.refresh(&client).await?;
                    let done = !matches!(exp.state.as_str(), "queued" | "running");
                    if !*watch || done {
                        for (label, out) in result_locations(&jobs) {
                            println!("{label}: {out}");
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            ClientCommand::Report { experiment, format } => {
                print!("{}", client.report(experiment, format).await?);
            }
            ClientCommand::Cancel { experiment } => {
                let c = client.cancel(experiment).await?;
                println!("cancel requested for {} job(s)", c.jobs);
            }
            ClientCommand::RetryFailed { experiment } => {
                let c = client.retry_failed(experiment, false).await?;
                println!("{} job(s) requeued", c.jobs);
            }
            ClientCommand::Logs { trial, lines } => {
                let tail = client.trial_logs(trial, *lines).await?;
                println!("(attempt {})", tail.attempt);
                for l in tail.lines {
                    println!("{l}");
                }
            }
        }
        Ok(())
    })
}
