//! Client commands against a running coordinator: submit, status, report, cancel,
//! retry-failed, logs. Commands that take an EXPERIMENT accept its id or its name
//! ([`resolve_experiment`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use spatiallock_protocol::api::{ExperimentView, JobView};
use spatiallock_protocol::spec::ExperimentSpec;
use spatiallock_worker::{ClientError, CoordinatorClient};

use super::board::{experiment_table, now_ms, result_locations, Board};
use super::service::runtime;

/// Where the coordinator is, and the token to show it: the flags of every client command
/// (`worker` has its own, for a worker token).
#[derive(Args, Clone)]
pub struct Remote {
    /// The coordinator's URL.
    #[arg(long, env = "SPATIALLOCK_COORDINATOR", default_value = "http://127.0.0.1:8080")]
    pub coordinator: String,
    /// A user (or admin) token, when the coordinator has tokens.
    #[arg(long, env = "SPATIALLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Remote {
    /// The token, if a non-empty one was given.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// A client for this coordinator with this token.
    pub fn client(&self) -> CoordinatorClient {
        CoordinatorClient::new(&self.coordinator, self.token().map(str::to_string))
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
    /// List experiments, or show one experiment's jobs with progress, rate and ETA (`--watch`:
    /// until it ends).
    Status {
        /// An experiment id or name.
        experiment: Option<String>,
        /// Keep refreshing until the experiment ends (the board on stderr, the final table on
        /// stdout).
        #[arg(long, requires = "experiment")]
        watch: bool,
        /// Print the coordinator's views as JSON: the experiment list, or one experiment and
        /// its jobs.
        #[arg(long)]
        json: bool,
    },
    /// Print an experiment's results beside the paper's numbers.
    Report {
        /// An experiment id or name.
        experiment: String,
        /// md, csv or json.
        #[arg(long, default_value = "md", value_parser = ["md", "csv", "json"])]
        format: String,
    },
    /// Cancel an experiment (queued jobs at once, running ones at their next heartbeat).
    Cancel {
        /// An experiment id or name.
        experiment: String,
    },
    /// Requeue an experiment's failed jobs from their last checkpoints.
    RetryFailed {
        /// An experiment id or name.
        experiment: String,
    },
    /// Requeue an experiment's cancelled and failed jobs: each training job continues from its
    /// last committed checkpoint (a cancelled one committed one as it stopped).
    Resume {
        /// An experiment id or name.
        experiment: String,
    },
    /// Show the logs of every job of a trial, or of one job: each job's state, why its attempts
    /// failed, and the last lines of its latest attempt.
    Logs {
        /// A trial (`<experiment>.<index>`) or a job (`<experiment>.<job>`).
        trial: String,
        /// Lines to show per job.
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
    /// Metric series of each job of a trial (kept apart), or of one job: a table, CSV, JSON or
    /// TensorBoard event files.
    Metrics(super::metrics::MetricsArgs),
    /// Write an experiment's figures: a comparison of every trial's evaluation strip (the same
    /// layouts and seeds in each row), each trial's training curves, and a figures.md listing
    /// them.
    Figures(super::figures::FiguresArgs),
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

/// Whether `s` is written like an experiment id (`exp-` and hex digits).
fn looks_like_experiment_id(s: &str) -> bool {
    s.strip_prefix("exp-")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The id of the one experiment named exactly `wanted` among `candidates`.
///
/// Errors: none or several have that name (the message lists the several, with their states).
fn pick_experiment(wanted: &str, candidates: &[ExperimentView]) -> Result<String, String> {
    let named: Vec<&ExperimentView> = candidates.iter().filter(|e| e.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(format!(
            "no experiment has the id or name `{wanted}` (`spatiallock status` lists them)"
        )),
        many => {
            let ids: Vec<String> = many.iter().map(|e| format!("{} ({})", e.id, e.state)).collect();
            Err(format!(
                "{} experiments are named `{wanted}`: {}; give one of these ids instead",
                many.len(),
                ids.join(", ")
            ))
        }
    }
}

/// The id of the experiment `wanted` names: an experiment id, or the name of exactly one
/// experiment. Every client command that takes an EXPERIMENT resolves it with this.
///
/// Errors: no experiment has that id or name; several share the name (their ids are listed);
/// the coordinator could not be reached or refused.
pub async fn resolve_experiment(remote: &Remote, wanted: &str) -> anyhow::Result<String> {
    if looks_like_experiment_id(wanted) {
        match remote.client().experiment(wanted).await {
            Ok(e) => return Ok(e.id),
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e.into()),
        }
    }
    let named = remote.client().experiments_named(wanted).await?;
    pick_experiment(wanted, &named).map_err(anyhow::Error::msg)
}

/// `status EXP --json`: the experiment and its jobs as the coordinator shows them.
#[derive(serde::Serialize)]
struct ExperimentStatus<'a> {
    experiment: &'a ExperimentView,
    jobs: &'a [JobView],
}

/// A 401 when no token was given says how to give one (the coordinator's own message speaks
/// of the HTTP header).
fn explain_missing_token(e: anyhow::Error, remote: &Remote) -> anyhow::Error {
    let unauthorized = matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Api { status, .. }) if *status == StatusCode::UNAUTHORIZED
    );
    if unauthorized && remote.token().is_none() {
        anyhow::anyhow!(
            "the coordinator at {} needs a token: pass a user (or admin) token with --token or set \
             SPATIALLOCK_TOKEN",
            remote.coordinator
        )
    } else {
        e
    }
}

