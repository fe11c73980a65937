//! The monitoring stack live, with real processes and no mocks: a `spatiallock coordinator`
//! (SQLite, tokens), two one-CPU `spatiallock worker`s serving their own metrics and advertising
//! them (`--metrics-listen` / `--metrics-address`), and a real Prometheus that scrapes the
//! coordinator, finds the workers through the coordinator's HTTP service discovery
//! (`/v1/prometheus/targets`) and evaluates the repository's alert rules
//! (`dashboards/alerts.yml`). Every process listens on a port the kernel picks (`…:0`) and says
//! which, so no port is chosen before it is bound. After a small run — noop jobs that fail once
//! and are retried, a tiny PoI+PoG training evaluated with Inception FID and with detector
//! features, then a two-rank training that runs as a gang across both workers (all-reduce per
//! rank, gang rendezvous) — every query of every Grafana dashboard (`dashboards/*.json`) returns
//! numbers (not only `NaN`), every alert rule is healthy and every metric its expression names has
//! series, and promtool accepts the generated config. On success it prints a table of each panel
//! and rule with its series counts. GPU panels (NVML) are skipped, and say so, on machines
//! without an NVIDIA driver.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package, which `bash
//! scripts/services.sh` installs), or SPATIALLOCK_PROMETHEUS / SPATIALLOCK_PROMTOOL naming them;
//! fails (never skips) without them. The helpers live in `tests/common/processes.rs` (children,
//! deadlines) and `tests/common/prometheus.rs` (Prometheus' API, dashboards, PromQL).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::processes::{now_s, tool, Children, Deadline};
use common::prometheus::{
    evaluate, listening_address, metric_names, panel_queries, series_count, substitute, table, Prometheus, Row,
};
use serde_json::Value;
use spatiallock_protocol::api::JobState;
use spatiallock_protocol::JobKind;
use spatiallock_worker::CoordinatorClient;

const ADMIN_TOKEN: &str = "admin-secret-live";
const WORKER_TOKEN: &str = "worker-secret-live";
/// The scrape jobs, named as in dashboards/prometheus.yml (the alert rules select on them).
const COORDINATOR_JOB: &str = "spatiallock-coordinator";
const WORKER_JOB: &str = "spatiallock-worker";
/// The metric prefix of the worker's GPU gauges, which only machines with an NVIDIA driver have:
/// the panels and rules that name them are GPU-only.
const GPU_PREFIX: &str = "spatiallock_worker_gpu_";
/// What to run when Prometheus or promtool is missing.
const INSTALL: &str =
    "run `bash scripts/services.sh`, which installs Debian's prometheus package (prometheus and promtool)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_stack_and_every_panel_and_alert_has_data() {
    let prometheus = tool("prometheus", "SPATIALLOCK_PROMETHEUS", INSTALL);
    let promtool = tool("promtool", "SPATIALLOCK_PROMTOOL", INSTALL);
    let root = common::root();
    let alerts = root.join("dashboards/alerts.yml");
    assert!(alerts.is_file(), "{} is missing", alerts.display());
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children::new(dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let coordinator = start_coordinator(&mut children, dir.path(), &http).await;
    let config = prometheus_config(dir.path(), &coordinator, &alerts, &promtool);
    let start = now_s();
    let prom = start_prometheus(&mut children, dir.path(), &prometheus, &config, &http).await;
    start_workers(&mut children, dir.path(), &root, &coordinator, &prom).await;

    let client = CoordinatorClient::new(&coordinator, Some(ADMIN_TOKEN.to_string()));
    run_noop_and_tiny(&client, &prom, &mut children, &root).await;
    run_gang(&client, &prom, &mut children, &root).await;

    // A few more scrapes and rule evaluations after the end, with every target still up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_for_targets(&prom, &mut children, 2, "all three targets to be up after the run").await;

    // GPU series exist only where the workers found an NVIDIA driver.
    let gpu_series = prom
        .range(&format!("count({{__name__=~\"{GPU_PREFIX}.+\"}})"), start)
        .await;
    let have_gpus = series_count(&gpu_series["data"]) > 0;
    let mut findings = Findings {
        have_gpus,
        ..Findings::default()
    };
    let panels = check_dashboards(&prom, &root, start, &mut findings).await;
    let rules = check_rules(&prom, start, &mut findings).await;
    assert!(rules > 0, "Prometheus loaded no rules from {}", alerts.display());

    let report = table(&findings.rows);
    assert!(
        findings.failures.is_empty(),
        "{} problem(s):\n{}\n\n{report}",
        findings.failures.len(),
        findings.failures.join("\n")
    );
    println!(
        "Prometheus after the run ({panels} panel queries, {rules} rules; `instant`: series with numbers now, \
         `range`: series with numbers at some time of the run{}):\n{report}",
        if have_gpus {
            ""
        } else {
            "; `no GPU`: GPU series need an NVIDIA driver"
        }
    );
}

