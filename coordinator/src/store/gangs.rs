//! Gangs: a training job whose world size exceeds any one worker's free devices starts on
//! several workers at once or not at all. Workers that offer to be members reserve ranks with a
//! deadline (Kueue's waitForPodsReady); when the reservations cover the world size the job
//! starts as one attempt, every member gets its ranks and rank 0's rendezvous address
//! (Determined's rendezvous through the master); a reservation that times out is released and
//! that worker backs off from the job. Once started, each member's heartbeat is its lease:
//! losing any member ends the attempt, which is requeued like any lost lease.

use spatiallock_protocol::api::{GangAssignment, GangOffer};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::jobs::CLAIM_RETURNING;
use super::{now_ms, Claimed, Dialect, Store, StoreError};

/// Where a worker stands with gangs after a lease poll.
#[derive(Debug)]
pub enum GangStep {
    /// In no gang (none to join, or backing off).
    Idle,
    /// Holding `reserved` of the `ranks` a forming gang needs, until its reservation deadline.
    Forming {
        /// The job.
        job: String,
        /// Ranks reserved by all members so far.
        reserved: u32,
        /// Ranks the job needs.
        ranks: u32,
    },
    /// The gang started: the attempt, and this worker's part in it.
    Started {
        /// The attempt (as a claim of the job).
        claimed: Box<Claimed>,
        /// This worker's ranks and the rendezvous.
        assignment: GangAssignment,
        /// Seconds from the first reservation to the start, told to the member that completed
        /// the gang (once per attempt).
        rendezvous_s: Option<f64>,
    },
}

/// A worker counts as live for gangs when it was heard from within this window (ms): workers
/// long-poll for leases (at most 30 s) or heartbeat a job while they run.
const LIVE_WINDOW_MS: i64 = 60_000;

/// Devices on the workers heard from since `since` (ms), in all.
async fn live_devices(store: &Store, since: i64) -> Result<u64, StoreError> {
    let rows = sqlx::query("SELECT devices FROM workers WHERE heartbeat_at >= $1")
        .bind(since)
        .fetch_all(&store.pool)
        .await?;
    let mut total = 0u64;
    for r in rows {
        let devices: String = r.try_get("devices")?;
        total += serde_json::from_str::<Vec<String>>(&devices).map_or(0, |d| d.len() as u64);
    }
    Ok(total)
}

fn count(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    Ok(row.try_get::<i64, _>(column)?.max(0) as u32)
}

