//! `spatiallock run GRID`: the embedded default. Starts the coordinator in-process on SQLite
//! and one in-process CPU worker, submits the grid, shows live progress, prints the report
//! and writes the figures (`spatiallock figures`) into `<out>/<experiment>-figures`. Ctrl-C
//! cancels (jobs stop at a checkpoint); running the same grid again resumes: the submission is
//! idempotent, finished jobs are kept, cancelled and failed ones continue from their last
//! checkpoints. The coordinator's web UI is served meanwhile (its address is
//! printed); `--serve` keeps it, and the worker, running after the grid finishes until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use spatiallock_coordinator::Config;
use spatiallock_worker::{run_worker, CoordinatorClient, RankLaunch, Roots, WorkerConfig};
use tokio::sync::watch;

use super::board::{result_locations, Board};
use super::client::submission;
use super::service::{host_name, init_logs, runtime};

/// Arguments of `run`.
#[derive(Args)]
pub struct RunArgs {
    /// The grid spec (or a single trial configuration).
    pub file: PathBuf,
    /// Where the database, job outputs and checkpoints go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// A folder datasets may be read from besides the current directory (repeatable).
    #[arg(long = "data-root")]
    pub data_roots: Vec<PathBuf>,
    /// Intra-op threads for libtorch (per worker).
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// Jobs (or ranks of a data-parallel training job) run side by side by the in-process
    /// worker, each on a CPU slot of its own (default: one per CPU core, at most 4; never fewer
    /// than the grid's largest `world_size`). Independent jobs — the base and the evaluation
    /// detector, sibling trials — then run at once.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Where the embedded coordinator (its API and web UI) listens. Without tokens it only
    /// accepts a loopback address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Keep serving the coordinator and its web UI after the grid finishes, until Ctrl-C; the
    /// in-process worker keeps running what is submitted or retried there.
    #[arg(long)]
    pub serve: bool,
}

