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
    /// `admin`, `user` or `worker`, as tokens files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Worker => "worker",
        }
    }

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

/// Parses `role:secret,role:secret` (the `--tokens` form).
///
/// Errors: an item without `:`, an unknown role, or a secret shorter than 8 characters, named.
pub fn parse_tokens(text: &str) -> Result<Vec<Token>, String> {
    parse_token_items(text.split(','))
}

/// Parses a tokens file: one `role:secret` per line; blank lines and lines starting with `#`
/// are skipped. Errors name the line.
pub fn parse_tokens_file(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut t = parse_token_items(std::iter::once(line)).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.append(&mut t);
    }
    Ok(out)
}

fn parse_token_items<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<Token>, String> {
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (role_name, secret) = item
                .split_once(':')
                .ok_or_else(|| format!("token `{item}` must be written role:secret (role: admin, user or worker)"))?;
            let role_name = role_name.trim();
            let role = Role::parse(role_name)
                .ok_or_else(|| format!("unknown role `{role_name}` in the token list (admin, user or worker)"))?;
            if secret.trim().chars().count() < 8 {
                return Err(format!(
                    "the {role_name} token's secret is shorter than 8 characters (every secret needs at least 8)"
                ));
            }
            Ok(Token {
                role,
                secret: secret.trim().to_string(),
            })
        })
        .collect()
}

/// Whether the API may be served without tokens on `listen`: only on a loopback address, or
/// when the operator said so explicitly (`allow_unauthenticated`).
///
/// Errors: a message naming the address and the two ways out.
pub fn check_exposure(listen: SocketAddr, tokens: &[Token], allow_unauthenticated: bool) -> Result<(), String> {
    if tokens.is_empty() && !listen.ip().is_loopback() && !allow_unauthenticated {
        return Err(format!(
            "refusing to serve without tokens on {listen}, which other machines can reach: give tokens \
             (--tokens-file or --tokens), listen on 127.0.0.1, or pass --allow-unauthenticated"
        ));
    }
    Ok(())
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
    /// Serve without tokens on a non-loopback address (refused otherwise).
    pub allow_unauthenticated: bool,
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
    /// How long a page of the experiment list may be served from this replica's cache (its own
    /// writes clear it at once; other replicas' within this time).
    pub list_cache_ttl: Duration,
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
            allow_unauthenticated: false,
            lease_ttl: Duration::from_secs(90),
            reaper_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(1),
            max_lease_wait: Duration::from_secs(30),
            list_cache_ttl: Duration::from_secs(1),
            max_body_bytes: 4 << 20,
            max_trials: 10_000,
            gang_reservation: Duration::from_secs(120),
            gang_backoff: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The role of `secret`, compared in constant time with every configured token (through
    /// SHA-256 digests, so neither content nor length leaks through timing).
    pub fn token_role(&self, secret: &str) -> Option<Role> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            let expected: [u8; 32] = Sha256::digest(t.secret.as_bytes()).into();
            if bool::from(presented.ct_eq(&expected)) && found.is_none() {
                found = Some(t.role);
            }
        }
        found
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
        let e = parse_tokens("user:short").unwrap_err();
        assert!(
            e.contains("the user token's secret is shorter than 8 characters"),
            "{e}"
        );
    }

    #[test]
    fn tokens_file_skips_comments_and_names_the_bad_line() {
        let t = parse_tokens_file("# deployment tokens\n\nadmin:aaaaaaaa\n  worker:bbbbbbbb  \n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].secret, "bbbbbbbb");
        let e = parse_tokens_file("admin:aaaaaaaa\nuser:short\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn token_roles_are_found_by_exact_secret() {
        let mut c = Config::new("sqlite::memory:", None, "127.0.0.1:0".parse().unwrap());
        c.tokens = parse_tokens("admin:aaaaaaaa,user:bbbbbbbb").unwrap();
        assert_eq!(c.token_role("bbbbbbbb"), Some(Role::User));
        assert_eq!(c.token_role("aaaaaaaa"), Some(Role::Admin));
        assert_eq!(c.token_role("aaaaaaa"), None);
        assert_eq!(c.token_role("aaaaaaaab"), None);
    }

    #[test]
    fn no_tokens_only_on_loopback_unless_allowed() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let e = check_exposure(public, &[], false).unwrap_err();
        assert!(
            e.contains("0.0.0.0:8080") && e.contains("--allow-unauthenticated"),
            "{e}"
        );
        assert!(check_exposure(local, &[], false).is_ok());
        assert!(check_exposure(public, &[], true).is_ok());
        assert!(check_exposure(public, &parse_tokens("user:bbbbbbbb").unwrap(), false).is_ok());
    }
}