/// Starts the coordinator as an operator does (SQLite, tokens) on a port the kernel picks; its
/// URL (from the line it prints) once it is ready.
async fn start_coordinator(children: &mut Children, dir: &Path, http: &reqwest::Client) -> String {
    children.spawn(
        "coordinator",
        Command::new(env!("CARGO_BIN_EXE_spatiallock"))
            .args(["coordinator", "--listen", "127.0.0.1:0", "--database-url"])
            .arg(format!("sqlite://{}", dir.join("coordinator.db").display()))
            .env(
                "SPATIALLOCK_TOKENS",
                format!("admin:{ADMIN_TOKEN},worker:{WORKER_TOKEN}"),
            )
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn"),
    );
    let url = children
        .wait_for_output("coordinator", 60, "the coordinator's address", |out| {
            out.lines()
                .find_map(|l| l.strip_prefix("coordinator listening on "))
                .map(|u| u.trim().to_string())
        })
        .await;
    let deadline = Deadline::new(60, "the coordinator to be ready");
    loop {
        let ready = http.get(format!("{url}/readyz")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status().is_success()) {
            return url;
        }
        deadline.tick(children, format!("{ready:?}")).await;
    }
}

/// Writes Prometheus' configuration (the coordinator as a static target, the workers through
/// its service discovery, the repository's alert rules; everything every second) and checks it
/// with promtool.
fn prometheus_config(dir: &Path, coordinator: &str, alerts: &Path, promtool: &Path) -> PathBuf {
    let config = dir.join("prometheus.yml");
    let rules = serde_json::to_string(&alerts.display().to_string()).unwrap();
    let target = coordinator.trim_start_matches("http://");
    std::fs::write(
        &config,
        format!(
            "# Written by tests/prometheus_live.rs.\n\
             global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n\
             \x20 - job_name: {COORDINATOR_JOB}\n\
             \x20   static_configs:\n\
             \x20     - targets: [\"{target}\"]\n\
             \x20 - job_name: {WORKER_JOB}\n\
             \x20   http_sd_configs:\n\
             \x20     - url: {coordinator}/v1/prometheus/targets\n\
             \x20       refresh_interval: 1s\n"
        ),
    )
    .unwrap();
    let checked = Command::new(promtool)
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check config {} failed:\n{}{}\n{}",
        config.display(),
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        std::fs::read_to_string(&config).unwrap_or_default()
    );
    config
}

/// Starts Prometheus on a port the kernel picks (read back from its log) and waits until it
/// scrapes the coordinator.
async fn start_prometheus(
    children: &mut Children,
    dir: &Path,
    prometheus: &Path,
    config: &Path,
    http: &reqwest::Client,
) -> Prometheus {
    std::fs::create_dir_all(dir.join("tsdb")).unwrap();
    children.spawn(
        "prometheus",
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            // `info`: the line with the bound address.
            .arg("--log.level=info"),
    );
    let address = children
        .wait_for_output("prometheus", 60, "Prometheus' address", listening_address)
        .await;
    let prom = Prometheus {
        base: format!("http://{address}"),
        http: http.clone(),
    };
    wait_for_targets(&prom, children, 0, "Prometheus to scrape the coordinator").await;
    prom
}

/// Waits until Prometheus has the coordinator and `workers` workers as targets, all up.
async fn wait_for_targets(prom: &Prometheus, children: &mut Children, workers: usize, what: &str) {
    let deadline = Deadline::new(180, what);
    loop {
        let (ok, seen) = prom.up(&[(COORDINATOR_JOB, 1), (WORKER_JOB, workers)]).await;
        if ok {
            return;
        }
        deadline.tick(children, seen).await;
    }
}

