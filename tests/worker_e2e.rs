//! The coordinator (PostgreSQL + Redis) with real workers running real tiny training and
//! evaluation jobs: a two-trial grid end to end, a worker killed mid-training whose job
//! resumes elsewhere from its checkpoint, and a cancel that stops a training job.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spatiallock_coordinator::store::create_postgres_database;
use spatiallock_coordinator::{start, Config, Running};
use spatiallock_protocol::api::JobState;
use spatiallock_worker::CoordinatorClient;

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A coordinator on a database of its own, dropped with it.
struct TestCoordinator {
    running: Option<Running>,
    database: String,
    config: Config,
}

impl TestCoordinator {
    fn url(&self) -> String {
        self.running.as_ref().map(Running::url).unwrap_or_default()
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Stops the coordinator and starts it again on the same database and address.
    async fn restart(&mut self) {
        let r = self.running.take().expect("running");
        let mut config = self.config.clone();
        config.listen = r.addr;
        r.shutdown().await;
        self.running = Some(start(config).await.expect("coordinator restarts"));
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        let name = self.database.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(spatiallock_coordinator::store::drop_postgres_database(
                PG_ADMIN_URL,
                &name,
            ));
        })
        .join();
    }
}

async fn coordinator(ttl: Duration) -> TestCoordinator {
    let name = format!(
        "sl_e2e_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let url = create_postgres_database(PG_ADMIN_URL, &name)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let mut config = Config::new(
        url,
        Some("redis://127.0.0.1:6379".into()),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    config.redis_prefix = name.clone();
    config.lease_ttl = ttl;
    config.reaper_interval = Duration::from_millis(200);
    config.retry_backoff = Duration::ZERO;
    config.gang_backoff = Duration::from_secs(1);
    TestCoordinator {
        running: Some(start(config.clone()).await.expect("coordinator starts")),
        database: name,
        config,
    }
}

/// A `spatiallock worker` process (killed when dropped).
struct WorkerProcess(Child);

impl WorkerProcess {
    fn spawn(url: &str, artifacts: &std::path::Path) -> WorkerProcess {
        Self::spawn_with(url, artifacts, &[])
    }

    fn spawn_with(url: &str, artifacts: &std::path::Path, extra: &[&str]) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
            .args(["worker", "--coordinator", url, "--artifacts"])
            .arg(artifacts)
            .args(extra)
            .current_dir(common::root())
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("worker starts");
        WorkerProcess(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grid_text(file: &str, edit: impl Fn(String) -> String) -> String {
    edit(std::fs::read_to_string(common::root().join(file)).unwrap())
}

async fn wait_until<F: std::future::Future<Output = bool>>(secs: u64, what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trials_train_evaluate_and_report() {
    let c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let grid = grid_text("tests/fixtures/tiny-grid.yaml", |s| s);
    let sub = client.submit(&grid, false, Some("two-trials")).await.unwrap();
    assert_eq!(sub.num_trials, 2);
    let _worker = WorkerProcess::spawn(&c.url(), artifacts.path());
    let id = sub.id.clone();
    wait_finished(&client, &id, 600).await;
    let exp = client.experiment(&id).await.unwrap();
    let jobs = client.jobs(&id).await.unwrap();
    assert_eq!(
        exp.state,
        "succeeded",
        "{:#?}",
        jobs.iter()
            .map(|j| (&j.label, j.state, &j.last_error))
            .collect::<Vec<_>>()
    );
    let report = client.report(&id, "json").await.unwrap();
    let report: spatiallock_protocol::api::Report = serde_json::from_str(&report).unwrap();
    assert_eq!(report.rows.len(), 2);
    for row in &report.rows {
        assert_eq!(row.state, JobState::Succeeded);
        assert!(
            row.ours.map.is_some() && row.ours.ap50.is_some() && row.ours.fid.is_some(),
            "{row:?}"
        );
        assert!(
            row.grounding_accuracy.is_some() && row.category_recall.is_some(),
            "{row:?}"
        );
    }
    // The second trial's detector augmentation ran on the worker and reached the report.
    assert_eq!(report.rows[0].augmentation, None);
    let a = report.rows[1].augmentation.expect("the PoI+PoG trial's augmentation");
    assert_eq!((a.state, a.synthetic_images), (JobState::Succeeded, Some(4)), "{a:?}");
    assert!(
        a.map_real.is_some() && a.map_augmented.is_some() && a.map_gain.is_some(),
        "{a:?}"
    );
    // Two trials that differ in more than their seed: two groups of one.
    assert_eq!(report.summary.len(), 2, "{:?}", report.summary);
    // Training metrics are in the store: the PoG trial reports perception losses and λ.
    let trials = client.trials(&id).await.unwrap();
    assert!(
        trials[1].metrics.contains_key("loss_perception"),
        "{:?}",
        trials[1].metrics
    );
    assert!(trials[1].metrics.contains_key("gate_mean"));
    for job in jobs
        .iter()
        .filter(|j| j.kind == spatiallock_protocol::JobKind::Evaluate)
    {
        let out = job.output.as_ref().unwrap().trim_start_matches("file://");
        assert!(spatiallock_model::layout::JobDir::new(out).samples().is_file(), "{out}");
    }
    c.shutdown().await;
}

/// A one-trial grid named `name` whose training runs `steps` steps, checkpointing every 5.
fn long_training(name: &str, steps: u32) -> String {
    long_training_on(name, steps, 1)
}

/// [`long_training`] on `world_size` ranks.
fn long_training_on(name: &str, steps: u32, world_size: u32) -> String {
    let trial = grid_text("tests/fixtures/tiny-trial.yaml", |s| {
        s.replace(
            "training: {steps: 4, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2}",
            &format!("training: {{steps: {steps}, batch_size: 4, lr: 1.0e-3, checkpoint_every: 5}}"),
        )
    });
    let indented: String = trial
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("  {l}\n"))
        .collect();
    format!("name: {name}\nbase:\n{indented}  world_size: {world_size}\n")
}

/// Waits until the training job of experiment `id` reported step `step`.
async fn wait_for_step(client: &CoordinatorClient, id: &str, step: u64, what: &str) {
    wait_until(300, what, || async move {
        train_job(client, id)
            .await
            .latest
            .get("step")
            .is_some_and(|s| *s >= step as f64)
    })
    .await;
}

/// Waits until the training job of experiment `id` is in `state`.
async fn wait_for_train_state(client: &CoordinatorClient, id: &str, state: JobState, secs: u64) {
    wait_until(
        secs,
        &format!("the training job to be {}", state.as_str()),
        || async move { train_job(client, id).await.state == state },
    )
    .await;
}

async fn train_job(client: &CoordinatorClient, id: &str) -> spatiallock_protocol::api::JobView {
    let jobs = client.jobs(id).await.unwrap();
    jobs.into_iter()
        .find(|j| j.kind == spatiallock_protocol::JobKind::Train)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_job_resumes_from_its_checkpoint_elsewhere() {
    let c = coordinator(Duration::from_secs(3)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let text = long_training("resume", 300);
    let id = client.submit(&text, false, None).await.unwrap().id;
    let mut first = WorkerProcess::spawn(&c.url(), artifacts.path());
    wait_until(300, "a committed training checkpoint", || {
        let client = client.clone();
        let id = id.clone();
        async move { train_job(&client, &id).await.checkpoint.is_some_and(|c| c.step >= 10) }
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL: no goodbye, the lease just stops being renewed
    let _ = first.0.wait();
    let killed_at = train_job(&client, &id).await.checkpoint.unwrap().step;
    let _second = WorkerProcess::spawn(&c.url(), artifacts.path());
    wait_finished(&client, &id, 600).await;
    assert_eq!(client.experiment(&id).await.unwrap().state, "succeeded");
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lost", "succeeded"], "{:?}", job.attempts);
    let logs = client.job_logs(&job.id, 1000).await.unwrap();
    assert!(
        logs.lines.iter().any(|l| l.contains("resumes from")),
        "{:?}",
        logs.lines
    );
    // The job's series: every step exactly once, 1..=300, though two attempts reported.
    let series = client.job_metrics(&job.id, "step,loss").await.unwrap();
    let steps: Vec<u64> = series["step"].iter().map(|p| p.step).collect();
    assert_eq!(steps, (1..=300).collect::<Vec<u64>>());
    assert_eq!(series["loss"].len(), 300);
    assert_eq!(job.checkpoint.as_ref().unwrap().step, 300);
    assert!((10..300).contains(&killed_at), "killed at {killed_at}");
    c.shutdown().await;
}

/// A cancelled training job stops mid-run after committing a checkpoint; `spatiallock resume`
/// requeues it (and the jobs cancelled while they waited for it), and it continues from that
/// checkpoint to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_training_job_and_resume_continues_from_its_checkpoint() {
    const STEPS: u64 = 100;
    let c = coordinator(Duration::from_secs(2)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let text = long_training("cancel", STEPS as u32);
    let id = client.submit(&text, false, None).await.unwrap().id;
    let _worker = WorkerProcess::spawn(&c.url(), artifacts.path());
    wait_until(300, "a committed training checkpoint", || {
        let client = client.clone();
        let id = id.clone();
        async move { train_job(&client, &id).await.checkpoint.is_some() }
    })
    .await;
    let asked = Instant::now();
    client.cancel(&id).await.unwrap();
    // A generous bound only against a hang: the behaviour checked is that the job stopped
    // mid-run, not how fast.
    wait_for_train_state(&client, &id, JobState::Cancelled, 300).await;
    eprintln!("cancel took {:?}", asked.elapsed());
    assert_eq!(client.experiment(&id).await.unwrap().state, "cancelled");
    let stopped = train_job(&client, &id).await;
    let at = stopped.checkpoint.as_ref().map_or(0, |c| c.step);
    let last_step = stopped.latest.get("step").copied().unwrap_or(0.0);
    assert_eq!(
        last_step, at as f64,
        "the stop checkpoint holds the last step run: {stopped:#?}"
    );
    assert!(at < STEPS, "stopped mid-run, at step {at}");

    let resumed = Command::new(env!("CARGO_BIN_EXE_spatiallock"))
        .args(["resume", &id])
        .env("SPATIALLOCK_COORDINATOR", c.url())
        .current_dir(common::root())
        .output()
        .unwrap();
    let said = common::text(&resumed);
    assert!(resumed.status.success(), "{said}");
    assert!(said.contains(&format!("continues from step {at} (")), "{said}");
    wait_finished(&client, &id, 600).await;
    let job = client.job(&stopped.id).await.unwrap();
    assert_eq!(client.experiment(&id).await.unwrap().state, "succeeded", "{job:#?}");
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["cancelled", "succeeded"], "{:?}", job.attempts);
    // The second attempt restored the checkpoint's step and trained only the steps after it.
    let logs = client.job_logs(&job.id, 1000).await.unwrap().lines;
    assert!(
        logs.iter()
            .any(|l| l.contains("resumed from") && l.ends_with(&format!("(step {at})"))),
        "{logs:#?}"
    );
    let series = client.job_metrics(&job.id, "step").await.unwrap();
    let steps: Vec<u64> = series["step"].iter().map(|p| p.step).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<u64>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_requeues_as_infra_and_exits() {
    let c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let text = long_training("sigterm", 100_000);
    let id = client.submit(&text, false, None).await.unwrap().id;
    let mut worker = WorkerProcess::spawn(&c.url(), artifacts.path());
    wait_for_step(&client, &id, 3, "training to run").await;
    let status = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = worker.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "requeued for another worker");
    assert_eq!(job.spent_attempts, 0, "a shutdown spends no attempt");
    assert_eq!(job.attempts[0].outcome, "failed-infra");
    assert!(
        job.checkpoint.as_ref().is_some_and(|ck| ck.step >= 3),
        "{:?}",
        job.checkpoint
    );
    client.cancel(&id).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rank_requeues_the_attempt_which_resumes_from_its_checkpoint() {
    let c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client
        .submit(&long_training_on("dp-kill", 60, 2), false, None)
        .await
        .unwrap()
        .id;
    let _worker = WorkerProcess::spawn_with(
        &c.url(),
        artifacts.path(),
        &["--devices", "cpu,cpu", "--collective-timeout", "15"],
    );
    wait_until(300, "a committed checkpoint of the two-rank job", || {
        let client = client.clone();
        let id = id.clone();
        async move { train_job(&client, &id).await.checkpoint.is_some_and(|c| c.step >= 10) }
    })
    .await;
    let pid = common::rank_pid(artifacts.path(), 1).expect("rank 1 is running");
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    wait_finished(&client, &id, 600).await;
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    assert_eq!(client.experiment(&id).await.unwrap().state, "succeeded", "{job:#?}");
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["failed-infra", "succeeded"], "{:?}", job.attempts);
    assert_eq!(job.spent_attempts, 0, "a lost rank spends no attempt");
    // The first attempt's failure names the killed rank, and rank 0's own report of it.
    let error = job.attempts[0].error.clone().unwrap_or_default();
    assert!(error.contains("rank 1 died (killed by signal 9)"), "{error}");
    assert!(error.contains("rank(s) 1 stopped responding"), "{error}");
    let logs = client.job_logs(&job.id, 1000).await.unwrap().lines;
    assert!(
        logs.iter().any(|l| l.contains("rank 0: attempt 2 resumes from")),
        "{logs:#?}"
    );
    // Every step exactly once across both attempts; rank 0 alone reported.
    let series = client.job_metrics(&job.id, "step,loss").await.unwrap();
    let steps: Vec<u64> = series["step"].iter().map(|p| p.step).collect();
    assert_eq!(steps, (1..=60).collect::<Vec<u64>>());
    assert_eq!(series["loss"].len(), 60);
    assert!(common::rank_pid(artifacts.path(), 0).is_none() && common::rank_pid(artifacts.path(), 1).is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_every_rank_of_a_data_parallel_job_at_one_checkpoint() {
    let c = coordinator(Duration::from_secs(2)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client
        .submit(&long_training_on("dp-cancel", 100_000, 2), false, None)
        .await
        .unwrap()
        .id;
    let _worker = WorkerProcess::spawn_with(&c.url(), artifacts.path(), &["--devices", "cpu,cpu"]);
    wait_for_step(&client, &id, 3, "two-rank training to run").await;
    client.cancel(&id).await.unwrap();
    wait_for_train_state(&client, &id, JobState::Cancelled, 300).await;
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    let logs = client.job_logs(&job.id, 1000).await.unwrap().lines;
    assert!(logs.iter().any(|l| l.contains("all 2 ranks stopped")), "{logs:#?}");
    // The stop checkpoint holds the last step reported (every rank stopped after it).
    let series = client.job_metrics(&job.id, "step").await.unwrap();
    let last = series["step"].iter().map(|p| p.step).max();
    assert_eq!(job.checkpoint.as_ref().map(|c| c.step), last, "{job:#?}");
    wait_until(30, "the rank processes to exit", || async {
        common::rank_pid(artifacts.path(), 0).is_none() && common::rank_pid(artifacts.path(), 1).is_none()
    })
    .await;
    c.shutdown().await;
}

/// A worker with one CPU device that joins gangs on loopback.
fn gang_worker(url: &str, artifacts: &std::path::Path) -> WorkerProcess {
    WorkerProcess::spawn_with(
        url,
        artifacts,
        &[
            "--devices",
            "cpu",
            "--gang-address",
            "127.0.0.1",
            "--collective-timeout",
            "30",
        ],
    )
}

async fn wait_finished(client: &CoordinatorClient, id: &str, secs: u64) {
    wait_until(secs, "the experiment to finish", || {
        let client = client.clone();
        let id = id.to_string();
        async move {
            !matches!(
                client.experiment(&id).await.unwrap().state.as_str(),
                "queued" | "running"
            )
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_one_device_workers_train_a_two_rank_job_as_a_gang() {
    let c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client
        .submit(&long_training_on("gang", 12, 2), false, None)
        .await
        .unwrap()
        .id;
    let _a = gang_worker(&c.url(), artifacts.path());
    let _b = gang_worker(&c.url(), artifacts.path());
    wait_finished(&client, &id, 600).await;
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    assert_eq!(client.experiment(&id).await.unwrap().state, "succeeded", "{job:#?}");
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["succeeded"], "{:?}", job.attempts);
    // Each worker ran one rank of the same attempt, meeting at rank 0's worker.
    let logs = client.job_logs(&job.id, 1000).await.unwrap().lines;
    assert!(
        logs.iter().any(|l| l.starts_with("ranks 0..0 of 2 on cpu")),
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("ranks 1..1 of 2 on cpu")),
        "{logs:#?}"
    );
    let series = client.job_metrics(&job.id, "step").await.unwrap();
    let steps: Vec<u64> = series["step"].iter().map(|p| p.step).collect();
    assert_eq!(
        steps,
        (1..=12).collect::<Vec<u64>>(),
        "rank 0 alone reports each step once"
    );
    let metrics = c.running.as_ref().expect("running").state.telemetry.render();
    assert!(
        metrics.contains("spatiallock_gang_rendezvous_seconds_count 1"),
        "{metrics}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_larger_than_the_cluster_waits_with_its_reason_while_other_jobs_run() {
    let c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let big = client
        .submit(&long_training_on("too-big", 4, 4), false, None)
        .await
        .unwrap()
        .id;
    let _worker = gang_worker(&c.url(), artifacts.path());
    let small = client.submit(&long_training("small", 4), false, None).await.unwrap().id;
    wait_finished(&client, &small, 600).await;
    assert_eq!(client.experiment(&small).await.unwrap().state, "succeeded");
    wait_until(300, "the big job to wait for its gang", || {
        let client = client.clone();
        let big = big.clone();
        async move { train_job(&client, &big).await.state == JobState::Queued }
    })
    .await;
    let job = train_job(&client, &big).await;
    let why = job.waiting.clone().unwrap_or_default();
    assert!(
        why.contains("a gang of 4 ranks; the live workers have 1 device(s)"),
        "{job:#?}"
    );
    let status = common::spatiallock(&["status", &big, "--coordinator", &c.url()]);
    assert!(
        common::text(&status).contains("a gang of 4 ranks"),
        "{}",
        common::text(&status)
    );
    client.cancel(&big).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_gang_on_every_member() {
    let c = coordinator(Duration::from_secs(3)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client
        .submit(&long_training_on("gang-cancel", 100_000, 2), false, None)
        .await
        .unwrap()
        .id;
    let _a = gang_worker(&c.url(), artifacts.path());
    let _b = gang_worker(&c.url(), artifacts.path());
    wait_for_step(&client, &id, 3, "the gang to train").await;
    client.cancel(&id).await.unwrap();
    wait_for_train_state(&client, &id, JobState::Cancelled, 120).await;
    wait_until(60, "every rank process to exit", || async {
        common::rank_pid(artifacts.path(), 0).is_none() && common::rank_pid(artifacts.path(), 1).is_none()
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_survives_a_coordinator_restart_during_rendezvous() {
    let mut c = coordinator(Duration::from_secs(30)).await;
    let artifacts = tempfile::tempdir().unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client
        .submit(&long_training_on("gang-restart", 6, 2), false, None)
        .await
        .unwrap()
        .id;
    // A second device must be live before anyone reserves (a gang that cannot fit is not
    // waited for): a registered worker that is busy elsewhere, as far as gangs know.
    let busy = client
        .register(&spatiallock_protocol::api::RegisterWorker {
            name: "busy".into(),
            devices: vec!["cpu".into()],
            labels: Default::default(),
            metrics_address: None,
        })
        .await
        .unwrap()
        .worker_id;
    let _a = gang_worker(&c.url(), artifacts.path());
    wait_until(300, "the first member's reservation", || {
        let client = client.clone();
        let (id, busy) = (id.clone(), busy.clone());
        async move {
            client.worker_heartbeat(&busy).await.unwrap();
            train_job(&client, &id)
                .await
                .waiting
                .is_some_and(|w| w.contains("gang forming: 1 of 2 ranks reserved"))
        }
    })
    .await;
    c.restart().await;
    // The reservation is in the database: the next worker completes the gang.
    let _b = gang_worker(&c.url(), artifacts.path());
    wait_finished(&client, &id, 600).await;
    let job = client.job(&train_job(&client, &id).await.id).await.unwrap();
    assert_eq!(client.experiment(&id).await.unwrap().state, "succeeded", "{job:#?}");
    assert_eq!(job.attempts.len(), 1, "{:?}", job.attempts);
    c.shutdown().await;
}
