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
            metrics_listen: None,
            metrics_address: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_its_metrics_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        format!("sqlite://{}", dir.path().join("c.db").display()),
        None,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    config.retry_backoff = Duration::ZERO;
    let c = start(config).await.unwrap();
    let client = CoordinatorClient::new(&c.url(), None);
    let grid = format!("name: m\nmax_attempts: 1\nbase:\n{BASE}  noop: {{sleep_ms: 10}}\n");
    let id = client.submit(&grid, false, None).await.unwrap().id;
    // Port 0 would hide the port from the test: take a free one and let it go.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap();
    drop(free);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(
        WorkerConfig {
            coordinator: c.url(),
            token: None,
            name: "metrics-test".into(),
            devices: vec!["cpu".into()],
            launch: spatiallock_worker::RankLaunch::default(),
            gang_address: None,
            roots: Roots {
                artifacts: dir.path().join("artifacts"),
                data: vec![],
            },
            lease_wait: Duration::from_millis(200),
            max_attempts: None,
            metrics_listen: Some(listen),
            metrics_address: None,
        },
        stop_rx,
    ));
    let url = format!("http://{listen}/metrics");
    let done = r#"spatiallock_worker_attempts_total{outcome="succeeded"} 1"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Ok(response) = reqwest::get(&url).await {
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            let body = response.text().await.unwrap();
            if body.lines().any(|l| l == done) {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline && !worker.is_finished(),
            "no successful attempt counted at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for series in [
        r#"spatiallock_worker_info{devices="cpu",worker="metrics-test"} 1"#,
        "spatiallock_worker_attempts_running 0",
    ] {
        assert!(body.lines().any(|l| l == series), "{series} missing in:\n{body}");
    }
    assert!(!body.contains("spatiallock_worker_job_step{"), "{body}");
    let jobs = client.jobs(&id).await.unwrap();
    assert_eq!(jobs[0].state, JobState::Succeeded);

    stop.send(true).unwrap();
    let ends = worker.await.unwrap().unwrap();
    assert_eq!(ends, vec![AttemptEnd::Succeeded]);
    // The server stops with the worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(&url).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "{url} still answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