impl Store {
    /// Why the queued gang job `job` (needing `ranks`) has not started: the live workers do
    /// not have that many devices, or the ranks reserved so far.
    pub async fn gang_waiting(&self, job: &str, ranks: u32) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let reserved = sqlx::query(
            "SELECT CAST(COALESCE(SUM(ranks), 0) AS BIGINT) AS n, COUNT(*) AS members FROM gang_members \
             WHERE job_id = $1 AND state = 'forming' AND expires_at >= $2",
        )
        .bind(job)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let (n, members) = (count(&reserved, "n")?, count(&reserved, "members")?);
        let live = live_devices(self, now - LIVE_WINDOW_MS).await?;
        if live < u64::from(ranks) {
            return Ok(Some(format!(
                "a gang of {ranks} ranks; the live workers have {live} device(s) in all: it starts when enough \
                 workers with free devices join"
            )));
        }
        Ok(Some(if members > 0 {
            format!("gang forming: {n} of {ranks} ranks reserved by {members} worker(s)")
        } else {
            format!("a gang of {ranks} ranks: waiting for workers with free devices to reserve them")
        }))
    }

    /// A worker's membership, if it has one: a started gang it has not picked up (now it
    /// does), a forming one (or its reservation timing out: released, backing off `backoff_ms`).
    pub async fn gang_poll(&self, worker: &str, ttl_ms: u64, backoff_ms: u64) -> Result<GangStep, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT m.job_id, m.state, m.expires_at, j.ranks FROM gang_members m JOIN jobs j ON j.id = m.job_id \
             WHERE m.worker_id = $1 AND m.state IN ('forming', 'started')",
        )
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let job: String = row.try_get("job_id")?;
            let state: String = row.try_get("state")?;
            if state == "started" {
                return self.pick_up(&job, worker, ttl_ms).await;
            }
            if row.try_get::<i64, _>("expires_at")? < now {
                sqlx::query(
                    "UPDATE gang_members SET state = 'released', expires_at = $1 WHERE job_id = $2 AND worker_id = $3 \
                     AND state = 'forming'",
                )
                .bind(now + backoff_ms as i64)
                .bind(&job)
                .bind(worker)
                .execute(&self.pool)
                .await?;
                tracing::info!(%job, %worker, "gang reservation timed out: released, backing off");
                continue;
            }
            let reserved = sqlx::query(
                "SELECT CAST(COALESCE(SUM(ranks), 0) AS BIGINT) AS n FROM gang_members WHERE job_id = $1 AND state = 'forming' \
                 AND expires_at >= $2",
            )
            .bind(&job)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            return Ok(GangStep::Forming {
                job,
                reserved: count(&reserved, "n")?,
                ranks: count(&row, "ranks")?,
            });
        }
        Ok(GangStep::Idle)
    }

    /// Reserves `devices` (this worker's free devices, or fewer) ranks of the best queued job
    /// that needs more ranks than this worker has devices in all and that the live workers can
    /// hold, for `reservation_ms`; starts the job when the reservations cover it.
    pub async fn gang_join(
        &self,
        worker: &str,
        devices: u32,
        offer: &GangOffer,
        reservation_ms: u64,
        ttl_ms: u64,
    ) -> Result<GangStep, StoreError> {
        let now = now_ms();
        let live = live_devices(self, now - LIVE_WINDOW_MS).await?;
        // Only jobs larger than this worker: one it could run alone waits for its devices.
        let own = sqlx::query("SELECT devices FROM workers WHERE id = $1")
            .bind(worker)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<String, _>("devices"))
            .transpose()?
            .map_or(0, |d| {
                serde_json::from_str::<Vec<String>>(&d).map_or(0, |v| v.len() as i64)
            });
        let mut tx = self.pool.begin().await?;
        let candidate = sqlx::query(&format!(
            "SELECT id, ranks FROM jobs WHERE state = 'queued' AND run_after <= $1 AND ranks > $2 AND ranks <= $3 \
             AND id NOT IN (SELECT job_id FROM gang_members WHERE worker_id = $4) \
             ORDER BY priority DESC, seq LIMIT 1{}",
            match self.dialect {
                Dialect::Postgres => " FOR UPDATE",
                Dialect::Sqlite => "",
            }
        ))
        .bind(now)
        .bind(own.max(i64::from(devices)))
        .bind(live as i64)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(candidate) = candidate else {
            return Ok(GangStep::Idle);
        };
        let job: String = candidate.try_get("id")?;
        let ranks = count(&candidate, "ranks")?;
        // Reservations that timed out no longer count.
        sqlx::query("DELETE FROM gang_members WHERE job_id = $1 AND state = 'forming' AND expires_at < $2")
            .bind(&job)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let reserved = sqlx::query(
            "SELECT CAST(COALESCE(SUM(ranks), 0) AS BIGINT) AS n FROM gang_members WHERE job_id = $1 AND state = 'forming'",
        )
        .bind(&job)
        .fetch_one(&mut *tx)
        .await?;
        let reserved = count(&reserved, "n")?;
        let take = devices.min(ranks.saturating_sub(reserved));
        if take == 0 {
            return Ok(GangStep::Idle);
        }
        sqlx::query(
            "INSERT INTO gang_members (job_id, worker_id, state, ranks, address, port, joined_at, expires_at) \
             VALUES ($1, $2, 'forming', $3, $4, $5, $6, $7)",
        )
        .bind(&job)
        .bind(worker)
        .bind(i64::from(take))
        .bind(&offer.address)
        .bind(i64::from(offer.port))
        .bind(now)
        .bind(now + reservation_ms as i64)
        .execute(&mut *tx)
        .await?;
        tracing::info!(%job, %worker, take, reserved, ranks, "gang reservation");
        if reserved + take < ranks {
            tx.commit().await?;
            return Ok(GangStep::Forming {
                job,
                reserved: reserved + take,
                ranks,
            });
        }
        // Complete: start the attempt, assign ranks in joining order (rank 0 first to join).
        let members = sqlx::query(
            "SELECT worker_id, ranks, joined_at FROM gang_members WHERE job_id = $1 AND state = 'forming' \
             ORDER BY joined_at, worker_id",
        )
        .bind(&job)
        .fetch_all(&mut *tx)
        .await?;
        let leader: String = members[0].try_get("worker_id")?;
        let first_joined: i64 = members[0].try_get("joined_at")?;
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_expires_at = $1, worker_id = $2, \
             started_at = $3 WHERE id = $4 AND state = 'queued' {CLAIM_RETURNING}"
        ))
        .bind(now + ttl_ms as i64)
        .bind(&leader)
        .bind(now)
        .bind(&job)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(GangStep::Idle);
        };
        let attempt: i64 = row.try_get("attempt")?;
        sqlx::query(
            "INSERT INTO attempts (job_id, attempt, worker_id, started_at, outcome) VALUES ($1, $2, $3, $4, 'running')",
        )
        .bind(&job)
        .bind(attempt)
        .bind(&leader)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut first_rank = 0i64;
        for m in &members {
            let w: String = m.try_get("worker_id")?;
            let updated = sqlx::query(
                "UPDATE gang_members SET state = 'started', attempt = $1, first_rank = $2, expires_at = $3 \
                 WHERE job_id = $4 AND worker_id = $5 AND state = 'forming'",
            )
            .bind(attempt)
            .bind(first_rank)
            .bind(now + ttl_ms as i64)
            .bind(&job)
            .bind(&w)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                // That member released its reservation meanwhile: start nothing (the
                // transaction rolls back); the gang keeps forming.
                return Ok(GangStep::Idle);
            }
            first_rank += m.try_get::<i64, _>("ranks")?;
        }
        // Workers that had backed off from this job may join its next attempt.
        sqlx::query("DELETE FROM gang_members WHERE job_id = $1 AND state = 'released'")
            .bind(&job)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(%job, attempt, members = members.len(), ranks, wait_ms = now - first_joined, "gang started");
        match self.pick_up(&job, worker, ttl_ms).await? {
            GangStep::Started {
                claimed, assignment, ..
            } => Ok(GangStep::Started {
                claimed,
                assignment,
                rendezvous_s: Some((now - first_joined) as f64 / 1000.0),
            }),
            other => Ok(other),
        }
    }

    /// Marks this worker's membership of the started gang `job` as running and returns its
    /// assignment (and the attempt, for a member other than the one that completed the gang).
    async fn pick_up(&self, job: &str, worker: &str, ttl_ms: u64) -> Result<GangStep, StoreError> {
        let now = now_ms();
        let mine = sqlx::query(
            "UPDATE gang_members SET state = 'running', expires_at = $1 WHERE job_id = $2 AND worker_id = $3 \
             AND state = 'started' RETURNING attempt, first_rank, ranks",
        )
        .bind(now + ttl_ms as i64)
        .bind(job)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?;
        let Some(mine) = mine else { return Ok(GangStep::Idle) };
        let attempt: i64 = mine.try_get("attempt")?;
        let all = sqlx::query(
            "SELECT address, port, first_rank, ranks FROM gang_members WHERE job_id = $1 AND attempt = $2 \
             ORDER BY first_rank",
        )
        .bind(job)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?;
        let world: i64 = all.iter().map(|r| r.try_get::<i64, _>("ranks").unwrap_or(0)).sum();
        let leader = all.first().ok_or_else(|| StoreError::not_found("gang member", job))?;
        let assignment = GangAssignment {
            world_size: world as u32,
            first_rank: count(&mine, "first_rank")?,
            ranks: count(&mine, "ranks")?,
            master_addr: leader.try_get("address")?,
            master_port: leader.try_get::<i64, _>("port")? as u16,
            members: all.len() as u32,
        };
        let row = sqlx::query(
            "SELECT id, experiment_id, kind, attempt, payload, ckpt_uri, ckpt_step, queued_at, num_deps FROM jobs \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
        )
        .bind(job)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(GangStep::Idle) };
        let claimed = self.claimed(&row).await?;
        Ok(GangStep::Started {
            claimed: Box::new(claimed),
            assignment,
            rendezvous_s: None,
        })
    }

    /// Gangs gathering members, and the ranks they have reserved (for Prometheus).
    pub async fn gang_summary(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT job_id) AS gangs, CAST(COALESCE(SUM(ranks), 0) AS BIGINT) AS ranks \
             FROM gang_members WHERE state = 'forming' AND expires_at >= $1",
        )
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("gangs")?, row.try_get("ranks")?))
    }

    /// Renews a running member's own lease (its heartbeat); false when it is not a member of
    /// that attempt.
    pub async fn gang_member_heartbeat(
        &self,
        job: &str,
        attempt: u64,
        worker: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE gang_members SET expires_at = $1 WHERE job_id = $2 AND attempt = $3 AND worker_id = $4 \
             AND state IN ('started', 'running')",
        )
        .bind(now_ms() + ttl_ms as i64)
        .bind(job)
        .bind(attempt as i64)
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Ends the lease of every running gang whose member lost its own (the reaper then
    /// requeues the attempt), and forgets memberships of attempts that ended and back-offs that
    /// expired.
    pub(super) async fn expire_gang_members(conn: &mut sqlx::AnyConnection, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET lease_expires_at = 0 WHERE state = 'running' AND EXISTS (SELECT 1 FROM gang_members m \
             WHERE m.job_id = jobs.id AND m.attempt = jobs.attempt AND m.state IN ('started', 'running') \
             AND m.expires_at < $1)",
        )
        .bind(now)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "DELETE FROM gang_members WHERE (state = 'released' AND expires_at < $1) \
             OR (state IN ('started', 'running') AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = gang_members.job_id \
                 AND j.state = 'running' AND j.attempt = gang_members.attempt)) \
             OR (state = 'forming' AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = gang_members.job_id \
                 AND j.state = 'queued'))",
        )
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
