//! The coordinator's command line, shared by the torch-free `spatiallock-coordinator` binary
//! and `spatiallock coordinator`: arguments, log set-up, and serving until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use crate::config::{parse_tokens, parse_tokens_file, Config};

/// Arguments of the coordinator.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorArgs {
    /// `postgres://…` (shared by replicas) or `sqlite://FILE`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// `redis://…`; without it, dispatch is in-process (a single replica).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this deployment's Redis keys (replicas of one deployment share it; separate
    /// deployments on one Redis need different ones).
    #[arg(long, env = "SPATIALLOCK_REDIS_PREFIX", default_value = "spatiallock")]
    pub redis_prefix: String,
    /// Address to serve on. Without tokens only a loopback address is allowed (see
    /// --allow-unauthenticated).
    #[arg(long, env = "SPATIALLOCK_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// A file of bearer tokens, one `role:secret` per line (roles admin, user, worker; secrets
    /// of at least 8 characters; `#` comments). Preferred to --tokens, which `ps` shows.
    #[arg(long, env = "SPATIALLOCK_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Bearer tokens, `role:secret,…` (visible to `ps` when given here: prefer --tokens-file or
    /// the environment variable).
    #[arg(long, env = "SPATIALLOCK_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// Serve without tokens on an address other machines can reach: anyone who reaches it may
    /// submit, cancel and act as a worker.
    #[arg(long, env = "SPATIALLOCK_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Lease time-to-live in seconds (heartbeats renew it).
    #[arg(long, env = "SPATIALLOCK_LEASE_TTL", default_value_t = 90)]
    pub lease_ttl: u64,
    /// Largest grid accepted, in trials.
    #[arg(long, default_value_t = 10_000)]
    pub max_trials: usize,
    /// How long a page of the experiment list may be served from this replica's cache, in
    /// milliseconds (its own writes clear it; 0 reads the database every time).
    #[arg(long, env = "SPATIALLOCK_LIST_CACHE_TTL_MS", default_value_t = 1000)]
    pub list_cache_ttl_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl CoordinatorArgs {
    /// The settings these arguments describe (tokens read from the file and the list).
    ///
    /// Errors: an unreadable tokens file, a malformed token (naming the flag and the line), a
    /// lease TTL under 2 s, or no tokens on a non-loopback address without
    /// --allow-unauthenticated.
    pub fn config(&self) -> Result<Config, String> {
        let mut config = Config::new(self.database_url.clone(), self.redis_url.clone(), self.listen);
        if let Some(path) = &self.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
            config.tokens = parse_tokens_file(&text).map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
        }
        if let Some(t) = &self.tokens {
            config
                .tokens
                .extend(parse_tokens(t).map_err(|e| format!("--tokens: {e}"))?);
        }
        if self.lease_ttl < 2 {
            return Err("--lease-ttl must be at least 2 seconds".into());
        }
        config.allow_unauthenticated = self.allow_unauthenticated;
        config.redis_prefix = self.redis_prefix.clone();
        crate::config::check_exposure(config.listen, &config.tokens, config.allow_unauthenticated)?;
        config.lease_ttl = Duration::from_secs(self.lease_ttl);
        config.max_trials = self.max_trials;
        config.max_body_bytes = self.max_body_bytes;
        config.list_cache_ttl = Duration::from_millis(self.list_cache_ttl_ms);
        Ok(config)
    }
}

/// Starts tracing to stderr: `RUST_LOG` (default `default_level`), as text or JSON.
pub fn init_logs(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A watch that turns true on SIGTERM or Ctrl-C (call inside a Tokio runtime).
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    let _ = tx.send(true);
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// Serves `config` until SIGTERM or Ctrl-C; prints the address once listening.
///
/// Errors: the coordinator could not start ([`crate::StartError`]).
pub async fn serve_until_signal(config: Config) -> Result<(), crate::StartError> {
    if config.tokens.is_empty() {
        tracing::warn!("no tokens configured: the API is open to anyone who can reach it");
    }
    let running = crate::start(config).await?;
    println!("coordinator listening on {}", running.url());
    let mut stop = shutdown_signal();
    let _ = stop.wait_for(|s| *s).await;
    running.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CoordinatorArgs,
    }

    fn parse(extra: &[&str]) -> CoordinatorArgs {
        let mut argv = vec!["x", "--database-url", "sqlite://x.db"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn tokens_come_from_the_file_and_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ops\nadmin:aaaaaaaa\n").unwrap();
        let path = file.display().to_string();
        let config = parse(&["--tokens-file", &path, "--tokens", "user:bbbbbbbb"])
            .config()
            .unwrap();
        assert_eq!(config.tokens.len(), 2);
        std::fs::write(&file, "admin:aaaaaaaa\nworker\n").unwrap();
        let e = parse(&["--tokens-file", &path]).config().unwrap_err();
        assert!(e.contains("line 2") && e.contains(&path), "{e}");
        let e = parse(&["--tokens-file", "/nonexistent/tokens"]).config().unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn an_open_api_needs_loopback_or_an_explicit_flag() {
        let e = parse(&[]).config().unwrap_err();
        assert!(e.contains("0.0.0.0:8080"), "{e}");
        assert!(parse(&["--listen", "127.0.0.1:8080"]).config().is_ok());
        assert!(parse(&["--allow-unauthenticated"]).config().is_ok());
    }
}
