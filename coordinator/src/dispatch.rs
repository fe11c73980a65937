//! Dispatch: how lease requests learn that jobs are ready. Postgres (or SQLite) is the truth;
//! this layer only makes leasing fast and wakes long-polls.
//!
//! - **Redis**: a sorted set of ready job ids (`ZPOPMIN` hands each hint to one lease
//!   request; the claim is then a primary-key update fenced on `state = 'queued'`), plus a
//!   pub/sub channel that wakes the long-polls of every replica. Lost or stale hints are
//!   harmless: a lease request with no hint claims from the database directly, and the
//!   reconciler re-adds every ready job the set is missing (after `FLUSHALL` or a restart).
//!   Commands go through a `ConnectionManager`, which reconnects with exponential backoff
//!   after Redis restarts or the connection breaks: no restart of ours is ever needed.
//! - **Embedded**: an in-process wake-up; claims always go to the database.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use spatiallock_protocol::spec::{PRIORITY_MAX, PRIORITY_MIN};
use tokio::sync::Notify;

use crate::store::Store;

/// The dispatch layer.
#[derive(Clone)]
pub struct Dispatch {
    wake: Arc<Notify>,
    redis: Option<ConnectionManager>,
    /// `<prefix>:ready`, the sorted set of ready jobs.
    ready_key: String,
    /// `<prefix>:wake`, the wake-up channel.
    wake_channel: String,
}

/// Milliseconds of submission order a score can hold: 2^42 ms (139 years from 2025-01-01), so
/// that every priority of the grid/API range, times this, plus the order, stays an exact
/// integer in an f64 (2001 · 2^42 < 2^53).
const ORDER_SPAN_MS: i64 = 1 << 42;

/// The sorted-set score of a job: higher priority first (the whole
/// [`PRIORITY_MIN`]..=[`PRIORITY_MAX`] range, the one the API accepts), then submission time in
/// milliseconds (`seq` = ms since the epoch · 100 000 + index). Jobs submitted in the same
/// millisecond tie, and Redis orders ties by member, which [`member`] starts with the index.
fn score(priority: i64, seq: i64) -> f64 {
    let ms = (seq / 100_000 - 1_735_689_600_000).clamp(0, ORDER_SPAN_MS - 1); // since 2025-01-01
    let priority = priority.clamp(PRIORITY_MIN, PRIORITY_MAX);
    (-priority * ORDER_SPAN_MS + ms) as f64
}

/// The sorted-set member of a job: its index within its submission's millisecond, zero-padded
/// (ties of [`score`] then pop in submission order), then its id.
fn member(id: &str, seq: i64) -> String {
    format!("{:05}:{id}", seq.rem_euclid(100_000))
}

/// The job id of a sorted-set member (a bare id, as older versions wrote, is taken whole).
fn job_of(member: &str) -> &str {
    match member.split_once(':') {
        Some((index, id)) if index.len() == 5 && index.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => member,
    }
}

impl Dispatch {
    /// In-process dispatch (embedded mode).
    pub fn embedded() -> Dispatch {
        Dispatch {
            wake: Arc::new(Notify::new()),
            redis: None,
            ready_key: String::new(),
            wake_channel: String::new(),
        }
    }

