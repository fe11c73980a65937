//! The coordinator's store: PostgreSQL (shared by replicas) or SQLite (embedded), through one
//! set of portable SQL statements over sqlx's `Any` driver. Postgres-only clauses (row locks
//! with `SKIP LOCKED`) come from [`Dialect`].

mod gangs;
mod jobs;
mod queries;
pub mod reports;
mod submit;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use gangs::GangStep;
pub use jobs::{Claimed, FailOutcome, JobEnd, Reaped};
pub use queries::{ExperimentFilter, JobFilter};
pub use submit::Submitted;

/// A job that became ready: (id, priority, seq), what the dispatcher orders hints by.
pub type ReadyJob = (String, i64, i64);

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: row locks, `SKIP LOCKED`, many connections.
    Postgres,
    /// SQLite: one writer; the pool holds one connection.
    Sqlite,
}

impl Dialect {
    /// The clause that locks the rows a claim reads, skipping rows another claim holds.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// The clause that locks a row read before it is updated in the same transaction.
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON document does not parse (written by an incompatible version?).
    #[error("stored {what} does not parse: {message}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The database URL names no supported backend.
    #[error("unsupported database URL `{0}`: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// No row with this id.
    #[error("no {what} `{id}`")]
    NotFound {
        /// What was looked for (`experiment`, `job`, `trial`, `worker`).
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A worker's write from an attempt that is no longer the job's current one (fencing).
    #[error("attempt {attempt} of job `{job}` is no longer current (lease lost, cancelled or finished)")]
    StaleAttempt {
        /// The job.
        job: String,
        /// The attempt that wrote.
        attempt: u64,
    },
    /// The write conflicts with what is stored (an id or idempotency key in use).
    #[error("{0}")]
    Conflict(String),
    /// A value the store refuses, naming the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault, as the request names it.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
}

impl StoreError {
    /// [`StoreError::NotFound`].
    pub fn not_found(what: &'static str, id: &str) -> Self {
        StoreError::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// [`StoreError::StaleAttempt`].
    pub fn stale_attempt(job: &str, attempt: u64) -> Self {
        StoreError::StaleAttempt {
            job: job.to_string(),
            attempt,
        }
    }

    /// [`StoreError::Invalid`].
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The connection pool and its dialect.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
}

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Store {
    /// Connects (creating a SQLite file when missing) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let pool = match dialect {
            Dialect::Postgres => AnyPoolOptions::new().max_connections(16).connect(url).await?,
            Dialect::Sqlite => {
                let url = if url.contains('?') || url.contains(":memory:") {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                // One connection: SQLite has one writer, and a single connection turns lock
                // contention into plain queueing.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
        };
        match dialect {
            Dialect::Postgres => MIGRATE_POSTGRES.run(&pool).await?,
            Dialect::Sqlite => MIGRATE_SQLITE.run(&pool).await?,
        }
        Ok(Store { pool, dialect })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Which backend this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// Creates a database named `name` on the PostgreSQL server of `admin_url` and returns its
/// URL (tests and benchmarks get a database of their own).
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    sqlx::any::install_default_drivers();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::UnsupportedUrl(format!("database name `{name}`")));
    }
    let admin = AnyPool::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    admin.close().await;
    let server = admin_url.rsplit_once('/').map_or(admin_url, |(server, _)| server);
    Ok(format!("{server}/{name}"))
}

/// Drops a database created by [`create_postgres_database`].
pub async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    let admin = AnyPool::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    admin.close().await;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a JSON text column.
fn json<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str, what: &'static str) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what,
        message: e.to_string(),
    })
}

/// Serialises to a JSON text column.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
