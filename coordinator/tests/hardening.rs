//! What a hostile caller or a failing dependency must not be able to do to the coordinator:
//! cause unbounded parsing work, get a 5xx from values the database cannot hold, be heard
//! before it is authenticated, act as another worker, or leave the coordinator cut off from a
//! Redis that restarted.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{noop_grid, Backend, Client, Deployment};
use reqwest::StatusCode;
use serde_json::json;

const TOKENS: &str = "admin:admin-secret,user:user-secret,worker:worker-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_documents_are_refused_by_the_parse_budget() {
    let d = Deployment::new(Backend::Sqlite).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    // 200 KB, one flow sequence 100 000 deep: serde_yaml took 18 s on this; the budget stops
    // it at 64 levels.
    let depth = 100_000;
    let bomb = format!("name: x\nbase: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let (a, b) = tokio::join!(client.submit(&bomb, None), client.submit(&bomb, None));
    for (s, e) in [a, b] {
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(e["error"].as_str().unwrap().contains("invalid YAML"), "{e}");
    }
    let json_bomb = format!(
        "{{\"name\": \"x\", \"base\": {}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/experiments", c.url()))
        .header("content-type", "application/json")
        .body(json_bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(client.get("/healthz").await.0, StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_database_cannot_hold_are_refused_naming_the_field() {
    // PostgreSQL is the store that refuses NUL; SQLite must answer the same.
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let d = Deployment::new(backend).await;
        let c = d.start().await;
        let client = Client::new(&c.url());
        let (s, e) = client
            .post("/v1/workers/register", json!({"name": "a\u{0}b", "devices": ["cpu"]}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}: {e}");
        assert_eq!(e["details"][0]["path"], "name", "{e}");
        let (s, e) = client.submit("name: \"a\\0b\"\nbase: {}\n", None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}: {e}");
        assert_eq!(e["details"][0]["path"], "name", "{e}");
        let (s, e) = client.get("/v1/jobs/a%00b").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{backend:?}: {e}");
        assert!(e["error"].as_str().unwrap().contains("NUL"), "{e}");

        client.submit(&noop_grid("ints", 1, 1, ""), None).await;
        let worker = client.register("w").await;
        let lease = client.lease(&worker, 1000).await.unwrap();
        let job = lease["job_id"].as_str().unwrap();
        let huge = json!({"attempt": 1, "metrics": {"loss": [{"step": u64::MAX, "value": 1.0}]}});
        let (s, e) = client.post(&format!("/v1/jobs/{job}/metrics"), huge).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}: {e}");
        assert_eq!(e["details"][0]["path"], "metrics.loss[0].step", "{e}");
        let big_attempt = json!({"attempt": u64::MAX});
        let (s, e) = client.post(&format!("/v1/jobs/{job}/complete"), big_attempt).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{backend:?}: {e}");
        // Nothing was stored wrapped: the job still completes with its real attempt.
        assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
        let (_, series) = client.get(&format!("/v1/jobs/{job}/metrics")).await;
        assert!(series.get("loss").is_none(), "{series}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_comes_first_and_every_error_is_json() {
    let d = Deployment::new(Backend::Sqlite).await;
    let mut config = d.config();
    config.tokens = spatiallock_coordinator::parse_tokens(TOKENS).unwrap();
    let c = d.start_with(config).await;
    let http = reqwest::Client::new();
    // No token and a malformed body: 401, not the parser's opinion of the body.
    for path in ["/v1/workers/register", "/v1/workers/w-x/lease", "/v1/jobs/j/complete"] {
        let r = http
            .post(format!("{}{path}", c.url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The scheme is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = http
            .get(format!("{}/v1/experiments", c.url()))
            .header("authorization", format!("{scheme} user-secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    // Query-string and path errors are JSON naming the parameter, like every other error.
    let user = Client::new(&c.url()).with_token("user-secret");
    let (s, e) = user.get("/v1/experiments?page_size=ten").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("page_size"), "{e}");
    let (s, e) = user.get("/v1/jobs/x/metrics?max_points=-1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("max_points"), "{e}");
    let (s, e) = user
        .post("/v1/experiments/x/retry-failed?include_cancelled=maybe", json!({}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].is_string(), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_is_bound_to_the_worker_that_leased_it() {
    let d = Deployment::new(Backend::Sqlite).await;
    let mut config = d.config();
    config.tokens = spatiallock_coordinator::parse_tokens(TOKENS).unwrap();
    let c = d.start_with(config).await;
    let user = Client::new(&c.url()).with_token("user-secret");
    user.submit(&noop_grid("bound", 2, 1, ""), None).await;
    // Two workers with the same worker token: each has its own key.
    let one = Client::new(&c.url()).with_token("worker-secret");
    let two = Client::new(&c.url()).with_token("worker-secret");
    let w1 = one.register("one").await;
    let w2 = two.register("two").await;
    let lease = one.lease(&w1, 1000).await.unwrap();
    let job = lease["job_id"].as_str().unwrap();
    // The other worker can neither report on that attempt nor lease or heartbeat as `one`.
    let (s, e) = two
        .post(
            &format!("/v1/jobs/{job}/complete"),
            json!({"attempt": lease["attempt"]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(e["error"].as_str().unwrap().contains(&w1), "{e}");
    let (s, e) = two
        .post(
            &format!("/v1/jobs/{job}/heartbeat"),
            json!({"attempt": lease["attempt"]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let (s, e) = two
        .post(&format!("/v1/workers/{w1}/lease"), json!({"wait_ms": 0}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let (s, _) = two.post(&format!("/v1/workers/{w1}/heartbeat"), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Without a key a worker call is not authenticated.
    let keyless = Client::new(&c.url()).with_token("worker-secret");
    let (s, e) = keyless
        .post(&format!("/v1/workers/{w2}/lease"), json!({"wait_ms": 0}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    assert!(e["error"].as_str().unwrap().contains("spatiallock-worker-key"), "{e}");
    // An attempt that does not exist yet cannot be written ahead of its lease: 409.
    let (s, e) = two
        .post(&format!("/v1/jobs/{job}/complete"), json!({"attempt": 2}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    // The worker that leased it reports; the other leases and completes its own job.
    assert_eq!(one.complete(&lease).await, StatusCode::NO_CONTENT);
    // A finished attempt is stale for everyone (409, the fencing), not a question of who asks.
    let (s, e) = two
        .post(
            &format!("/v1/jobs/{job}/complete"),
            json!({"attempt": lease["attempt"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = one
        .post(
            &format!("/v1/jobs/{job}/fail"),
            json!({"attempt": lease["attempt"], "class": "app", "message": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let other = two.lease(&w2, 1000).await.unwrap();
    assert_eq!(two.complete(&other).await, StatusCode::NO_CONTENT);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_on_an_address_other_machines_reach_is_refused() {
    let d = Deployment::new(Backend::Sqlite).await;
    let mut config = d.config();
    config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let e = spatiallock_coordinator::start(config.clone()).await.err().unwrap();
    assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
    config.allow_unauthenticated = true;
    spatiallock_coordinator::start(config).await.unwrap().shutdown().await;
}

/// A private Redis on `port`, so that restarting it disturbs no other test.
fn redis_server(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/services.sh installs it)")
}

async fn readiness(http: &reqwest::Client, url: &str) -> StatusCode {
    http.get(format!("{url}/readyz")).send().await.unwrap().status()
}

async fn wait_readiness(http: &reqwest::Client, url: &str, want: StatusCode, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while readiness(http, url).await != want {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {want} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_recovered_without_restarting_the_coordinator() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let mut redis = redis_server(port);
    let probe = redis::Client::open(redis_url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.get_multiplexed_async_connection().await.is_err() {
        assert!(Instant::now() < deadline, "private redis-server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = Deployment::new(Backend::Postgres).await;
    let mut config = d.config();
    config.redis_url = Some(redis_url.clone());
    let c = d.start_with(config).await;
    let http = reqwest::Client::new();
    assert_eq!(readiness(&http, &c.url()).await, StatusCode::OK);

    redis.kill().unwrap();
    redis.wait().unwrap();
    wait_readiness(&http, &c.url(), StatusCode::SERVICE_UNAVAILABLE, 20).await;
    let mut redis = redis_server(port);
    wait_readiness(&http, &c.url(), StatusCode::OK, 30).await;

    // Dispatch goes through the new Redis: a submission lands in its ready set.
    let client = Client::new(&c.url());
    let (s, v) = client.submit(&noop_grid("after-restart", 3, 1, ""), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut conn = probe.get_multiplexed_async_connection().await.unwrap();
    let card: usize = redis::cmd("ZCARD")
        .arg(format!("{}:ready", d.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(card, 3, "the restarted Redis holds the new ready jobs");
    let worker = client.register("w").await;
    assert_eq!(common::drain(&client, &worker).await.len(), 3);
    c.shutdown().await;
    redis.kill().unwrap();
    let _ = redis.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_list_shows_this_replicas_writes_at_once_and_the_rest_within_its_ttl() {
    let d = Deployment::new(Backend::Sqlite).await;
    let c = d.start().await;
    let client = Client::new(&c.url());
    let (_, empty) = client.get("/v1/experiments").await;
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
    let (_, v) = client.submit(&noop_grid("cached", 1, 1, ""), None).await;
    let (_, list) = client.get("/v1/experiments").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "a submission clears the cache: {list}"
    );
    let worker = client.register("w").await;
    let lease = client.lease(&worker, 1000).await.unwrap();
    assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
    // A worker's report does not clear it: the counts follow within the TTL (1 s).
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = client.get("/v1/experiments").await;
        if list["items"][0]["state"] == "succeeded" {
            assert_eq!(list["items"][0]["id"], id.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the list never showed the finished job: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}
