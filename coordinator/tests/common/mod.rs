//! Service-test harness: a fresh PostgreSQL database (or SQLite file) per test, a Redis key
//! prefix per test, coordinators started in-process on free ports, and a small HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use spatiallock_coordinator::{start, Config, Running};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL + Redis.
    Postgres,
    /// SQLite + in-process dispatch.
    Sqlite,
}

/// A test's database (and Redis prefix); the SQLite file lives in `_dir`.
pub struct Deployment {
    pub backend: Backend,
    pub database_url: String,
    pub redis_prefix: String,
    _dir: tempfile::TempDir,
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Deployment {
    pub async fn new(backend: Backend) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let name = unique("sl_test");
        let database_url = match backend {
            Backend::Postgres => spatiallock_coordinator::store::create_postgres_database(PG_ADMIN_URL, &name)
                .await
                .expect("PostgreSQL at 127.0.0.1:5432 (start it with scripts/services.sh)"),
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("coordinator.db").display()),
        };
        Deployment {
            backend,
            database_url,
            redis_prefix: name,
            _dir: dir,
        }
    }

    pub fn config(&self) -> Config {
        let redis = (self.backend == Backend::Postgres).then(|| REDIS_URL.to_string());
        let mut c = Config::new(self.database_url.clone(), redis, SocketAddr::from(([127, 0, 0, 1], 0)));
        c.redis_prefix = self.redis_prefix.clone();
        c.lease_ttl = Duration::from_secs(30);
        c.reaper_interval = Duration::from_millis(100);
        c.reconcile_interval = Duration::from_millis(200);
        c.retry_backoff = Duration::ZERO;
        c
    }

    pub async fn start(&self) -> Running {
        self.start_with(self.config()).await
    }

    pub async fn start_with(&self, config: Config) -> Running {
        start(config).await.expect("coordinator starts")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if self.backend == Backend::Postgres {
            // Leave no test databases behind on the shared server.
            let name = self.redis_prefix.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _ = rt.block_on(spatiallock_coordinator::store::drop_postgres_database(
                    PG_ADMIN_URL,
                    &name,
                ));
            })
            .join();
        }
    }
}

/// A minimal HTTP client for the API.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    /// The key of the worker this client registered last, sent with every request.
    pub worker_key: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_string(),
            token: None,
            worker_key: Default::default(),
            http: reqwest::Client::new(),
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_string());
        self
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = self.worker_key.lock().unwrap().as_ref() {
            r = r.header("spatiallock-worker-key", key);
        }
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        decode(r).await
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::POST, path).json(&body).send().await.unwrap();
        decode(r).await
    }

    pub async fn submit(&self, yaml: &str, key: Option<&str>) -> (StatusCode, Value) {
        let mut r = self
            .req(reqwest::Method::POST, "/v1/experiments")
            .header("content-type", "application/yaml")
            .body(yaml.to_string());
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        decode(r.send().await.unwrap()).await
    }

    pub async fn post_yaml_query(&self, path_and_query: &str, yaml: &str) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, path_and_query)
            .header("content-type", "application/yaml")
            .body(yaml.to_string());
        decode(r.send().await.unwrap()).await
    }

    /// Registers a worker and returns its id.
    pub async fn register(&self, name: &str) -> String {
        let (s, v) = self
            .post("/v1/workers/register", json!({"name": name, "devices": ["cpu"]}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        *self.worker_key.lock().unwrap() = v["worker_key"].as_str().map(str::to_string);
        v["worker_id"].as_str().unwrap().to_string()
    }

    /// Leases a job (waiting up to `wait_ms`); `None` on 204.
    pub async fn lease(&self, worker: &str, wait_ms: u64) -> Option<Value> {
        let (s, v) = self
            .post(&format!("/v1/workers/{worker}/lease"), json!({"wait_ms": wait_ms}))
            .await;
        match s {
            StatusCode::OK => Some(v),
            StatusCode::NO_CONTENT => None,
            other => panic!("lease answered {other}: {v}"),
        }
    }

    pub async fn complete(&self, lease: &Value) -> StatusCode {
        let id = lease["job_id"].as_str().unwrap();
        let (s, _) = self
            .post(&format!("/v1/jobs/{id}/complete"), json!({"attempt": lease["attempt"]}))
            .await;
        s
    }
}

async fn decode(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// A grid of `n` noop trials, each a chain of `stages` jobs.
pub fn noop_grid(name: &str, n: usize, stages: u32, extra_noop: &str) -> String {
    format!(
        "name: {name}\nmax_attempts: 2\nlimits: {{max_trials: 100000}}\nseeds: {n}\nbase:\n  model: {{arch: tiny, base: {{pretrain: {{steps: 1}}}}}}\n  data: {{train: {{kind: shapes, split: train, count: 4}}, val: [{{kind: shapes, split: val, count: 2}}], resolution: 32}}\n  noop: {{sleep_ms: 0, stages: {stages}{extra_noop}}}\n"
    )
}

/// Leases and completes jobs until none is left; returns the job ids in lease order.
pub async fn drain(client: &Client, worker: &str) -> Vec<String> {
    let mut order = Vec::new();
    while let Some(lease) = client.lease(worker, 300).await {
        order.push(lease["job_id"].as_str().unwrap().to_string());
        assert_eq!(client.complete(&lease).await, StatusCode::NO_CONTENT);
    }
    order
}

/// Polls `GET path` until `done(value)`, failing after `secs`.
pub async fn wait_for(client: &Client, path: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, v) = client.get(path).await;
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting on {path}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
