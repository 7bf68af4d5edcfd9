//! Reads that verify a run from outside, as `opflow bench` checks and times its runs: when
//! its first step started, how many step rows it stored, whether every step succeeded
//! exactly once, the database's size and its client backends. None of the platform's own
//! paths needs them.

use chrono::{DateTime, Utc};
use opflow_protocol::RunId;

use super::{Store, StoreError};

/// How a run's results were counted: every step succeeded exactly once when all three
/// are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactlyOnce {
    pub steps: i64,
    /// Steps that succeeded with an output.
    pub with_output: i64,
    /// Steps with exactly one applied success.
    pub counted_once: i64,
}

impl ExactlyOnce {
    pub fn holds(&self) -> bool {
        self.with_output == self.steps && self.counted_once == self.steps
    }
}

/// Reads that check a run from outside, as `opflow bench` verifies and times its runs
/// (`store.checks()`): none of the platform's own paths needs them.
#[derive(Clone, Copy)]
pub struct Checks<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// Reads that verify a run from outside, for `opflow bench`.
    pub fn checks(&self) -> Checks<'_> {
        Checks { pool: &self.pool }
    }
}

impl Checks<'_> {
    /// When the first of a run's steps started, as its worker said.
    pub async fn first_step_started_at(&self, run: RunId) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(started_at) FROM steps WHERE run_id = $1")
            .bind(run.as_uuid())
            .fetch_one(self.pool)
            .await?)
    }

    /// When a run was stored, its first step started (as its worker said) and it ended.
    pub async fn run_times(
        &self,
        run: RunId,
    ) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>), StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.created_at, (SELECT min(started_at) FROM steps WHERE run_id = r.id), r.finished_at
             FROM runs r WHERE r.id = $1",
        )
        .bind(run.as_uuid())
        .fetch_one(self.pool)
        .await?)
    }

    /// How many step rows a run has (against `steps_total`: all of them were stored).
    pub async fn stored_steps(&self, run: RunId) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1")
            .bind(run.as_uuid())
            .fetch_one(self.pool)
            .await?)
    }

    /// Whether every step of a run succeeded with an output and had exactly one success
    /// applied; `None` for an unknown run.
    pub async fn exactly_once(&self, run: RunId) -> Result<Option<ExactlyOnce>, StoreError> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT r.steps_total::bigint,
                    (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'succeeded' AND s.output IS NOT NULL),
                    (SELECT count(*) FROM (SELECT 1 FROM events e WHERE e.run_id = r.id AND e.kind = 'succeeded' AND e.applied
                                           GROUP BY e.step_id HAVING count(*) = 1) once)
             FROM runs r WHERE r.id = $1",
        )
        .bind(run.as_uuid())
        .fetch_optional(self.pool)
        .await?;
        Ok(row.map(|(steps, with_output, counted_once)| ExactlyOnce { steps, with_output, counted_once }))
    }

    /// The most of a run's steps that were ever running at the same moment, as their workers
    /// reported their starts and ends: over each group of `per_key` consecutive step ids
    /// (one key each, as a partition of a sweep of `per_key` is), and over the whole run.
    /// An end and a start at the same instant do not overlap.
    pub async fn most_running_at_once(&self, run: RunId, per_key: u32) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "WITH ran AS (
                 SELECT id / $2 AS key, started_at, finished_at FROM steps
                 WHERE run_id = $1 AND started_at IS NOT NULL AND finished_at IS NOT NULL
             ), moments AS (
                 SELECT key, started_at AS at, 1 AS change FROM ran
                 UNION ALL SELECT key, finished_at, -1 FROM ran
             ), per_key AS (
                 SELECT sum(change) OVER (PARTITION BY key ORDER BY at, change ROWS UNBOUNDED PRECEDING) AS n
                 FROM moments
             ), overall AS (
                 SELECT sum(change) OVER (ORDER BY at, change ROWS UNBOUNDED PRECEDING) AS n FROM moments
             )
             SELECT coalesce((SELECT max(n) FROM per_key), 0)::bigint, coalesce((SELECT max(n) FROM overall), 0)::bigint",
        )
        .bind(run.as_uuid())
        .bind(per_key.max(1) as i32)
        .fetch_one(self.pool)
        .await?)
    }

    /// The size of the store's database, in bytes.
    pub async fn database_bytes(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(self.pool).await?)
    }

    /// The PostgreSQL client backends (their pids) connected to this store's database.
    pub async fn client_backends(&self) -> Result<Vec<i32>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'",
        )
        .fetch_all(self.pool)
        .await?)
    }
}
