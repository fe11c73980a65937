//! An HTTP client for the coordinator's API, used by workers and by the CLI.
//!
//! Each call is one request. A worker's writes for an attempt (complete, fail, metrics,
//! checkpoint commits, logs) go through [`CoordinatorClient::retrying`], which retries a call
//! while the coordinator is briefly away (restart, overload) until the attempt's lease would
//! run out; the coordinator fences every write by attempt, so a retried write cannot land on a
//! later attempt.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spatiallock_protocol::api::{
    AttemptRef, Changed, CheckpointCommit, CompleteRequest, ErrorBody, ExperimentView, FailRequest, GangOffer,
    HeartbeatAnswer, JobView, Lease, LeaseRequest, LogBatch, LogTail, MetricSeries, MetricsBatch, Page, RegisterWorker,
    SubmitResponse, TrialLogs, TrialMetrics, TrialView, WorkerRegistered,
};

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached, or the answer was not understood.
    #[error("{}", transport_message(.base, .source))]
    Transport {
        /// Base URL.
        base: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The coordinator answered with an error.
    #[error("{}", api_message(.status, .message))]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

/// A transport error's message: when nothing answered at `base`, whether a coordinator runs
/// there and how to name another (the cause follows in the error's source).
fn transport_message(base: &str, source: &reqwest::Error) -> String {
    if source.is_connect() {
        format!(
            "could not reach the coordinator at {base} (is it running? start one with `spatiallock \
             coordinator`, or pass --coordinator or set SPATIALLOCK_COORDINATOR)"
        )
    } else {
        format!("coordinator at {base}: {source}")
    }
}

/// An error answer's message; a refused token (401, 403) says how to give another. The
/// worker-key answers (401/403 about the `spatiallock-worker-key` header) are about the worker's
/// registration, not its token, and stay as they are.
fn api_message(status: &StatusCode, message: &str) -> String {
    let about_worker_key = message.contains("spatiallock-worker-key") || message.contains("worker keys");
    match *status {
        StatusCode::UNAUTHORIZED if message.starts_with("missing `Authorization") => {
            format!("{status}: no token given: pass one with --token or set SPATIALLOCK_TOKEN")
        }
        StatusCode::UNAUTHORIZED if !about_worker_key => {
            format!("{status}: {message}: pass a valid token with --token or set SPATIALLOCK_TOKEN")
        }
        StatusCode::FORBIDDEN if !about_worker_key => {
            format!("{status}: {message}: pass a token with that role with --token or set SPATIALLOCK_TOKEN")
        }
        _ => format!("{status}: {message}"),
    }
}

impl ClientError {
    /// Whether the coordinator said the attempt is no longer current (409).
    pub fn is_stale(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::CONFLICT)
    }

    /// Whether the same request may succeed later: the coordinator could not be reached or its
    /// answer was cut off, or it answered 5xx or 429 (too many requests). Every other answer
    /// (4xx, the 409 of a stale attempt included) is final.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Pauses between retries of a write: `initial`, doubling up to `max`, each with jitter (a
/// pause is drawn from [½·p, p) of its nominal value `p`, so workers that lost the coordinator
/// together do not come back in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first nominal pause.
    pub initial: Duration,
    /// The longest nominal pause.
    pub max: Duration,
}

impl Default for Backoff {
    /// 200 ms doubling to 5 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// `nominal` scaled by a random factor in [0.5, 1).
fn jitter(nominal: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let thousandths = (h.finish() % 1000) as u32;
    nominal / 2 + nominal * thousandths / 2000
}

impl Backoff {
    /// Runs `op` until it succeeds, fails for good ([`ClientError::is_transient`] is false),
    /// or `deadline` has passed; `op` runs at least once, and a pause never ends past the
    /// deadline (so the last try is at the deadline at the latest). Each retry is logged at
    /// warn with `what`, the error and the time left.
    ///
    /// Errors: the final error, or the last transient one when the deadline has passed.
    pub async fn retry_until<T, F, Fut>(&self, deadline: Instant, what: &str, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut nominal = self.initial;
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(what = %what, tries, error = %e, "giving up: the deadline has passed");
                return Err(e);
            }
            let pause = jitter(nominal).min(left);
            tracing::warn!(
                what = %what,
                tries,
                error = %e,
                remaining_ms = left.as_millis() as u64,
                pause_ms = pause.as_millis() as u64,
                "coordinator write failed; retrying"
            );
            tokio::time::sleep(pause).await;
            nominal = (nominal * 2).min(self.max);
        }
    }
}

