//! Starting the coordinator: store, dispatch, HTTP server, and the background loops (lease
//! reaper, Redis reconciler).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::config::Config;
use crate::dispatch::Dispatch;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Redis.
    #[error("redis at {url}: {source}")]
    Redis {
        /// The URL.
        url: String,
        /// The cause.
        source: redis::RedisError,
    },
    /// Serving without tokens where other machines can reach the API.
    #[error("{0}")]
    Exposed(String),
    /// Binding the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running coordinator.
pub struct Running {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its state (tests and the embedded mode read the store directly).
    pub state: AppState,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    loops: Vec<JoinHandle<()>>,
}

impl Running {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (in-flight requests finish) and stops the background loops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in &self.loops {
            l.abort();
        }
        let _ = self.server.await;
    }

    /// Waits until the server stops (it runs until shut down).
    pub async fn wait(self) {
        let _ = self.server.await;
    }
}

/// Connects, migrates, binds and starts serving.
///
/// Errors: the database or Redis unreachable, the address taken, or no tokens on a
/// non-loopback address without `allow_unauthenticated` ([`crate::config::check_exposure`]).
pub async fn start(config: Config) -> Result<Running, StartError> {
    crate::config::check_exposure(config.listen, &config.tokens, config.allow_unauthenticated)
        .map_err(StartError::Exposed)?;
    let store = Store::connect(&config.database_url).await?;
    let dispatch = match &config.redis_url {
        Some(url) => Dispatch::redis(url, &config.redis_prefix)
            .await
            .map_err(|source| StartError::Redis {
                url: url.clone(),
                source,
            })?,
        None => Dispatch::embedded(),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    // With a TTL of zero the list handler does not use the cache at all.
    let list_cache = moka::future::Cache::builder()
        .max_capacity(1_000)
        .time_to_live(config.list_cache_ttl.max(std::time::Duration::from_millis(1)))
        .build();
    let state = AppState {
        store,
        dispatch,
        telemetry: Arc::new(Telemetry::new()),
        config: Arc::new(config),
        seen_workers: Arc::default(),
        parse_slots: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
        worker_keys: Arc::default(),
        list_cache,
        list_generation: Arc::default(),
    };
    let (stop, mut stopped) = watch::channel(false);
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    let loops = vec![spawn_reaper(state.clone()), spawn_reconciler(state.clone())];
    tracing::info!(%addr, redis = state.dispatch.uses_redis(), "coordinator listening");
    Ok(Running {
        addr,
        state,
        stop,
        server,
        loops,
    })
}

fn spawn_reaper(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.reaper_interval);
        loop {
            tick.tick().await;
            match state.store.reap(state.config.retry_backoff.as_millis() as u64).await {
                Ok(reaped) => {
                    for r in &reaped {
                        tracing::warn!(job = %r.id, attempt = r.attempt, now = r.state.as_str(), "lease expired");
                        state.telemetry.lease_expirations.inc();
                        state.telemetry.job_ended(&r.id);
                        if r.state == spatiallock_protocol::api::JobState::Queued {
                            state.telemetry.retries.with_label_values(&["infra"]).inc();
                        }
                    }
                    if !reaped.is_empty() {
                        state.dispatch.reconcile(&state.store).await;
                        state.dispatch.wake().notify_waiters();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reaper: database unavailable"),
            }
        }
    })
}

fn spawn_reconciler(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.reconcile_interval);
        loop {
            tick.tick().await;
            match state.store.release_unblocked().await {
                Ok(ready) if !ready.is_empty() => {
                    tracing::warn!(jobs = ready.len(), "reconciler released blocked jobs")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconciler: database unavailable"),
            }
            state.dispatch.reconcile(&state.store).await;
        }
    })
}