/// Two one-CPU workers sharing one artifact root, each serving its metrics on a port the
/// kernel picks and advertising it (`--metrics-address 127.0.0.1:0` takes the bound port), and
/// joining gangs on loopback.
async fn start_workers(children: &mut Children, dir: &Path, root: &Path, coordinator: &str, prom: &Prometheus) {
    let artifacts = dir.join("artifacts");
    for n in [1, 2] {
        children.spawn(
            &format!("worker-{n}"),
            Command::new(env!("CARGO_BIN_EXE_spatiallock"))
                .args(["worker", "--coordinator", coordinator, "--devices", "cpu"])
                .args(["--gang-address", "127.0.0.1", "--collective-timeout", "60"])
                .arg("--artifacts")
                .arg(artifacts.as_path())
                .args(["--metrics-listen", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"])
                .current_dir(root)
                .env("SPATIALLOCK_TOKEN", WORKER_TOKEN)
                .env("OMP_NUM_THREADS", "1")
                .env("RUST_LOG", "warn"),
        );
    }
    wait_for_targets(prom, children, 2, "Prometheus to discover and scrape both workers").await;
}

/// Submits the grid in the repository file `fixture`; the experiment's id.
async fn submit(client: &CoordinatorClient, root: &Path, fixture: &str) -> String {
    let text = std::fs::read_to_string(root.join(fixture)).unwrap();
    client
        .submit(&text, false, None)
        .await
        .unwrap_or_else(|e| panic!("submitting {fixture}: {e}"))
        .id
}

/// Fails when a job of experiment `id` ended failed or cancelled; its jobs otherwise.
async fn jobs_going_well(client: &CoordinatorClient, id: &str) -> Vec<spatiallock_protocol::api::JobView> {
    let jobs = client.jobs(id).await.unwrap_or_default();
    let broken: Vec<String> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Failed | JobState::Cancelled))
        .map(|j| format!("{} {:?} {:?}", j.label, j.state, j.last_error))
        .collect();
    assert!(broken.is_empty(), "jobs of {id} ended badly:\n{}", broken.join("\n"));
    jobs
}

/// Waits until experiment `id` has ended, in one of the states `wanted`.
async fn wait_for_end(client: &CoordinatorClient, children: &mut Children, id: &str, wanted: &[&str]) {
    let deadline = Deadline::new(600, &format!("experiment {id} to end"));
    loop {
        let state = client.experiment(id).await.map(|e| e.state);
        if state
            .as_ref()
            .is_ok_and(|s| !matches!(s.as_str(), "blocked" | "queued" | "running"))
        {
            break;
        }
        deadline.tick(children, format!("{id}: {state:?}")).await;
    }
    let exp = client.experiment(id).await.unwrap();
    if !wanted.contains(&exp.state.as_str()) {
        let jobs = client.jobs(id).await.unwrap_or_default();
        let jobs: Vec<String> = jobs
            .iter()
            .map(|j| format!("{} {:?} {:?}", j.label, j.state, j.last_error))
            .collect();
        panic!(
            "experiment {id} ({}) ended {}, not {}:\n{}\n{}",
            exp.name,
            exp.state,
            wanted.join(" or "),
            jobs.join("\n"),
            children.log_tails()
        );
    }
}

/// The noop jobs that fail once (infra) and are retried, and the tiny trials, two of them
/// evaluated while the third (`long`) trains on; `long` is cancelled once the two evaluations'
/// results, its live series and the worker's per-job series are scraped.
async fn run_noop_and_tiny(client: &CoordinatorClient, prom: &Prometheus, children: &mut Children, root: &Path) {
    let noop = submit(client, root, "tests/fixtures/prometheus-noop-grid.yaml").await;
    let tiny = submit(client, root, "tests/fixtures/prometheus-tiny-grid.yaml").await;
    let deadline = Deadline::new(1500, "the two evaluations and their scraped results");
    loop {
        let jobs = jobs_going_well(client, &tiny).await;
        let evaluated = jobs
            .iter()
            .filter(|j| j.kind == JobKind::Evaluate && !j.trials.contains(&2))
            .filter(|j| j.state == JobState::Succeeded)
            .count();
        let mut scraped = Vec::new();
        for series in [
            "spatiallock_trial_fid",
            "spatiallock_trial_fd_detector",
            "spatiallock_trial_step",
            "spatiallock_worker_job_step",
        ] {
            if series_count(&prom.instant(series).await["data"]) > 0 {
                scraped.push(series);
            }
        }
        if evaluated == 2 && scraped.len() == 4 {
            break;
        }
        deadline
            .tick(children, format!("{evaluated} of 2 evaluations; scraped {scraped:?}"))
            .await;
    }
    client
        .cancel(&tiny)
        .await
        .unwrap_or_else(|e| panic!("cancelling {tiny}: {e}"));
    wait_for_end(client, children, &noop, &["succeeded"]).await;
    wait_for_end(client, children, &tiny, &["cancelled"]).await;
}

