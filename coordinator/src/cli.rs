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
    /// Bearer tokens, `role:secret,…` (roles admin, user, worker; secrets of at least 8
    /// characters). Visible to `ps` when given here: prefer --tokens-file or the environment
    /// variable.
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
    // Colours only for a terminal: log files and journals get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

/// Why the coordinator did not start, said once and with what to do where that is known
/// (see [`ServeError::new`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(String);

impl ServeError {
    /// Describes `e` for an operator: the causes in its chain each added only when the message
    /// so far does not hold them already (the store's, sqlx's and PostgreSQL's layers repeat one
    /// another), and for a PostgreSQL database that does not exist, how to create it (naming it
    /// once) or name another in `--database-url`; for a server that never answered, whether it
    /// runs.
    pub fn new(e: &crate::StartError, database_url: &str) -> ServeError {
        let mut levels = Vec::new();
        let mut missing_database = false;
        let mut timed_out = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cause {
            if let Some(sqlx_error) = err.downcast_ref::<sqlx::Error>() {
                missing_database |= sqlx_error
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|code| code == "3D000");
                timed_out |= matches!(sqlx_error, sqlx::Error::PoolTimedOut);
            }
            levels.push(err.to_string());
            cause = err.source();
        }
        let target = postgres_target(database_url);
        let message = match (missing_database, target) {
            (true, Some(t)) => missing_database_message(&t),
            (true, None) => format!(
                "{}: create the database (`createdb NAME`) or give --database-url an existing one",
                without_repeats(&levels)
            ),
            (false, Some(t)) if timed_out => format!(
                "{}: is PostgreSQL running and reachable at {}? (`bash scripts/services.sh` starts one on this machine)",
                without_repeats(&levels),
                t.server()
            ),
            _ => without_repeats(&levels),
        };
        ServeError(message)
    }
}

/// `levels` (an error and its causes, outermost first) joined by `: `, each left out when the
/// text so far holds it already.
fn without_repeats(levels: &[String]) -> String {
    let mut out = String::new();
    for level in levels.iter().map(|l| l.trim()) {
        if level.is_empty() || out.contains(level) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(level);
    }
    out
}

/// What `createdb` needs from a `postgres://user:password@host:port/database?…` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PostgresTarget {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    database: String,
}

impl PostgresTarget {
    /// `host:port` as the operator wrote it (the default socket when neither is given).
    fn server(&self) -> String {
        match (&self.host, &self.port) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.clone(),
            (None, Some(p)) => format!("port {p}"),
            (None, None) => "the default socket".into(),
        }
    }
}

/// The server, user and database of a PostgreSQL URL (no password); `None` for other URLs or
/// one without a database.
fn postgres_target(url: &str) -> Option<PostgresTarget> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_once('/')?;
    let database = path.trim_matches('/');
    if database.is_empty() {
        return None;
    }
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((info, host_port)) => (info.split(':').next().filter(|u| !u.is_empty()), host_port),
        None => (None, authority),
    };
    let (host, port) = match host_port.strip_prefix('[').and_then(|h| h.split_once(']')) {
        Some((v6, after)) => (v6, after.strip_prefix(':')),
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(PostgresTarget {
        host: non_empty(host),
        port: port.and_then(non_empty),
        user: user.and_then(non_empty),
        database: database.to_string(),
    })
}

/// The message for a database that does not exist: the server, and the `createdb` command that
/// creates it (the only place the database is named).
fn missing_database_message(t: &PostgresTarget) -> String {
    let mut createdb = vec!["createdb".to_string()];
    if let Some(h) = &t.host {
        createdb.push(format!("-h {h}"));
    }
    if let Some(p) = &t.port {
        createdb.push(format!("-p {p}"));
    }
    if let Some(u) = &t.user {
        createdb.push(format!("-U {u}"));
    }
    createdb.push(t.database.clone());
    format!(
        "the database that --database-url (DATABASE_URL) names does not exist on the PostgreSQL \
         server at {}: create it with `{}`, or give --database-url an existing database",
        t.server(),
        createdb.join(" ")
    )
}

/// Serves `config` until SIGTERM or Ctrl-C; prints the address once listening.
///
/// Errors: the coordinator could not start ([`ServeError`]: the [`crate::StartError`] said once,
/// with what to do).
pub async fn serve_until_signal(config: Config) -> Result<(), ServeError> {
    if config.tokens.is_empty() {
        tracing::warn!("no tokens configured: the API is open to anyone who can reach it");
    }
    let database_url = config.database_url.clone();
    let running = crate::start(config)
        .await
        .map_err(|e| ServeError::new(&e, &database_url))?;
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
    fn an_error_chain_says_each_thing_once() {
        let inner = "database \"sl_x\" does not exist";
        let levels = [
            format!("database: error returned from database: {inner}"),
            format!("database: error returned from database: {inner}"),
            format!("error returned from database: {inner}"),
            inner.to_string(),
        ];
        assert_eq!(without_repeats(&levels), levels[0]);
        let levels = ["redis at redis://x".to_string(), "connection refused".to_string()];
        assert_eq!(without_repeats(&levels), "redis at redis://x: connection refused");
    }

    #[test]
    fn postgres_urls_give_what_createdb_needs() {
        let t = postgres_target("postgres://postgres:pw@127.0.0.1:5432/sl_test?sslmode=disable").unwrap();
        assert_eq!(
            t,
            PostgresTarget {
                host: Some("127.0.0.1".into()),
                port: Some("5432".into()),
                user: Some("postgres".into()),
                database: "sl_test".into(),
            }
        );
        let m = missing_database_message(&t);
        assert!(
            m.contains("`createdb -h 127.0.0.1 -p 5432 -U postgres sl_test`") && m.contains("127.0.0.1:5432"),
            "{m}"
        );
        assert_eq!(m.matches("sl_test").count(), 1, "{m}");
        assert!(!m.contains("pw"), "{m}");
        let t = postgres_target("postgresql://[::1]/db").unwrap();
        assert_eq!(
            (t.host.as_deref(), t.port, t.user, t.database.as_str()),
            (Some("::1"), None, None, "db")
        );
        assert_eq!(postgres_target("postgres://host"), None);
        assert_eq!(postgres_target("sqlite://x.db"), None);
    }

    #[test]
    fn an_open_api_needs_loopback_or_an_explicit_flag() {
        let e = parse(&[]).config().unwrap_err();
        assert!(e.contains("0.0.0.0:8080"), "{e}");
        assert!(parse(&["--listen", "127.0.0.1:8080"]).config().is_ok());
        assert!(parse(&["--allow-unauthenticated"]).config().is_ok());
    }
}
