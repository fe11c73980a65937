//! The coordinator's settings, and the bearer tokens with their roles.

use std::net::SocketAddr;
use std::time::Duration;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Submit, read, cancel, retry, change priority.
    User,
    /// Register, lease and report on jobs only.
    Worker,
}

impl Role {
    /// Parses `admin`, `user` or `worker`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

/// A token and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The role.
    pub role: Role,
    /// The secret.
    pub secret: String,
}

/// Parses `role:secret,role:secret`.
pub fn parse_tokens(text: &str) -> Result<Vec<Token>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (role, secret) = item
                .split_once(':')
                .ok_or_else(|| format!("token `{item}` must be written role:secret (role: admin, user or worker)"))?;
            let role = Role::parse(role.trim())
                .ok_or_else(|| format!("unknown role `{role}` in the token list (admin, user or worker)"))?;
            if secret.trim().len() < 8 {
                return Err(format!("the {role:?} token is shorter than 8 characters"));
            }
            Ok(Token {
                role,
                secret: secret.trim().to_string(),
            })
        })
        .collect()
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `postgres://…` or `sqlite://path` (`sqlite::memory:` for tests).
    pub database_url: String,
    /// `redis://…`; `None` dispatches in-process (embedded mode, one replica).
    pub redis_url: Option<String>,
    /// Prefix of this deployment's Redis keys (replicas share it).
    pub redis_prefix: String,
    /// Address to serve on (port 0: any free port).
    pub listen: SocketAddr,
    /// Bearer tokens; empty disables authentication (embedded mode, local use).
    pub tokens: Vec<Token>,
    /// A lease ends this long after the last heartbeat.
    pub lease_ttl: Duration,
    /// How often expired leases are looked for.
    pub reaper_interval: Duration,
    /// How often Redis is repaired from the database.
    pub reconcile_interval: Duration,
    /// First retry delay after a failure (doubles per failure, at most a minute).
    pub retry_backoff: Duration,
    /// Longest lease long-poll.
    pub max_lease_wait: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest grid accepted, in trials.
    pub max_trials: usize,
    /// How long a worker holds its reservation in a forming gang before it releases it.
    pub gang_reservation: Duration,
    /// How long a worker whose reservation timed out stays away from that gang.
    pub gang_backoff: Duration,
}

impl Config {
    /// Defaults for a database (and optional Redis), listening on `listen`.
    pub fn new(database_url: impl Into<String>, redis_url: Option<String>, listen: SocketAddr) -> Config {
        Config {
            database_url: database_url.into(),
            redis_url,
            redis_prefix: "spatiallock".into(),
            listen,
            tokens: Vec::new(),
            lease_ttl: Duration::from_secs(90),
            reaper_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            max_lease_wait: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            max_trials: 10_000,
            gang_reservation: Duration::from_secs(120),
            gang_backoff: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_errors_name_the_problem() {
        let t = parse_tokens("admin:aaaaaaaa, worker:bbbbbbbb").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].role, Role::Worker);
        assert!(parse_tokens("boss:aaaaaaaa")
            .unwrap_err()
            .contains("unknown role `boss`"));
        assert!(parse_tokens("admin").unwrap_err().contains("role:secret"));
        assert!(parse_tokens("user:short").unwrap_err().contains("shorter than 8"));
    }
}
