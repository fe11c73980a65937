//! Fuzzes every operation of the generated `/openapi.json` with schemathesis (pinned in
//! scripts/fuzz/requirements.txt) against a live coordinator on PostgreSQL + Redis, the strict
//! store (it refuses NUL characters, bounds integers), with every check on: any 5xx, any answer
//! the document does not describe, any valid request refused or invalid one accepted fails.
//!
//! scripts/test.sh installs schemathesis and names its python in `SPATIALLOCK_FUZZ_PYTHON`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{noop_grid, Backend, Client, Deployment};
use reqwest::StatusCode;

const TOKENS: &str = "admin:admin-secret-fuzz,worker:worker-secret-fuzz";
const ADMIN_TOKEN: &str = "admin-secret-fuzz";
/// Generated cases per operation and phase: with a fixed seed, enough to reach the validators
/// and the store on every operation while the whole run stays well under 2 minutes on 2 cores.
const MAX_EXAMPLES: u32 = 30;
const SEED: u64 = 20_261_201;
/// Longest the whole schemathesis run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The python that has schemathesis; the test fails rather than skip without it.
fn fuzz_python() -> String {
    match std::env::var("SPATIALLOCK_FUZZ_PYTHON") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => panic!(
            "SPATIALLOCK_FUZZ_PYTHON is not set: run the tests through scripts/test.sh, or set it to \
             the python that `bash scripts/fixtures/setup-python.sh scripts/fuzz/requirements.txt` prints"
        ),
    }
}

/// schemathesis' configuration: the path parameter `id` of each family of operations is, half
/// of the time, the real experiment, trial, job or worker the test created (the other half is
/// generated), so the fuzzer gets past "404 unknown id" into the handlers and the store. A
/// filter that matches no operation (a renamed path) or ids the schema refuses fail the run.
fn config_toml(worker: &str, experiment: &str, trial: &str, job: &str) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string(); // a JSON string is a TOML string
    let mut toml = String::from(
        "# Written by coordinator/tests/fuzz.rs.\n[warnings]\nfail-on = [\"unmatched_filter\", \"dictionary_mismatch\"]\n",
    );
    for (name, id, path) in [
        ("worker", worker, r"^/v1/workers/\{id\}/"),
        ("experiment", experiment, r"^/v1/experiments/\{id\}"),
        ("trial", trial, r"^/v1/trials/\{id\}"),
        ("job", job, r"^/v1/jobs/\{id\}"),
    ] {
        toml += &format!(
            "\n[dictionaries.{name}]\nvalues = [{}]\n\n[[operations]]\ninclude-path-regex = '{path}'\n\
             parameters = {{ \"path.id\" = {{ dictionary = \"{name}\", probability = 0.5 }} }}\n",
            s(id)
        );
    }
    // The submit body is a grid spec in YAML or JSON: the document can only say "a string", and
    // most strings are not grids, which the grid's own validator answers with 422 naming the
    // path (or 413 for a grid above the trial limit). Every other operation's schema is exact but one:
    toml += "\n[[operations]]\ninclude-name = \"POST /v1/experiments\"\n\
             checks.positive_data_acceptance.expected-statuses = [200, 201, 401, 403, 404, 409, 413, 422]\n";
    // Metric names must have 1–128 characters, a rule on map keys (`propertyNames`) that the
    // document does not carry: schemathesis 4.32's coverage phase fails on that keyword.
    toml += "\n[[operations]]\ninclude-name = \"POST /v1/jobs/{id}/metrics\"\n\
             checks.positive_data_acceptance.expected-statuses = [200, 204, 401, 403, 404, 409, 413, 422]\n";
    toml
}

