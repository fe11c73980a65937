//! The monitoring stack live, with real processes and no mocks: a `spatiallock coordinator`
//! (SQLite, tokens), two `spatiallock worker`s serving their own metrics and advertising them
//! (`--metrics-listen` / `--metrics-address`), and a real Prometheus that scrapes the
//! coordinator, finds the workers through the coordinator's HTTP service discovery
//! (`/v1/prometheus/targets`) and evaluates the repository's alert rules
//! (`dashboards/alerts.yml`). After a small run — noop jobs that fail once and are retried, a
//! tiny PoI+PoG training evaluated with Inception FID and with detector features — every query of
//! every Grafana dashboard (`dashboards/*.json`) returns data, every alert rule is healthy and
//! every metric its expression names has series, and promtool accepts the generated config. On
//! success it prints a table of each panel and rule with its series counts.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package, which `bash
//! scripts/services.sh` installs), or SPATIALLOCK_PROMETHEUS / SPATIALLOCK_PROMTOOL naming them;
//! fails (never skips) without them.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use spatiallock_protocol::api::JobState;
use spatiallock_protocol::JobKind;
use spatiallock_worker::CoordinatorClient;

const ADMIN_TOKEN: &str = "admin-secret-live";
const WORKER_TOKEN: &str = "worker-secret-live";
/// The scrape jobs, named as in dashboards/prometheus.yml (the alert rules select on them).
const COORDINATOR_JOB: &str = "spatiallock-coordinator";
const WORKER_JOB: &str = "spatiallock-worker";
/// Grafana's interval variables, as a dashboard over this short run would see them.
const GRAFANA_INTERVALS: &[(&str, &str)] = &[
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("${__range}", "1h"),
    ("$__range", "1h"),
];
/// The metric prefix of the worker's GPU gauges, which only machines with an NVIDIA driver have.
const GPU_PREFIX: &str = "spatiallock_worker_gpu_";

/// `env`, else `name` on `PATH`; fails with what to run when neither exists.
fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env}={} is not a file: unset it to use `{name}` from PATH, or run `bash scripts/services.sh`, \
             which installs Debian's prometheus package (prometheus and promtool)",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found ({env} is unset and there is none on PATH): run `bash scripts/services.sh`, \
                 which installs Debian's prometheus package (prometheus and promtool), or set {env}"
            )
        })
}

/// Free ports on 127.0.0.1, all different (each held until all are found).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The child processes of the test, each writing its standard error to `<name>.log` in `logs`;
/// all killed and reaped when the guard drops, however the test ends (their logs' tails are
/// printed first when it ends in a panic).
struct Children {
    logs: PathBuf,
    running: Vec<(String, Child)>,
}

impl Children {
    fn new(logs: &Path) -> Children {
        Children {
            logs: logs.to_path_buf(),
            running: Vec::new(),
        }
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        self.running.push((name.to_string(), child));
    }