/// `text` percent-encoded for one path segment or query value: ids and names typed by users
/// reach the route they name, whatever characters they hold.
fn segment(text: &str) -> String {
    const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, KEPT).to_string()
}

/// How long one write may take before it counts as a transport error (and is retried).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A coordinator client.
#[derive(Clone)]
pub struct CoordinatorClient {
    base: String,
    token: Option<String>,
    /// This worker's key from registration, sent as `Spatiallock-Worker-Key`.
    worker_key: Option<String>,
    http: reqwest::Client,
    backoff: Backoff,
}

impl CoordinatorClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> CoordinatorClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        CoordinatorClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            worker_key: None,
            http,
            backoff: Backoff::default(),
        }
    }

    /// The same client, proving in every request that it is the worker that registered with
    /// `key` (the `worker_key` of [`WorkerRegistered`]; the coordinator binds each attempt to
    /// the worker that leased it).
    pub fn with_worker_key(mut self, key: &str) -> CoordinatorClient {
        self.worker_key = (!key.is_empty()).then(|| key.to_string());
        self
    }

    /// The same client with other pauses between retries of [`CoordinatorClient::retrying`].
    pub fn with_backoff(mut self, backoff: Backoff) -> CoordinatorClient {
        self.backoff = backoff;
        self
    }

    /// Runs one of this client's calls (`op`) with this client's [`Backoff`] until it
    /// succeeds, fails for good, or `deadline` (when the attempt's lease would run out) has
    /// passed: see [`Backoff::retry_until`]. `what` names the call in the logs.
    ///
    /// Errors: the final error, or the last transient one at the deadline.
    pub async fn retrying<T, F, Fut>(&self, deadline: Instant, what: &str, op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.backoff.retry_until(deadline, what, op).await
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.worker_key {
            r = r.header("spatiallock-worker-key", key);
        }
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `r`; the answer's status and body, or the coordinator's error (its JSON `error`, or
    /// the body as text).
    async fn send_bytes(&self, r: RequestBuilder) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let transport = |source| ClientError::Transport {
            base: self.base.clone(),
            source,
        };
        let response = r.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        if status.is_client_error() || status.is_server_error() {
            let text = String::from_utf8_lossy(&body).into_owned();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            return Err(ClientError::Api { status, message });
        }
        Ok((status, body))
    }

    async fn send(&self, r: RequestBuilder) -> Result<(StatusCode, String), ClientError> {
        let (status, body) = self.send_bytes(r).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn json<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<T, ClientError> {
        let (status, text) = self.send(r).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Api {
            status,
            message: format!("unexpected answer ({e}): {text}"),
        })
    }

    async fn post_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let r = self.request(Method::POST, path).timeout(WRITE_TIMEOUT).json(body);
        self.send(r).await.map(|_| ())
    }

    /// Registers this worker.
    pub async fn register(&self, body: &RegisterWorker) -> Result<WorkerRegistered, ClientError> {
        self.json(self.request(Method::POST, "/v1/workers/register").json(body))
            .await
    }

    /// Worker liveness.
    pub async fn worker_heartbeat(&self, worker: &str) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/workers/{worker}/heartbeat"), &serde_json::json!({}))
            .await
    }

    /// Long-polls for a job.
    pub async fn lease(
        &self,
        worker: &str,
        wait: Duration,
        devices: u32,
        gang: Option<GangOffer>,
    ) -> Result<Option<Lease>, ClientError> {
        let body = LeaseRequest {
            wait_ms: wait.as_millis() as u64,
            devices,
            gang,
        };
        let r = self
            .request(Method::POST, &format!("/v1/workers/{worker}/lease"))
            .timeout(wait + Duration::from_secs(30))
            .json(&body);
        let (status, text) = self.send(r).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_str(&text).map(Some).map_err(|e| ClientError::Api {
            status,
            message: format!("unexpected lease ({e}): {text}"),
        })
    }

    /// Extends a job's lease.
    /// Extends the lease of `attempt` of `job`; a gang member names itself (`worker`) to keep
    /// its own membership alive.
    pub async fn job_heartbeat(
        &self,
        job: &str,
        attempt: u64,
        worker: Option<&str>,
    ) -> Result<HeartbeatAnswer, ClientError> {
        let r = self
            .request(Method::POST, &format!("/v1/jobs/{job}/heartbeat"))
            .timeout(Duration::from_secs(10))
            .json(&AttemptRef {
                attempt,
                worker: worker.map(str::to_string),
            });
        self.json(r).await
    }

    /// Reports success (one request; a worker wraps it in [`CoordinatorClient::retrying`]).
    pub async fn complete(&self, job: &str, body: &CompleteRequest) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/jobs/{job}/complete"), body).await
    }

    /// Reports failure.
    pub async fn fail(&self, job: &str, body: &FailRequest) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/jobs/{job}/fail"), body).await
    }

    /// Sends metric points.
    pub async fn metrics(&self, job: &str, body: &MetricsBatch) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/jobs/{job}/metrics"), body).await
    }

    /// Commits a checkpoint.
    pub async fn checkpoint(&self, job: &str, body: &CheckpointCommit) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/jobs/{job}/checkpoints"), body).await
    }

    /// Appends log lines.
    pub async fn logs(&self, job: &str, body: &LogBatch) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/jobs/{job}/logs"), body).await
    }

    /// Submits a grid (YAML or JSON text).
    pub async fn submit(&self, text: &str, json: bool, key: Option<&str>) -> Result<SubmitResponse, ClientError> {
        let content_type = if json { "application/json" } else { "application/yaml" };
        let mut r = self
            .request(Method::POST, "/v1/experiments")
            .header("content-type", content_type)
            .body(text.to_string());
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        self.json(r).await
    }

    /// One experiment.
    pub async fn experiment(&self, id: &str) -> Result<ExperimentView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/experiments/{}", segment(id))))
            .await
    }

    /// Experiments, newest first.
    pub async fn experiments(&self) -> Result<Page<ExperimentView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/experiments?page_size=50"))
            .await
    }

    /// Every experiment whose name contains `name` (the coordinator's `?name=` filter), over
    /// all pages.
    pub async fn experiments_named(&self, name: &str) -> Result<Vec<ExperimentView>, ClientError> {
        let mut items = Vec::new();
        let mut page_token = String::new();
        loop {
            let path = format!(
                "/v1/experiments?name={}&page_size=1000&page_token={}",
                segment(name),
                segment(&page_token)
            );
            let page: Page<ExperimentView> = self.json(self.request(Method::GET, &path)).await?;
            items.extend(page.items);
            match page.next_page_token {
                Some(t) => page_token = t,
                None => return Ok(items),
            }
        }
    }

    /// Every job of an experiment.
    pub async fn jobs(&self, experiment: &str) -> Result<Vec<JobView>, ClientError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page: Page<JobView> = self
                .json(self.request(
                    Method::GET,
                    &format!(
                        "/v1/jobs?experiment={}&page_size=1000&page_token={token}",
                        segment(experiment)
                    ),
                ))
                .await?;
            out.extend(page.items);
            match page.next_page_token {
                Some(t) => token = t,
                None => return Ok(out),
            }
        }
    }

    /// One job with its payload and attempts.
    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{}", segment(id))))
            .await
    }

    /// Trials of an experiment.
    pub async fn trials(&self, experiment: &str) -> Result<Vec<TrialView>, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/experiments/{}/trials", segment(experiment))))
            .await
    }

    /// One trial with its full configuration (`config`) and last checkpoint.
    ///
    /// Errors: [`ClientError::Api`] (404 for an unknown trial); [`ClientError::Transport`].
    pub async fn trial(&self, id: &str) -> Result<TrialView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/trials/{}", segment(id))))
            .await
    }

    /// The report as text (`md`, `csv` or `json`).
    pub async fn report(&self, experiment: &str, format: &str) -> Result<String, ClientError> {
        let r = self.request(
            Method::GET,
            &format!(
                "/v1/experiments/{}/report?format={}",
                segment(experiment),
                segment(format)
            ),
        );
        self.send(r).await.map(|(_, t)| t)
    }

    /// A file at the top of a finished job's output folder, as the coordinator serves it
    /// (`GET /v1/jobs/{id}/files/{name}`: PNG images only, from `file://` outputs the coordinator
    /// can read).
    ///
    /// Errors: [`ClientError::Api`] with the coordinator's words (no output yet, not a local
    /// folder, no such file); [`ClientError::Transport`].
    pub async fn job_file(&self, job: &str, name: &str) -> Result<Vec<u8>, ClientError> {
        let r = self.request(
            Method::GET,
            &format!("/v1/jobs/{}/files/{}", segment(job), segment(name)),
        );
        self.send_bytes(r).await.map(|(_, body)| body)
    }

    /// Cancels an experiment.
    pub async fn cancel(&self, experiment: &str) -> Result<Changed, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/experiments/{}/cancel", segment(experiment))))
            .await
    }

    /// Requeues failed jobs (and cancelled ones too, when asked).
    pub async fn retry_failed(&self, experiment: &str, include_cancelled: bool) -> Result<Changed, ClientError> {
        let path = format!(
            "/v1/experiments/{}/retry-failed?include_cancelled={include_cancelled}",
            segment(experiment)
        );
        self.json(self.request(Method::POST, &path)).await
    }

    /// Log tail of a job's latest attempt.
    pub async fn job_logs(&self, job: &str, lines: u32) -> Result<LogTail, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{}/logs?lines={lines}", segment(job))))
            .await
    }

    /// A job's metric series, `names` comma-separated (empty: every metric), up to 100 000
    /// points each.
    pub async fn job_metrics(&self, job: &str, names: &str) -> Result<MetricSeries, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!(
                "/v1/jobs/{}/metrics?names={}&max_points=100000",
                segment(job),
                segment(names)
            ),
        ))
        .await
    }

    /// The metric series of each job of a trial, kept apart, `names` comma-separated (empty:
    /// every metric), up to 100 000 points each.
    pub async fn trial_metrics(&self, trial: &str, names: &str) -> Result<TrialMetrics, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!(
                "/v1/trials/{}/metrics?names={}&max_points=100000",
                segment(trial),
                segment(names)
            ),
        ))
        .await
    }

    /// Every job of a trial with its attempts (and the errors they ended with) and the last
    /// `lines` lines of its latest attempt's log.
    pub async fn trial_logs(&self, trial: &str, lines: u32) -> Result<TrialLogs, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/v1/trials/{}/logs?lines={lines}", segment(trial)),
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Reads one request (head and `content-length` body); false when the peer went away.
    async fn read_request(s: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return true;
                }
            }
        }
    }

    /// A coordinator stand-in: the n-th request gets `script[n]` (0 = the connection is
    /// closed without an answer, else that status), later ones `then`. Returns its base URL
    /// and the count of requests seen.
    async fn server(script: Vec<u16>, then: u16) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                if !read_request(&mut s).await {
                    continue;
                }
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = script.get(n).copied().unwrap_or(then);
                let answer = match status {
                    0 => continue, // dropping `s` closes the connection unanswered
                    204 => "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string(),
                    code => {
                        let body = format!(r#"{{"error":"status {code} on purpose"}}"#);
                        format!(
                            "HTTP/1.1 {code} Test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                };
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (base, seen)
    }

    fn fast(base: &str) -> CoordinatorClient {
        CoordinatorClient::new(base, None).with_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        })
    }

    fn done() -> CompleteRequest {
        CompleteRequest {
            attempt: 1,
            output: Some("file:///tmp/out".into()),
        }
    }

    #[tokio::test]
    async fn complete_is_retried_through_a_coordinator_restart() {
        let (base, seen) = server(vec![0, 503, 429, 503], 204).await;
        let client = fast(&base);
        let body = done();
        let (c, b) = (&client, &body);
        let deadline = Instant::now() + Duration::from_secs(20);
        let r = client
            .retrying(deadline, "complete", move || c.complete("e.j", b))
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_stale_attempt_is_final() {
        let (base, seen) = server(vec![409], 204).await;
        let client = fast(&base);
        let body = done();
        let (c, b) = (&client, &body);
        let deadline = Instant::now() + Duration::from_secs(20);
        let err = client
            .retrying(deadline, "complete", move || c.complete("e.j", b))
            .await
            .unwrap_err();
        assert!(err.is_stale(), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "a 409 is not retried");
        // Other 4xx answers are final too.
        let (base, seen) = server(vec![400], 204).await;
        let client = fast(&base);
        let c = &client;
        let err = client
            .retrying(deadline, "complete", move || c.complete("e.j", b))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Api { status, .. } if status == StatusCode::BAD_REQUEST),
            "{err}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_give_up_at_the_deadline_with_the_last_error() {
        let (base, seen) = server(Vec::new(), 503).await;
        let client = fast(&base);
        let body = done();
        let (c, b) = (&client, &body);
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        let err = client
            .retrying(deadline, "complete", move || c.complete("e.j", b))
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(&err, ClientError::Api { status, message } if *status == StatusCode::SERVICE_UNAVAILABLE && message.contains("on purpose")),
            "{err}"
        );
        assert!(took >= Duration::from_millis(300), "gave up early: {took:?}");
        assert!(took < Duration::from_secs(5), "kept going past the deadline: {took:?}");
        assert!(
            seen.load(Ordering::SeqCst) >= 3,
            "retried: {}",
            seen.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn what_is_transient() {
        let api = |code: u16| ClientError::Api {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
        };
        assert!(api(503).is_transient() && api(500).is_transient() && api(429).is_transient());
        assert!(!api(409).is_transient() && !api(400).is_transient() && !api(404).is_transient());
    }

    #[test]
    fn typed_ids_and_names_stay_inside_their_segment() {
        assert_eq!(segment("exp-1a.train-2_b~"), "exp-1a.train-2_b~");
        assert_eq!(segment("a/b?c=d&e#f g"), "a%2Fb%3Fc%3Dd%26e%23f%20g");
        assert_eq!(segment("loss,step"), "loss%2Cstep");
    }

    #[test]
    fn refused_tokens_say_how_to_give_one() {
        let api = |code: u16, message: &str| {
            ClientError::Api {
                status: StatusCode::from_u16(code).unwrap(),
                message: message.into(),
            }
            .to_string()
        };
        let missing = api(
            401,
            "missing `Authorization: Bearer <token>` header (the CLI's --token)",
        );
        assert!(
            missing.starts_with("401") && missing.contains("no token given"),
            "{missing}"
        );
        assert!(!missing.contains("Authorization"), "{missing}");
        let unknown = api(401, "unknown token");
        assert!(
            unknown.contains("unknown token") && unknown.contains("--token") && unknown.contains("SPATIALLOCK_TOKEN")
        );
        let role = api(
            403,
            "this endpoint needs a user or admin token; the token has role Worker",
        );
        assert!(
            role.starts_with("403") && role.contains("a user or admin token") && role.contains("--token"),
            "{role}"
        );
        let key = api(
            403,
            "the `spatiallock-worker-key` header does not hold worker `w`'s key",
        );
        assert!(!key.contains("--token"), "{key}");
        assert_eq!(api(404, "no experiment `x`"), "404 Not Found: no experiment `x`");
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_named_with_how_to_start_one() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let err = CoordinatorClient::new(&base, None).experiments().await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("could not reach the coordinator at {base}")) && text.contains("is it running?"),
            "{text}"
        );
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(200));
            assert!(
                j >= Duration::from_millis(100) && j < Duration::from_millis(200),
                "{j:?}"
            );
        }
    }
}