/// `<experiment>.<trial index or job>` with the experiment given by id or name, with the
/// experiment's id (names may hold dots: the experiment is everything before the last one).
///
/// Errors: no dot; the name resolves to none or several experiments (see [`resolve_experiment`]).
pub async fn resolve_qualified(remote: &Remote, target: &str) -> anyhow::Result<String> {
    let Some((experiment, rest)) = target.rsplit_once('.').filter(|(e, r)| !e.is_empty() && !r.is_empty()) else {
        anyhow::bail!(
            "`{target}` names no trial or job: write `<experiment>.<trial index>` (e.g. `{target}.0`) or \
             `<experiment>.<job>`, the experiment by id or name"
        );
    };
    if looks_like_experiment_id(experiment) {
        return Ok(target.to_string());
    }
    Ok(format!("{}.{rest}", resolve_experiment(remote, experiment).await?))
}

/// Runs a client command.
pub fn run(remote: &Remote, cmd: &ClientCommand) -> anyhow::Result<()> {
    run_command(remote, cmd).map_err(|e| explain_missing_token(e, remote))
}

fn run_command(remote: &Remote, cmd: &ClientCommand) -> anyhow::Result<()> {
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
                    eprintln!("warning: {w}");
                }
                let what = if r.created { "submitted" } else { "already submitted" };
                println!("{}  ({what}: {} trials, {} jobs)", r.id, r.num_trials, r.num_jobs);
                // A grid submitted before whose experiment was cancelled or failed: say how to resume it.
                let hint = if r.created {
                    None
                } else {
                    super::resume::after_resubmit(&client, &r.id)
                        .await
                        .unwrap_or_else(|e| Some(format!("warning: could not check the experiment's state: {e}")))
                };
                if let Some(hint) = hint {
                    eprintln!("{hint}");
                }
            }
            ClientCommand::Status {
                experiment: None, json, ..
            } => {
                let page = client.experiments().await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&page)?);
                } else {
                    println!("{}", experiment_table(&page.items, now_ms()));
                    if page.next_page_token.is_some() {
                        println!(
                            "(the {} newest; `spatiallock status NAME` finds any other by name)",
                            page.items.len()
                        );
                    }
                }
            }
            ClientCommand::Status {
                experiment: Some(wanted),
                watch,
                json,
            } => {
                let id = resolve_experiment(remote, wanted).await?;
                let mut board = Board::new(&id);
                let (exp, jobs) = loop {
                    let (exp, jobs) = board.fetch(&client).await?;
                    let finished = !matches!(exp.state.as_str(), "queued" | "running");
                    if !*watch || finished {
                        break (exp, jobs);
                    }
                    board.draw(&exp, &jobs);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                };
                if std::io::stdout().is_terminal() {
                    // The final table takes the live board's place on the terminal.
                    board.clear();
                }
                if *json {
                    let status = ExperimentStatus {
                        experiment: &exp,
                        jobs: &jobs,
                    };
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    println!("{}", board.table(&exp, &jobs));
                    for (label, out) in result_locations(&jobs) {
                        println!("{label}: {out}");
                    }
                }
            }
            ClientCommand::Report { experiment, format } => {
                let id = resolve_experiment(remote, experiment).await?;
                print!("{}", client.report(&id, format).await?);
            }
            ClientCommand::Cancel { experiment } => {
                let id = resolve_experiment(remote, experiment).await?;
                let c = client.cancel(&id).await?;
                println!("cancel requested for {} job(s) of {id}", c.jobs);
            }
            ClientCommand::RetryFailed { experiment } => {
                let id = resolve_experiment(remote, experiment).await?;
                let c = client.retry_failed(&id, false).await?;
                println!("{} job(s) of {id} requeued", c.jobs);
                match super::resume::after_retry_failed(&client, &id, c.jobs).await {
                    Ok(Some(hint)) => eprintln!("{hint}"),
                    Ok(None) => {}
                    Err(e) => eprintln!("warning: could not check for cancelled jobs: {e}"),
                }
            }
            ClientCommand::Resume { experiment } => {
                let id = resolve_experiment(remote, experiment).await?;
                super::resume::resume(&client, &id).await?;
            }
            ClientCommand::Logs { trial, lines } => {
                let target = resolve_qualified(remote, trial).await?;
                super::logs::print(&client, &target, *lines).await?
            }
            ClientCommand::Metrics(args) => {
                let target = resolve_qualified(remote, &args.target).await?;
                super::metrics::run(&client, &target, args).await?
            }
            ClientCommand::Figures(args) => {
                let id = resolve_experiment(remote, &args.experiment).await?;
                super::figures::run(&client, &id, args).await?
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(id: &str, name: &str, state: &str) -> ExperimentView {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "state": state, "priority": 0,
            "created_at_ms": 0, "num_trials": 1, "jobs": {}
        }))
        .unwrap()
    }

    #[test]
    fn experiments_are_found_by_exact_name_and_ambiguity_lists_the_ids() {
        let all = [
            experiment("exp-a", "sweep", "cancelled"),
            experiment("exp-b", "sweep-2", "running"),
            experiment("exp-c", "sweep", "running"),
        ];
        assert_eq!(pick_experiment("sweep-2", &all).unwrap(), "exp-b");
        let e = pick_experiment("sweep", &all).unwrap_err();
        assert!(
            e.contains("2 experiments are named `sweep`")
                && e.contains("exp-a (cancelled)")
                && e.contains("exp-c (running)"),
            "{e}"
        );
        let e = pick_experiment("swee", &all).unwrap_err();
        assert!(e.contains("no experiment has the id or name `swee`"), "{e}");
    }

    #[test]
    fn ids_are_told_from_names_by_their_form() {
        assert!(looks_like_experiment_id("exp-0123456789abcdef"));
        assert!(!looks_like_experiment_id("exp-"));
        assert!(!looks_like_experiment_id("exp-a/b"));
        assert!(!looks_like_experiment_id("noop-grid"));
    }
}