    /// The last lines of every child's log.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.running {
            let text = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {name}.log (last lines) ---\n");
            for line in &lines[lines.len().saturating_sub(25)..] {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// Fails when a child has exited: none is meant to before the end.
    fn check_alive(&mut self, waiting_for: &str) {
        let mut exited = Vec::new();
        for (name, child) in &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push(format!("{name} exited ({status})"));
            }
        }
        assert!(
            exited.is_empty(),
            "{} while waiting for {waiting_for}\n{}",
            exited.join(", "),
            self.log_tails()
        );
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        // Workers first, then Prometheus, then the coordinator.
        for (_, child) in self.running.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A wait with a time limit that also fails as soon as a child process dies.
struct Deadline {
    at: Instant,
    secs: u64,
    what: String,
}

impl Deadline {
    fn new(secs: u64, what: &str) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_secs(secs),
            secs,
            what: what.to_string(),
        }
    }

    /// Sleeps a little, failing past the deadline or when a child died.
    async fn tick(&self, children: &mut Children, state: impl std::fmt::Display) {
        children.check_alive(&self.what);
        assert!(
            Instant::now() < self.at,
            "timed out after {} s waiting for {} (last seen: {state})\n{}",
            self.secs,
            self.what,
            children.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prometheus' HTTP API.
struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// `GET path?query` as JSON (Prometheus answers errors as JSON too); `Null` when it cannot be
    /// reached.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Value {
        let Ok(response) = self.http.get(format!("{}{path}", self.base)).query(query).send().await else {
            return Value::Null;
        };
        response.json().await.unwrap_or(Value::Null)
    }

    /// The active targets' (job, health) pairs.
    async fn targets(&self) -> Vec<(String, String)> {
        let v = self.get("/api/v1/targets", &[("state", "active".into())]).await;
        v["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        (
                            t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                            t["health"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `coordinators` coordinator targets and `workers` worker targets are all up.
    async fn up(&self, coordinators: usize, workers: usize) -> (bool, String) {
        let targets = self.targets().await;
        let up = |job: &str| targets.iter().filter(|(j, h)| j == job && h == "up").count();
        let all = |job: &str| targets.iter().filter(|(j, _)| j == job).count();
        let ok = up(COORDINATOR_JOB) == coordinators
            && all(COORDINATOR_JOB) == coordinators
            && up(WORKER_JOB) == workers
            && all(WORKER_JOB) == workers;
        (ok, format!("{targets:?}"))
    }

    async fn instant(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr.to_string())]).await
    }

    /// `expr` over `[start, now]` at a 1 s step (coarser over long runs: Prometheus answers at
    /// most 11,000 points per series).
    async fn range(&self, expr: &str, start: f64) -> Value {
        let end = now_s();
        let step = ((end - start) / 10_000.0).max(1.0);
        self.get(
            "/api/v1/query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{step:.3}")),
            ],
        )
        .await
    }
}

/// The number of series (or 1 for a scalar) in a query answer's `data`.
fn series_count(data: &Value) -> usize {
    match data["resultType"].as_str() {
        Some("vector") => data["result"].as_array().map_or(0, Vec::len),
        Some("matrix") => data["result"].as_array().map_or(0, |series| {
            series
                .iter()
                .filter(|s| s["values"].as_array().is_some_and(|v| !v.is_empty()))
                .count()
        }),
        Some("scalar") | Some("string") => 1,
        _ => 0,
    }
}

/// Evaluates `expr`: at the current time, and over the whole run when that is empty (per-trial
/// and per-job series are removed when their job ends). The series count and how it was found,
/// or why it has no data.
async fn evaluate(prom: &Prometheus, expr: &str, start: f64) -> Result<(usize, &'static str), String> {
    let now = prom.instant(expr).await;
    if now["status"] != "success" {
        return Err(format!("query failed: {} {}", now["errorType"], now["error"]));
    }
    let n = series_count(&now["data"]);
    if n > 0 {
        return Ok((n, "instant"));
    }
    let over_run = prom.range(expr, start).await;
    if over_run["status"] != "success" {
        return Err(format!(
            "range query failed: {} {}",
            over_run["errorType"], over_run["error"]
        ));
    }
    match series_count(&over_run["data"]) {
        0 => Err("no data, neither now nor at any time of the run".into()),
        n => Ok((n, "range")),
    }
}

/// Every `expr` of a Grafana dashboard with the title of the panel it belongs to (the nearest
/// enclosing object with a `title`).
fn panel_queries(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                if !expr.trim().is_empty() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            for v in map.values() {
                panel_queries(v, title, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| panel_queries(v, title, out)),
        _ => {}
    }
}

