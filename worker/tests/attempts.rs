//! The worker loop against a real (embedded SQLite) coordinator: failure classes, path roots,
//! and what each attempt reports.

use std::net::SocketAddr;
use std::time::Duration;

use spatiallock_coordinator::{start, Config};
use spatiallock_protocol::api::{FailureClass, JobState};
use spatiallock_worker::{run_worker, AttemptEnd, CoordinatorClient, Roots, WorkerConfig};

const BASE: &str = "  model: {arch: tiny, base: {pretrain: {steps: 1}}}\n  data: {train: {kind: shapes, split: train, count: 4}, val: [{kind: shapes, split: val, count: 2}], resolution: 32}\n";

/// What a test run leaves: the attempts' ends, a client, the experiment id, and the running
/// coordinator with its folder (kept alive for the test's queries).
type Ran = (
    Vec<AttemptEnd>,
    CoordinatorClient,
    String,
    (spatiallock_coordinator::Running, tempfile::TempDir),
);

async fn run(grid: &str, attempts: usize, data_roots: Vec<std::path::PathBuf>) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        format!("sqlite://{}", dir.path().join("c.db").display()),
        None,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    config.retry_backoff = Duration::ZERO;
    let c = start(config).await.unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let id = client.submit(grid, false, None).await.unwrap().id;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let ends = run_worker(
        WorkerConfig {
            coordinator: c.url(),
            token: None,
            name: "test".into(),
            devices: vec!["cpu".into()],
            launch: spatiallock_worker::RankLaunch::default(),
            gang_address: None,
            roots: Roots {
                artifacts: dir.path().join("artifacts"),
                data: data_roots,
            },
            lease_wait: Duration::from_millis(200),
            max_attempts: Some(attempts),
        },
        stop_rx,
    )
    .await
    .unwrap();
    (ends, client, id, (c, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_failures_keep_their_class_and_retries_follow_it() {
    let grid =
        format!("name: n\nmax_attempts: 2\nbase:\n{BASE}  noop: {{sleep_ms: 10, fail: infra, fail_attempts: 1}}\n");
    let (ends, client, id, _keep) = run(&grid, 2, vec![]).await;
    assert!(
        matches!(&ends[0], AttemptEnd::Failed(FailureClass::Infra, m) if m.contains("attempt 1")),
        "{ends:?}"
    );
    assert_eq!(ends[1], AttemptEnd::Succeeded);
    let jobs = client.jobs(&id).await.unwrap();
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(jobs[0].spent_attempts, 0, "infra failures spend nothing");

    let grid = format!("name: a\nmax_attempts: 2\nbase:\n{BASE}  noop: {{fail: app}}\n");
    let (ends, client, id, _keep) = run(&grid, 2, vec![]).await;
    assert!(
        ends.iter()
            .all(|e| matches!(e, AttemptEnd::Failed(FailureClass::App, _))),
        "{ends:?}"
    );
    let job = &client.jobs(&id).await.unwrap()[0];
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.last_error.as_deref().unwrap().contains("noop failed on purpose"),
        "{job:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reading_outside_the_data_roots_fails_naming_the_path() {
    let grid = "name: outside\nmax_attempts: 1\nbase:\n  model: {arch: tiny, base: {pretrain: {steps: 1}}}\n  data:\n    train: {kind: coco-format, images: /etc/img, annotations: /etc/ann.json}\n    val: [{kind: shapes, split: val, count: 2}]\n    resolution: 32\n";
    let (ends, client, id, _keep) = run(grid, 1, vec![std::path::PathBuf::from("/nonexistent-root")]).await;
    let AttemptEnd::Failed(FailureClass::App, message) = &ends[0] else {
        panic!("{ends:?}")
    };
    assert!(message.contains("`/etc/img` is outside the dataset roots"), "{message}");
    let jobs = client.jobs(&id).await.unwrap();
    assert!(jobs
        .iter()
        .any(|j| j.state == JobState::Failed && j.last_error.as_deref().unwrap_or("").contains("/etc/img")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_dataset_is_an_app_failure_with_the_loader_message() {
    let dir = tempfile::tempdir().unwrap();
    let ann = dir.path().join("ann.json");
    std::fs::write(&ann, "{not json").unwrap();
    let grid = format!(
        "name: bad-data\nmax_attempts: 1\nbase:\n  model: {{arch: tiny, base: {{pretrain: {{steps: 1}}}}}}\n  data:\n    train: {{kind: coco-format, images: {d}, annotations: {a}}}\n    val: [{{kind: shapes, split: val, count: 2}}]\n    resolution: 32\n",
        d = dir.path().display(),
        a = ann.display()
    );
    let (ends, _, _, _keep) = run(&grid, 1, vec![dir.path().to_path_buf()]).await;
    let AttemptEnd::Failed(FailureClass::App, message) = &ends[0] else {
        panic!("{ends:?}")
    };
    assert!(message.contains("ann.json"), "{message}");
}
