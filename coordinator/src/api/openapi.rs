//! `GET /openapi.json`: an OpenAPI 3.1 document of every route, built from one table.

use axum::Json;
use serde_json::{json, Map, Value};

/// (method, path, summary, who may call it, request body schema name).
const ROUTES: &[(&str, &str, &str, &str, Option<&str>)] = &[
    ("get", "/healthz", "Liveness", "anyone", None),
    (
        "get",
        "/readyz",
        "Readiness: database and Redis reachable",
        "anyone",
        None,
    ),
    ("get", "/metrics", "Prometheus metrics", "anyone", None),
    (
        "post",
        "/v1/experiments",
        "Submit a grid (YAML or JSON body; Idempotency-Key header; ?validate_only=true)",
        "user",
        Some("ExperimentSpec"),
    ),
    (
        "get",
        "/v1/experiments",
        "List experiments (?name, state, best_by, page_token, page_size)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/experiments/{id}",
        "An experiment: spec, job counts by state, best trial (?best_by)",
        "user",
        None,
    ),
    (
        "post",
        "/v1/experiments/{id}/cancel",
        "Cancel queued jobs now and running ones through their heartbeat",
        "user",
        None,
    ),
    (
        "post",
        "/v1/experiments/{id}/retry-failed",
        "Requeue failed jobs from their last checkpoint (?include_cancelled=true: cancelled ones too)",
        "user",
        None,
    ),
    (
        "post",
        "/v1/experiments/{id}/priority",
        "Change the priority",
        "user",
        Some("PriorityChange"),
    ),
    (
        "get",
        "/v1/experiments/{id}/trials",
        "Trials (?state, axis.<name>=<value>)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/experiments/{id}/report",
        "Results beside the paper's numbers (?format=md|csv|json)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/trials/{id}",
        "A trial: config, axes, state, metrics, checkpoint",
        "user",
        None,
    ),
    (
        "get",
        "/v1/trials/{id}/metrics",
        "Metric series, downsampled (?names, max_points)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/trials/{id}/logs",
        "Log tail of the trial's current job (?attempt, lines)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/jobs",
        "Jobs (?experiment, state, kind, page_token, page_size)",
        "user",
        None,
    ),
    (
        "get",
        "/v1/jobs/{id}",
        "A job: attempts, dependencies, payload",
        "user",
        None,
    ),
    (
        "get",
        "/v1/jobs/{id}/logs",
        "Log tail of an attempt (?attempt, lines)",
        "user",
        None,
    ),
    (
        "post",
        "/v1/jobs/{id}/logs",
        "Append log lines (fenced)",
        "worker",
        Some("LogBatch"),
    ),
    (
        "post",
        "/v1/jobs/{id}/heartbeat",
        "Extend the lease; answers cancel (409: attempt no longer current)",
        "worker",
        Some("AttemptRef"),
    ),
    (
        "post",
        "/v1/jobs/{id}/complete",
        "Attempt succeeded (fenced)",
        "worker",
        Some("CompleteRequest"),
    ),
    (
        "post",
        "/v1/jobs/{id}/fail",
        "Attempt failed, class infra|app (fenced)",
        "worker",
        Some("FailRequest"),
    ),
    (
        "post",
        "/v1/jobs/{id}/metrics",
        "Metric points, upserted by (job, name, step) (fenced)",
        "worker",
        Some("MetricsBatch"),
    ),
    (
        "post",
        "/v1/jobs/{id}/checkpoints",
        "Commit a checkpoint pointer (fenced)",
        "worker",
        Some("CheckpointCommit"),
    ),
    (
        "post",
        "/v1/workers/register",
        "Register a worker and its devices",
        "worker",
        Some("RegisterWorker"),
    ),
    ("post", "/v1/workers/{id}/heartbeat", "Worker liveness", "worker", None),
    (
        "post",
        "/v1/workers/{id}/lease",
        "Long-poll for a job (200 Lease, 204 none)",
        "worker",
        Some("LeaseRequest"),
    ),
];

/// Builds the document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, role, body) in ROUTES {
        let mut op = json!({
            "summary": summary,
            "x-role": role,
            "responses": {
                "200": {"description": "OK (JSON)"},
                "4XX": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            }
        });
        if *role != "anyone" {
            op["security"] = json!([{"bearer": []}]);
        }
        if path.contains("{id}") {
            op["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        if let Some(schema) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    let mut schemas = Map::new();
    schemas.insert(
        "ErrorBody".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "details": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}}}),
    );
    for (_, _, _, _, body) in ROUTES {
        if let Some(name) = body {
            schemas.entry(name.to_string()).or_insert_with(
                || json!({"type": "object", "description": format!("See spatiallock_protocol::api::{name}")}),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "SpatialLock coordinator", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas
        }
    })
}

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_once() {
        let doc = super::build();
        let paths = doc["paths"].as_object().unwrap();
        let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(ops, super::ROUTES.len());
        assert!(paths["/v1/workers/{id}/lease"]["post"]["security"].is_array());
    }
}
