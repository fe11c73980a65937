//! The Prometheus side of `dashboards/`: promtool accepts the scrape configuration
//! (`prometheus.yml`, which loads `alerts.yml`), the alerting rules, and their unit tests
//! (`alerts.test.yml`) pass; every alert has a unit test where it fires and one where it does
//! not; and every `spatiallock_` series the dashboards, rules and rule tests name is one the
//! coordinator or a worker exports.
//!
//! promtool comes from Debian's `prometheus` package (`bash scripts/services.sh` installs it);
//! `SPATIALLOCK_PROMTOOL` names another binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use spatiallock_coordinator::telemetry::Telemetry;
use spatiallock_protocol::api::MetricPoint;
use spatiallock_worker::report::StepTiming;
use spatiallock_worker::telemetry::{WorkerTelemetry, GPU_METRICS};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `SPATIALLOCK_PROMTOOL`, else `promtool` on `PATH`; fails (never skips) when neither exists.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("SPATIALLOCK_PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SPATIALLOCK_PROMTOOL={} is not a file; unset it to use `promtool` from PATH, or run \
             `bash scripts/services.sh` to install Debian's prometheus package (it has promtool)",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (neither SPATIALLOCK_PROMTOOL nor `promtool` on PATH): run \
                 `bash scripts/services.sh`, which installs Debian's prometheus package (it has \
                 promtool), or set SPATIALLOCK_PROMTOOL to a promtool binary"
            )
        })
}