/// A dashboard expression as Prometheus gets it: Grafana's interval variables replaced
/// ([`GRAFANA_INTERVALS`]) and every other template variable (`$name`, `${name}`,
/// `${name:format}`, `[[name]]`) replaced by `.*`, i.e. "All".
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in GRAFANA_INTERVALS {
        s = s.replace(var, value);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'{') => match chars[i..].iter().position(|c| *c == '}') {
                Some(end) => {
                    out += ".*";
                    i += end + 1;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            },
            '$' if chars.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                out += ".*";
                i += 1;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
            }
            '[' if chars.get(i + 1) == Some(&'[') => {
                let rest: String = chars[i + 2..].iter().collect();
                match rest.find("]]") {
                    Some(end) if rest[..end].chars().all(ident) && end > 0 => {
                        out += ".*";
                        i += 2 + rest[..end].chars().count() + 2;
                    }
                    _ => {
                        out.push('[');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Skips from `chars[i]`, an opening `open`, past its matching `close` (strings inside are
/// skipped whole); the index after it.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

/// Skips the string literal starting at `chars[i]`; the index after its closing quote.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The metric names a PromQL expression selects: the identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names (inside `{…}` or the parentheses of
/// `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`), strings, numbers or
/// durations. (A name given only as `{__name__="…"}` is not seen.)
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (5m, 1h30m, 1e3, 0x1f).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let before_paren = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if before_paren {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if !before_paren && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// One line of the closing table.
struct Row {
    kind: &'static str,
    name: String,
    series: String,
    how: &'static str,
    what: String,
}

/// The widest of `title` and `f` over the rows.
fn width(rows: &[Row], f: impl Fn(&Row) -> usize, title: usize) -> usize {
    rows.iter().map(f).max().unwrap_or(0).max(title)
}

fn table(rows: &[Row]) -> String {
    let kind = width(rows, |r| r.kind.len(), 4);
    let name = width(rows, |r| r.name.chars().count(), 4);
    let series = width(rows, |r| r.series.len(), 6);
    let how = width(rows, |r| r.how.len(), 3);
    let mut out = format!(
        "{:kind$}  {:name$}  {:>series$}  {:how$}  EXPRESSION / METRIC\n",
        "KIND", "NAME", "SERIES", "HOW"
    );
    for r in rows {
        let pad = name.saturating_sub(r.name.chars().count());
        out += &format!(
            "{:kind$}  {}{}  {:>series$}  {:how$}  {}\n",
            r.kind,
            r.name,
            " ".repeat(pad),
            r.series,
            r.how,
            r.what.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_stack_and_every_panel_and_alert_has_data() {
    let prometheus = tool("prometheus", "SPATIALLOCK_PROMETHEUS");
    let promtool = tool("promtool", "SPATIALLOCK_PROMTOOL");
    let root = common::root();
    let alerts = root.join("dashboards/alerts.yml");
    assert!(alerts.is_file(), "{} is missing", alerts.display());
    let dir = tempfile::tempdir().unwrap();
    let mut children = Children::new(dir.path());
    let ports = free_ports(4);
    let (coordinator_port, prometheus_port) = (ports[0], ports[1]);
    let coordinator = format!("http://127.0.0.1:{coordinator_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The coordinator, as an operator starts it (SQLite, tokens).
    children.spawn(
        "coordinator",
        Command::new(env!("CARGO_BIN_EXE_spatiallock"))
            .args([
                "coordinator",
                "--listen",
                &format!("127.0.0.1:{coordinator_port}"),
                "--database-url",
            ])
            .arg(format!("sqlite://{}", dir.path().join("coordinator.db").display()))
            .env(
                "SPATIALLOCK_TOKENS",
                format!("admin:{ADMIN_TOKEN},worker:{WORKER_TOKEN}"),
            )
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn"),
    );
    let deadline = Deadline::new(60, "the coordinator to be ready");
    loop {
        let ready = http.get(format!("{coordinator}/readyz")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status().is_success()) {
            break;
        }
        deadline.tick(&mut children, format!("{ready:?}")).await;
    }

    // Prometheus: the coordinator as a static target, the workers through its service discovery,
    // the repository's alert rules; everything every second.
    let config = dir.path().join("prometheus.yml");
    let rules = serde_json::to_string(&alerts.display().to_string()).unwrap();
    std::fs::write(
        &config,
        format!(
            "# Written by tests/prometheus_live.rs.\n\
             global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n\
             \x20 - job_name: {COORDINATOR_JOB}\n\
             \x20   static_configs:\n\
             \x20     - targets: [\"127.0.0.1:{coordinator_port}\"]\n\
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
    std::fs::create_dir_all(dir.path().join("tsdb")).unwrap();
    let start = now_s();
    children.spawn(
        "prometheus",
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn"),
    );
    let prom = Prometheus {
        base: format!("http://127.0.0.1:{prometheus_port}"),
        http: http.clone(),
    };
    let deadline = Deadline::new(60, "Prometheus to scrape the coordinator");
    loop {
        let (ok, seen) = prom.up(1, 0).await;
        if ok {
            break;
        }
        deadline.tick(&mut children, seen).await;
    }

    // Two workers sharing one artifact root, each serving and advertising its metrics.
    let artifacts = dir.path().join("artifacts");
    for (n, port) in [(1, ports[2]), (2, ports[3])] {
        let address = format!("127.0.0.1:{port}");
        children.spawn(
            &format!("worker-{n}"),
            Command::new(env!("CARGO_BIN_EXE_spatiallock"))
                .args([
                    "worker",
                    "--coordinator",
                    &coordinator,
                    "--devices",
                    "cpu",
                    "--artifacts",
                ])
                .arg(artifacts.as_path())
                .args(["--metrics-listen", &address, "--metrics-address", &address])
                .current_dir(root.as_path())
                .env("SPATIALLOCK_TOKEN", WORKER_TOKEN)
                .env("OMP_NUM_THREADS", "1")
                .env("RUST_LOG", "warn"),
        );
    }
    let deadline = Deadline::new(180, "Prometheus to discover and scrape both workers");
    loop {
        let (ok, seen) = prom.up(1, 2).await;
        if ok {
            break;
        }
        deadline.tick(&mut children, seen).await;
    }

    // The run: noop jobs that fail once (infra) and are retried; tiny trials, two of them
    // evaluated while the third trains on.
    let client = CoordinatorClient::new(&coordinator, Some(ADMIN_TOKEN.to_string()));
    let submit = |fixture: &'static str| {
        let client = client.clone();
        let text = std::fs::read_to_string(root.join(fixture)).unwrap();
        async move {
            client
                .submit(&text, false, None)
                .await
                .unwrap_or_else(|e| panic!("submitting {fixture}: {e}"))
                .id
        }
    };
    let noop = submit("tests/fixtures/prometheus-noop-grid.yaml").await;
    let tiny = submit("tests/fixtures/prometheus-tiny-grid.yaml").await;

    // The `inception` and `detector` trials evaluated (trials 0 and 1) and their results, the
    // `long` trial's live series and the worker's per-job series scraped: then `long` is cancelled.
    let deadline = Deadline::new(1500, "the two evaluations and their scraped results");
    loop {
        let jobs = client.jobs(&tiny).await.unwrap_or_default();
        let broken: Vec<String> = jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Failed | JobState::Cancelled))
            .map(|j| format!("{} {:?} {:?}", j.label, j.state, j.last_error))
            .collect();
        assert!(broken.is_empty(), "jobs of {tiny} ended badly:\n{}", broken.join("\n"));
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
            .tick(
                &mut children,
                format!("{evaluated} of 2 evaluations; scraped {scraped:?}"),
            )
            .await;
    }
    client
        .cancel(&tiny)
        .await
        .unwrap_or_else(|e| panic!("cancelling {tiny}: {e}"));
    let deadline = Deadline::new(600, "both experiments to end");
    for (id, wanted) in [(&noop, "succeeded"), (&tiny, "cancelled")] {
        loop {
            let state = client.experiment(id).await.map(|e| e.state);
            if state
                .as_ref()
                .is_ok_and(|s| !matches!(s.as_str(), "blocked" | "queued" | "running"))
            {
                break;
            }
            deadline.tick(&mut children, format!("{id}: {state:?}")).await;
        }
        let exp = client.experiment(id).await.unwrap();
        if exp.state != wanted {
            let jobs = client.jobs(id).await.unwrap_or_default();
            let jobs: Vec<String> = jobs
                .iter()
                .map(|j| format!("{} {:?} {:?}", j.label, j.state, j.last_error))
                .collect();
            panic!(
                "experiment {id} ({}) ended {}, not {wanted}:\n{}\n{}",
                exp.name,
                exp.state,
                jobs.join("\n"),
                children.log_tails()
            );
        }
    }
    // A few more scrapes and rule evaluations after the end, with every target still up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deadline = Deadline::new(60, "all three targets to be up after the run");
    loop {
        let (ok, seen) = prom.up(1, 2).await;
        if ok {
            break;
        }
        deadline.tick(&mut children, seen).await;
    }

    // GPU series exist only where the workers found an NVIDIA driver.
    let gpu_series = prom
        .range(&format!("count({{__name__=~\"{GPU_PREFIX}.+\"}})"), start)
        .await;
    let have_gpus = series_count(&gpu_series["data"]) > 0;
    let no_gpu = |text: &str| !have_gpus && text.contains(GPU_PREFIX);

    let mut rows = Vec::new();
    let mut failures = Vec::new();

    // Every query of every dashboard has data.
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
            let (series, how) = if no_gpu(&query) {
                ("-".to_string(), "no GPU")
            } else {
                match evaluate(&prom, &query, start).await {
                    Ok((n, how)) => (n.to_string(), how),
                    Err(why) => {
                        failures.push(format!("panel `{title}` ({file}): `{query}`: {why}"));
                        ("0".to_string(), "FAILED")
                    }
                }
            };
            rows.push(Row {
                kind: "panel",
                name: title,
                series,
                how,
                what: query,
            });
        }
    }
    assert!(panels > 0, "the dashboards have no queries");

    // Every alert rule is loaded, healthy, and every metric it names has series.
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
                failures.push(format!(
                    "rule `{name}`: health {health:?}, last error {error:?}: `{query}`"
                ));
            }
            rows.push(Row {
                kind: "rule",
                name: name.clone(),
                series: String::new(),
                how: if health == "ok" { "ok" } else { "FAILED" },
                what: query.clone(),
            });
            let names = metric_names(&query);
            if names.is_empty() {
                failures.push(format!("rule `{name}`: no metric name found in `{query}`"));
            }
            for metric in names {
                let (series, how) = if no_gpu(&metric) {
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
                        failures.push(format!(
                            "rule `{name}`: metric `{metric}` has no series at any time of the run ({})",
                            counted["error"]
                        ));
                        ("0".to_string(), "FAILED")
                    } else {
                        (format!("{most}"), "range")
                    }
                };
                rows.push(Row {
                    kind: "  metric",
                    name: format!("  {metric}"),
                    series,
                    how,
                    what: String::new(),
                });
            }
        }
    }
    assert!(rule_count > 0, "Prometheus loaded no rules from {}", alerts.display());

    let report = table(&rows);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}\n\n{report}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "Prometheus after the run ({} panel queries, {rule_count} rules; `instant`: series now, `range`: \
         series at some time of the run{}):\n{report}",
        panels,
        if have_gpus {
            ""
        } else {
            "; `no GPU`: GPU series need an NVIDIA driver"
        }
    );
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
        names("spatiallock_trial_step and changes(spatiallock_trial_step[15m]) == 0 and spatiallock_trial_step offset 15m"),
        ["spatiallock_trial_step"]
    );
    assert_eq!(
        names("label_replace(a != a, \"loss\", \"diffusion\", \"\", \"\") or on (job) group_left (x) b_total"),
        ["a", "b_total"]
    );
    assert_eq!(names("sum(rate(x[5m])) by (le) / ignoring(le) y"), ["x", "y"]);
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
