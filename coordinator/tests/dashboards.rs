//! Every metric the Grafana dashboards query is one the coordinator exports.

use std::collections::{BTreeMap, BTreeSet};

use spatiallock_coordinator::telemetry::Telemetry;
use spatiallock_protocol::api::MetricPoint;

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
    ];
    let batch: BTreeMap<String, Vec<MetricPoint>> = names
        .iter()
        .map(|n| (n.to_string(), vec![MetricPoint { step: 1, value: 1.0 }]))
        .collect();
    t.observe_job_metrics("e", "e.j", &[0], &batch);
    t.render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn queried(value: &serde_json::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" || k == "query" {
                    let text = v.as_str().unwrap_or_default();
                    let mut rest = text;
                    while let Some(i) = rest.find("spatiallock_") {
                        let name: String = rest[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        rest = &rest[i + name.len()..];
                        out.insert(name);
                    }
                } else {
                    queried(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queried(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let exported = exported();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut names = BTreeSet::new();
            queried(&doc, &mut names);
            assert!(!names.is_empty(), "{} queries nothing", path.display());
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{}: `{n}` is not exported (exported: {exported:?})",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} queries checked");
}