/// Runs promtool with `args` in the workspace root and asserts it succeeded.
fn promtool_ok(args: &[&str]) {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        tool.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_scrape_config() {
    // Also checks the rule files it loads (they must exist beside it).
    promtool_ok(&["check", "config", "dashboards/prometheus.yml"]);
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    promtool_ok(&["check", "rules", "dashboards/alerts.yml"]);
}

#[test]
fn alerting_rule_unit_tests_pass() {
    promtool_ok(&["test", "rules", "dashboards/alerts.test.yml"]);
}

/// A line without a trailing ` # comment`, and `None` for blank and comment-only lines.
fn content(line: &str) -> Option<&str> {
    let line = line.split(" #").next().unwrap_or_default().trim_end();
    let t = line.trim_start();
    (!t.is_empty() && !t.starts_with('#')).then_some(line)
}

/// The key-value text of a line, without its indentation or a leading `- `.
fn entry(line: &str) -> &str {
    let t = line.trim_start();
    t.strip_prefix("- ").unwrap_or(t).trim_start()
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// The alerting rules of `alerts.yml`: name → the lines of its rule.
fn alert_rules(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter_map(content) {
        let e = entry(line);
        if let Some(name) = e.strip_prefix("alert:") {
            let name = unquote(name);
            assert!(!rules.contains_key(&name), "alerts.yml: alert {name} is defined twice");
            rules.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if line.trim_start().starts_with("- ") && (e.starts_with("record:") || e.starts_with("name:")) {
            current = None;
        } else if let Some(name) = &current {
            rules.get_mut(name).expect("current rule").push(e.to_string());
        }
    }
    rules
}

/// The cases of `alerts.test.yml` as (alertname, fires): a case fires when its `exp_alerts`
/// lists alerts, and fires nothing when it is `exp_alerts: []`.
fn rule_test_cases(text: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = text.lines().filter_map(content).collect();
    let mut cases = Vec::new();
    let mut alertname: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        let e = entry(line);
        if let Some(name) = e.strip_prefix("alertname:") {
            alertname = Some(unquote(name));
        } else if let Some(value) = e.strip_prefix("exp_alerts:") {
            let name = alertname.take().unwrap_or_else(|| {
                panic!(
                    "alerts.test.yml: `{}` without an `alertname:` before it in its case",
                    line.trim()
                )
            });
            let fires = match value.trim() {
                "[]" => false,
                "" => {
                    let next = lines.get(i + 1).copied().map(entry).unwrap_or_default();
                    assert!(
                        next.starts_with("exp_labels:") && lines[i + 1].trim_start().starts_with("- "),
                        "alerts.test.yml: the case of {name} lists no alert after `exp_alerts:` \
                         (write `exp_alerts: []` for a case where nothing fires)"
                    );
                    true
                }
                other => panic!("alerts.test.yml: unexpected `exp_alerts: {other}` in the case of {name}"),
            };
            cases.push((name, fires));
        }
    }
    cases
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let rules = alert_rules(&read("dashboards/alerts.yml"));
    assert!(
        rules.len() >= 7,
        "only {} alerts in alerts.yml: {:?}",
        rules.len(),
        rules.keys()
    );
    for (name, body) in &rules {
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(
                body.iter().any(|l| l.starts_with(key)),
                "alerts.yml: alert {name} has no `{key}`"
            );
        }
    }
    let cases = rule_test_cases(&read("dashboards/alerts.test.yml"));
    for (name, _) in &cases {
        assert!(
            rules.contains_key(name),
            "alerts.test.yml tests `{name}`, which alerts.yml does not define (a case expecting \
             nothing of an unknown alert always passes)"
        );
    }
    for name in rules.keys() {
        for (fires, what) in [(true, "fires"), (false, "does not fire")] {
            assert!(
                cases.iter().any(|(n, f)| n == name && *f == fires),
                "alerts.test.yml has no case where {name} {what}"
            );
        }
    }
}

/// Every metric name the coordinator and a worker export (histograms as their `_bucket`,
/// `_sum` and `_count` series; the GPU gauges, which only machines with NVML export, by name).
fn exported() -> BTreeSet<String> {
    let t = Telemetry::new();
    // Give every labelled family a series so it is rendered.
    t.jobs.with_label_values(&["queued", "noop"]).set(1);
    t.queue_wait.with_label_values(&["noop"]).observe(0.1);
    t.run_duration.with_label_values(&["noop", "succeeded"]).observe(0.1);
    t.retries.with_label_values(&["app"]).inc();
    t.http_requests.with_label_values(&["GET", "/healthz", "200"]).inc();
    t.http_duration.with_label_values(&["GET", "/healthz"]).observe(0.001);
    let names = [
        "loss_diffusion",
        "loss_perception",
        "lambda_g",
        "lambda_p",
        "gate_mean",
        "images_per_second",
        "step",
        "fid",
        "fd_detector",
        "map",
        "ap50",
        "ap75",
        "grounding_accuracy",
        "mean_iou",
        "category_recall",
    ];
    let batch: BTreeMap<String, Vec<MetricPoint>> = names
        .iter()
        .map(|n| (n.to_string(), vec![MetricPoint { step: 1, value: 1.0 }]))
        .collect();
    t.observe_job_metrics("e", "e.j", &[0], &batch);
    let w = WorkerTelemetry::new().expect("worker metrics");
    w.registered("w1", &["cpu".to_string()]);
    w.attempt_started();
    w.observe("e.j", "step", 1.0);
    w.observe("e.j", "images_per_second", 1.0);
    w.step_timing(&StepTiming {
        rank: 1,
        step: 1,
        seconds: 0.5,
        allreduce_seconds: 0.1,
        allreduce_bytes: 1024,
    });
    w.attempt_finished(None);
    let text = t.render() + &w.encode().expect("worker metrics encode");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .chain(GPU_METRICS.iter().map(|n| n.to_string()))
        .collect()
}

/// The `spatiallock_…` names in `text`.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("spatiallock_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn dashboards_and_rules_name_exported_series() {
    let exported = exported();
    let mut files = vec![
        "dashboards/alerts.yml".to_string(),
        "dashboards/alerts.test.yml".to_string(),
    ];
    for entry in std::fs::read_dir(root().join("dashboards")).expect("dashboards/") {
        let path = entry.expect("dashboards/ entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().expect("file name").to_string_lossy();
            files.push(format!("dashboards/{name}"));
        }
    }
    let mut checked = 0;
    for file in &files {
        let names = named(&read(file));
        assert!(!names.is_empty(), "{file} names no spatiallock_ series");
        for n in names {
            assert!(
                exported.contains(&n),
                "{file}: `{n}` is exported by neither the coordinator nor a worker (exported: {exported:?})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} names checked");
}