/// The lines worth showing of schemathesis' report: the operations loaded and the summary.
fn summary(output: &str) -> String {
    let operations = output.lines().find(|l| l.trim_start().starts_with("Operations:"));
    let from_summary = output.lines().skip_while(|l| !l.contains(" SUMMARY "));
    operations
        .into_iter()
        .chain(from_summary)
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(output: &str, lines: usize) -> String {
    let all: Vec<&str> = output.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the closing banner reports no failure and no error, e.g. `No issues found in 41.2s`
/// or `2 warnings in 41.2s` (not `1 failure, 2 warnings in …`, `1 error in …`,
/// `Warnings fail the run in …`, `Empty test suite`, `No checks ran in …`).
fn clean_banner(output: &str) -> bool {
    let Some(banner) = output.lines().rev().find(|l| l.starts_with("===")) else {
        return false;
    };
    let banner = banner.to_lowercase();
    (banner.contains("no issues found") || banner.contains("warning"))
        && !banner.contains("fail")
        && !banner.contains("error")
        && !banner.contains("interrupted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_failed_check() {
    let python = fuzz_python();
    let d = Deployment::new(Backend::Postgres).await;
    let mut config = d.config();
    config.tokens = spatiallock_coordinator::parse_tokens(TOKENS).unwrap();
    // The lease long-poll waits up to `wait_ms`, which the coordinator caps (30 s by default):
    // a generated `wait_ms` would make each lease case last up to 30 s. Capping it at 100 ms
    // keeps every generated value valid and the run short; the wait itself is not under test.
    config.max_lease_wait = Duration::from_millis(100);
    let c = d.start_with(config).await;
    let client = Client::new(&c.url()).with_token(ADMIN_TOKEN);

    // Data for the reads, a worker for the worker routes, and a leased job for the job writes.
    let (s, v) = client.submit(&noop_grid("fuzz", 2, 2, ""), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let experiment = v["id"].as_str().unwrap().to_string();
    let worker = client.register("fuzz").await;
    let worker_key = client.worker_key.lock().unwrap().clone().expect("a worker key");
    let mut lease = None;
    for _ in 0..100 {
        lease = client.lease(&worker, 100).await;
        if lease.is_some() {
            break;
        }
    }
    let lease = lease.expect("a job of the fuzz grid to lease");
    let job = lease["job_id"].as_str().unwrap().to_string();
    let trial = format!("{experiment}.0");

    let dir = tempfile::Builder::new().prefix("spatiallock-fuzz-").tempdir().unwrap();
    let config_file = dir.path().join("schemathesis.toml");
    std::fs::write(&config_file, config_toml(&worker, &experiment, &trial, &job)).unwrap();
    let log = dir.path().join("schemathesis.log");
    let out = std::fs::File::create(&log).unwrap();
    let base = c.url();
    let args: Vec<String> = vec![
        "-m".into(),
        "schemathesis.cli".into(),
        "--config-file".into(),
        config_file.display().to_string(),
        "run".into(),
        format!("{base}/openapi.json"),
        "--url".into(),
        base.clone(),
        "--checks".into(),
        "all".into(),
        "--max-examples".into(),
        MAX_EXAMPLES.to_string(),
        "--seed".into(),
        SEED.to_string(),
        "--workers".into(),
        "2".into(),
        "--header".into(),
        format!("Authorization: Bearer {ADMIN_TOKEN}"),
        "--header".into(),
        format!("spatiallock-worker-key: {worker_key}"),
        "--request-timeout".into(),
        "20".into(),
        "--generation-database".into(),
        "none".into(),
        "--no-color".into(),
    ];
    println!("fuzz: {python} {}", args.join(" "));
    // Runs beside the in-process coordinator, which keeps serving on the runtime's threads.
    // In the temp dir: schemathesis and hypothesis write .schemathesis/ and .hypothesis/ there.
    let mut child = tokio::process::Command::new(&python)
        .args(&args)
        .current_dir(dir.path())
        .env("PYTHONUTF8", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env("COLUMNS", "100")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python} (SPATIALLOCK_FUZZ_PYTHON): {e}"));
    let status = tokio::time::timeout(RUN_LIMIT, child.wait()).await;
    let output = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    println!("{}", summary(&output));

    let passed = matches!(&status, Ok(Ok(s)) if s.success()) && clean_banner(&output);
    if !passed {
        let kept = dir.keep();
        panic!(
            "schemathesis {} (full output: {}):\n{}",
            match &status {
                Ok(Ok(s)) => format!("exited with {s}"),
                Ok(Err(e)) => format!("could not be waited on: {e}"),
                Err(_) => format!("ran past {} s", RUN_LIMIT.as_secs()),
            },
            kept.join("schemathesis.log").display(),
            tail(&output, 150)
        );
    }
    // Whatever it sent, the coordinator still serves.
    assert_eq!(client.get("/healthz").await.0, StatusCode::OK);
    c.shutdown().await;
}