/// The two-rank training, once both workers are free: a gang across them. Waits until it has
/// trained and each worker's rank has all-reduced (scraped), then cancels the experiment (its
/// evaluation is not needed here).
async fn run_gang(client: &CoordinatorClient, prom: &Prometheus, children: &mut Children, root: &Path) {
    let gang = submit(client, root, "tests/fixtures/prometheus-gang-grid.yaml").await;
    let deadline = Deadline::new(600, "the gang's training and both ranks' all-reduce series");
    loop {
        let jobs = jobs_going_well(client, &gang).await;
        let trained = jobs
            .iter()
            .any(|j| j.kind == JobKind::Train && j.state == JobState::Succeeded);
        let ranks = series_count(&prom.instant("spatiallock_worker_allreduce_bytes_total > 0").await["data"]);
        let started = series_count(&prom.instant("spatiallock_gang_rendezvous_seconds_count > 0").await["data"]);
        if trained && ranks == 2 && started > 0 {
            break;
        }
        deadline
            .tick(
                children,
                format!("trained: {trained}; ranks all-reducing: {ranks}; gangs started: {started}"),
            )
            .await;
    }
    client
        .cancel(&gang)
        .await
        .unwrap_or_else(|e| panic!("cancelling {gang}: {e}"));
    // Its evaluation may have finished first.
    wait_for_end(client, children, &gang, &["cancelled", "succeeded"]).await;
}

/// The closing table's rows and every problem found.
#[derive(Default)]
struct Findings {
    rows: Vec<Row>,
    failures: Vec<String>,
    /// Whether GPU series exist (else GPU-only panels and metrics are skipped, and say so).
    have_gpus: bool,
}

impl Findings {
    /// Whether `text` is GPU-only and this machine has no GPU series.
    fn no_gpu(&self, text: &str) -> bool {
        !self.have_gpus && text.contains(GPU_PREFIX)
    }
}

/// Every query of every dashboard returns numbers, now or at some time of the run (from
/// `start`); the number of queries.
async fn check_dashboards(prom: &Prometheus, root: &Path, start: f64, findings: &mut Findings) -> usize {
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(root.join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty(), "no dashboards/*.json");
    let mut panels = 0;
    for path in &dashboards {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let mut queries = Vec::new();
        panel_queries(&doc, &file, &mut queries);
        for (title, expr) in queries {
            panels += 1;
            let query = substitute(&expr);
            let (series, how) = if findings.no_gpu(&query) {
                ("-".to_string(), "no GPU")
            } else {
                match evaluate(prom, &query, start).await {
                    Ok((n, how)) => (n.to_string(), how),
                    Err(why) => {
                        findings
                            .failures
                            .push(format!("panel `{title}` ({file}): `{query}`: {why}"));
                        ("0".to_string(), "FAILED")
                    }
                }
            };
            findings.rows.push(Row {
                kind: "panel",
                name: title,
                series,
                how,
                what: query,
            });
        }
    }
    assert!(panels > 0, "the dashboards have no queries");
    panels
}