/// Why a finished worker task stopped.
async fn describe_exit(
    task: tokio::task::JoinHandle<Result<Vec<spatiallock_worker::AttemptEnd>, spatiallock_worker::WorkerError>>,
) -> String {
    match task.await {
        Ok(Ok(_)) => "it returned".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Runs a grid end to end on this machine.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    init_logs("text", "warn");
    tch::set_num_threads(args.threads.max(1));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| args.out.display().to_string())?;
    // One `run` per output folder: a second one would take the first one's jobs for orphans.
    let lock_path = out.join("spatiallock.lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| lock_path.display().to_string())?;
    if lock.try_lock().is_err() {
        bail!(
            "another `spatiallock run` is using {}; wait for it or give --out another folder",
            out.display()
        );
    }
    let spec = spatiallock_protocol::ExperimentSpec::load_grid_or_trial(&args.file)
        .with_context(|| args.file.display().to_string())?;
    let plan = spatiallock_protocol::expand(&spec).with_context(|| args.file.display().to_string())?;
    let (text, key) = submission(&spec);
    // The in-process worker can run the grid's largest training job as CPU rank processes.
    let ranks = plan.jobs.iter().map(|j| j.payload.ranks()).max().unwrap_or(1).max(1) as usize;
    let slots = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4))
        .max(ranks);
    eprintln!(
        "{}: {} trial(s), {} job(s); {slots} CPU slot(s) in an in-process worker; outputs under {}",
        plan.name,
        plan.trials.len(),
        plan.jobs.len(),
        out.display()
    );

    let mut config = Config::new(
        format!("sqlite://{}", out.join("spatiallock.db").display()),
        None,
        args.listen,
    );
    // Heartbeats every TTL/4: a Ctrl-C cancel reaches the running job within ~5 s.
    config.lease_ttl = Duration::from_secs(20);
    config.retry_backoff = Duration::from_millis(200);
    let mut data_roots = vec![std::env::current_dir()?];
    data_roots.extend(args.data_roots.iter().cloned());

    runtime()?.block_on(async move {
        let coordinator = spatiallock_coordinator::start(config).await?;
        eprintln!("web UI: {}/", coordinator.url());
        // Nobody else uses this database: attempts a previous run left running are orphans.
        let orphans = coordinator.state.store.requeue_orphans().await?;
        if orphans > 0 {
            eprintln!("resuming {orphans} job(s) the previous run left running");
        }
        let client = CoordinatorClient::new(&coordinator.url(), None);
        let submitted = client.submit(&text, true, Some(&key)).await?;
        if !submitted.created {
            let again = client.retry_failed(&submitted.id, true).await?;
            eprintln!(
                "{} was submitted before: finished jobs are kept, {} job(s) resume from their checkpoints",
                submitted.id, again.jobs
            );
        }
        let (stop_worker, worker_stop) = watch::channel(false);
        let workers = vec![tokio::spawn(run_worker(
            WorkerConfig {
                coordinator: coordinator.url(),
                token: None,
                name: format!("{}-embedded", host_name()),
                devices: vec!["cpu".into(); slots],
                launch: RankLaunch {
                    threads: args.threads.max(1),
                    ..RankLaunch::default()
                },
                gang_address: None,
                roots: Roots {
                    artifacts: out.clone(),
                    data: data_roots.clone(),
                },
                lease_wait: Duration::from_secs(2),
                max_attempts: None,
                metrics_listen: None,
                metrics_address: None,
            },
            worker_stop.clone(),
        ))];

        let mut board = Board::new(&submitted.id);
        let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
        let mut cancelled = false;
        let (exp, jobs) = loop {
            let (exp, jobs) = board.refresh(&client).await?;
            if !matches!(exp.state.as_str(), "queued" | "running") {
                break (exp, jobs);
            }
            if let Some(done) = workers.iter().position(|w| w.is_finished()) {
                let _ = stop_worker.send(true);
                let mut workers = workers;
                let why = describe_exit(workers.swap_remove(done)).await;
                bail!("an in-process worker stopped unexpectedly: {why}");
            }
            let interrupted = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1000)) => false,
                _ = &mut ctrl_c => true,
            };
            if interrupted {
                if cancelled {
                    bail!("interrupted; run the same command again to resume");
                }
                eprintln!("\ncancelling: running jobs stop at a checkpoint (Ctrl-C again to quit now)");
                client.cancel(&submitted.id).await?;
                cancelled = true;
                ctrl_c = Box::pin(tokio::signal::ctrl_c());
            }
        };
        // Under --serve the worker keeps running what is submitted or retried in the UI (unless
        // Ctrl-C already asked to stop).
        let serve = args.serve && !cancelled;
        let workers = if serve {
            workers
        } else {
            let _ = stop_worker.send(true);
            for w in workers {
                let _ = w.await;
            }
            Vec::new()
        };

        println!();
        print!("{}", client.report(&submitted.id, "md").await?);
        println!();
        if exp.name == "demo" || spec.description.as_deref().is_some_and(|d| d.contains("not meaningful")) {
            println!("These numbers come from a tiny model on synthetic shapes: they show the pipeline works, not the paper's results.");
        }
        if plan.trials.iter().any(|t| t.reference.is_some()) {
            println!("In parentheses: the paper's numbers for the same setting.");
        }
        for (label, dir) in result_locations(&jobs) {
            let job = spatiallock_model::layout::JobDir::new(&dir);
            println!("{label}: {}, {}", job.samples().display(), job.results().display());
        }
        if !result_locations(&jobs).is_empty() {
            // The figures go beside the experiment's outputs; failing to draw them fails nothing.
            let dir = super::figures::default_dir(&out, &exp.name);
            match super::figures::write_figures(&client, &submitted.id, &dir).await {
                Ok(figures) => println!(
                    "figures: {} ({})",
                    figures.dir.display(),
                    figures
                        .files
                        .iter()
                        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(e) => eprintln!("warning: the figures could not be written: {e:#}"),
            }
        }
        println!("state: {} — database {}", exp.state, out.join("spatiallock.db").display());
        if serve {
            eprintln!(
                "serving the coordinator and its web UI at {}/ until Ctrl-C (the in-process worker runs what is submitted there)",
                coordinator.url()
            );
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
            eprintln!("stopping: the worker finishes or checkpoints its jobs first");
            let _ = stop_worker.send(true);
            for w in workers {
                if tokio::time::timeout(Duration::from_secs(60), w).await.is_err() {
                    eprintln!("the in-process worker did not stop within 60 s; leaving it");
                }
            }
        }
        coordinator.shutdown().await;
        match exp.state.as_str() {
            "succeeded" => Ok(()),
            "cancelled" => {
                println!("cancelled; run the same command again to resume");
                Ok(())
            }
            other => bail!("the experiment ended {other}; see `spatiallock logs` or the job errors above"),
        }
    })
}
