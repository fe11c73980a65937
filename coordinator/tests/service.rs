//! Coordinator behaviour against real stores: PostgreSQL + Redis, and SQLite embedded. Each
//! behaviour runs on both backends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{drain, noop_grid, wait_for, Backend, Client, Deployment};
use reqwest::StatusCode;
use serde_json::json;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await }) *
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await }) *
        }
    };
}

on_both_backends!(
    lifecycle_and_idempotent_resubmit,
    dag_runs_dependencies_first_and_fails_dependants,
    expired_lease_requeues_and_fences_the_stale_attempt,
    infra_failures_do_not_spend_attempts_app_failures_do,
    retry_failed_resumes_from_the_checkpoint,
    cancel_stops_queued_and_running_jobs,
    priorities_then_fifo,
    concurrent_clients_lease_each_attempt_once,
    restart_mid_run_loses_nothing,
    bad_input_gets_json_errors,
    job_states_outside_the_enum_are_refused_by_the_database,
    gang_reservations_time_out_release_back_off_and_start_all_or_nothing,
    trial_metrics_and_logs_keep_each_job_apart,
    prometheus_targets_list_the_live_workers_with_a_metrics_address,
);

async fn lifecycle_and_idempotent_resubmit(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let grid = noop_grid("life", 3, 1, "");

    let (s, v) = client.submit(&grid, Some("key-1")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["num_trials"], 3);
    assert_eq!(v["jobs_by_kind"]["noop"], 3);
    let id = v["id"].as_str().unwrap().to_string();

    // Same key, same spec: the same experiment, nothing new.
    let (s, again) = client.submit(&grid, Some("key-1")).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["created"], false);
    // Same key, another spec: refused.
    let (s, e) = client.submit(&noop_grid("life", 4, 1, ""), Some("key-1")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"].as_str().unwrap().contains("Idempotency-Key"), "{e}");
    // validate_only writes nothing.
    let (s, dry) = client
        .post_yaml_query("/v1/experiments?validate_only=true", &noop_grid("dry", 5, 2, ""))
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["num_jobs"], 10);
    let (_, list) = client.get("/v1/experiments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    let worker = client.register("w1").await;
    let lease = client.lease(&worker, 1000).await.expect("a job");
    assert_eq!(lease["attempt"], 1);
    assert_eq!(lease["payload"]["kind"], "noop");
    let job = lease["job_id"].as_str().unwrap().to_string();
    let (s, hb) = client
        .post(&format!("/v1/jobs/{job}/heartbeat"), json!({"attempt": 1}))
        .await;
    assert_eq!(s, StatusCode::OK, "{hb}");
    assert_eq!(hb["cancel"], false);
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/metrics"),
            json!({"attempt": 1, "metrics": {"loss_diffusion": [{"step": 1, "value": 0.5}, {"step": 2, "value": 0.4}], "map": [{"step": 0, "value": 12.5}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Upserting the same step again replaces, never duplicates.
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/metrics"),
            json!({"attempt": 1, "metrics": {"loss_diffusion": [{"step": 2, "value": 0.3}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/logs"),
            json!({"attempt": 1, "lines": ["hello", "world"]}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let metrics_text = client.get_text("/metrics").await.1;
    assert!(
        metrics_text.contains("spatiallock_trial_diffusion_loss{"),
        "{metrics_text}"
    );
    assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
    let metrics_text = client.get_text("/metrics").await.1;
    assert!(
        !metrics_text.contains("spatiallock_trial_diffusion_loss{"),
        "live series removed when the job ends"
    );

    let (_, logs) = client.get(&format!("/v1/jobs/{job}/logs")).await;
    assert_eq!(logs["lines"], json!(["hello", "world"]));
    let rest = drain(&client, &worker).await;
    assert_eq!(rest.len(), 2);

    let (_, exp) = client.get(&format!("/v1/experiments/{id}?best_by=map")).await;
    assert_eq!(exp["state"], "succeeded", "{exp}");
    assert_eq!(exp["jobs"]["succeeded"], 3);
    assert_eq!(exp["best"]["value"], 12.5, "{exp}");
    let trial_idx = exp["best"]["trial"].as_u64().unwrap();
    let (_, series) = client.get(&format!("/v1/trials/{id}.{trial_idx}/metrics")).await;
    assert_eq!(
        series["jobs"][0]["series"]["loss_diffusion"],
        json!([{"step": 1, "value": 0.5}, {"step": 2, "value": 0.3}]),
        "{series}"
    );
    let (s, report) = client.get_text(&format!("/v1/experiments/{id}/report?format=md")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report.lines().filter(|l| l.starts_with("| ")).count(), 4, "{report}");
    let (_, csv) = client
        .get_text(&format!("/v1/experiments/{id}/report?format=csv"))
        .await;
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let metrics_text = client.get_text("/metrics").await.1;
    assert!(
        metrics_text.contains(r#"spatiallock_jobs{kind="noop",state="succeeded"} 3"#),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("spatiallock_queue_wait_seconds_bucket"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("spatiallock_http_requests_total{"),
        "{metrics_text}"
    );
    let (s, ready) = client.get("/readyz").await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    c.shutdown().await;
}

/// A one-trial grid with every real job kind (pretrain, train, train-detector, evaluate), whose
/// jobs the test runs by hand.
fn one_trial_grid(name: &str) -> String {
    format!(
        "name: {name}\nbase:\n  model: {{arch: tiny, base: {{pretrain: {{steps: 6}}}}}}\n  data: {{train: {{kind: shapes, split: train, count: 8}}, val: [{{kind: shapes, split: val, count: 4}}], resolution: 32}}\n  training: {{steps: 4, batch_size: 4}}\n"
    )
}

/// Pretraining, training and the detector's training all report `loss` over steps of their
/// own: the trial's series keep each job apart, the trial's `loss` is its training's, and the
/// trial's logs show every job with why its attempts failed.
async fn trial_metrics_and_logs_keep_each_job_apart(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (s, v) = client.submit(&one_trial_grid("per-job"), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["jobs_by_kind"],
        json!({"evaluate": 1, "pretrain": 1, "train": 1, "train-detector": 1})
    );
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    let loss_at = |kind: &str| match kind {
        "pretrain" => 30.0,
        "train" => 20.0,
        _ => 10.0,
    };
    let (mut completed, mut detector_failed) = (0, false);
    while completed < 4 {
        let lease = client.lease(&worker, 5000).await.expect("a job within 5 s");
        let job = lease["job_id"].as_str().unwrap().to_string();
        let kind = lease["payload"]["kind"].as_str().unwrap().to_string();
        let metrics = if kind == "evaluate" {
            json!({"map": [{"step": 0, "value": 12.5}]})
        } else {
            let l = loss_at(kind.as_str());
            json!({"loss": [{"step": 1, "value": l + 1.0}, {"step": 2, "value": l}]})
        };
        for (path, body) in [
            ("metrics", json!({"attempt": lease["attempt"], "metrics": metrics})),
            (
                "logs",
                json!({"attempt": lease["attempt"], "lines": [format!("hello from {kind}")]}),
            ),
        ] {
            let (s, e) = client.post(&format!("/v1/jobs/{job}/{path}"), body).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{path}: {e}");
        }
        if kind == "train-detector" && !detector_failed {
            detector_failed = true;
            let (s, e) = client
                .post(
                    &format!("/v1/jobs/{job}/fail"),
                    json!({"attempt": lease["attempt"], "class": "app",
                           "message": "/data/val.json: No such file or directory (os error 2)"}),
                )
                .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
            continue;
        }
        assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
        completed += 1;
    }

    let (s, m) = client.get(&format!("/v1/trials/{id}.0/metrics")).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["trial"], format!("{id}.0"));
    let jobs = m["jobs"].as_array().expect("jobs");
    let kinds: Vec<&str> = jobs.iter().filter_map(|j| j["kind"].as_str()).collect();
    assert_eq!(kinds, ["pretrain", "train", "train-detector", "evaluate"], "{m}");
    for j in jobs {
        let kind = j["kind"].as_str().unwrap_or_default();
        assert!(
            j["job"]
                .as_str()
                .is_some_and(|job| job.starts_with(&format!("{id}.{kind}-"))),
            "{j}"
        );
        let expected = if kind == "evaluate" {
            json!({"map": [{"step": 0, "value": 12.5}]})
        } else {
            let l = loss_at(kind);
            json!({"loss": [{"step": 1, "value": l + 1.0}, {"step": 2, "value": l}]})
        };
        assert_eq!(j["series"], expected, "{kind}: {j}");
    }
    // The trial's numbers: its training's loss (not the detector's), its evaluation's mAP.
    let (_, trial) = client.get(&format!("/v1/trials/{id}.0")).await;
    assert_eq!(trial["metrics"], json!({"loss": 20.0, "map": 12.5}), "{trial}");

    let (s, logs) = client.get(&format!("/v1/trials/{id}.0/logs?lines=10")).await;
    assert_eq!(s, StatusCode::OK, "{logs}");
    let jobs = logs["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 4, "{logs}");
    for j in jobs {
        let kind = j["kind"].as_str().unwrap_or_default();
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["lines"], json!([format!("hello from {kind}")]), "{j}");
    }
    let detector = &jobs[2];
    assert_eq!(detector["attempt"], 2, "{detector}");
    assert_eq!(detector["attempts"][0]["outcome"], "failed-app", "{detector}");
    assert_eq!(
        detector["attempts"][0]["error"],
        "/data/val.json: No such file or directory (os error 2)"
    );
    c.shutdown().await;
}

async fn dag_runs_dependencies_first_and_fails_dependants(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, v) = client.submit(&noop_grid("dag", 2, 3, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    let order = drain(&client, &worker).await;
    assert_eq!(order.len(), 6);
    for (pos, job) in order.iter().enumerate() {
        let (_, view) = client.get(&format!("/v1/jobs/{job}")).await;
        for dep in view["depends_on"].as_array().unwrap() {
            let at = order.iter().position(|j| j == dep.as_str().unwrap()).unwrap();
            assert!(at < pos, "{job} ran before its dependency {dep}");
        }
    }
    // A failed first stage fails the rest of its chain, naming the reason.
    let (_, v) = client.submit(&noop_grid("dag-fail", 1, 3, ", fail: app"), None).await;
    let failing = v["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let lease = client.lease(&worker, 1000).await.unwrap();
        let jid = lease["job_id"].as_str().unwrap();
        let (s, _) = client
            .post(
                &format!("/v1/jobs/{jid}/fail"),
                json!({"attempt": lease["attempt"], "class": "app", "message": "loss is NaN"}),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    assert!(client.lease(&worker, 200).await.is_none());
    let (_, jobs) = client.get(&format!("/v1/jobs?experiment={failing}")).await;
    let items = jobs["items"].as_array().unwrap();
    assert!(items.iter().all(|j| j["state"] == "failed"), "{jobs}");
    assert!(items[0]["last_error"].as_str().unwrap().contains("loss is NaN"));
    assert!(
        items[1]["last_error"].as_str().unwrap().contains("dependency"),
        "{}",
        items[1]
    );
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["state"], "succeeded");
    c.shutdown().await;
}

async fn expired_lease_requeues_and_fences_the_stale_attempt(backend: Backend) {
    let d = Deployment::new(backend).await;
    let mut config = d.config();
    config.lease_ttl = Duration::from_millis(300);
    let c = d.start_with(config).await;
    let client = Client::new(&c.url());
    client.submit(&noop_grid("lease", 1, 1, ""), None).await;
    let worker = client.register("w").await;
    let first = client.lease(&worker, 1000).await.unwrap();
    let job = first["job_id"].as_str().unwrap().to_string();
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/checkpoints"),
            json!({"attempt": 1, "step": 10, "uri": "file:///ck/10"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/metrics"),
            json!({"attempt": 1, "metrics": {"loss": [{"step": 10, "value": 1.0}, {"step": 12, "value": 0.9}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // No heartbeat: the reaper requeues it and the next lease is attempt 2, resuming at 10.
    let second = client.lease(&worker, 5000).await.expect("requeued after expiry");
    assert_eq!(second["job_id"], job.as_str());
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["checkpoint"], json!({"step": 10, "uri": "file:///ck/10"}));
    for (path, body) in [
        ("heartbeat", json!({"attempt": 1})),
        ("complete", json!({"attempt": 1})),
        ("fail", json!({"attempt": 1, "class": "app", "message": "late"})),
        (
            "metrics",
            json!({"attempt": 1, "metrics": {"loss": [{"step": 13, "value": 0.1}]}}),
        ),
        ("checkpoints", json!({"attempt": 1, "step": 20, "uri": "file:///ck/20"})),
        ("logs", json!({"attempt": 1, "lines": ["late"]})),
    ] {
        let (s, e) = client.post(&format!("/v1/jobs/{job}/{path}"), body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{path}: {e}");
        assert!(e["error"].as_str().unwrap().contains("attempt 1"), "{e}");
    }
    // Metrics of attempt 1 past its checkpoint (step 12) were dropped; step 10 stays.
    let (_, series) = client
        .get(&format!(
            "/v1/trials/{}.0/metrics",
            first["experiment_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        series["jobs"][0]["series"]["loss"],
        json!([{"step": 10, "value": 1.0}]),
        "{series}"
    );
    assert_eq!(client.complete(&second).await, StatusCode::NO_CONTENT);
    let (_, view) = client.get(&format!("/v1/jobs/{job}")).await;
    let outcomes: Vec<&str> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["lost", "succeeded"]);
    let text = client.get_text("/metrics").await.1;
    assert!(text.contains("spatiallock_lease_expirations_total 1"), "{text}");
    c.shutdown().await;
}

async fn infra_failures_do_not_spend_attempts_app_failures_do(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    client.submit(&noop_grid("classes", 1, 1, ""), None).await; // max_attempts: 2
    let worker = client.register("w").await;
    let fail = |class: &'static str| {
        let client = client.clone();
        let worker = worker.clone();
        async move {
            let lease = client.lease(&worker, 2000).await.expect("job requeued");
            let id = lease["job_id"].as_str().unwrap().to_string();
            let (s, e) = client
                .post(
                    &format!("/v1/jobs/{id}/fail"),
                    json!({"attempt": lease["attempt"], "class": class, "message": class}),
                )
                .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
            id
        }
    };
    for _ in 0..4 {
        fail("infra").await;
    }
    fail("app").await;
    let id = fail("app").await;
    let (_, job) = client.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 6);
    assert_eq!(job["spent_attempts"], 2);
    assert!(job["last_error"].as_str().unwrap().contains("attempt 6 (app)"), "{job}");
    assert!(client
        .get_text("/metrics")
        .await
        .1
        .contains(r#"spatiallock_job_retries_total{class="infra"} 4"#));
    c.shutdown().await;
}

async fn retry_failed_resumes_from_the_checkpoint(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, v) = client.submit(&noop_grid("retry", 2, 2, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    // Fail trial 0's first stage twice (after a checkpoint); run everything else.
    let mut failed_job = None;
    while let Some(lease) = client.lease(&worker, 300).await {
        let job = lease["job_id"].as_str().unwrap().to_string();
        let first_stage_of_trial0 = failed_job.as_ref().is_none_or(|f| f == &job) && lease["payload"]["stage"] == 0;
        if first_stage_of_trial0 && (failed_job.is_none() || lease["attempt"] == 2) {
            failed_job = Some(job.clone());
            client
                .post(
                    &format!("/v1/jobs/{job}/checkpoints"),
                    json!({"attempt": lease["attempt"], "step": 5, "uri": "file:///c5"}),
                )
                .await;
            client
                .post(
                    &format!("/v1/jobs/{job}/fail"),
                    json!({"attempt": lease["attempt"], "class": "app", "message": "boom"}),
                )
                .await;
        } else {
            assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
        }
    }
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["jobs"]["failed"], 2, "{exp}");
    assert_eq!(exp["jobs"]["succeeded"], 2, "{exp}");
    let (_, failed_trials) = client.get(&format!("/v1/experiments/{id}/trials?state=failed")).await;
    assert_eq!(failed_trials.as_array().unwrap().len(), 1);

    let (s, changed) = client
        .post(&format!("/v1/experiments/{id}/retry-failed"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(changed["jobs"], 2);
    let lease = client.lease(&worker, 1000).await.unwrap();
    assert_eq!(Some(lease["job_id"].as_str().unwrap().to_string()), failed_job);
    assert_eq!(lease["attempt"], 3);
    assert_eq!(lease["checkpoint"]["step"], 5);
    assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
    assert_eq!(drain(&client, &worker).await.len(), 1);
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["state"], "succeeded", "{exp}");
    c.shutdown().await;
}

async fn cancel_stops_queued_and_running_jobs(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, v) = client.submit(&noop_grid("cancel", 3, 1, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    let running = client.lease(&worker, 1000).await.unwrap();
    let job = running["job_id"].as_str().unwrap().to_string();
    let (s, changed) = client.post(&format!("/v1/experiments/{id}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(changed["jobs"], 3);
    assert!(
        client.lease(&worker, 200).await.is_none(),
        "queued jobs are cancelled at once"
    );
    let (_, hb) = client
        .post(&format!("/v1/jobs/{job}/heartbeat"), json!({"attempt": 1}))
        .await;
    assert_eq!(hb["cancel"], true, "the heartbeat tells the running job");
    let (s, _) = client
        .post(
            &format!("/v1/jobs/{job}/fail"),
            json!({"attempt": 1, "class": "infra", "message": "cancelled"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["state"], "cancelled", "{exp}");
    assert_eq!(exp["jobs"]["cancelled"], 3, "{exp}");
    c.shutdown().await;
}

async fn priorities_then_fifo(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, low) = client.submit(&noop_grid("low", 2, 1, ""), None).await;
    let high_grid = noop_grid("high", 2, 1, "").replace("max_attempts: 2", "max_attempts: 2\npriority: 5");
    let (_, high) = client.submit(&high_grid, None).await;
    let worker = client.register("w").await;
    let order = drain(&client, &worker).await;
    let exp_of = |j: &String| j.split('.').next().unwrap().to_string();
    let high_id = high["id"].as_str().unwrap();
    let low_id = low["id"].as_str().unwrap();
    assert_eq!(
        order.iter().map(exp_of).collect::<Vec<_>>(),
        [high_id, high_id, low_id, low_id]
    );
    // FIFO within a priority: trial 0's job before trial 1's.
    let (_, first) = client.get(&format!("/v1/jobs/{}", order[2])).await;
    assert_eq!(first["trials"], json!([0]));
    c.shutdown().await;
}

async fn concurrent_clients_lease_each_attempt_once(backend: Backend) {
    let d = Deployment::new(backend).await;
    let replicas = match backend {
        Backend::Postgres => vec![d.start().await, d.start().await],
        Backend::Sqlite => vec![d.start().await],
    };
    let client0 = Client::new(&replicas[0].url());
    let (_, v) = client0.submit(&noop_grid("race", 120, 1, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let client = Client::new(&replicas[k % replicas.len()].url());
        tasks.push(tokio::spawn(async move {
            let worker = client.register(&format!("w{k}")).await;
            let mut got = Vec::new();
            while let Some(lease) = client.lease(&worker, 300).await {
                got.push((
                    lease["job_id"].as_str().unwrap().to_string(),
                    lease["attempt"].as_u64().unwrap(),
                ));
                assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 120, "every job leased exactly once");
    assert_eq!(unique.len(), 120);
    assert!(all.iter().all(|(_, a)| *a == 1));
    let (_, exp) = client0.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["jobs"]["succeeded"], 120);
    for r in replicas {
        r.shutdown().await;
    }
}

async fn restart_mid_run_loses_nothing(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, v) = client.submit(&noop_grid("restart", 10, 1, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    let mut done = Vec::new();
    for _ in 0..4 {
        let lease = client.lease(&worker, 1000).await.unwrap();
        assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
        done.push(lease["job_id"].as_str().unwrap().to_string());
    }
    let held = client.lease(&worker, 1000).await.unwrap();
    c.shutdown().await;

    let c = d.start().await;
    let client = Client::new(&c.url());
    // The lease taken before the restart is still valid.
    assert_eq!(client.complete(&held).await, StatusCode::NO_CONTENT);
    done.push(held["job_id"].as_str().unwrap().to_string());
    done.extend(drain(&client, &worker).await);
    let unique: HashSet<_> = done.iter().collect();
    assert_eq!(done.len(), 10);
    assert_eq!(unique.len(), 10);
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["jobs"]["succeeded"], 10, "{exp}");
    c.shutdown().await;
}

async fn bad_input_gets_json_errors(backend: Backend) {
    let d = Deployment::new(backend).await;
    let mut config = d.config();
    config.max_body_bytes = 64 * 1024;
    config.max_trials = 50;
    let c = d.start_with(config).await;
    let client = Client::new(&c.url());
    // Invalid spec: 422 naming the path.
    let (s, e) = client.submit("name: x\nbase:\n  model: {arch: tiny, base: {pretrain: {steps: 1}}}\n  data: {train: {kind: shapes, split: train, count: 4}, val: [], resolution: 32}\n  training: {stepz: 3}\n", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["details"][0]["path"].as_str().unwrap().contains("training"), "{e}");
    let (s, e) = client.submit("name: [unclosed", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e["error"].as_str().unwrap().contains("YAML"), "{e}");
    // Grid and body size limits.
    let (s, e) = client.submit(&noop_grid("big", 51, 1, ""), None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert!(e["error"].as_str().unwrap().contains("at most 50"), "{e}");
    let (s, e) = client
        .submit(&format!("name: x\ndescription: {}\n", "a".repeat(100_000)), None)
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    // Unknown ids and routes.
    for path in [
        "/v1/experiments/exp-nope",
        "/v1/jobs/exp-nope.noop-1",
        "/v1/trials/exp-nope.0",
        "/v1/nothing",
    ] {
        let (s, e) = client.get(path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    let (s, e) = client.post("/v1/experiments/exp-nope/cancel", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let (s, e) = client.post("/v1/workers/w-nope/lease", json!({"wait_ms": 0})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let (s, e) = client
        .post("/v1/jobs/exp-nope.noop-1/heartbeat", json!({"attempt": 1}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    // Malformed bodies name the field.
    let (s, e) = client
        .post("/v1/workers/register", json!({"name": "w", "devices": "cpu"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["details"][0]["path"], "devices", "{e}");
    let (s, e) = client
        .post("/v1/workers/register", json!({"name": "w", "devices": []}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = client.get("/v1/jobs?state=sleeping").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("sleeping"), "{e}");
    let (s, e) = client.get("/v1/experiments?page_size=0").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (_, v) = client.submit(&noop_grid("ok", 1, 1, ""), None).await;
    let id = v["id"].as_str().unwrap();
    let (s, e) = client.get(&format!("/v1/experiments/{id}/report?format=pdf")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = client
        .post(&format!("/v1/experiments/{id}/priority"), json!({"priority": 5000}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = client.get("/v1/workers/register").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{e}");
    assert!(e["error"].is_string());
    let worker = client.register("w").await;
    let lease = client.lease(&worker, 1000).await.unwrap();
    let jid = lease["job_id"].as_str().unwrap();
    let (s, e) = client
        .post(
            &format!("/v1/jobs/{jid}/metrics"),
            json!({"attempt": 1, "metrics": {"loss": [{"step": 1, "value": null}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    // Nothing was partially written: one experiment, one job.
    let (_, list) = client.get("/v1/experiments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let _ = wait_for(&client, "/healthz", 1, |v| v["status"] == "ok").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_roles() {
    let d = Deployment::new(Backend::Sqlite).await;
    let mut config = d.config();
    config.tokens =
        spatiallock_coordinator::parse_tokens("admin:admin-secret,user:user-secret,worker:worker-secret").unwrap();
    let c = d.start_with(config).await;
    let anon = Client::new(&c.url());
    let user = Client::new(&c.url()).with_token("user-secret");
    let worker = Client::new(&c.url()).with_token("worker-secret");
    let admin = Client::new(&c.url()).with_token("admin-secret");
    let bad = Client::new(&c.url()).with_token("nope-nope");

    let (s, e) = anon.get("/v1/experiments").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    assert!(e["error"].as_str().unwrap().contains("Authorization"));
    assert_eq!(bad.get("/v1/experiments").await.0, StatusCode::UNAUTHORIZED);
    let (s, e) = worker.submit(&noop_grid("a", 1, 1, ""), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(
        user.post("/v1/workers/register", json!({"name": "w", "devices": ["cpu"]}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(worker.get("/v1/jobs").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        user.submit(&noop_grid("a", 1, 1, ""), None).await.0,
        StatusCode::CREATED
    );
    let w = worker.register("w").await;
    let lease = worker.lease(&w, 1000).await.unwrap();
    assert_eq!(worker.complete(&lease).await, StatusCode::NO_CONTENT);
    assert_eq!(admin.get("/v1/jobs").await.0, StatusCode::OK);
    assert_eq!(admin.register("w2").await.len(), 14);
    // Health, metrics, the workers' metrics targets, the API document and the grid schema need
    // no token.
    assert_eq!(anon.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(anon.get_text("/metrics").await.0, StatusCode::OK);
    assert_eq!(anon.get("/v1/prometheus/targets").await.0, StatusCode::OK);
    let (s, doc) = anon.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["paths"]["/v1/experiments"]["post"].is_object());
    let (s, schema) = anon.get("/v1/schema").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        schema,
        spatiallock_protocol::schema::grid_schema(),
        "the coordinator serves `spatiallock schema`'s document"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_run_every_job_still_completes() {
    let d = Deployment::new(Backend::Postgres).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, v) = client.submit(&noop_grid("flush", 30, 2, ""), None).await;
    let id = v["id"].as_str().unwrap().to_string();
    let worker = client.register("w").await;
    for _ in 0..10 {
        let lease = client.lease(&worker, 1000).await.unwrap();
        assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
    }
    let redis = redis::Client::open(common::REDIS_URL).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", d.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the ready set exists in redis");
    // Tests running beside this one lose their hints too; by design they do not notice.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let rest = drain(&client, &worker).await;
    assert_eq!(rest.len(), 50);
    let (_, exp) = client.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(exp["jobs"]["succeeded"], 60, "{exp}");
    // The reconciler has put the hints back for what is ready (nothing now), and a new
    // submission is dispatched through redis again.
    client.submit(&noop_grid("after", 2, 1, ""), None).await;
    let card: usize = redis::cmd("ZCARD")
        .arg(format!("{}:ready", d.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(card, 2);
    assert_eq!(drain(&client, &worker).await.len(), 2);
    c.shutdown().await;
}

/// A database outage: the coordinator's PostgreSQL database refuses connections and its open
/// ones are terminated. Every route that needs the database answers 503 with a JSON error naming
/// the database (never 500, never a hang); readiness says so; liveness, the metrics page and the
/// API document stay up. Then the database comes back and requests succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_on_every_route() {
    use sqlx::Executor;
    let d = Deployment::new(Backend::Postgres).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (s, v) = client.submit(&noop_grid("outage", 1, 1, ""), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let worker = client.register("w").await;
    let (_, doc) = client.get("/openapi.json").await;

    let admin = sqlx::postgres::PgPool::connect(common::PG_ADMIN_URL).await.unwrap();
    let name = &d.redis_prefix;
    admin
        .execute(format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str())
        .await
        .unwrap();

    let body_for = |method: &str, path: &str| -> Option<serde_json::Value> {
        if method != "post" {
            return None;
        }
        let attempt = json!({"attempt": 1});
        Some(match path.rsplit('/').next().unwrap_or_default() {
            "priority" => json!({"priority": 1}),
            "logs" => json!({"attempt": 1, "lines": ["x"]}),
            "fail" => json!({"attempt": 1, "class": "infra", "message": "x"}),
            "metrics" => json!({"attempt": 1, "metrics": {"loss": [{"step": 1, "value": 0.5}]}}),
            "checkpoints" => json!({"attempt": 1, "step": 1, "uri": "file:///x"}),
            "register" => json!({"name": "w2", "devices": ["cpu"]}),
            "lease" => json!({"wait_ms": 0}),
            "heartbeat" | "complete" => attempt,
            _ => json!({}),
        })
    };
    let up_without_database = ["/healthz", "/metrics", "/openapi.json", "/v1/schema"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if up_without_database.contains(&path.as_str()) {
            continue;
        }
        let concrete = path.replace("{id}", if path.starts_with("/v1/workers/") { &worker } else { "x" });
        for method in item.as_object().expect("methods").keys() {
            let (status, body) = if path == "/v1/experiments" && method == "post" {
                client.submit(&noop_grid("during", 1, 1, ""), None).await
            } else {
                match body_for(method, path) {
                    Some(b) => client.post(&concrete, b).await,
                    None => client.get(&concrete).await,
                }
            };
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}: {body}");
            let text = body.to_string();
            assert!(
                text.contains("database") || text.contains("unreachable"),
                "{method} {path}: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "every database route was tried ({checked})");
    for path in up_without_database {
        let (status, body) = client.get_text(path).await;
        assert_eq!(status, StatusCode::OK, "{path} stays up: {body}");
    }

    admin
        .execute(format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    let (s, v) = client.get("/v1/experiments").await;
    assert_eq!(s, StatusCode::OK, "the database is back: {v}");
    admin.close().await;
    c.shutdown().await;
}

/// `/openapi.json` is generated from the same registrations as the router: every operation it
/// lists is served (never the "no route" 404 or a 405), every POST with a body documents its
/// schema, every `$ref` resolves, and each (path, method) appears once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let d = Deployment::new(Backend::Sqlite).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (s, doc) = client.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true),
        "{}",
        doc["openapi"]
    );
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap_or_default();
        assert!(schemas.contains_key(name), "$ref to a missing schema {name}");
    }
    let mut operations = HashSet::new();
    let needs_body = [
        "priority",
        "logs",
        "heartbeat",
        "complete",
        "fail",
        "metrics",
        "checkpoints",
        "register",
        "lease",
    ];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("methods") {
            assert!(
                operations.insert((path.clone(), method.clone())),
                "{method} {path} twice"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: responses"
            );
            let last = path.rsplit('/').next().unwrap_or_default();
            if method == "post" && needs_body.contains(&last) && path != "/v1/workers/{id}/heartbeat" {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(!schema.is_null(), "{method} {path}: request schema");
            }
            let concrete = path.replace("{id}", "x");
            let (status, body) = if method == "post" {
                client.post(&concrete, json!({})).await
            } else {
                client.get(&concrete).await
            };
            let no_route =
                status == StatusCode::NOT_FOUND && body["error"].as_str().is_some_and(|e| e.contains("no route"));
            assert!(
                !no_route && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is not served: {status} {body}"
            );
        }
    }
    assert!(operations.len() >= 28, "{} operations", operations.len());
    c.shutdown().await;
}

/// The database itself refuses a job state outside `JobState` (a CHECK on PostgreSQL, triggers
/// on SQLite), so no code path can store one.
async fn job_states_outside_the_enum_are_refused_by_the_database(backend: Backend) {
    let d = Deployment::new(backend).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (s, v) = client.submit(&noop_grid("states", 1, 1, ""), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&d.database_url).await.unwrap();
    let bad = sqlx::query("UPDATE jobs SET state = 'paused'").execute(&pool).await;
    assert!(bad.is_err(), "the database took an unknown state");
    let good = sqlx::query("UPDATE jobs SET state = 'cancelled'").execute(&pool).await;
    assert!(good.is_ok(), "{good:?}");
    pool.close().await;
    c.shutdown().await;
}

/// A tiny trial whose training job needs two ranks.
const GANG_GRID: &str = "name: gang\nbase:\n  model: {arch: tiny, base: {pretrain: {steps: 1}}}\n  data: {train: {kind: shapes, split: train, count: 4}, val: [{kind: shapes, split: val, count: 2}], resolution: 32}\n  training: {steps: 2, batch_size: 2}\n  world_size: 2\n";

async fn gang_lease(client: &Client, worker: &str, port: u16) -> Option<serde_json::Value> {
    let (s, v) = client
        .post(
            &format!("/v1/workers/{worker}/lease"),
            json!({"wait_ms": 100, "devices": 1, "gang": {"address": "127.0.0.1", "port": port}}),
        )
        .await;
    match s {
        StatusCode::OK => Some(v),
        StatusCode::NO_CONTENT => None,
        other => panic!("lease answered {other}: {v}"),
    }
}

async fn train_job_view(client: &Client) -> serde_json::Value {
    let (_, jobs) = client.get("/v1/jobs?kind=train").await;
    jobs["items"][0].clone()
}

async fn gang_reservations_time_out_release_back_off_and_start_all_or_nothing(backend: Backend) {
    let d = Deployment::new(backend).await;
    let mut config = d.config();
    config.gang_reservation = Duration::from_millis(2000);
    config.gang_backoff = Duration::from_millis(1000);
    config.lease_ttl = Duration::from_secs(2);
    let c = d.start_with(config).await;
    let client = Client::new(&c.url());
    client.submit(GANG_GRID, None).await;
    let (w1, w2) = (client.register("w1").await, client.register("w2").await);
    // Everything but the two-rank job runs on one device.
    let done = drain(&client, &w1).await;
    assert!(!done.is_empty());
    let job = train_job_view(&client).await;
    assert_eq!(job["state"], "queued", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // w1 reserves one of the two ranks; the job says so.
    assert!(gang_lease(&client, &w1, 40001).await.is_none());
    let waiting = train_job_view(&client).await["waiting"].clone();
    assert_eq!(
        waiting, "gang forming: 1 of 2 ranks reserved by 1 worker(s)",
        "{waiting}"
    );
    // Nobody joins within the reservation: w1 releases it and backs off from this job.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(gang_lease(&client, &w1, 40001).await.is_none());
    let waiting = train_job_view(&client).await["waiting"].clone();
    assert!(waiting.as_str().unwrap().contains("waiting for workers"), "{waiting}");
    // w2 reserves; w1, backing off, does not complete the gang yet.
    assert!(gang_lease(&client, &w2, 40002).await.is_none());
    assert!(gang_lease(&client, &w1, 40001).await.is_none());
    assert_eq!(train_job_view(&client).await["state"], "queued");
    // After the back-off (w2's reservation still holds), w1 joins: the gang starts, all ranks
    // at once, w2 (first to reserve) holding rank 0 and the rendezvous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let l1 = gang_lease(&client, &w1, 40001).await.expect("the gang starts");
    let l2 = gang_lease(&client, &w2, 40002).await.expect("w2 picks up its part");
    assert_eq!(l1["job_id"], id.as_str());
    assert_eq!(l1["attempt"], l2["attempt"]);
    let (g1, g2) = (&l1["gang"], &l2["gang"]);
    assert_eq!(
        (g2["first_rank"].as_u64(), g1["first_rank"].as_u64()),
        (Some(0), Some(1))
    );
    for g in [g1, g2] {
        assert_eq!(g["world_size"], 2);
        assert_eq!(g["members"], 2);
        assert_eq!(g["master_addr"], "127.0.0.1");
        assert_eq!(g["master_port"], 40002);
    }
    let attempt = l1["attempt"].as_u64().unwrap();
    // Only w1 heartbeats: w2's membership lapses and the whole attempt is lost and requeued.
    let path = format!("/v1/jobs/{id}/heartbeat");
    let mut lost = false;
    for _ in 0..40 {
        let (s, _) = client.post(&path, json!({"attempt": attempt, "worker": w1})).await;
        if s == StatusCode::CONFLICT {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(lost, "a gang member's lapsed lease must end the attempt");
    let view = train_job_view(&client).await;
    assert_eq!(view["state"], "queued", "{view}");
    let text = client.get_text("/metrics").await.1;
    assert!(text.contains("spatiallock_gang_rendezvous_seconds_count 1"), "{text}");
    c.shutdown().await;
}

/// Prometheus HTTP service discovery: `GET /v1/prometheus/targets` lists exactly the live workers
/// that registered a metrics address (a worker without one, as older workers register, is
/// valid and not listed), labelled with their name and devices; a worker not heard from within
/// the lease TTL drops out until it is heard from again.
async fn prometheus_targets_list_the_live_workers_with_a_metrics_address(backend: Backend) {
    let d = Deployment::new(backend).await;
    let mut config = d.config();
    config.lease_ttl = Duration::from_secs(3);
    let c = d.start_with(config).await;
    let client = Client::new(&c.url());
    let (s, none) = client.get("/v1/prometheus/targets").await;
    assert_eq!(s, StatusCode::OK, "{none}");
    assert_eq!(none, json!([]), "no workers, no targets");

    let (s, v) = client
        .post(
            "/v1/workers/register",
            json!({"name": "gpu-node", "devices": ["cuda:0", "cuda:1"], "metrics_address": "10.0.0.7:9101"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let advertised = v["worker_id"].as_str().unwrap().to_string();
    let silent = client.register("cpu-node").await; // no metrics_address, as older workers
    let (s, e) = client
        .post(
            "/v1/workers/register",
            json!({"name": "bad", "devices": ["cpu"], "metrics_address": "http://10.0.0.7:9101/metrics"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["details"][0]["path"], "metrics_address", "{e}");

    let response = reqwest::get(format!("{}/v1/prometheus/targets", c.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/json");
    let groups: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        groups,
        json!([{"targets": ["10.0.0.7:9101"], "labels": {"worker": "gpu-node", "devices": "cuda:0,cuda:1"}}])
    );

    // Past the lease TTL without a word from either worker: nothing is listed.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let (_, stale) = client.get("/v1/prometheus/targets").await;
    assert_eq!(stale, json!([]), "workers past the lease TTL are not live");
    // Heard from again: listed again (and the worker without an address still is not).
    for worker in [&advertised, &silent] {
        let (s, e) = client.post(&format!("/v1/workers/{worker}/heartbeat"), json!({})).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
    }
    let (_, back) = client.get("/v1/prometheus/targets").await;
    assert_eq!(back.as_array().map(Vec::len), Some(1), "{back}");
    assert_eq!(back[0]["labels"]["worker"], "gpu-node", "{back}");

    // The API document describes the route (no security: no token) and the address's form.
    let (_, doc) = client.get("/openapi.json").await;
    let op = &doc["paths"]["/v1/prometheus/targets"]["get"];
    assert!(op.is_object(), "{}", doc["paths"]);
    assert!(op.get("security").is_none(), "{op}");
    assert_eq!(
        doc["components"]["schemas"]["RegisterWorker"]["properties"]["metrics_address"]["pattern"],
        spatiallock_protocol::api::HOST_PORT_PATTERN,
        "{}",
        doc["components"]["schemas"]["RegisterWorker"]
    );
    c.shutdown().await;
}