    /// Redis dispatch under keys `<prefix>:…` (replicas of one deployment share a prefix);
    /// subscribes to wake-ups in the background (resubscribing after a Redis restart).
    ///
    /// Commands time out after 2 s and a broken connection is re-established in the
    /// background (backoff 100 ms doubling to 5 s), so readiness and dispatch recover by
    /// themselves once Redis is back. Errors: Redis unreachable at start.
    pub async fn redis(url: &str, prefix: &str) -> Result<Dispatch, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let settings = ConnectionManagerConfig::new()
            .set_factor(100)
            .set_exponent_base(2)
            .set_max_delay(5_000)
            .set_number_of_retries(6)
            .set_connection_timeout(std::time::Duration::from_secs(2))
            .set_response_timeout(std::time::Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), settings).await?;
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        let wake_channel = format!("{prefix}:wake");
        let channel = wake_channel.clone();
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            while messages.next().await.is_some() {
                                waker.notify_waiters();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "redis wake-up subscription failed; retrying"),
                }
                // Wake everyone once: anything published while disconnected was missed.
                waker.notify_waiters();
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        Ok(Dispatch {
            wake,
            redis: Some(conn),
            ready_key: format!("{prefix}:ready"),
            wake_channel,
        })
    }

    /// The in-process wake-up that lease long-polls wait on.
    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Whether Redis is in use.
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Announces ready jobs `(id, priority, seq)`. Failures are logged, never returned: the
    /// database already holds the truth and the reconciler repairs Redis.
    pub async fn publish(&self, jobs: &[(String, i64, i64)]) {
        self.wake.notify_waiters();
        let Some(conn) = &self.redis else { return };
        if jobs.is_empty() {
            return;
        }
        let mut conn = conn.clone();
        let mut pipe = redis::pipe();
        for chunk in jobs.chunks(1000) {
            let items: Vec<(f64, String)> = chunk.iter().map(|(id, p, s)| (score(*p, *s), member(id, *s))).collect();
            pipe.cmd("ZADD").arg(&self.ready_key).arg("NX").arg(items).ignore();
        }
        pipe.publish(&self.wake_channel, 1).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "redis publish failed; the reconciler will republish");
        }
    }

    /// The next ready-job hint, if Redis has one.
    pub async fn next_hint(&self) -> Option<String> {
        let mut conn = self.redis.clone()?;
        let popped: Result<Vec<(String, f64)>, _> = conn.zpopmin(&self.ready_key, 1).await;
        match popped {
            Ok(mut v) => v.pop().map(|(m, _)| job_of(&m).to_string()),
            Err(e) => {
                tracing::debug!(error = %e, "redis ZPOPMIN failed; claiming from the database");
                None
            }
        }
    }

    /// Whether Redis answers (always true in embedded mode).
    pub async fn ping(&self) -> bool {
        let Some(conn) = &self.redis else { return true };
        let mut conn = conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }

    /// Re-adds every ready job the Redis set is missing; returns how many were added.
    pub async fn reconcile(&self, store: &Store) -> usize {
        let Some(conn) = &self.redis else { return 0 };
        let ready = match store.ready_jobs(10_000).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: cannot read ready jobs");
                return 0;
            }
        };
        if ready.is_empty() {
            return 0;
        }
        let mut conn = conn.clone();
        let items: Vec<(f64, String)> = ready.iter().map(|(id, p, s)| (score(*p, *s), member(id, *s))).collect();
        // Plain ZADD: adds what is missing and refreshes scores after a priority change.
        let added: Result<usize, _> = redis::cmd("ZADD")
            .arg(&self.ready_key)
            .arg(items)
            .query_async(&mut conn)
            .await;
        match added {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(added = n, "reconciler republished ready jobs missing from redis");
                    let _: Result<(), _> = conn.publish(&self.wake_channel, 1).await;
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: redis unavailable");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{job_of, member, score, PRIORITY_MAX, PRIORITY_MIN};

    #[test]
    fn scores_order_by_priority_then_submission() {
        let t = 1_780_000_000_000i64 * 100_000;
        assert!(score(5, t + 10) < score(0, t)); // higher priority first
        assert!(score(0, t) < score(0, t + 100_000)); // FIFO across milliseconds
        assert!(score(0, t + 99_999) < score(0, t + 1000 * 100_000)); // and across seconds
        assert!(score(-3, t) > score(0, t + 1000 * 100_000 * 3600));
        // The whole range the API accepts orders exactly, decades ahead.
        let later = t + 40 * 365 * 86_400 * 1000 * 100_000;
        assert!(score(PRIORITY_MAX, later) < score(PRIORITY_MAX - 1, t));
        assert!(score(PRIORITY_MIN + 1, later) < score(PRIORITY_MIN, t));
        assert!(score(PRIORITY_MIN, later) < score(PRIORITY_MIN, later + 100_000));
        assert!(score(PRIORITY_MIN, later).abs() < 2f64.powi(53));
        // Within a millisecond the member orders: index 2 before index 10, whatever the ids.
        assert!(member("exp.z", t + 2) < member("exp.a", t + 10));
        assert_eq!(job_of(&member("exp.job-1:x", t + 7)), "exp.job-1:x");
        assert_eq!(job_of("exp.job-1"), "exp.job-1");
    }
}