/// Every alert rule is loaded and healthy, and every metric it names has series at some time of
/// the run (from `start`); the number of rules.
async fn check_rules(prom: &Prometheus, start: f64, findings: &mut Findings) -> usize {
    let answer = prom.get("/api/v1/rules", &[]).await;
    assert_eq!(answer["status"], "success", "{answer}");
    let mut rule_count = 0;
    for group in answer["data"]["groups"].as_array().cloned().unwrap_or_default() {
        for rule in group["rules"].as_array().cloned().unwrap_or_default() {
            rule_count += 1;
            let name = rule["name"].as_str().unwrap_or_default().to_string();
            let query = rule["query"].as_str().unwrap_or_default().to_string();
            let health = rule["health"].as_str().unwrap_or_default().to_string();
            let error = rule["lastError"].as_str().unwrap_or_default().to_string();
            if health != "ok" || !error.is_empty() {
                findings.failures.push(format!(
                    "rule `{name}`: health {health:?}, last error {error:?}: `{query}`"
                ));
            }
            findings.rows.push(Row {
                kind: "rule",
                name: name.clone(),
                series: String::new(),
                how: if health == "ok" { "ok" } else { "FAILED" },
                what: query.clone(),
            });
            let names = metric_names(&query);
            if names.is_empty() {
                findings
                    .failures
                    .push(format!("rule `{name}`: no metric name found in `{query}`"));
            }
            for metric in names {
                let (series, how) = if findings.no_gpu(&metric) {
                    ("-".to_string(), "no GPU")
                } else {
                    let counted = prom
                        .range(&format!("count by (__name__) ({{__name__=\"{metric}\"}})"), start)
                        .await;
                    let most = counted["data"]["result"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                        .filter_map(|point| point[1].as_str().and_then(|v| v.parse::<f64>().ok()))
                        .fold(0.0_f64, f64::max);
                    if counted["status"] != "success" || most < 1.0 {
                        findings.failures.push(format!(
                            "rule `{name}`: metric `{metric}` has no series at any time of the run ({})",
                            counted["error"]
                        ));
                        ("0".to_string(), "FAILED")
                    } else {
                        (format!("{most}"), "range")
                    }
                };
                findings.rows.push(Row {
                    kind: "  metric",
                    name: format!("  {metric}"),
                    series,
                    how,
                    what: String::new(),
                });
            }
        }
    }
    rule_count
}

#[test]
fn metric_names_skip_functions_labels_keywords_and_durations() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names("histogram_quantile(0.9, sum by (le, kind) (rate(spatiallock_queue_wait_seconds_bucket[1h]))) > 1800"),
        ["spatiallock_queue_wait_seconds_bucket"]
    );
    assert_eq!(
        names("up{job=\"spatiallock-coordinator\"} == 0 or absent(up{job=\"spatiallock-coordinator\"})"),
        ["up"]
    );
    assert_eq!(
        names(
            "spatiallock_trial_step and changes(spatiallock_trial_step[15m]) == 0 and spatiallock_trial_step offset 15m"
        ),
        ["spatiallock_trial_step"]
    );
    assert_eq!(
        names("label_replace(a != a, \"loss\", \"diffusion\", \"\", \"\") or on (job) group_left (x) b_total"),
        ["a", "b_total"]
    );
    assert_eq!(names("sum(rate(x[5m])) by (le) / ignoring(le) y"), ["x", "y"]);
    assert_eq!(
        names("histogram_quantile(0.5, sum by (le) (rate(g_bucket[30m])) and on () (sum(rate(g_count[30m])) > 0))"),
        ["g_bucket", "g_count"]
    );
}

#[test]
fn grafana_variables_are_substituted() {
    assert_eq!(
        substitute("rate(x{experiment=~\"$experiment\"}[$__rate_interval])"),
        "rate(x{experiment=~\".*\"}[1m])"
    );
    assert_eq!(
        substitute("sum(increase(y{w=~\"${worker:regex}\", j=~\"[[job]]\"}[$__range]))"),
        "sum(increase(y{w=~\".*\", j=~\".*\"}[1h]))"
    );
    assert_eq!(substitute("z{a=~\"^b$\"}[5m]"), "z{a=~\"^b$\"}[5m]");
}

#[test]
fn only_numbers_count_as_data_and_the_bound_address_is_read_from_the_log() {
    let vector = |values: &[&str]| {
        serde_json::json!({
            "resultType": "vector",
            "result": values.iter().map(|v| serde_json::json!({"metric": {}, "value": [1.0, v]})).collect::<Vec<_>>(),
        })
    };
    assert_eq!(series_count(&vector(&["1", "NaN", "+Inf", "0"])), 2);
    assert_eq!(series_count(&vector(&["NaN"])), 0);
    let matrix = serde_json::json!({"resultType": "matrix", "result": [
        {"metric": {}, "values": [[1.0, "NaN"], [2.0, "0.5"]]},
        {"metric": {}, "values": [[1.0, "NaN"]]},
        {"metric": {}, "values": []},
    ]});
    assert_eq!(series_count(&matrix), 1);
    let log = "ts=… level=info component=web msg=\"Start listening for connections\" address=127.0.0.1:0\n\
               ts=… level=info component=web msg=\"Listening on\" address=127.0.0.1:37685\n";
    assert_eq!(listening_address(log).as_deref(), Some("127.0.0.1:37685"));
    assert_eq!(
        listening_address("msg=\"Start listening for connections\" address=127.0.0.1:0"),
        None
    );
}
