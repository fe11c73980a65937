//! An HTTP client for the coordinator's API, used by workers and by the CLI.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spatiallock_protocol::api::{
    AttemptRef, Changed, CheckpointCommit, CompleteRequest, ErrorBody, ExperimentView, FailRequest, GangOffer,
    HeartbeatAnswer, JobView, Lease, LeaseRequest, LogBatch, LogTail, MetricsBatch, Page, RegisterWorker,
    SubmitResponse, TrialView, WorkerRegistered,
};

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached, or the answer was not understood.
    #[error("coordinator at {base}: {source}")]
    Transport {
        /// Base URL.
        base: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The coordinator answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

impl ClientError {
    /// Whether the coordinator said the attempt is no longer current (409).
    pub fn is_stale(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::CONFLICT)
    }
}

/// A coordinator client.
#[derive(Clone)]
pub struct CoordinatorClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
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
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: RequestBuilder) -> Result<(StatusCode, String), ClientError> {
        let transport = |source| ClientError::Transport {
            base: self.base.clone(),
            source,
        };
        let response = r.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if status.is_client_error() || status.is_server_error() {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            return Err(ClientError::Api { status, message });
        }
        Ok((status, text))
    }

    async fn json<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<T, ClientError> {
        let (status, text) = self.send(r).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Api {
            status,
            message: format!("unexpected answer ({e}): {text}"),
        })
    }

    async fn post_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.send(self.request(Method::POST, path).json(body)).await.map(|_| ())
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

    /// Reports success.
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
        self.json(self.request(Method::GET, &format!("/v1/experiments/{id}")))
            .await
    }

    /// Experiments, newest first.
    pub async fn experiments(&self) -> Result<Page<ExperimentView>, ClientError> {
        self.json(self.request(Method::GET, "/v1/experiments?page_size=50"))
            .await
    }

    /// Every job of an experiment.
    pub async fn jobs(&self, experiment: &str) -> Result<Vec<JobView>, ClientError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page: Page<JobView> = self
                .json(self.request(
                    Method::GET,
                    &format!("/v1/jobs?experiment={experiment}&page_size=1000&page_token={token}"),
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
        self.json(self.request(Method::GET, &format!("/v1/jobs/{id}"))).await
    }

    /// Trials of an experiment.
    pub async fn trials(&self, experiment: &str) -> Result<Vec<TrialView>, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/experiments/{experiment}/trials")))
            .await
    }

    /// The report as text (`md`, `csv` or `json`).
    pub async fn report(&self, experiment: &str, format: &str) -> Result<String, ClientError> {
        let r = self.request(
            Method::GET,
            &format!("/v1/experiments/{experiment}/report?format={format}"),
        );
        self.send(r).await.map(|(_, t)| t)
    }

    /// Cancels an experiment.
    pub async fn cancel(&self, experiment: &str) -> Result<Changed, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/experiments/{experiment}/cancel")))
            .await
    }

    /// Requeues failed jobs (and cancelled ones too, when asked).
    pub async fn retry_failed(&self, experiment: &str, include_cancelled: bool) -> Result<Changed, ClientError> {
        let path = format!("/v1/experiments/{experiment}/retry-failed?include_cancelled={include_cancelled}");
        self.json(self.request(Method::POST, &path)).await
    }

    /// Log tail of a job's latest attempt.
    pub async fn job_logs(&self, job: &str, lines: u32) -> Result<LogTail, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{job}/logs?lines={lines}")))
            .await
    }

    /// A job's metric series.
    pub async fn job_metrics(
        &self,
        job: &str,
        names: &str,
    ) -> Result<spatiallock_protocol::api::MetricSeries, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/v1/jobs/{job}/metrics?names={names}&max_points=100000"),
        ))
        .await
    }

    /// Log tail of a trial's current job.
    pub async fn trial_logs(&self, trial: &str, lines: u32) -> Result<LogTail, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/trials/{trial}/logs?lines={lines}")))
            .await
    }
}
