//! What is in flight, as lost-step recovery (`service::recovery`) reads it: running steps
//! that stopped showing life, the oldest published steps of an op that its queue should
//! hold, and runs with nothing left in flight; and the runs it ends. Each query reads partial indexes
//! of queued, running or retrying steps (migration 0007), never every step of every run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use opflow_protocol::{OpRef, RunId, StepId};
use uuid::Uuid;

use super::StoreError;

/// One attempt of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepAttempt {
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
}

/// A running step that has not shown life for a while.
#[derive(Debug, Clone)]
pub struct SilentStepRow {
    pub step: StepAttempt,
    pub worker: String,
    pub last_seen: DateTime<Utc>,
}

fn attempt(run: Uuid, step: i32, attempt: i32) -> StepAttempt {
    StepAttempt { run_id: RunId::from_uuid(run), step_id: StepId(step as u32), attempt: attempt as u32 }
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// What lost-step recovery reads and does (`leader.in_flight()`): only a
/// `LeaderStore` hands it out.
#[derive(Clone, Copy)]
pub struct InFlight<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl InFlight<'_> {
    /// Running steps whose last heartbeat (or start) is older than `silent_for`.
    pub async fn silent_steps(
        &self,
        silent_for: Duration,
        limit: u32,
    ) -> Result<Vec<SilentStepRow>, StoreError> {
        type Row = (Uuid, i32, i32, Option<String>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT run_id, id, attempt, worker, coalesce(heartbeat_at, started_at, queued_at) FROM steps
             WHERE status = 'running'
               AND coalesce(heartbeat_at, started_at, queued_at) < now() - $1::interval
             LIMIT $2",
        )
        .bind(interval(silent_for))
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run, step, n, worker, last_seen)| SilentStepRow {
                step: attempt(run, step, n),
                worker: worker.unwrap_or_default(),
                last_seen,
            })
            .collect())
    }

    /// The `limit` published queued steps of `op` queued longest ago, if before `older_than`.
    pub async fn oldest_published(
        &self,
        op: &OpRef,
        older_than: Duration,
        limit: u64,
    ) -> Result<Vec<StepAttempt>, StoreError> {
        let rows: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "SELECT s.run_id, s.id, s.attempt FROM steps s
             JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.status = 'queued' AND a.op_name = $1 AND a.op_version = $2
               AND s.queued_at < now() - $3::interval
               AND NOT EXISTS (
                   SELECT 1 FROM outbox o WHERE o.run_id = s.run_id AND o.step_id = s.id AND o.attempt = s.attempt
               )
             ORDER BY s.queued_at LIMIT $4",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(interval(older_than))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool)
        .await?;
        Ok(rows.into_iter().map(|(run, step, n)| attempt(run, step, n)).collect())
    }

    /// Runs still going, older than `older_than`, with no step queued, running or retrying:
    /// nothing can move them any more.
    pub async fn runs_with_nothing_in_flight(&self, older_than: Duration) -> Result<Vec<RunId>, StoreError> {
        let runs: Vec<Uuid> = sqlx::query_scalar(
            "SELECT r.id FROM runs r
             WHERE r.status IN ('queued', 'running') AND r.created_at < now() - $1::interval
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'queued')
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'running')
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'retrying')
             LIMIT 100",
        )
        .bind(interval(older_than))
        .fetch_all(self.pool)
        .await?;
        Ok(runs.into_iter().map(RunId::from_uuid).collect())
    }

    /// Ends a run that has nothing in flight: its waiting steps (which nothing will unlock
    /// any more) fail with `reason`, its counters are counted again from its steps, and it
    /// ends `failed` or `succeeded`. Does nothing if the run has since moved. Returns
    /// whether it ended the run.
    pub async fn settle_run(&self, run: RunId, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let going: Option<bool> = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status IN ('queued', 'running', 'retrying'))
             FROM runs r WHERE r.id = $1 AND r.status IN ('queued', 'running') FOR UPDATE",
        )
        .bind(run.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        if going != Some(true) {
            return Ok(false);
        }
        let ended: Option<Uuid> = sqlx::query_scalar(
            "WITH stuck AS (
                 UPDATE steps SET status = 'failed', error = $2, finished_at = now()
                 WHERE run_id = $1 AND status = 'waiting'
                 RETURNING 1
             ), counts AS (
                 SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                        count(*) FILTER (WHERE status = 'failed') + (SELECT count(*) FROM stuck) AS failed,
                        count(*) FILTER (WHERE status = 'skipped') AS skipped,
                        count(*) FILTER (WHERE status = 'canceled') AS canceled
                 FROM steps WHERE run_id = $1
             ), ended AS (
                 UPDATE runs r SET steps_succeeded = c.succeeded, steps_failed = c.failed,
                                   steps_skipped = c.skipped, steps_canceled = c.canceled,
                                   status = CASE WHEN c.failed > 0 THEN 'failed'::run_status
                                                 ELSE 'succeeded'::run_status END,
                                   finished_at = now()
                 FROM counts c WHERE r.id = $1
                 RETURNING r.id
             )
             SELECT id FROM (SELECT id, pg_notify($3, id::text) FROM ended) announced",
        )
        .bind(run.as_uuid())
        .bind(super::storable::text(reason))
        .bind(super::RUNS_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ended.is_some())
    }

    /// Why a worker last gave up on this step attempt without a result (an `abandoned`
    /// event), if one did: it explains a later dead-letter.
    pub async fn last_abandon_reason(
        &self,
        message: &opflow_protocol::StepMessage,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT body->'abandoned'->>'reason' FROM events
             WHERE run_id = $1 AND step_id = $2 AND attempt = $3 AND kind = 'abandoned'
             ORDER BY at DESC LIMIT 1",
        )
        .bind(message.run_id.as_uuid())
        .bind(message.step_id.0 as i32)
        .bind(message.attempt as i32)
        .fetch_optional(self.pool)
        .await?
        .flatten())
    }
}
